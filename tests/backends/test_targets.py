"""Built-in target networks: identities for cache keys, torchvision weights versions, checkpoints, offline failures."""

from __future__ import annotations

import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from dnd.activations import load_activations
from dnd.backends.targets import load_target, target_identity, torchvision_weights
from dnd.cli import app
from dnd.config import TargetConfig, load_config
from dnd.errors import DnDError, ModelLoadError
from dnd.pipeline import Pipeline
from tests.helpers import make_config, write_cifar_config, write_images


def test_paper_config_without_hub_access_fails_fast_and_points_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    config = load_config("configs/resnet50_imagenet.yaml")
    with pytest.raises(ModelLoadError) as error:
        load_target(config.target)
    assert (no_network.connections, no_network.slept_s) == (1, 0)  # one try, no retries with backoff
    message = str(error.value)
    assert "could not fetch the pretrained weights of resnet50 (ResNet50_Weights.IMAGENET1K_V1" in message
    assert "resnet50-0676ba61.pth" in message  # the V1 file, not DEFAULT's resnet50-11ad3fa6.pth (V2)
    assert "configs/offline.yaml" in message


def test_paper_config_resolves_to_imagenet1k_v1_without_downloading(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    paper = load_config("configs/resnet50_imagenet.yaml").target
    weights = torchvision_weights(paper)
    assert (type(weights).__name__, weights.name) == ("ResNet50_Weights", "IMAGENET1K_V1")
    assert weights.url.endswith("/resnet50-0676ba61.pth")
    assert weights.transforms().resize_size == [256]  # V2 resizes to 232 first
    assert target_identity(paper) == {"name": "resnet50", "weights": None, "weights_version": "IMAGENET1K_V1"}
    # Unset means torchvision's DEFAULT, keyed by the member it points to; the full enum name works too.
    default = TargetConfig(name="resnet50")
    assert torchvision_weights(default).url.endswith("/resnet50-11ad3fa6.pth")
    assert target_identity(default)["weights_version"] == "IMAGENET1K_V2"
    resnet152 = TargetConfig(name="resnet152", weights_version="ResNet152_Weights.IMAGENET1K_V1")
    assert torchvision_weights(resnet152).url.endswith("/resnet152-394f9c45.pth")
    assert not list(tmp_path.rglob("*.pth"))


def test_weights_options_are_checked_before_loading():
    with pytest.raises(DnDError, match=r"'IMAGENET_V3' is not a weights version of resnet50; .*IMAGENET1K_V1, "):
        target_identity(TargetConfig(name="resnet50", weights_version="IMAGENET_V3"))
    with pytest.raises(DnDError, match="target.weights_version applies to torchvision networks, not to cifar_resnet20"):
        load_target(TargetConfig(name="cifar_resnet20", weights_version="IMAGENET1K_V1"))
    with pytest.raises(DnDError, match="target.num_classes applies to torchvision networks"):
        target_identity(TargetConfig(name="efficientnet_lite0", num_classes=10))
    with pytest.raises(DnDError, match="the pretrained resnet18 weights .* have 1000 classes"):
        load_target(TargetConfig(name="resnet18", num_classes=365))
    # Networks that take neither option keep the identity (and so the cache keys) they had before the options.
    assert target_identity(TargetConfig(name="cifar_resnet20", weights="w.th")) == {
        "name": "cifar_resnet20",
        "weights": "w.th",
    }


def test_places365_config_names_the_checkpoint_and_the_v1_preprocessing():
    places = load_config("configs/resnet18_places365.yaml").target
    assert target_identity(places) == {
        "name": "resnet18",
        "weights": "data/resnet18_places365.pth.tar",
        "weights_version": "IMAGENET1K_V1",
    }
    preprocess = torchvision_weights(places).transforms()
    assert (preprocess.resize_size, preprocess.crop_size, preprocess.mean) == ([256], [224], [0.485, 0.456, 0.406])


def places365_checkpoint(path, classes: int = 365):
    """A randomly initialised ResNet-18 saved as the Places365 release is: under "state_dict", "module." prefixes."""
    module = torchvision.models.resnet18(num_classes=classes)
    torch.save(
        {"epoch": 90, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}},
        path,
    )
    return module


