"""`dnd describe` at scale, in subprocesses: under torchrun with two ranks, killed with SIGKILL inside its long stages,
and twice at once on one output folder. Each ends with the artifacts of one uninterrupted single-process run.

Backends (tests/describe_runs.py): a random-weight CIFAR ResNet-20 as the target, the offline presets' stand-ins
(EfficientNet-Lite0 class-name captions, retrieval from CIFAR-10 images ranked with MiniLM, EfficientNet-Lite0
features for stage 6), and concepts from a scripted OpenAI-compatible server whose answers depend only on each
request's content.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.backends.openai_server import serve
from tests.describe_runs import (
    LAYER,
    artifacts,
    cifar_pool,
    counts,
    describe_command,
    environment,
    offline_config,
    run_describe,
    scripted_answer,
    skip_without_offline_models,
    stage_folder,
)

NEURONS = "0-15"
IMAGES = 400
POOL_IMAGES = 24
#: Sized so that each long stage runs for a second or more on an idle machine, with many resumable pieces.
SECTIONS = {
    "probe": {"batch_size": 20},
    "record": {"top_k": 4, "shard_size": 40},
    "crop": {"exemplars": 4, "neurons_per_batch": 2, "batch_size": 8},
    "summarize": {"requests_per_call": 4},
    "score": {"batch_size": 4},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The server, a config, and the artifacts and counts of one uninterrupted single-process run."""
    skip_without_offline_models()
    root = tmp_path_factory.mktemp("scale")
    pool = cifar_pool(root / "pool", POOL_IMAGES)
    with serve(responder=scripted_answer, delay=0.05) as server:
        config = offline_config(root / "reference", server.base_url, pool, images=IMAGES, **SECTIONS)
        run_describe(config, NEURONS)
        layer_dir = root / "reference" / "outputs" / "cli" / LAYER
        requests = len(server.received)
        yield server, config, artifacts(layer_dir), counts(layer_dir), requests


def elsewhere(config: Path, folder: Path) -> Path:
    """``config`` writing to ``folder/outputs`` instead (same network, probe and models, so the same keys)."""
    data = yaml.safe_load(config.read_text())
    data["output_dir"] = str(folder / "outputs")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    return folder / "config.yaml"


