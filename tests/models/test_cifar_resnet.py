"""CIFAR-10 ResNets: shapes, documented layer paths, option-A shortcuts, checkpoint loading, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dnd.errors import ModelLoadError
from dnd.models.cifar_resnet import IMAGENET_MEAN, IMAGENET_STD, cifar_preprocess, cifar_resnet

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CHECKPOINTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}


@pytest.mark.parametrize("depth, blocks", [(20, 3), (56, 9)])
def test_output_shape_and_layer_paths(depth: int, blocks: int) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(depth)
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    names = dict(model.named_modules())
    last = blocks - 1
    for name in [
        "conv1",
        "bn1",
        "layer1",
        "layer2",
        "layer3",
        "pool",
        "fc",
        "layer1.0.conv1",
        f"layer3.{last}.conv2",
        f"layer3.{last}.bn2",
    ]:
        assert name in names, name
    assert f"layer3.{blocks}" not in names


def test_option_a_shortcut_has_no_parameters_and_right_shapes() -> None:
    torch.manual_seed(0)
    model = cifar_resnet(20)
    assert sum(p.numel() for p in model.parameters()) == 269_722  # He et al.: 0.27M
    x = torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        shortcut = model.layer2[0].shortcut(x)
        assert model.layer2[0](x).shape == shortcut.shape == (1, 32, 16, 16)
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert not shortcut[:, :8].any() and not shortcut[:, 24:].any()


@pytest.mark.parametrize("depth", [0, 2, 21, 57])
def test_wrong_depth_is_rejected(depth: int) -> None:
    with pytest.raises(ValueError, match="6n"):
        cifar_resnet(depth)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        cifar_resnet(20, tmp_path / "absent.th")


def test_preprocess_gives_normalised_tensor() -> None:
    tensor = cifar_preprocess()(Image.new("RGB", (32, 32), (0, 0, 0)))
    assert tensor.shape == (3, 32, 32)
    assert tensor[0, 0, 0].item() == pytest.approx(-0.485 / 0.229)


def test_preprocess_leaves_cifar_images_as_they_are_and_fits_others_to_32_pixels() -> None:
    cifar = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(cifar_preprocess()(cifar), plain(cifar))
    assert cifar_preprocess()(Image.new("RGB", (120, 80), (9, 9, 9))).shape == (3, 32, 32)


@pytest.mark.shared
@pytest.mark.parametrize("depth", [20, 56])
def test_published_checkpoints_load_strictly(depth: int) -> None:
    path = SHARED / "models" / CHECKPOINTS[depth]
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared is not beside this checkout)")
    model = cifar_resnet(depth, path)  # strict=True inside
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.layer3[-1].conv2.weight, state[f"module.layer3.{(depth - 2) // 6 - 1}.conv2.weight"])
    other = 56 if depth == 20 else 20
    with pytest.raises(ModelLoadError, match=rf"does not fit CIFAR ResNet-{other}: .*(missing|unexpected) key"):
        cifar_resnet(other, path)
