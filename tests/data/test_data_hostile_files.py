"""Hostile input files and planted caches (issue 30): refused from their headers, or treated as a cache miss.

The bombs are built small: a valid PNG of 14000x14000 zeros compresses to about 190 KB (written here from one
deflate block repeated, in milliseconds), and a GIF's frames are one encoded frame repeated. Nothing here decodes
a bomb: each test asserts the refusal names the file, what its header claims and the fix.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from helpers import examples
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cnn_jax import data
from cnn_jax.data import decode_cache, image_folder


def zeros_png(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of zeros: one deflate block of rows, ended by a full flush, repeated."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = next(n for n in (100, 50, 20, 10, 5, 4, 2, 1) if height % n == 0)
    raw = bytes(width + 1) * rows  # each row: filter type 0, then the pixels
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(raw) + deflate.flush(zlib.Z_FULL_FLUSH)  # no reference crosses a full flush
    adler = 1
    for _ in range(height // rows):
        adler = zlib.adler32(raw, adler)
    stream = b"\x78\xda" + block * (height // rows) + deflate.flush() + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def _gif_frame(size) -> tuple[bytes, bytes]:
    """(everything before the image, the image block) of a one-frame GIF of ``size`` zeros, encoded by Pillow."""
    encoded = io.BytesIO()
    Image.new("P", size).save(encoded, "GIF")
    contents = encoded.getvalue()
    start = contents.index(b"\x2c\x00\x00\x00\x00")  # the image descriptor, at (0, 0)
    return contents[:start], contents[start:-1]  # the last byte is the trailer


def animated_gif(frames: int, size, later_size=None) -> bytes:
    """A GIF of ``frames`` frames of ``size``, or a first frame of ``size`` and the others of ``later_size``."""
    head, first = _gif_frame(size)
    later = _gif_frame(later_size)[1] if later_size else first
    return head + first + later * (frames - 1) + b";"


def test_the_bomb_writer_writes_a_valid_png():
    image = Image.open(io.BytesIO(zeros_png(300, 200)))
    image.load()  # decodes every row: the stream and its checksums are valid
    assert image.size == (300, 200) and not np.asarray(image).any()


def test_a_png_bomb_above_pillows_own_limit_is_refused_from_its_header(tmp_path):
    """14000x14000 (196 MPixel, over 2 x Pillow's limit, where Pillow raises instead of warning) in 190 KB."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(zeros_png(14000, 14000))
    assert bomb.stat().st_size < 200_000
    expected = r"bomb.png: its header claims 196,000,000 pixels, over the 67,108,864-pixel limit.*fix: convert"
    with pytest.raises(data.UnreadableImageError, match=expected):
        data.check_image_file(str(bomb))
    with pytest.raises(data.UnreadableImageError, match=expected):
        data.read_image(str(bomb), (8, 8))


def _folder_with(root, name: str, contents: bytes, per_class: int = 3):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        os.makedirs(root / label, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    (root / "cat" / name).write_bytes(contents)
    return root


@pytest.mark.parametrize("streaming", [False, True])
def test_a_png_bomb_in_a_training_folder_is_skipped_with_its_reason(tmp_path, caplog, streaming):
    root = _folder_with(tmp_path / "pets", "bomb.png", zeros_png(14000, 14000))
    config = data.DataConfig(str(root), image_size=(8, 8), batch_size=2, input="stream" if streaming else "memory")
    with caplog.at_level(logging.WARNING):
        dataset = data.load(config)
    assert dataset.info.num_skipped == 1 and dataset.info.num_train + dataset.info.num_test == 6
    assert "refused 1 files before decoding them" in caplog.text and "claims 196,000,000 pixels" in caplog.text


def test_an_animated_gif_is_bounded_by_its_frames_times_its_pixels(tmp_path):
    """4000x4000 x 40 frames in about 0.5 MB: TensorFlow would decode every frame to keep the first."""
    gif = tmp_path / "frames.gif"
    gif.write_bytes(animated_gif(40, (4000, 4000)))
    assert gif.stat().st_size < 600_000
    with pytest.raises(data.UnreadableImageError, match=r"frames.gif: its header claims 40 frames of 4000x4000 "
                                                         r"pixels, over the 67,108,864-pixel limit"):
        data.check_image_file(str(gif))
    with pytest.raises(data.UnreadableImageError, match="40 frames of 4000x4000"):
        data.read_image(str(gif), (8, 8))


def test_a_gif_whose_later_frame_outgrows_its_screen_is_measured_by_that_frame(tmp_path):
    """TensorFlow's canvas is the largest frame's, not the screen's that Pillow reports."""
    gif = tmp_path / "grows.gif"
    gif.write_bytes(animated_gif(2, (100, 100), later_size=(9000, 8000)))
    assert Image.open(gif).size == (100, 100)
    with pytest.raises(data.UnreadableImageError, match="2 frames of 9000x8000 pixels"):
        data.check_image_file(str(gif))


def test_a_small_animated_gif_is_read_as_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "small.gif", save_all=True, append_images=frames[1:])
    data.check_image_file(str(tmp_path / "small.gif"))
    image = data.read_image(str(tmp_path / "small.gif"), (6, 8))
    assert image.shape == (6, 8, 3) and image[..., 0].min() > 200 and image[..., 1:].max() < 50


def test_an_animated_webp_is_refused_before_tensorflow_sees_it(tmp_path):
    """TensorFlow decodes animated WebP to RGBA only, and asked for its own channel count it aborts the process."""
    frames = [Image.new("RGB", (64, 48), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "moving.webp", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.webp")
    with pytest.raises(data.UnreadableImageError, match=r"moving.webp: an animated WebP \(3 frames, 64x48\)"):
        data.read_image(str(tmp_path / "moving.webp"), (8, 8))
    assert data.read_image(str(tmp_path / "still.webp"), (6, 8))[..., 0].min() > 200


@pytest.mark.parametrize("name, contents, expected", [
    ("cut.png", zeros_png(64, 64)[:20], r"cut.png: not a readable JPEG, PNG, GIF, BMP or WebP image: its header "
                                        r"does not parse \(OSError: .*; 20 bytes\); fix: convert"),
    ("notes.jpg", b"just some text\n", r"notes.jpg: not a readable .* Pillow cannot identify its header "
                                       r"\(15 bytes\); fix: convert"),
    ("empty.png", b"", r"empty.png: not a readable .* \(0 bytes\)"),
])
def test_a_file_pillow_cannot_read_the_header_of_is_refused(tmp_path, name, contents, expected):
    (tmp_path / name).write_bytes(contents)
    with pytest.raises(data.UnreadableImageError, match=expected):
        data.check_image_file(str(tmp_path / name))


def test_a_format_tensorflow_does_not_decode_is_refused_by_name(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "scan.tif")
    with pytest.raises(data.UnreadableImageError, match=r"scan.tif: a TIFF image, which is not decoded here; fix"):
        data.check_image_file(str(tmp_path / "scan.tif"))


def test_a_missing_file_and_a_folder_are_named(tmp_path):
    with pytest.raises(data.UnreadableImageError, match="nowhere.png: no such file"):
        data.check_image_file(str(tmp_path / "nowhere.png"))
    with pytest.raises(data.UnreadableImageError, match="a folder, not an image file"):
        data.check_image_file(str(tmp_path))


# --- the decode cache: a checksum beside each file, a mismatch or contents out of range a miss ----------------

def _plant(path, write) -> None:
    """Writes a cache file as an attacker or a stray copy would, and optionally its matching sum."""
    buffer = io.BytesIO()
    write(buffer)
    with open(path, "wb") as file:
        file.write(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def test_a_planted_dataset_cache_of_the_right_shape_is_a_miss(tmp_path, caplog):
    path = str(tmp_path / "tfds-x.npz")
    images, labels = np.full((4, 2, 2, 1), 7, np.uint8), np.asarray([0, 1, 1, 0], np.int32)
    decode_cache.save_arrays(path, ("a", "b"), {"train": (images, labels)})
    (cached_images, cached_labels), = decode_cache.load_arrays(path, ("a", "b"), {"train": 4}).values()
    np.testing.assert_array_equal(cached_images, images)
    np.testing.assert_array_equal(cached_labels, labels)

    def planted(out, labels=labels):
        np.savez(out, class_names=np.asarray(["a", "b"]), **{"train/images": images * 0, "train/labels": labels})

    _plant(path, planted)  # the right shape, other pixels, the old sum beside it
    with caplog.at_level(logging.WARNING):
        assert decode_cache.load_arrays(path, ("a", "b"), {"train": 4}) is None
    assert "its SHA-256 differs from the one written beside it" in caplog.text

    digest = _plant(path, lambda out: planted(out, np.asarray([0, 1, 5, 0], np.int32)))  # a label out of range
    (tmp_path / "tfds-x.npz.sha256").write_text(digest)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert decode_cache.load_arrays(path, ("a", "b"), {"train": 4}) is None
    assert "it does not match the dataset" in caplog.text

    os.remove(tmp_path / "tfds-x.npz.sha256")  # a file with no sum is never used
    assert decode_cache.load_arrays(path, ("a", "b"), {"train": 4}) is None


def test_a_planted_folder_scan_with_indices_out_of_range_is_scanned_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder_with(tmp_path / "pets", "notes.txt", b"not an image")
    first = image_folder.scan_image_folder(str(root), (8, 8))
    (cache,) = (tmp_path / "cache" / "input").glob("folder-*.npy")
    assert len(first[1]) == 6 and first[3] == (str(root / "cat" / "notes.txt"),)

    for indices in ([0, 1, 999], [3, 2], [-1, 0]):  # out of range, unsorted, negative: each with a matching sum
        digest = _plant(cache, lambda out, indices=indices: np.save(out, np.asarray(indices, np.int64)))
        cache.with_name(cache.name + ".sha256").write_text(digest)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = image_folder.scan_image_folder(str(root), (8, 8))
        assert "it does not hold sorted indices below 7; scanning the folder again" in caplog.text
        assert again[1] == first[1] and again[3] == first[3]

    cache.write_bytes(b"\x93NUMPY")  # cut short: a miss, never a traceback
    assert image_folder.scan_image_folder(str(root), (8, 8))[1] == first[1]


def _small_images() -> dict[str, bytes]:
    formats = {}
    for kind in ("PNG", "GIF", "BMP", "JPEG", "WEBP"):
        encoded = io.BytesIO()
        Image.new("RGB", (20, 12), (10, 200, 30)).save(encoded, kind)
        formats[kind] = encoded.getvalue()
    formats["animated GIF"] = animated_gif(3, (20, 12))
    return formats


SMALL_IMAGES = _small_images()


@examples(60)
@given(kind=st.sampled_from(sorted(SMALL_IMAGES)), data_=st.data())
def test_a_damaged_header_is_refused_or_passed_never_raised(tmp_path_factory, kind, data_):
    """Any bytes changed or cut in the first 64 of a valid file: check_image_file refuses or passes, nothing else."""
    contents = bytearray(SMALL_IMAGES[kind])
    for _ in range(data_.draw(st.integers(1, 4))):
        contents[data_.draw(st.integers(0, min(63, len(contents) - 1)))] = data_.draw(st.integers(0, 255))
    contents = bytes(contents[:data_.draw(st.integers(0, len(contents)))])
    path = tmp_path_factory.mktemp("damaged") / "image"
    path.write_bytes(contents)
    try:
        data.check_image_file(str(path))
    except data.UnreadableImageError as error:
        assert error.reason and "\n" not in error.reason


def test_a_planted_cache_with_its_sum_in_a_directory_others_can_write_is_ignored(tmp_path, monkeypatch, caplog):
    """Whoever can write the cache directory can write a matching sum too: such a directory is neither read nor
    written, with one warning that says how to fix it."""
    monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder_with(tmp_path / "pets", "notes.txt", b"not an image")
    first = image_folder.scan_image_folder(str(root), (8, 8))
    (cache,) = (tmp_path / "cache" / "input").glob("folder-*.npy")
    digest = _plant(cache, lambda out: np.save(out, np.asarray([0], np.int64)))  # one file, the right shape
    cache.with_name(cache.name + ".sha256").write_text(digest)
    cache.parent.chmod(0o777)
    with caplog.at_level(logging.WARNING):
        again = image_folder.scan_image_folder(str(root), (8, 8))
    assert again[1] == first[1] and again[3] == first[3]  # scanned again, not the planted one file
    assert f"cache directory {cache.parent} can be written by group or others (mode 777)" in caplog.text
    assert "chmod go-w" in caplog.text
    assert np.load(cache).tolist() == [0]  # and nothing rewritten there

    arrays = tmp_path / "cache" / "input" / "tfds-x.npz"
    decode_cache.save_arrays(str(arrays), ("a", "b"), {"train": (np.zeros((2, 1, 1, 1), np.uint8),
                                                                np.zeros(2, np.int32))})
    assert not arrays.exists()


def _png(path, value: int) -> None:
    Image.new("L", (6, 4), value).save(path)


def test_links_are_followed_inside_the_folder_and_passed_over_otherwise(tmp_path, caplog):
    """One rule wherever a link is: a class folder, a folder in a class, a file. Before, a linked class folder was
    read and a linked folder inside a class silently skipped."""
    root, outside = tmp_path / "pets", tmp_path / "elsewhere"
    for folder, count in ((root / "cat", 3), (root / "dog", 3), (root / ".store" / "birds", 2),
                          (root / ".store" / "cats", 2), (outside, 2)):
        folder.mkdir(parents=True)
        for i in range(count):
            _png(folder / f"{i}.png", 10 * i)
    (root / "bird").symlink_to(root / ".store" / "birds")  # a linked class folder, inside: read
    (root / "cat" / "more").symlink_to(root / ".store" / "cats")  # a linked folder in a class, inside: read
    (root / "cat" / "loop").symlink_to(root / "cat")  # inside, but read already: passed over
    passed_over = {root / "fish": outside, root / "dog" / "far": outside, root / "dog" / "far.png": outside / "0.png",
                   root / "dog" / "gone.png": root / "nothing.png"}
    for link, target in passed_over.items():
        link.symlink_to(target)

    with caplog.at_level(logging.WARNING):
        folder = image_folder.read_image_folder(str(root), (4, 4))
    assert folder.class_names == ("bird", "cat", "dog")
    assert np.bincount(folder.labels).tolist() == [2, 5, 3]
    assert sorted(folder.skipped) == sorted(map(str, [*passed_over, root / "cat" / "loop"]))
    assert f"passed over 5 entries of {root}" in caplog.text
    assert (f"{root / 'fish'}: a symbolic link to {outside}, outside the image folder: not followed; fix: copy or "
            "move what it points to into the folder") in caplog.text
    assert f"{root / 'cat' / 'loop'}: a link to a folder read already (a loop" in caplog.text

    names, paths, labels, skipped = image_folder.scan_image_folder(str(root), (4, 4))  # streaming: the same files
    assert names == folder.class_names and labels.tolist() == folder.labels.tolist()
    assert sorted(skipped) == sorted(folder.skipped)
    assert sorted(os.path.relpath(p, root) for p in paths if "/cat/" in p) == [
        "cat/0.png", "cat/1.png", "cat/2.png", "cat/more/0.png", "cat/more/1.png"]


def test_only_links_out_of_the_folder_leave_too_few_classes_with_the_reason(tmp_path):
    outside = tmp_path / "elsewhere"
    for name in ("cats", "dogs"):
        (outside / name).mkdir(parents=True)
        _png(outside / name / "0.png", 0)
    (tmp_path / "pets").mkdir()
    for name in ("cats", "dogs"):
        (tmp_path / "pets" / name).symlink_to(outside / name)
    with pytest.raises(ValueError, match=r"has 0 class subfolder\(s\).*\(2 entries passed over, e\.g\. .*cats: a "
                                         r"symbolic link to .*outside the image folder"):
        image_folder.read_image_folder(str(tmp_path / "pets"), (4, 4))
    (tmp_path / "alias").symlink_to(outside)  # the image folder itself may be a link: inside is below its target
    assert image_folder.read_image_folder(str(tmp_path / "alias"), (4, 4)).class_names == ("cats", "dogs")


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path, caplog):
    """Opening a FIFO for reading waits for a writer: a planted one would hang the run. (Should the check wait, a
    writer comes after 10 s, and the test fails on the message instead of hanging.)"""
    root = _folder_with(tmp_path / "pets", "pipe.png", b"")
    os.remove(root / "cat" / "pipe.png")
    os.mkfifo(root / "cat" / "pipe.png")
    timer = threading.Timer(10, lambda: os.close(os.open(root / "cat" / "pipe.png", os.O_WRONLY | os.O_NONBLOCK)))
    timer.start()
    try:
        with pytest.raises(data.UnreadableImageError, match="pipe.png: a named pipe, socket or device, not an image"):
            data.check_image_file(str(root / "cat" / "pipe.png"))
        with pytest.raises(data.UnreadableImageError, match="pipe.png: a named pipe, socket or device"):
            data.read_image(str(root / "cat" / "pipe.png"), (4, 4))
        with caplog.at_level(logging.WARNING):
            folder = image_folder.read_image_folder(str(root), (4, 4))
    finally:
        timer.cancel()
    assert folder.skipped == (str(root / "cat" / "pipe.png"),) and len(folder.labels) == 6
    assert "pipe.png: a named pipe, socket or device, not an image file" in caplog.text
