"""Single image files: checked before they are decoded, then decoded and resized as every reader resizes.

``check_image_file`` reads only a file's header (Pillow opens lazily) and refuses, before TensorFlow decodes
anything, what is not a regular file (a named pipe would block the reader, a device never end), a file Pillow
cannot read the header of, a format TensorFlow does not decode, and a decompression bomb:
an image whose decoded pixels, every frame's for an animation, exceed ``MAX_PIXELS`` (a few hundred KB of PNG
can claim gigapixels of zeros, and TensorFlow decodes every frame of a GIF to keep the first), and an animated
WebP (TensorFlow decodes it to RGBA only, and aborts the process on some requests for other channels). Every reader of
files calls it: ``read_image`` (predict, visualize), and the image-folder reader for each file of a folder.
"""
from __future__ import annotations

import io
import os
import re
import stat
import warnings
from typing import BinaryIO, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnn_jax import tf_images

FORMATS = "JPEG, PNG, GIF, BMP or WebP"
_DECODED = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP", "WEBP": "WebP"}  # Pillow's
MAX_PIXELS = 64 << 20  # 64 MPixel (8192x8192), all frames together: a larger image is refused as a bomb
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*", re.DOTALL)  # op names around TF's error message
_FIX = f"fix: convert it to a {FORMATS} image of at most {MAX_PIXELS:,} pixels (8192x8192), or remove it"


class UnreadableImageError(ValueError):
    """A file is missing, unreadable, refused or not an image TensorFlow can decode; ``reason`` says which."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def check_image_size(image_size, where: str) -> tuple[int, int]:
    """``image_size`` as (height, width) ints; ValueError naming ``where`` when it is None."""
    if image_size is None:
        raise ValueError(f"{where} holds images of any size: set image_size=(height, width) to resize them "
                         "(experiments: --image_size)")
    return tuple(int(s) for s in image_size)


def _gif_canvas(file: BinaryIO) -> tuple[int, int, int]:
    """(frames, width, height) of the canvas TensorFlow decodes a GIF to: the logical screen grown to hold every
    frame's extent. Pillow reports the first frame's canvas only, and TensorFlow allocates the largest; so the
    blocks are walked here (headers only, the image data skipped)."""
    file.seek(0)
    header = file.read(13)
    width, height, flags = int.from_bytes(header[6:8], "little"), int.from_bytes(header[8:10], "little"), header[10]
    file.seek((3 << ((flags & 7) + 1)) if flags & 0x80 else 0, os.SEEK_CUR)  # the global colour table
    frames = 0
    while (block := file.read(1)) not in (b";", b""):
        if block == b",":  # an image: its position and size, then its colour table and data
            descriptor = file.read(9)
            if len(descriptor) < 9:
                break
            left, top, w, h = (int.from_bytes(descriptor[i:i + 2], "little") for i in range(0, 8, 2))
            width, height, frames = max(width, left + w), max(height, top + h), frames + 1
            file.seek((3 << ((descriptor[8] & 7) + 1)) if descriptor[8] & 0x80 else 0, os.SEEK_CUR)
            file.read(1)  # LZW code size
        elif block == b"!":
            file.read(1)  # the extension's label
        else:
            raise ValueError(f"unexpected GIF block {block!r} at byte {file.tell() - 1}")
        while (length := file.read(1)) not in (b"\0", b""):  # data sub-blocks, up to the empty one
            file.seek(length[0], os.SEEK_CUR)
    return max(frames, 1), width, height


def _header_problem(file: BinaryIO, size: int) -> Optional[str]:
    """Why the image in ``file`` (``size`` bytes, open and seekable) must not be decoded, or None."""
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 MPixel; the limit here is lower and says more
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                kind, (width, height) = image.format, image.size
                frames = getattr(image, "n_frames", 1) if kind == "WEBP" else 1
        if kind == "GIF":
            frames, width, height = _gif_canvas(file)
    except Image.DecompressionBombError as error:  # Pillow's own limit, from 2 x 89 MPixel: over ours too
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(claimed.group(1)):,}" if claimed else "more than 178,956,970"
        return (f"its header claims {pixels} pixels, over the {MAX_PIXELS:,}-pixel limit (a decompression bomb? "
                f"the file is {size:,} bytes); {_FIX}")
    except UnidentifiedImageError:
        return f"not a readable {FORMATS} image: Pillow cannot identify its header ({size:,} bytes); {_FIX}"
    except Exception as error:  # noqa: BLE001 -- a crafted header can raise anything in a Pillow plugin: refuse
        return (f"not a readable {FORMATS} image: its header does not parse ({type(error).__name__}: {error}; "
                f"{size:,} bytes); {_FIX}")
    if kind not in _DECODED:
        return f"a {kind} image, which is not decoded here; {_FIX}"
    if kind == "WEBP" and frames > 1:  # TensorFlow decodes animated WebP to RGBA only; its other paths corrupt memory
        return f"an animated WebP ({frames} frames, {width}x{height}), which is not decoded here; {_FIX}"
    if frames * width * height > MAX_PIXELS:
        shown = f"{frames} frames of {width}x{height}" if frames > 1 else f"{width}x{height}"
        return (f"its header claims {shown} pixels, over the {MAX_PIXELS:,}-pixel limit (a decompression bomb? "
                f"the file is {size:,} bytes); {_FIX}")
    return None


def _opened(path: str) -> tuple[Optional[BinaryIO], str]:
    """(the regular file open for reading, "") or (None, why it cannot be read). A named pipe is opened without
    waiting for a writer, then refused with devices and sockets: reading one could block or never end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error}): fix: give this user read permission"
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        what = "a folder" if kind == stat.S_IFDIR else "a named pipe, socket or device"
        return None, f"{what}, not an image file"
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), ""


