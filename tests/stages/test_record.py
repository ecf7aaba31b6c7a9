"""Stage 1 (record): summaries against hand computation, top-K, caching, resuming, unreadable images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnd.activations import load_activations
from dnd.artifacts import TopImages
from dnd.backends.target_network import TargetNetwork
from dnd.errors import DnDError
from dnd.pipeline import Pipeline
from tests.helpers import ChannelMixer, backends_for, make_config, to_tensor, write_images


def hand_summaries(folder: Path, summary: str) -> np.ndarray:
    """Per image: (red, green − blue) maps of ChannelMixer.conv, reduced by hand → ``[n_images, 2]``."""
    rows = []
    for path in sorted(folder.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        maps = [pixels[..., 0], pixels[..., 1] - pixels[..., 2]]
        rows.append([m.mean() if summary == "mean" else m.max() for m in maps])
    return np.array(rows)


#: The stored matrix is float16: about 3 significant digits (the top-K in the artifact stays float32).
FLOAT16 = {"rtol": 1e-3, "atol": 1e-3}


def record(pipeline: Pipeline, layer: str = "conv") -> tuple[TopImages, Path]:
    stage_dir = pipeline.run_until("record", [layer])[layer]
    return pipeline.store.load(layer, "record", pipeline.key("record", layer), TopImages), stage_dir


@pytest.mark.parametrize("summary", ["mean", "max"])
def test_summaries_match_hand_computation_and_topk(tmp_path, image_folder, mixer, summary):
    config = make_config(tmp_path, image_folder, f"record.summary={summary}", "record.top_k=3")
    top, stage_dir = record(Pipeline(config, backends_for(config, mixer)))

    activations, probe_indices = load_activations(stage_dir)
    expected = hand_summaries(image_folder, summary)
    np.testing.assert_allclose(activations.float().numpy(), expected, **FLOAT16)
    assert probe_indices.tolist() == list(range(12))
    assert (top.n_images, top.n_neurons, top.output_shape) == (12, 2, [2, 8, 8])

    rows = np.argsort(-expected, axis=0, kind="stable")[:3]  # highest first; ties (max of 1.0) lower row first
    for neuron in top.neurons:
        assert neuron.rows == rows[:, neuron.neuron].tolist()
        assert neuron.image_ids == [f"img{r:03d}.png" for r in neuron.rows]
        np.testing.assert_allclose(neuron.activations, expected[rows[:, neuron.neuron], neuron.neuron], rtol=1e-6)


def test_linear_and_token_layers(tmp_path, image_folder):
    class Tokens(torch.nn.Module):
        """Emits ``[B, 3 tokens, 2 features]``: token t = (t + mean pixel, −t)."""

        def forward(self, x):
            base = x.mean(dim=(1, 2, 3))[:, None]
            tokens = torch.arange(3.0)[None, :]
            return torch.stack([tokens + base, -tokens.expand_as(tokens + base)], dim=-1)

    net = TargetNetwork("tokens", torch.nn.Sequential(Tokens()), to_tensor)
    means = np.array([np.asarray(Image.open(p), dtype=np.float64).mean() / 255 for p in sorted(image_folder.iterdir())])
    cases = [("cls", np.stack([means, 0 * means], 1)), ("mean", np.stack([means + 1, -np.ones(12)], 1))]
    for tokens, expected in cases:
        config = make_config(tmp_path, image_folder, f"record.tokens={tokens}")
        _, stage_dir = record(Pipeline(config, backends_for(config, net)), layer="0")
        np.testing.assert_allclose(load_activations(stage_dir)[0].float().numpy(), expected, **FLOAT16)

    config = make_config(tmp_path, image_folder)
    top, _ = record(Pipeline(config, backends_for(config, TargetNetwork("mixer", ChannelMixer(), to_tensor))), "head")
    assert (top.n_neurons, top.output_shape) == (3, [3])


def test_second_run_does_no_forward_pass(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder)
    record(Pipeline(config, backends_for(config, mixer)))
    assert mixer.module.forward_calls == 3  # 12 images in batches of 4

    record(Pipeline(config, backends_for(config, mixer)))
    assert mixer.module.forward_calls == 3


def test_several_layers_share_one_pass(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder)
    folders = Pipeline(config, backends_for(config, mixer)).run_until("record", ["conv", "head"])
    assert mixer.module.forward_calls == 3
    assert all((folder / "artifact.json").is_file() for folder in folders.values())


def test_key_follows_results_not_execution_details(tmp_path, image_folder, mixer):
    def key(*overrides: str) -> str:
        config = make_config(tmp_path, image_folder, *overrides)
        return Pipeline(config, backends_for(config, mixer)).key("record", "conv")

    base = key()
    assert key("probe.batch_size=7") == base
    assert key("probe.num_workers=2") == base
    assert key("device=cpu") == base
    assert key("record.shard_size=5") == base
    assert key("record.shard_seconds=1") == base
    assert key("record.autocast=bfloat16") == base
    assert key("execution.memory_format=channels_last") == base
    assert key("execution.compile=true") == base
    assert key("record.summary=max") != base
    assert key("record.top_k=3") != base
    assert key("probe.limit=5") != base
    write_images(image_folder / "more", 1, seed=1)  # the probing set itself changes
    assert key() != base


def test_changed_weights_change_the_key(tmp_path, image_folder):
    config = make_config(tmp_path, image_folder)
    first = TargetNetwork("same-name", ChannelMixer(), to_tensor)
    second = TargetNetwork("same-name", ChannelMixer(), to_tensor)
    assert Pipeline(config, backends_for(config, first)).key("record", "conv") == Pipeline(
        config, backends_for(config, second)
    ).key("record", "conv")
    with torch.no_grad():
        second.module.conv.weight.mul_(2)
    second = TargetNetwork("same-name", second.module, to_tensor)
    assert Pipeline(config, backends_for(config, first)).key("record", "conv") != Pipeline(
        config, backends_for(config, second)
    ).key("record", "conv")


def test_killed_run_resumes_at_the_first_missing_shard(tmp_path, image_folder):
    config = make_config(tmp_path, image_folder, "record.shard_size=4", "probe.batch_size=2")
    dying = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    dying.module.fail_at_call = 5  # shards [0,4) and [4,8) are done (2 batches each), the third is not
    with pytest.raises(KeyboardInterrupt):
        record(Pipeline(config, backends_for(config, dying)))
    pipeline = Pipeline(config, backends_for(config, dying))
    assert pipeline.status("conv")[0][1] == "missing"

    survivor = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    top, stage_dir = record(Pipeline(config, backends_for(config, survivor)))
    assert survivor.module.forward_calls == 2  # only the last shard's two batches
    np.testing.assert_allclose(
        load_activations(stage_dir)[0].float().numpy(), hand_summaries(image_folder, "mean"), **FLOAT16
    )
    assert not any(p.name.endswith(".partial") for p in stage_dir.parent.iterdir())


def test_corrupt_images_are_skipped_and_counted(tmp_path, image_folder, mixer):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = Image.new("RGB", (8, 8), (10, 20, 30))
    good.save(image_folder / "truncated.jpg", quality=95)
    data = (image_folder / "truncated.jpg").read_bytes()
    (image_folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    config = make_config(tmp_path, image_folder)

    top, stage_dir = record(Pipeline(config, backends_for(config, mixer)))

    assert sorted(s.image_id for s in top.skipped) == ["broken.jpg", "truncated.jpg"]
    assert top.n_images == 12
    assert "broken.jpg" not in top.image_ids
    np.testing.assert_allclose(
        load_activations(stage_dir)[0].float().numpy(), hand_summaries(image_folder, "mean"), **FLOAT16
    )


def test_a_probe_with_no_readable_image_is_a_clear_error(tmp_path, mixer):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"junk")
    config = make_config(tmp_path, folder)
    with pytest.raises(DnDError, match="no readable image"):
        record(Pipeline(config, backends_for(config, mixer)))


def test_unknown_layer_lists_near_paths(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder)
    with pytest.raises(DnDError, match=r"layer 'cnv' not found in channel-mixer\. Closest module paths: conv"):
        record(Pipeline(config, backends_for(config, mixer)), layer="cnv")


def test_two_probe_folders_are_recorded_in_order(tmp_path, mixer):
    first, second = tmp_path / "imagenet" / "val", tmp_path / "broden" / "images"
    write_images(first, 3)
    write_images(second, 2, seed=5)
    config = make_config(tmp_path, first, f"probe.path=[{first},{second}]", "record.top_k=5")
    top, stage_dir = record(Pipeline(config, backends_for(config, mixer)))

    activations, _ = load_activations(stage_dir)
    expected = np.concatenate([hand_summaries(first, "mean"), hand_summaries(second, "mean")])
    np.testing.assert_allclose(activations.float().numpy(), expected, **FLOAT16)
    assert top.image_ids == [f"val/img00{i}.png" for i in range(3)] + [f"images/img00{i}.png" for i in range(2)]
    best = int(expected[:, 0].argmax())
    assert top.neurons[0].image_ids[0] == top.image_ids[best]


def test_shards_follow_time_and_size_and_the_top_k_does_not_depend_on_them(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder, "record.top_k=5")
    whole, _ = record(Pipeline(config, backends_for(config, mixer)))
    for overrides, shards in ((["record.shard_seconds=1e-9"], 3), (["record.shard_size=9"], 2)):
        config = make_config(tmp_path / str(shards) / overrides[0], image_folder, "record.top_k=5", *overrides)
        pipeline = Pipeline(config, backends_for(config, mixer))
        top, stage_dir = record(pipeline)
        assert len(list((stage_dir / "activation-shards").iterdir())) == shards  # batches of 4
        assert top == whole
        manifest = json.loads((stage_dir / "manifest.json").read_text())
        assert manifest["counts"]["shards_written"] == shards and manifest["counts"]["images_recorded"] == 12


def test_ties_go_to_the_lower_probe_index_however_the_probe_is_sharded(tmp_path):
    folder = tmp_path / "probe"
    write_images(folder, 10)
    dead = TargetNetwork("dead", torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU()), to_tensor)
    with torch.no_grad():
        dead.module[0].weight.fill_(-1.0)  # negative on every image: both neurons read 0 everywhere
        dead.module[0].bias.zero_()
    for shard_size in (10, 3):
        config = make_config(tmp_path / str(shard_size), folder, "record.top_k=4", f"record.shard_size={shard_size}")
        top, _ = record(Pipeline(config, backends_for(config, dead)), layer="1")
        assert [neuron.rows for neuron in top.neurons] == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_a_layer_added_later_records_only_what_it_lacks(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder, "record.shard_size=4")
    dying = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    dying.module.fail_at_call = 3  # conv has shards [0,4) and [4,8), then the run dies
    with pytest.raises(KeyboardInterrupt):
        record(Pipeline(config, backends_for(config, dying)))
    calls = mixer.module.forward_calls
    folders = Pipeline(config, backends_for(config, mixer)).run_until("record", ["conv", "head"])
    assert mixer.module.forward_calls - calls == 3  # [0,8) for head alone, [8,12) for both in one pass
    for layer in ("conv", "head"):
        activations, indices = load_activations(folders[layer])
        assert indices.tolist() == list(range(12))
    np.testing.assert_allclose(
        load_activations(folders["conv"])[0].float().numpy(), hand_summaries(image_folder, "mean"), **FLOAT16
    )


# --- units other than neurons ---------------------------------------------------------------------------------------


def red_green_sae(path: Path) -> Path:
    """An SAE on ChannelMixer.conv (features red, green − blue): latent 0 = relu(green − blue), latent 1 =
    relu(red − (green − blue)), latent 2 = relu(red − 0.5), the latent that fires on red."""
    from safetensors.torch import save_file

    weights = torch.tensor([[0.0, 1.0, 1.0], [1.0, -1.0, 0.0]])
    save_file({"W_enc": weights, "b_enc": torch.tensor([0.0, 0.0, -0.5])}, str(path))
    return path


def hand_latents(folder: Path) -> np.ndarray:
    """Per image: the spatial mean of each latent of :func:`red_green_sae`'s map, by hand → ``[n_images, 3]``."""
    rows = []
    for path in sorted(folder.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        red, green = pixels[..., 0], pixels[..., 1] - pixels[..., 2]
        latents = [np.maximum(green, 0), np.maximum(red - green, 0), np.maximum(red - 0.5, 0)]
        rows.append([latent.mean() for latent in latents])
    return np.array(rows)


def test_sae_latents_are_recorded_as_units(tmp_path, image_folder, mixer):
    neurons_config = make_config(tmp_path, image_folder, "record.top_k=3")
    neurons = Pipeline(neurons_config, backends_for(neurons_config, mixer))
    sae = red_green_sae(tmp_path / "sae.safetensors")
    config = make_config(tmp_path, image_folder, "record.top_k=3", f"units.sae={sae}")
    pipeline = Pipeline(config, backends_for(config, TargetNetwork("mixer", ChannelMixer(), to_tensor)))
    top, stage_dir = record(pipeline)

    expected = hand_latents(image_folder)
    np.testing.assert_allclose(load_activations(stage_dir)[0].float().numpy(), expected, **FLOAT16)
    assert (top.n_neurons, top.output_shape) == (3, [3, 8, 8])
    rows = np.argsort(-expected, axis=0, kind="stable")[:3]
    assert [unit.rows for unit in top.neurons] == rows.T.tolist()
    # The SAE file's hash is in stage 1's key; plain neurons keep a key without it (the key they always had).
    assert neurons.key_inputs("record", "conv")["extra"].keys() == {"probe", "target"}
    sae_hash = pipeline.backends.units.identity["sae"]
    assert pipeline.key_inputs("record", "conv")["extra"]["units"] == {"sae": sae_hash, "subtract_b_dec": False}
    assert pipeline.key("record", "conv") != neurons.key("record", "conv")


def test_units_of_another_width_stop_with_the_shapes(tmp_path, image_folder, mixer):
    directions = tmp_path / "directions.npy"
    np.save(directions, np.ones((4, 5), dtype=np.float32))
    config = make_config(tmp_path, image_folder, f"units.directions={directions}")
    with pytest.raises(DnDError, match=r"\(\[5, 4\]\) expects 5 features per position, but layer conv gives 2"):
        record(Pipeline(config, backends_for(config, mixer)))
