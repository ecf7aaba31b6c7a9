"""Config loading: YAML, --set overrides, and errors that name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnd.config import RunConfig, key_fields, load_config
from dnd.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.layers, "every shipped config names a default layer"


def test_overrides_reach_nested_keys_and_parse_values():
    config = load_config(CONFIGS / "offline.yaml", ["probe.batch_size=8", "record.summary=max", "probe.limit=null"])
    assert (config.probe.batch_size, config.record.summary, config.probe.limit) == (8, "max", None)
    assert config.target.name == "efficientnet_lite0"


def test_unknown_key_names_it_suggests_and_lists_allowed():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["probe.batchsize=8"])
    message = str(error.value)
    assert "unknown key 'probe.batchsize'" in message
    assert "did you mean 'probe.batch_size'" in message
    assert "allowed here: kind, path, split, limit, batch_size, num_workers" in message


def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("nmae: x\n")
    with pytest.raises(ConfigError, match=r"unknown key 'nmae' \(did you mean 'name'\?\)"):
        load_config(path)


def test_bad_value_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"record\.summary: Input should be 'mean' or 'max' \(got 'median'\)"):
        load_config(None, ["record.summary=median"])
    with pytest.raises(ConfigError, match=r"record\.top_k: Input should be greater than or equal to 1"):
        load_config(None, ["record.top_k=0"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="--set expects key.sub=value"):
        load_config(None, ["probe.batch_size"])
    with pytest.raises(ConfigError, match="record.summary is a value, not a section"):
        load_config(None, ["record.summary=mean", "record.summary.x=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_key_fields_drop_execution_details():
    fields = key_fields(RunConfig().probe)
    assert "batch_size" not in fields and "num_workers" not in fields
    assert fields["kind"] == "folder"
    assert "shard_size" not in key_fields(RunConfig().record)
    assert key_fields(RunConfig().execution) == {}  # GPU throughput options change no key
    assert not {"autocast", "shard_seconds"} & set(key_fields(RunConfig().record))
    assert not {"batch_size", "channels_last", "compile"} & set(key_fields(RunConfig().synthesize))
    assert "half_precision" not in key_fields(RunConfig().embed)


def test_the_fast_preset_changes_only_the_sampling_steps_of_the_paper_config():
    paper, fast = (load_config(CONFIGS / name) for name in ("resnet50_imagenet.yaml", "fast.yaml"))
    for section in ("target", "probe", "record", "crop", "caption", "summarize", "score", "embed"):
        assert key_fields(getattr(fast, section)) == key_fields(getattr(paper, section)), section
    assert key_fields(fast.synthesize) == {**key_fields(paper.synthesize), "steps": 20}
    assert paper.synthesize.steps == 50 and fast.synthesize.scheduler == "dpm_multistep"


@pytest.mark.parametrize(("value", "precision"), [("true", "float16"), ("false", "off"), ("bfloat16", "bfloat16")])
def test_autocast_names_a_precision_and_still_takes_a_switch(value, precision):
    assert load_config(None, [f"record.autocast={value}"]).record.autocast == precision
    with pytest.raises(ConfigError, match="record.autocast"):
        load_config(None, ["record.autocast=float8"])