def test_places365_checkpoint_loads_with_its_classes_and_records_a_layer(tmp_path):
    original = places365_checkpoint(tmp_path / "resnet18_places365.pth.tar")
    config = TargetConfig(name="resnet18", weights=tmp_path / "resnet18_places365.pth.tar")
    network = load_target(config)
    assert network.module.fc.out_features == 365
    assert torch.equal(network.module.layer4[1].conv2.weight, original.layer4[1].conv2.weight)
    assert network.identity["weights_version"] == "IMAGENET1K_V1"  # the preprocessing: resize 256, crop 224
    assert load_target(config.model_copy(update={"num_classes": 365})).module.fc.out_features == 365

    write_images(tmp_path / "probe", 3, size=40)
    run = make_config(tmp_path, tmp_path / "probe", "target.name=resnet18", f"target.weights={config.weights}")
    stage_dir = Pipeline(run).run_until("record", ["fc", "layer4"])
    logits, _ = load_activations(stage_dir["fc"])
    assert logits.shape == (3, 365)
    image = Image.open(tmp_path / "probe" / "img001.png").convert("RGB")
    with torch.no_grad():
        expected = original.eval()(network.preprocess(image)[None])[0]
    torch.testing.assert_close(logits[1].float(), expected, rtol=1e-3, atol=1e-3)  # stored in float16
    assert load_activations(stage_dir["layer4"])[0].shape == (3, 512)


def test_a_checkpoint_that_does_not_fit_names_expected_and_found_shapes(tmp_path):
    places365_checkpoint(tmp_path / "places.pth.tar")
    with pytest.raises(ModelLoadError) as error:
        load_target(TargetConfig(name="resnet18", weights=tmp_path / "places.pth.tar", num_classes=1000))
    assert str(error.value) == (
        f"{tmp_path / 'places.pth.tar'} does not fit resnet18 with 1000 classes: fc.weight: expected [1000, 512], "
        f"found [365, 512]; fc.bias: expected [1000], found [365]. Set target.name to the architecture the checkpoint "
        f"was saved from and target.num_classes to its number of classes."
    )
    with pytest.raises(
        ModelLoadError, match=r"does not fit resnet34 with 1000 classes: fc.weight: .*; 80 missing key\(s\): layer1.2"
    ):
        load_target(TargetConfig(name="resnet34", weights=tmp_path / "places.pth.tar"))
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"model.pt cannot be read as a state dict .*torch.save\(model.state_dict"):
        load_target(TargetConfig(name="resnet18", weights=tmp_path / "model.pt"))
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        load_target(TargetConfig(name="resnet18", weights=tmp_path / "absent.pth"))


def test_a_checkpoint_that_does_not_fit_exits_2_from_the_cli(tmp_path):
    places365_checkpoint(tmp_path / "places.pth.tar")
    config = write_cifar_config(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "run",
            "record",
            "-c",
            str(config),
            "-l",
            "layer4",
            "--set",
            "target.name=resnet18",
            "--set",
            f"target.weights={tmp_path / 'places.pth.tar'}",
            "--set",
            "target.num_classes=10",
        ],
    )
    assert result.exit_code == 2
    assert "fc.weight: expected [10, 512], found [365, 512]" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_unknown_network_and_missing_cifar_weights():
    with pytest.raises(DnDError, match=r"unknown target network 'resnet5O'.*closest: resnet50"):
        load_target(TargetConfig(name="resnet5O"))
    with pytest.raises(DnDError, match="set target.weights to a checkpoint"):
        load_target(TargetConfig(name="cifar_resnet20"))


def test_torchvision_network_from_a_local_checkpoint(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "r18.pth")
    network = load_target(TargetConfig(name="resnet18", weights=tmp_path / "r18.pth"))
    assert network.identity == {
        "name": "resnet18",
        "weights": str(tmp_path / "r18.pth"),
        "weights_version": "IMAGENET1K_V1",
    }
    assert network.preprocess(Image.new("RGB", (300, 260))).shape == (3, 224, 224)
