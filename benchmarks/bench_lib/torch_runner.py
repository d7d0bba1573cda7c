"""PyTorch on the CPU, eager (framework "torch") and `torch.compile` ("torch_compile"): the references every
cnn_jax speed goal is stated against.

simple_cnn and resnet20 are written out here to mirror `cnn_jax/models/small_cnns.py` and
`resnet_cifar.py` layer for layer (their trainable-parameter counts are checked against cnn_jax's);
mobilenet_v2 and resnet50 are torchvision's, which cnn_jax's default variants follow. Tensors are
in PyTorch's default NCHW layout, the path users run; training is `zero_grad / cross_entropy /
backward / SGD.step`, inference `model.eval()` under `torch.inference_mode()`. "torch_compile" wraps the model in
`torch.compile` (inductor, its default backend, generating C++/OpenMP kernels on the CPU; AOTAutograd compiles the
backward), what a PyTorch user picks for speed; its first step compiles. `spec.dtype == "bfloat16"` runs the
forward pass and loss under `torch.autocast("cpu", torch.bfloat16)`: PyTorch's mixed precision, with float32
params and optimizer; convolutions and matmuls compute in bf16 (oneDNN's bf16 kernels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench_lib import LEARNING_RATE, MOMENTUM, SEED, RecordSpec, Runner, check_params, random_batch


class Normalize(nn.Module):
    """`(x - mean) / std` per channel, with constants: cnn_jax models normalize inside the model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class SimpleCNN(nn.Module):
    """cnn_jax's simple_cnn: normalize -> [conv 3x3 VALID -> 2x2 max pool -> ReLU] x (32, 64) -> flatten ->
    dropout 0.5 -> dense."""

    def __init__(self, spec: RecordSpec):
        super().__init__()
        height, width, channels = spec.input_shape
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(64 * _simple_cnn_side(height) * _simple_cnn_side(width), spec.num_classes)

    def forward(self, x):
        x = self.normalize(x)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.head(self.dropout(x.flatten(1)))


def _simple_cnn_side(size: int) -> int:
    """The feature map's side after simple_cnn's two (VALID 3x3 conv, 2x2 pool) stages."""
    return ((size - 2) // 2 - 2) // 2


def conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv (padding 1, no bias) -> BatchNorm: cnn_jax's ConvBN with padding_mode="symmetric"."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """cnn_jax's ResidualBlock with shortcut="pad": two ConvBNs plus the parameter-free option-A shortcut
    (subsample, then zero-pad the new channels evenly on both sides)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1, self.conv2 = conv_bn(in_channels, out_channels, stride), conv_bn(out_channels, out_channels, 1)
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        if self.stride != 1 or self.extra:
            x = x[:, :, ::self.stride, ::self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(y + x)


class ResNet20(nn.Module):
    """cnn_jax's resnet20: normalize -> ConvBN-ReLU 16 -> 3 stages of 3 basic blocks (16, 32, 64 filters; stages
    2 and 3 stride by 2) -> global average pool -> dense."""

    def __init__(self, spec: RecordSpec):
        super().__init__()
        layers, channels = [Normalize(spec.mean, spec.std), conv_bn(spec.input_shape[-1], 16, 1), nn.ReLU()], 16
        for stage, features in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(BasicBlock(channels, features, 2 if stage and not block else 1))
                channels = features
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, spec.num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def import_torchvision():
    """torchvision's model definitions. PyPI's torchvision==0.28.0 is a CUDA build whose compiled ops fail to load
    beside the CPU torch ("operator torchvision::nms does not exist") when it registers their fake (meta)
    implementations; the models are plain PyTorch and need none of those ops, so registration is skipped while
    torchvision is imported (as tests/test_pretrained.py does)."""
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    try:
        import torchvision
    finally:
        torch.library.register_fake = register_fake
    return torchvision


def make_model(spec: RecordSpec) -> nn.Module:
    """The model of `spec`, checked to have as many trainable parameters as cnn_jax's."""
    if spec.model == "simple_cnn":
        model = SimpleCNN(spec)
    elif spec.model == "resnet20":
        model = ResNet20(spec)
    else:
        model = getattr(import_torchvision().models, spec.model)(weights=None, num_classes=spec.num_classes)
    check_params(spec, sum(p.numel() for p in model.parameters() if p.requires_grad), type(model).__name__)
    return model


def build(spec: RecordSpec) -> Runner:
    torch.manual_seed(SEED)
    model = make_model(spec)
    images, labels = random_batch(spec)
    images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(labels).long()
    forward = torch.compile(model) if spec.framework == "torch_compile" else model
    def precision():
        return torch.autocast("cpu", torch.bfloat16, enabled=spec.dtype == "bfloat16")

    if spec.mode == "train":
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with precision():
                loss = F.cross_entropy(forward(images), labels)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), precision():
                forward(images)

    return Runner(step, lambda: None)
