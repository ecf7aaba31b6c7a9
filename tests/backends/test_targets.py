"""Target networks: built-in loading, offline failures, layer lookup, hooks, summaries, preprocessing split."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from dnd.backends.targets import TargetNetwork, load_target, resolve_device, split_preprocess, summarize
from dnd.config import TargetConfig, load_config
from dnd.errors import DnDError, ModelLoadError
from tests.helpers import ChannelMixer, to_tensor


def test_paper_config_without_hub_access_fails_fast_and_points_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    config = load_config("configs/resnet50_imagenet.yaml")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        load_target(config.target)
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "could not fetch the pretrained weights of resnet50" in message
    assert "configs/offline.yaml" in message


def test_unknown_network_and_missing_cifar_weights():
    with pytest.raises(DnDError, match=r"unknown target network 'resnet5O'.*closest: resnet50"):
        load_target(TargetConfig(name="resnet5O"))
    with pytest.raises(DnDError, match="set target.weights to a checkpoint"):
        load_target(TargetConfig(name="cifar_resnet20"))


def test_torchvision_network_from_a_local_checkpoint(tmp_path):
    torch.save(__import__("torchvision").models.resnet18(num_classes=1000).state_dict(), tmp_path / "r18.pth")
    network = load_target(TargetConfig(name="resnet18", weights=tmp_path / "r18.pth"))
    assert network.identity == {"name": "resnet18", "weights": str(tmp_path / "r18.pth")}
    assert network.preprocess(Image.new("RGB", (300, 260))).shape == (3, 224, 224)


def test_unknown_layer_lists_close_module_paths():
    module = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), nn.Flatten())
    network = TargetNetwork("tiny", module, to_tensor)
    with pytest.raises(DnDError) as error:
        network.layer("0.O")
    near = str(error.value).split("Closest module paths: ")[1].split(". ")[0].split(", ")
    assert {"0.0", "0.1"} <= set(near)
    with pytest.raises(DnDError, match=r"Closest module paths: 0, 1\."):
        network.layer("zzz")


def test_capture_stops_after_the_last_requested_layer():
    class Tail(nn.Module):
        calls = 0

        def forward(self, x):
            Tail.calls += 1
            return x

    network = TargetNetwork("net", nn.Sequential(nn.Conv2d(3, 2, 1), Tail()), to_tensor)
    outputs = network.capture(torch.rand(2, 3, 4, 4), ["0"])
    assert outputs["0"].shape == (2, 2, 4, 4)
    assert Tail.calls == 0


def test_summaries_by_output_rank():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    assert torch.equal(summarize(maps, "mean", "cls"), maps.mean(dim=(2, 3)))
    assert torch.equal(summarize(maps, "max", "cls"), maps[:, :, 1, 1])
    tokens = torch.rand(2, 5, 3)
    assert torch.equal(summarize(tokens, "mean", "cls"), tokens[:, 0])
    assert torch.allclose(summarize(tokens, "mean", "mean"), tokens.mean(dim=1))
    with pytest.raises(DnDError, match="cannot summarise"):
        summarize(torch.rand(2, 3, 4, 5, 6), "mean", "cls")


def test_preprocess_splits_into_view_and_tensorize():
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    compose = transforms.Compose([transforms.Resize(20), transforms.CenterCrop(16), transforms.ToTensor()])
    view, tensorize = split_preprocess(compose)
    assert view(image).size == (16, 16)
    assert torch.equal(tensorize(view(image)), compose(image))
    weights = __import__("torchvision").models.get_model_weights("resnet18").DEFAULT.transforms()
    view, tensorize = split_preprocess(weights)
    assert view(image).size == (224, 224)
    assert torch.allclose(tensorize(view(image)), weights(image))
    view, tensorize = split_preprocess(to_tensor)
    assert view(image) is image


def test_describe_layers_gives_output_shapes():
    network = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    rows = network.describe_layers(Image.new("RGB", (6, 5)))
    assert rows == [("conv", "Conv2d", "2 × 5 × 6"), ("head", "Linear", "3")]


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(DnDError, match="not valid"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DnDError, match="CUDA is not available"):
            resolve_device("cuda")
