"""cnn_jax: convolutional neural networks in JAX and Flax Linen."""
__version__ = "0.1.0"
