"""Batch augmentations in pure JAX, each ``fn(rng, images) -> images`` with per-example randomness.

They run on the device inside the jitted train step: no Python branching on values, no host
round trip. Images are NHWC floats in [0, 1] and keep their shape and range.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def _check_images(images):
    if images.ndim != 4:
        raise ValueError(f"augmentations expect NHWC batches of rank 4, got shape {images.shape}")


def random_crop(rng: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Zero-pads ``padding`` pixels on each side, then crops a random window of the original size.

    Zero padding, as in the ResNet CIFAR recipe and torchvision's RandomCrop default: each image
    moves by up to ``padding`` pixels and black enters at the edges.
    """
    _check_images(images)
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    _check_images(images)
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def cutout(rng: jax.Array, images: jax.Array, size: int = 8) -> jax.Array:
    """Sets a ``size`` x ``size`` square of each image to 0 (black), at a random centre.

    As in DeVries & Taylor (2017) the centre can be anywhere in the image, so squares near the
    border are clipped and cover fewer pixels.
    """
    _check_images(images)
    if size < 1:
        raise ValueError(f"cutout size must be >= 1, got {size}")
    n, h, w, _ = images.shape
    rng_y, rng_x = jax.random.split(rng)
    top = jax.random.randint(rng_y, (n, 1, 1), 0, h) - size // 2
    left = jax.random.randint(rng_x, (n, 1, 1), 0, w) - size // 2
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def random_resized_crop(rng: jax.Array, images: jax.Array, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
    """Crops a random box of each image and resizes it (bilinearly) back to the image's size.

    As torchvision's RandomResizedCrop: the box covers a fraction of the area drawn uniformly from
    ``scale`` and has a width/height ratio drawn log-uniformly from ``ratio``; of 10 draws the first
    that fits is used, and when none fits, the largest centred box of a ratio within ``ratio``.
    """
    _check_images(images)
    _check_resized_crop(scale, ratio)
    _, height, width, _ = images.shape

    def one(key, image):
        top, left, box_h, box_w = _crop_box(key, height, width, scale, ratio)
        return _resize_box(image, top, left, box_h, box_w)

    return jax.vmap(one)(jax.random.split(rng, images.shape[0]), images)


def _check_resized_crop(scale, ratio) -> None:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"random_resized_crop scale={tuple(scale)}: use (min, max) with "
                         "0 < min <= max <= 1, e.g. (0.08, 1.0)")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"random_resized_crop ratio={tuple(ratio)}: use (min, max) with "
                         "0 < min <= max, e.g. (3/4, 4/3)")


