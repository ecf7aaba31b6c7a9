"""The CIFAR-10 ResNets of He et al. (2016, section 4.2): ResNet-20, -32, -44, -56, ... (depth 6n + 2).

A 3x3 stem with 16 channels, then three stages of ``n`` BasicBlocks with 16, 32 and 64 channels (the first
block of stages 2 and 3 halves the resolution), global average pooling and a linear classifier. Shortcuts that
change shape use "option A": subsample by 2 and zero-pad the new channels, so they have no parameters.

Module paths, as users type them as layer names: ``conv1``, ``bn1``, ``layer1`` ... ``layer3`` (each block
``layerK.i`` has ``conv1``, ``bn1``, ``conv2``, ``bn2``), ``pool``, ``fc`` (the output layer, named as in
torchvision's ResNets). They match the checkpoints published with Yerlan Idelbayev's CIFAR-10 ResNet training code
once its ``module.`` prefix is stripped and its classifier's ``linear.`` is read as ``fc.``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from dnd.models.checkpoints import fit_state_dict, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity (or option-A zero-padding) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.extra_channels = cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``n`` blocks per stage; ``forward`` maps ``(N, 3, 32, 32)`` to ``(N, num_classes)``."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout) for _ in range(n - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(x, 1))


def cifar_resnet(depth: int, weights: str | Path | None = None) -> nn.Module:
    """Build the CIFAR-10 ResNet of the given depth (20, 32, 44, 56, 110, ...) in eval mode.

    ``weights`` is a checkpoint file: either a plain state dict or a dict holding one under ``"state_dict"``,
    with or without the ``module.`` prefix that ``nn.DataParallel`` adds; its classifier may be named ``linear``
    (the published checkpoints) or ``fc``.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
    model = CifarResNet((depth - 2) // 6)
    if weights is not None:
        fix = "Set target.name to the checkpoint's depth (cifar_resnet20, cifar_resnet56, ...) or target.weights."
        state = {re.sub(r"^linear\.", "fc.", key): value for key, value in read_state_dict(weights).items()}
        fit_state_dict(model, state, str(weights), f"CIFAR ResNet-{depth}", fix)
    return model.eval()


def cifar_preprocess() -> transforms.Compose:
    """PIL image -> normalised tensor ``[3, 32, 32]`` (the checkpoints were trained on ImageNet mean/std inputs).

    CIFAR images pass through unchanged (PIL returns a same-size resize as a copy); any other image, such as one of a
    retrieval pool of photos, is resized and centre-cropped to 32x32 so that it can share a batch with them."""
    return transforms.Compose(
        [
            transforms.Resize(32),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
