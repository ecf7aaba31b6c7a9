"""The stage store: stable keys, atomic stage folders, status, item cache."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from dnd.layout import ARTIFACT_FILE
from dnd.store import ItemCache, StageStore, content_key, write_model


class Thing(BaseModel):
    value: int


def test_content_key_is_stable_and_order_independent():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})
    assert len(content_key({})) == 16


def test_stage_folder_appears_only_when_complete(tmp_path):
    store = StageStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), store.writing("layer", "stage", "k1") as out:
        write_model(out / ARTIFACT_FILE, Thing(value=1))
        raise RuntimeError("boom")
    assert not store.stage_dir("layer", "stage", "k1").exists()
    assert store.status("layer", "stage", "k1") == "missing"

    with store.writing("layer", "stage", "k1") as out:
        write_model(out / ARTIFACT_FILE, Thing(value=2))
    assert store.load("layer", "stage", "k1", Thing).value == 2
    assert store.status("layer", "stage", "k1") == "fresh"
    assert store.status("layer", "stage", "k2") == "stale"
    assert not any((tmp_path / ".tmp").iterdir())


def test_a_stage_that_writes_no_artifact_is_not_stored(tmp_path):
    store = StageStore(tmp_path)
    with pytest.raises(RuntimeError, match="without writing artifact.json"), store.writing("l", "s", "k"):
        pass
    assert store.status("l", "s", "k") == "missing"


def test_item_cache_round_trip(tmp_path):
    cache = ItemCache(tmp_path, "captions")
    key = content_key({"image": "abc"})
    assert cache.get(key) is None
    cache.put(key, {"text": "a dog"})
    assert cache.get(key) == {"text": "a dog"}
    assert cache.path(key).parent.name == key[:2]


KILL_BETWEEN_THE_RENAMES = """
import os, signal, sys
from pathlib import Path
import dnd.store
from dnd.store import StageStore, write_model
from pydantic import BaseModel

class Thing(BaseModel):
    value: int

store = StageStore(Path(sys.argv[1]))
real_replace = os.replace

def replace_then_die(source, target):
    if Path(target).name == "stage-k1":  # the old folder is aside, the new one about to take its place
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)

dnd.store.os.replace = replace_then_die
with store.writing("layer", "stage", "k1") as out:
    write_model(out / "artifact.json", Thing(value=2))
"""


def test_a_stage_folder_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    import subprocess
    import sys

    store = StageStore(tmp_path)
    with store.writing("layer", "stage", "k1") as out:
        write_model(out / ARTIFACT_FILE, Thing(value=1))
    process = subprocess.run([sys.executable, "-c", KILL_BETWEEN_THE_RENAMES, str(tmp_path)], check=False)
    assert process.returncode == -9
    assert not store.stage_dir("layer", "stage", "k1").exists()  # lost, until the next run recovers it

    assert store.recover() == [store.stage_dir("layer", "stage", "k1")]
    assert store.load("layer", "stage", "k1", Thing).value == 1
    assert not any((tmp_path / ".tmp").iterdir())  # the half-written replacement is gone too
    assert store.recover() == []