def _crop_box(key, height: int, width: int, scale, ratio, attempts: int = 10):
    """(top, left, height, width) of a random-resized-crop box, as torchvision draws it."""
    key_area, key_ratio, key_top, key_left = jax.random.split(key, 4)
    area = height * width * jax.random.uniform(key_area, (attempts,), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(key_ratio, (attempts,), minval=math.log(ratio[0]),
                                        maxval=math.log(ratio[1])))
    box_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    box_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = jnp.argmax(fits)
    if width / height < ratio[0]:  # the fallback: a centred box of the nearest allowed ratio
        fallback_h, fallback_w = round(width / ratio[0]), width
    elif width / height > ratio[1]:
        fallback_h, fallback_w = height, round(height * ratio[1])
    else:
        fallback_h, fallback_w = height, width
    found = fits.any()
    box_h = jnp.where(found, box_h[first], fallback_h)
    box_w = jnp.where(found, box_w[first], fallback_w)
    top = jnp.where(found, jax.random.randint(key_top, (), 0, height - box_h + 1), (height - box_h) // 2)
    left = jnp.where(found, jax.random.randint(key_left, (), 0, width - box_w + 1), (width - box_w) // 2)
    return top, left, box_h, box_w


def _resize_box(image, top, left, box_h, box_w):
    """The box of an HWC image resized bilinearly to the image's size (half-pixel centres, edges
    clamped, as torchvision's resize without align_corners)."""
    height, width, _ = image.shape

    def coordinates(start, box, size):
        centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) * (box / size) - 0.5
        position = jnp.clip(centres, 0, box - 1)
        low = jnp.floor(position).astype(jnp.int32)
        return start + low, start + jnp.minimum(low + 1, box - 1), position - low

    y0, y1, wy = coordinates(top, box_h, height)
    x0, x1, wx = coordinates(left, box_w, width)
    x = image.astype(jnp.float32)
    rows = x[y0] * (1 - wy)[:, None, None] + x[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return jnp.clip(out, 0, 1).astype(image.dtype)


# --- RandAugment (Cubuk et al. 2020) and TrivialAugment (Müller & Hutter 2021) ------------------
# Each op maps one HWC float32 image in [0, 1] and a signed magnitude to an image; the op set and
# the magnitude ranges are torchvision's RandAugment and TrivialAugmentWide. Geometric ops sample
# the nearest pixel and fill with 0; posterize and equalize act on the 8-bit levels round(255 x).

def _blend(image, other, factor):
    """`factor * image + (1 - factor) * other`, clipped to [0, 1]: factor 1 is the image."""
    return jnp.clip(factor * image + (1 - factor) * other, 0, 1)


def _gray(image):
    return image @ jnp.array([0.299, 0.587, 0.114], jnp.float32) if image.shape[-1] == 3 else image[..., 0]


def _resample(image, source):
    """Each output pixel (y, x) reads the input at `source(y, x)` (nearest pixel; 0 outside)."""
    height, width, _ = image.shape
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                          indexing="ij")
    src_y, src_x = source(ys, xs)
    src_y, src_x = jnp.round(src_y).astype(jnp.int32), jnp.round(src_x).astype(jnp.int32)
    inside = (src_y >= 0) & (src_y < height) & (src_x >= 0) & (src_x < width)
    values = image[jnp.clip(src_y, 0, height - 1), jnp.clip(src_x, 0, width - 1)]
    return jnp.where(inside[..., None], values, 0)


def _rotate(image, degrees):
    height, width, _ = image.shape
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = jnp.cos(jnp.deg2rad(degrees)), jnp.sin(jnp.deg2rad(degrees))
    return _resample(image, lambda y, x: (cy + cos * (y - cy) + sin * (x - cx),
                                          cx - sin * (y - cy) + cos * (x - cx)))


def _sharpness(image, m):
    """Blends with the image smoothed by torchvision's [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
    kernel (border pixels kept)."""
    height, width, _ = image.shape
    neighbourhood = sum(image[dy:height - 2 + dy, dx:width - 2 + dx] for dy in range(3) for dx in range(3))
    smooth = image.at[1:-1, 1:-1].set((neighbourhood + 4 * image[1:-1, 1:-1]) / 13)
    return _blend(image, smooth, 1 + m)


def _levels(image):
    return jnp.round(image * 255).astype(jnp.int32)


def _posterize(image, bits):
    """Drops the low 8 - `bits` bits of each 8-bit level (subtracted from the image, so that 8
    bits returns it exactly)."""
    levels = _levels(image)
    dropped = levels - (levels & -jnp.left_shift(1, 8 - jnp.asarray(bits).astype(jnp.int32)))
    return jnp.clip(image - dropped.astype(jnp.float32) / 255, 0, 1)


def _autocontrast(image, _):
    low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
    flat = high <= low
    scale = jnp.where(flat, 1.0, 1.0 / jnp.where(flat, 1.0, high - low))
    return jnp.clip((image - jnp.where(flat, 0.0, low)) * scale, 0, 1)


def _equalize(image, _):
    """Histogram equalization of each channel's 8-bit levels, by PIL's and torchvision's rule."""
    def channel(values):
        levels = _levels(values)
        hist = jnp.bincount(levels.ravel(), length=256)
        step = (levels.size - hist[levels.max()]) // 255
        lut = (jnp.cumsum(hist) + step // 2) // jnp.maximum(step, 1)
        lut = jnp.clip(jnp.concatenate([jnp.zeros(1, lut.dtype), lut[:-1]]), 0, 255)
        return jnp.where(step == 0, values, lut[levels].astype(jnp.float32) / 255)

    return jnp.stack([channel(image[..., c]) for c in range(image.shape[-1])], -1)


POLICY_OPS = {
    "identity": lambda image, m: image,
    "shear_x": lambda image, m: _resample(image, lambda y, x: (y, x + m * y)),
    "shear_y": lambda image, m: _resample(image, lambda y, x: (y + m * x, x)),
    "translate_x": lambda image, m: _resample(image, lambda y, x: (y, x - m)),
    "translate_y": lambda image, m: _resample(image, lambda y, x: (y - m, x)),
    "rotate": _rotate,
    "brightness": lambda image, m: _blend(image, 0.0, 1 + m),
    "color": lambda image, m: _blend(image, _gray(image)[..., None], 1 + m),
    "contrast": lambda image, m: _blend(image, _gray(image).mean(), 1 + m),
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": lambda image, m: jnp.where(image > m, 1 - image, image),
    "autocontrast": _autocontrast,
    "equalize": _equalize,
}
"""The ops of RandAugment and TrivialAugment: `fn(image, magnitude)` on one HWC float32 image in
[0, 1]. The magnitude is the op's own unit: a shear factor, pixels, degrees, an enhancement
`factor - 1`, posterize's bits, solarize's threshold (pixels above it are inverted); autocontrast
and equalize take none. Magnitude 0 is the identity for the geometric and enhancement ops; so are
8 bits for posterize and threshold 1 for solarize."""

_SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
           "contrast", "sharpness")


def policy_magnitudes(policy: str, num_bins: int, height: int, width: int) -> dict[str, jax.Array]:
    """Each op's magnitude at bins 0 .. num_bins - 1 (unsigned; the signed ops get a random sign),
    as torchvision's RandAugment ("randaugment") and TrivialAugmentWide ("trivialaugment")."""
    wide = policy == "trivialaugment"
    bins = jnp.arange(num_bins, dtype=jnp.float32)

    def up(top):
        return jnp.linspace(0.0, top, num_bins)

    enhance = up(0.99 if wide else 0.9)
    return {
        "identity": jnp.zeros(num_bins),
        "shear_x": up(0.99 if wide else 0.3), "shear_y": up(0.99 if wide else 0.3),
        "translate_x": up(32.0 if wide else 150 / 331 * width),
        "translate_y": up(32.0 if wide else 150 / 331 * height),
        "rotate": up(135.0 if wide else 30.0),
        "brightness": enhance, "color": enhance, "contrast": enhance, "sharpness": enhance,
        "posterize": 8 - jnp.round(bins / ((num_bins - 1) / (6 if wide else 4))),
        "solarize": jnp.linspace(1.0, 0.0, num_bins),
        "autocontrast": jnp.zeros(num_bins), "equalize": jnp.zeros(num_bins),
    }


def _policy(rng, images, policy: str, num_ops: int, magnitude: Optional[int], num_bins: int):
    """Applies `num_ops` ops drawn uniformly to each image, at bin `magnitude` or (None) at a
    uniformly drawn bin, each signed op with a random sign."""
    _check_images(images)
    names = tuple(POLICY_OPS)
    table = policy_magnitudes(policy, num_bins, *images.shape[1:3])
    table = jnp.stack([table[name] for name in names])
    signed = jnp.array([name in _SIGNED for name in names])
    branches = [POLICY_OPS[name] for name in names]

    def one(key, image):
        image = image.astype(jnp.float32)
        for op_key in jax.random.split(key, num_ops):
            key_op, key_bin, key_sign = jax.random.split(op_key, 3)
            op = jax.random.randint(key_op, (), 0, len(names))
            level = magnitude if magnitude is not None else jax.random.randint(key_bin, (), 0, num_bins)
            flip = signed[op] & jax.random.bernoulli(key_sign)
            image = lax.switch(op, branches, image, jnp.where(flip, -table[op, level], table[op, level]))
        return image

    return jax.vmap(one)(jax.random.split(rng, images.shape[0]), images).astype(images.dtype)


def randaugment(rng: jax.Array, images: jax.Array, num_ops: int = 2, magnitude: int = 9,
                num_bins: int = 31) -> jax.Array:
    """RandAugment: ``num_ops`` ops drawn uniformly for each image, all at bin ``magnitude`` of
    ``num_bins`` (torchvision's defaults 2, 9, 31)."""
    _check_policy(num_ops, magnitude, num_bins)
    return _policy(rng, images, "randaugment", num_ops, magnitude, num_bins)


def trivialaugment(rng: jax.Array, images: jax.Array, num_bins: int = 31) -> jax.Array:
    """TrivialAugment (torchvision's TrivialAugmentWide): one op for each image at a uniformly
    drawn bin of ``num_bins``."""
    _check_policy(1, 0, num_bins)
    return _policy(rng, images, "trivialaugment", 1, None, num_bins)


def _check_policy(num_ops: int, magnitude: int, num_bins: int) -> None:
    if num_bins < 2:
        raise ValueError(f"augmentation magnitude bins={num_bins}: use at least 2, e.g. 31")
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"RandAugment magnitude={magnitude}: use a bin in [0, {num_bins}), e.g. 9")
    if num_ops < 1:
        raise ValueError(f"RandAugment num_ops={num_ops}: use at least 1, e.g. 2")


