"""The multilayer-perceptron baseline, and ``MLPHead``: the dense classifier every small zoo model ends in."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import ops
from cnn_jax.layers import Dropout, Normalize
from cnn_jax.models.registry import register
from cnn_jax.ops.checks import check_images

Array = jnp.ndarray
Dtype = Any

# MNIST pixel statistics (as torchvision's MNIST examples normalize); one value, so any channel count works.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
POOLS = ("flatten", "average")


class MLPHead(nn.Module):
    """Flatten (or global-average-pool) -> [Dense -> activation] per ``hidden`` width -> Dense logits.

    Dropout(``dropout``) acts between hidden layers and before the output layer, where Caffe's AlexNet and
    the Keras MNIST MLP and convnet examples put it; the features entering the first hidden layer are kept whole.
    Computes in ``dtype`` and returns float32 logits.
    """
    num_classes: int
    hidden: Sequence[int] = ()
    dropout: float = 0.0
    pool: str = "flatten"
    activation: Callable[[Array], Array] = nn.relu
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.pool not in POOLS:
            raise ValueError(f"unknown head pool {self.pool!r}: use one of {POOLS}")
        x = x.reshape(x.shape[0], -1) if self.pool == "flatten" else ops.global_avg_pool(x)
        drop = Dropout(self.dropout, deterministic=not train)
        for i, width in enumerate(self.hidden):
            if i:
                x = drop(x)
            x = self.activation(nn.Dense(width, dtype=self.dtype, name=f"hidden{i + 1}")(x))
        x = drop(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)


class MLP(nn.Module):
    """The Keras ``mnist_mlp`` example: flatten -> Dense 512 -> ReLU -> Dense 512 -> ReLU -> Dense, dropout 0.2.

    669,706 params on 28x28x1 with 10 classes. It has no convolution, so the "features" it sows (for
    saliency tools that want a spatial map) is the normalized image itself.
    """
    min_size: ClassVar[int] = 1
    num_classes: int
    hidden: Sequence[int] = (512, 512)
    dropout: float = 0.2
    dtype: Dtype = jnp.float32
    mean: Sequence[float] = MNIST_MEAN
    std: Sequence[float] = MNIST_STD

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_images(x, "mlp", self.min_size)
        x = Normalize(self.mean, self.std)(x).astype(self.dtype)
        self.sow("intermediates", "features", x)
        return MLPHead(self.num_classes, self.hidden, self.dropout, dtype=self.dtype, name="head")(x, train)


@register("mlp", input_shape=(28, 28, 1), min_size=MLP.min_size)
def build_mlp(num_classes: int, **kwargs) -> MLP:
    """MLP baseline (Keras mnist_mlp): two hidden layers of 512 ReLUs with dropout 0.2; any input size."""
    return MLP(num_classes, **kwargs)
