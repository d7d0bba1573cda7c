"""The TensorFlow image ops that define the pixels a model sees: decoding, and resizing to the model's size.

The dataset readers (``cnn_jax.data``) and the SavedModel export's ``serving_bytes`` signature
(``cnn_jax.export.portable``) both build their graphs from these functions, so an image is resized the same way
in training and in serving. The module sits at the package root, beside ``files`` and ``caches``, so that an
export depends on these ops and not on a dataset reader. TensorFlow is passed in (``import_tensorflow``), never
imported here at module level: importing it costs seconds.
"""
from __future__ import annotations


def import_tensorflow():
    """TensorFlow, kept off the GPU (it is only a reader here; JAX owns the devices)."""
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised earlier by the caller; its devices are its business.
        pass
    return tf


def cover_and_center_crop(tf, image, size):
    """Keeps the aspect ratio: scales the image to cover ``size``, then crops the centre; uint8 out."""
    h, w = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    scale = tf.maximum(size[0] / h, size[1] / w)
    covering = tf.cast(tf.math.ceil(tf.stack([h * scale, w * scale])), tf.int32)
    resized = tf.image.resize(image, covering, method="bilinear", antialias=True)
    cropped = tf.image.resize_with_crop_or_pad(resized, size[0], size[1])
    return tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)


def decode_and_resize(tf, contents, size, channels: int):
    """An encoded JPEG, PNG, GIF (first frame), BMP or WebP image as uint8 (``size``, ``channels``)."""
    image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
    return cover_and_center_crop(tf, image, size)