AUGMENTATIONS = ("crop", "flip", "cutout", "random_resized_crop", "randaugment", "trivialaugment")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The augmentations of the train step and their settings, checked when built.

    Attributes:
      augment: augmentations in order, from crop, flip, cutout, random_resized_crop, randaugment,
        trivialaugment; empty for none.
      crop_padding: pixels a random crop may shift an image by (zero padding on each side).
      cutout_size: side of cutout's square, in pixels.
      resized_crop_scale: random_resized_crop's (min, max) fraction of the image area.
      resized_crop_ratio: random_resized_crop's (min, max) aspect ratio.
      randaugment_ops: RandAugment's ops per image.
      randaugment_magnitude: RandAugment's magnitude, a bin in [0, magnitude_bins).
      magnitude_bins: bins of RandAugment's and TrivialAugment's magnitudes.
    """
    augment: tuple[str, ...] = ()
    crop_padding: int = 4
    cutout_size: int = 8
    resized_crop_scale: tuple[float, float] = (0.08, 1.0)
    resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    magnitude_bins: int = 31

    def __post_init__(self):
        names = self.augment
        if isinstance(names, str):
            raise ValueError(f"augmentations are a sequence of names such as ['crop', 'flip'], got the string "
                             f"{names!r}")
        object.__setattr__(self, "augment", tuple(names))
        unknown = [name for name in names if name not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; valid names are {AUGMENTATIONS}")
        if len(set(names)) != len(names):
            raise ValueError(f"augmentation names repeat in {list(names)}; give each at most once")
        if "random_resized_crop" in names:
            _check_resized_crop(self.resized_crop_scale, self.resized_crop_ratio)
        if "randaugment" in names:
            _check_policy(self.randaugment_ops, self.randaugment_magnitude, self.magnitude_bins)
        if "trivialaugment" in names:
            _check_policy(1, 0, self.magnitude_bins)


def make_augment(names: Sequence[str], **settings) -> Optional[Augment]:
    """Composes the named augmentations in the order given; None when ``names`` is empty.

    ``settings`` are the other fields of ``AugmentConfig`` (which checks them): "crop"
    (``random_crop`` with ``crop_padding``), "flip" (``random_flip``), "cutout" (``cutout`` with
    ``cutout_size``), "random_resized_crop" (with ``resized_crop_scale`` and
    ``resized_crop_ratio``), "randaugment" (``randaugment_ops`` ops at bin
    ``randaugment_magnitude`` of ``magnitude_bins``) and "trivialaugment" (over
    ``magnitude_bins``). Each gets its own key split from ``rng``.
    """
    return build_augment(AugmentConfig(names, **settings))


def build_augment(config: AugmentConfig) -> Optional[Augment]:
    """The train step's augmentation function of ``config``; None when it names none."""
    if not config.augment:
        return None
    c = config
    by_name = {
        "crop": lambda rng, x: random_crop(rng, x, c.crop_padding),
        "flip": random_flip,
        "cutout": lambda rng, x: cutout(rng, x, c.cutout_size),
        "random_resized_crop": lambda rng, x: random_resized_crop(rng, x, c.resized_crop_scale,
                                                                  c.resized_crop_ratio),
        "randaugment": lambda rng, x: randaugment(rng, x, c.randaugment_ops, c.randaugment_magnitude,
                                                  c.magnitude_bins),
        "trivialaugment": lambda rng, x: trivialaugment(rng, x, c.magnitude_bins),
    }
    steps = [by_name[name] for name in c.augment]

    def augment(rng: jax.Array, images: jax.Array) -> jax.Array:
        for step, key in zip(steps, jax.random.split(rng, len(steps))):
            images = step(key, images)
        return images

    return augment
