"""Splitting a network's preprocessing into the view (geometry) and the tensor conversion."""

from __future__ import annotations

import torch
import torchvision
from PIL import Image
from torchvision import transforms

from dnd.backends.preprocess import split_preprocess
from tests.helpers import to_tensor


def test_preprocess_splits_into_view_and_tensorize():
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    compose = transforms.Compose([transforms.Resize(20), transforms.CenterCrop(16), transforms.ToTensor()])
    view, tensorize = split_preprocess(compose)
    assert view(image).size == (16, 16)
    assert torch.equal(tensorize(view(image)), compose(image))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT.transforms()
    view, tensorize = split_preprocess(weights)
    assert view(image).size == (224, 224)
    assert torch.allclose(tensorize(view(image)), weights(image))
    view, tensorize = split_preprocess(to_tensor)
    assert view(image) is image
