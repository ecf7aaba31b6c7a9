"""The preprocessing a target network's weights expect, split into the geometry (the image as the network sees it)
and the tensor conversion, so crops and pictures can be drawn on the view."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

#: A network's preprocessing: a PIL image in, its input tensor ``[3, H, W]`` out.
Preprocess = Callable[[Image.Image], torch.Tensor]

_GEOMETRIC = ("Resize", "CenterCrop")


def split_preprocess(preprocess: Preprocess) -> tuple[Callable[[Image.Image], Image.Image], Preprocess]:
    """Split preprocessing into ``(view, tensorize)``: geometry on PIL images, then tensor conversion.

    Understands torchvision ``Compose`` pipelines (leading Resize / CenterCrop steps are the view) and the
    ``ImageClassification`` presets of torchvision weights; anything else is all tensorize, with an identity view.
    """
    from torchvision import transforms
    from torchvision.transforms._presets import ImageClassification

    if isinstance(preprocess, ImageClassification):
        view = transforms.Compose(
            [
                transforms.Resize(preprocess.resize_size, preprocess.interpolation, antialias=preprocess.antialias),
                transforms.CenterCrop(preprocess.crop_size),
            ]
        )
        tensorize = transforms.Compose(
            [
                transforms.PILToTensor(),
                transforms.ConvertImageDtype(torch.float),
                transforms.Normalize(preprocess.mean, preprocess.std),
            ]
        )
        return view, tensorize
    if isinstance(preprocess, transforms.Compose):
        steps = list(preprocess.transforms)
        split = next((i for i, step in enumerate(steps) if type(step).__name__ not in _GEOMETRIC), len(steps))
        return transforms.Compose(steps[:split]), transforms.Compose(steps[split:])
    return _identity, preprocess


def _identity(image: Image.Image) -> Image.Image:
    return image