def assert_same_artifacts(ours: Any, theirs: Any, where: str = "") -> None:
    """Equal, except floats, which may differ in their last bits where processes reduce in another order."""
    if isinstance(ours, float) and isinstance(theirs, float):
        assert math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-6), where
    elif isinstance(ours, dict) and isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            assert_same_artifacts(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same_artifacts(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


def test_two_processes_under_torchrun_give_the_single_process_artifacts(setup, tmp_path):
    _server, config, reference, reference_counts, _ = setup
    config = elsewhere(config, tmp_path)
    run_describe(config, NEURONS, processes=2)
    layer_dir = tmp_path / "outputs" / "cli" / LAYER
    assert_same_artifacts(artifacts(layer_dir), reference)
    # ...made by the offline stand-ins: class-name captions, and retrieval from the pool instead of generation.
    assert reference["caption"]["captioner"].startswith("classifier:efficientnet_lite0")
    assert reference["synthesize"]["generator"].startswith("retrieval:pool=")
    split = counts(layer_dir)
    # The work was split, not repeated: each rank ran its own target pass, and the totals are one run's.
    assert split["score"]["target_passes"] == 2 and reference_counts["score"]["target_passes"] == 1
    assert split["record"]["images_recorded"] == IMAGES
    for stage, name in (("caption", "captioned"), ("summarize", "llm_requests"), ("synthesize", "images_generated")):
        assert split[stage][name] == reference_counts[stage][name], (stage, name)
    assert split["crop"]["neuron_batches"] == reference_counts["crop"]["neuron_batches"] == 8


def kill_when(command: list[str], ready: Callable[[int], bool], timeout: float = 120) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready(pid)`` (``pid``: the started process's); fail if it ends
    first."""
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready(process.pid):
        assert process.poll() is None, f"the run ended before the kill point: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def finished(layer_dir: Path, stage: str) -> bool:
    return any((folder / "artifact.json").is_file() for folder in files(layer_dir, f"{stage}-*"))


def test_killed_inside_record_crop_and_summarize_it_resumes_without_redoing_finished_work(setup, tmp_path):
    server, config, reference, reference_counts, _ = setup
    config = elsewhere(config, tmp_path)
    layer_dir = tmp_path / "outputs" / "cli" / LAYER
    command = describe_command(config, NEURONS)

    def partial_files(stage: str, pattern: str) -> list[Path]:
        return [path for folder in files(layer_dir, f".{stage}-*.partial") for path in files(folder, pattern)]

    # 1. Killed inside record, with some shards written.
    kill_when(command, lambda _pid: len(partial_files("record", "part-*")) >= 3)
    shards = partial_files("record", "part-*")
    assert not finished(layer_dir, "record") and len(shards) < IMAGES // 40
    recorded = sum(int(p.stem.split("-")[2]) - int(p.stem.split("-")[1]) for p in shards)
    # 2. Killed inside crop, with some neuron batches kept.
    kill_when(command, lambda _pid: len(partial_files("crop", "neurons-*")) >= 2)
    batches = len(partial_files("crop", "neurons-*"))
    assert finished(layer_dir, "record") and not finished(layer_dir, "crop") and batches < 8
    record_counts = counts_of(layer_dir, "record")
    assert record_counts["shards_resumed"] == len(shards)
    assert record_counts["images_recorded"] == IMAGES - recorded  # finished shards were not recorded again
    # 3. Killed inside summarize, with some LLM replies cached.
    llm_cache = tmp_path / "outputs" / "cache" / "llm"
    before = len(server.received)
    kill_when(command, lambda _pid: len(files(llm_cache, "*/*.json")) >= 8)
    replies = len(files(llm_cache, "*/*.json"))
    assert finished(layer_dir, "caption") and not finished(layer_dir, "summarize")
    crop_counts = counts_of(layer_dir, "crop")
    assert (crop_counts["neuron_batches_resumed"], crop_counts["neuron_batches"]) == (batches, 8 - batches)
    # 4. The last run completes; every cached reply is reused, every other request asked once.
    during_kill = len(server.received) - before
    run_describe(config, NEURONS)
    summarize_counts = counts_of(layer_dir, "summarize")
    assert summarize_counts["cache_hits"] == replies
    assert summarize_counts["llm_requests"] == reference_counts["summarize"]["llm_requests"] - replies
    assert during_kill >= replies  # the killed run asked at least what it kept
    assert_same_artifacts(artifacts(layer_dir), reference)


def processes_of(config: Path) -> list[int]:
    """The pids of every process whose command line names ``config``: a run's main process, and its forked
    DataLoader workers (same command line), wherever they were reparented."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(config).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux)."""
    try:
        return [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads processes from /proc (Linux)")
def test_killed_while_its_workers_run_no_process_stays_and_the_rerun_starts_at_once(setup, tmp_path):
    _server, config, reference, _, _ = setup
    data = yaml.safe_load(elsewhere(config, tmp_path).read_text())
    data["probe"]["num_workers"] = 2  # an execution detail: the same keys, so the same artifacts as the reference
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    layer_dir = tmp_path / "outputs" / "cli" / LAYER
    command = describe_command(config, NEURONS)

    def workers_running_in(stage: str, pattern: str) -> Callable[[int], bool]:
        def ready(pid: int) -> bool:
            partial = [path for folder in files(layer_dir, f".{stage}-*.partial") for path in files(folder, pattern)]
            return len(children_of(pid)) >= 2 and len(partial) >= 1

        return ready

    for stage, pattern in (("record", "part-*"), ("crop", "neurons-*")):
        kill_when(command, workers_running_in(stage, pattern))
        deadline = time.monotonic() + 10
        while processes_of(config) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_of(config) == [], f"processes of the killed run outlived it by 10 s (killed in {stage})"
        assert not finished(layer_dir, stage), f"{stage} finished before the kill"
    # The run folder is free at once (no "in use by another run"), and the resumed run ends as an uninterrupted one.
    run_describe(config, NEURONS)
    assert_same_artifacts(artifacts(layer_dir), reference)


def counts_of(layer_dir: Path, stage: str) -> dict[str, int]:
    return json.loads((stage_folder(layer_dir, stage) / "manifest.json").read_text())["counts"]


def test_two_runs_at_once_on_one_folder_end_correct_or_one_is_refused(setup, tmp_path):
    _server, config, reference, _, _ = setup
    config = elsewhere(config, tmp_path)
    command = describe_command(config, NEURONS)
    first, second = (
        subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    )
    outcomes = [(process.wait(timeout=300), process.stderr.read()) for process in (first, second)]
    refused = [stderr for code, stderr in outcomes if code != 0]
    assert all(code in (0, 2) for code, _ in outcomes) and len(refused) <= 1, outcomes
    for stderr in refused:
        assert "is in use by another run (pid" in stderr and "Wait for it to finish" in stderr, stderr
    run_describe(config, NEURONS)  # the refused one, again: it finds everything done
    assert_same_artifacts(artifacts(tmp_path / "outputs" / "cli" / LAYER), reference)