def image_problem(path: str) -> Optional[str]:
    """Why ``path`` must not be decoded, or None: the reason ``check_image_file`` gives, without raising."""
    file, why = _opened(path)
    if file is None:
        return why
    with file:
        return _header_problem(file, os.fstat(file.fileno()).st_size)


def check_image_file(path: str) -> None:
    """Raises UnreadableImageError, naming the file, the problem and the fix, unless ``path`` is a JPEG, PNG, GIF,
    BMP or WebP file whose header Pillow reads and whose decoded pixels, all frames together, stay within
    ``MAX_PIXELS``. Reads only headers: call it before anything decodes a file from outside."""
    problem = image_problem(path)
    if problem:
        raise UnreadableImageError(path, problem)


def tf_paths(paths) -> np.ndarray:
    """File paths as the bytes the OS names them by, so that TensorFlow opens names that are not UTF-8 too."""
    return np.asarray([os.fsencode(p) for p in paths], dtype=object)


def decode_file(tf, path, image_size: tuple[int, int], channels: int = 3):
    """The TF ops that read, decode and resize one file (for tf.data pipelines; check the file first)."""
    return tf_images.decode_and_resize(tf, tf.io.read_file(path), image_size, channels)


def read_image(path: str, image_size: Sequence[int], channels: int = 3) -> np.ndarray:
    """One image file as uint8 (H, W, ``channels``), checked as ``check_image_file`` checks and resized as the
    image-folder and tfds readers resize (aspect kept, scaled to cover, centre cropped). The file is read once: the
    bytes checked are the bytes decoded.

    Raises UnreadableImageError naming the file and the reason when it is missing, refused or does not decode.
    """
    image_size = check_image_size(image_size, "read_image")
    file, why = _opened(path)
    if file is None:
        raise UnreadableImageError(path, why)
    with file:
        contents = file.read()
    problem = _header_problem(io.BytesIO(contents), len(contents))
    if problem:
        raise UnreadableImageError(path, problem)
    tf = tf_images.import_tensorflow()
    try:
        return tf_images.decode_and_resize(tf, contents, image_size, channels).numpy()
    except (tf.errors.OpError, ValueError) as error:
        reason = _TF_NOISE.sub("", getattr(error, "message", str(error))).strip()
        raise UnreadableImageError(path, f"not a readable {FORMATS} image ({reason})") from None
