"""The command line, end to end on a built-in network with random weights (no ../shared needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dnd.cli import app
from tests.helpers import write_cifar_config, write_decompression_bomb, write_images

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def cifar_config(tmp_path) -> Path:
    return write_cifar_config(tmp_path, layers=["layer3"], record={"top_k": 4})


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_run_record_then_status_is_fresh(cifar_config, tmp_path):
    result = invoke("run", "record", "--config", cifar_config)
    assert result.exit_code == 0, result.output
    assert "record     64 neurons over 12 images, top-4 each" in result.output
    folders = list((tmp_path / "outputs" / "cli" / "layer3").glob("record-*"))
    assert len(folders) == 1 and list((folders[0] / "activation-shards").glob("part-*.safetensors"))

    result = invoke("status", "--config", cifar_config)
    assert result.exit_code == 0, result.output
    assert "record" in result.output and "fresh" in result.output

    result = invoke("status", "--config", cifar_config, "--set", "record.summary=max")
    assert "stale" in result.output


def test_user_errors_exit_2_with_a_message(cifar_config, tmp_path):
    result = invoke("run", "record", "--config", cifar_config, "--layer", "layer9")
    assert result.exit_code == 2
    assert "layer 'layer9' not found in cifar_resnet20. Closest module paths:" in result.output
    assert "layer1" in result.output and "Traceback" not in result.output

    result = invoke("run", "record", "--config", cifar_config, "--set", "probe.batchsize=3")
    assert result.exit_code == 2 and "did you mean 'probe.batch_size'" in result.output

    result = invoke("run", "nope", "--config", cifar_config)
    assert result.exit_code == 2 and "unknown stage 'nope'" in result.output

    result = invoke("run", "record", "--config", cifar_config, "--set", f"probe.path={tmp_path / 'missing'}")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_corrupt_image_is_reported_not_fatal(cifar_config, tmp_path):
    (tmp_path / "probe" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = invoke("run", "record", "--config", cifar_config)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable image(s): broken.jpg" in result.output


def test_hostile_and_broken_files_are_named_with_their_reasons_and_the_rest_is_recorded(cifar_config, tmp_path):
    probe = tmp_path / "probe"
    bomb = write_decompression_bomb(probe / "bomb.png")
    assert bomb.stat().st_size < 2_000  # 900 million pixels claimed
    (probe / "empty.jpg").write_bytes(b"")
    (probe / "gone.jpg").symlink_to(tmp_path / "no-such-image.jpg")
    whole = (probe / "img000.png").read_bytes()
    Image.open(probe / "img000.png").save(probe / "truncated.jpg", quality=95)
    (probe / "truncated.jpg").write_bytes((probe / "truncated.jpg").read_bytes()[:300])

    # The images are decoded in worker processes, where the decompression bomb used to end the run.
    result = invoke("run", "record", "--config", cifar_config, "--set", "probe.num_workers=2")

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "record 64 neurons over 12 images, top-4 each" in output
    assert "skipped 4 unreadable image(s):" in output
    for name in ("bomb.png (too large to decode safely", "empty.jpg (empty file)", "gone.jpg (broken symbolic link"):
        assert name in output, output
    assert "truncated.jpg (" in output and "Traceback" not in output
    top = json.loads(next((tmp_path / "outputs" / "cli" / "layer3").glob("record-*/artifact.json")).read_text())
    reasons = {skipped["image_id"]: skipped["reason"] for skipped in top["skipped"]}
    assert sorted(reasons) == ["bomb.png", "empty.jpg", "gone.jpg", "truncated.jpg"]
    assert "downscale it, or leave it out" in reasons["bomb.png"]
    assert top["n_images"] == 12 and set(top["image_ids"]).isdisjoint(reasons)  # the 12 good images are used
    assert (probe / "img000.png").read_bytes() == whole


def test_layers_lists_module_paths_with_shapes(cifar_config):
    result = invoke("layers", "--config", cifar_config, "--contains", "layer3.2")
    assert result.exit_code == 0, result.output
    assert "layer3.2.conv2" in result.output and "64 × 8 × 8" in result.output


def test_force_on_some_neurons_keeps_the_others(tmp_path):
    config = write_cifar_config(tmp_path, layers=["layer3"], record={"top_k": 4}, stop_after="crop")
    result = invoke("describe", "--config", config, "--neurons", "0-7")
    assert result.exit_code == 0, result.output
    crop = next((tmp_path / "outputs" / "cli" / "layer3").glob("crop-*")) / "artifact.json"
    before = json.loads(crop.read_text())["neurons"]

    for args in (["run", "crop"], ["describe"]):
        result = invoke(*args, "--config", config, "--neurons", "0-3", "--force")
        assert result.exit_code == 0, result.output
        assert "crop       8 neurons (0 failed), with attention crops" in result.output
        assert json.loads(crop.read_text())["neurons"] == before


def test_help_texts_have_examples():
    for command in ("describe", "run", "status", "layers", "report"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example: dnd" in result.output


def test_paper_config_without_hub_access_fails_fast_naming_the_model(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    probe = tmp_path / "probe"
    write_images(probe, 2)
    result = invoke(
        "describe",
        "--config",
        ROOT / "configs/resnet50_imagenet.yaml",
        "--set",
        f"probe.path={probe}",
        "--set",
        f"output_dir={tmp_path / 'outputs'}",
    )
    assert (no_network.connections, no_network.slept_s) == (1, 0)  # one try, no retries with backoff
    assert result.exit_code == 2
    assert "could not fetch the pretrained weights of resnet50" in result.output
    assert "configs/offline.yaml" in result.output and "Traceback" not in result.output


LABEL_COMMANDS = {
    "compare": ["compare", "ours.csv", "theirs.csv"],
    "cosy": ["evaluate", "cosy", "ours.csv", "-c", "run.yaml", "-l", "layer3"],
    "classifiers": ["evaluate", "classifiers", "ours.csv", "-c", "run.yaml", "-l", "layer3", "--images", "set"],
    "simulation": ["evaluate", "simulation", "ours.csv", "-c", "run.yaml", "-l", "layer3"],
    "ablation": ["evaluate", "ablation", "ours.csv", "-c", "run.yaml", "-l", "layer3", "--images", "set"],
    "clip-dissect": ["clip-dissect", "-c", "run.yaml", "-l", "layer3", "--concepts", "concepts.txt"],
}
BAD_OUTS = {  # --out relative to tmp_path, and the error's fix
    "suffix": ("results.txt", "write results to a .csv"),
    "folder": ("folder.csv", "is a folder: give a file path"),
    "under a file": ("file.csv/results.csv", "is a file, not a folder"),
}


@pytest.fixture
def work_spy(monkeypatch) -> list[str]:
    """What a command started doing: reading a label set or a config, or building a text embedder."""
    import dnd.cli.spaces
    import dnd.compare.readers
    import dnd.config

    started: list[str] = []

    def spy(name: str):
        def called(*args, **kwargs):
            started.append(name)
            raise AssertionError(f"{name} was called before --out was checked")

        return called

    monkeypatch.setattr(dnd.compare.readers, "read_label_source", spy("read_label_source"))
    monkeypatch.setattr(dnd.config, "load_config", spy("load_config"))
    monkeypatch.setattr(dnd.cli.spaces, "embedders", spy("embedders"))
    return started


@pytest.mark.parametrize(
    ("command", "bad"),
    # clip-dissect writes its CSV under any name: only the other commands choose CSV or JSON by the suffix
    [(command, bad) for command in LABEL_COMMANDS for bad in BAD_OUTS if (command, bad) != ("clip-dissect", "suffix")],
)
def test_a_bad_out_fails_before_any_work(command, bad, tmp_path, work_spy):
    (tmp_path / "file.csv").write_text("")
    (tmp_path / "folder.csv").mkdir()
    out, fix = BAD_OUTS[bad]
    result = invoke(*LABEL_COMMANDS[command], "--out", tmp_path / out)
    assert result.exit_code == 2, result.output
    assert fix in " ".join(result.output.split()) and "Traceback" not in result.output
    assert work_spy == []  # no label set read, no config loaded, no embedder built


def test_out_may_name_folders_still_to_be_made_but_not_unwritable_ones(tmp_path, monkeypatch):
    from dnd.cli.options import check_out
    from dnd.errors import DnDError

    check_out(tmp_path / "new" / "deeper" / "results.csv", "neuron")
    check_out(tmp_path / "descriptions.txt")  # no suffix asked for
    assert not (tmp_path / "new").exists()  # checked, not made: a failed run leaves no folders behind

    monkeypatch.setattr("dnd.cli.options.os.access", lambda path, mode: False)
    with pytest.raises(DnDError, match=r"cannot write in .* choose a folder you can write to"):
        check_out(tmp_path / "new" / "results.csv", "neuron")
