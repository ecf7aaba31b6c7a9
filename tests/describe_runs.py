"""`dnd describe` in subprocesses on tiny real backends, for the tests of several processes, kills and locks.

The setup: the built-in cifar_resnet20 with random weights over random 32×32 images (``write_cifar_config``), tiny
random Stable Diffusion and CLIP folders, and captions (stage 3, the vision-LLM captioner) and concepts (stage 4)
from the scripted OpenAI-compatible server, whose answers are a function of each request's content (an image's
pixels, a prompt's messages), so they do not depend on the order in which processes ask. (A tiny random BLIP says the
same words for every image, which would leave stage 4 one concept to find.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import write_cifar_config
from tests.tiny_models import tiny_clip, tiny_stable_diffusion

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("record", "crop", "caption", "summarize", "synthesize", "score")
LAYER = "layer3"
LABELS = ("red dog", "green grass", "cat face", "striped fur", "blue sky", "wooden table", "dog ears", "grass field")
CAPTIONS = (
    "a red dog lying on green grass",
    "a cat face with striped fur",
    "a wooden table under a blue sky",
    "a dog with big ears in a field",
    "a close up of striped fur",
    "green grass in a wide field",
    "a bowl on a wooden table",
    "a cat sleeping in the grass",
)


def scripted_answer(body: dict[str, Any]) -> str:
    """The server's answer to a request, chosen by hashes of its content: a JSON list of captions for a captioning
    request (one per image, by its pixels), else a concept label (by the messages)."""
    images = [
        part["image_url"]["url"]
        for message in body["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]
    if images:
        return json.dumps([CAPTIONS[_hashed(image) % len(CAPTIONS)] for image in images])
    return LABELS[_hashed(json.dumps(body["messages"], sort_keys=True)) % len(LABELS)]


def _hashed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def tiny_config(folder: Path, server_url: str, models: Path, images: int = 12, **sections: dict) -> Path:
    """A config under ``folder`` running all six stages on the tiny backends in ``models`` (see :func:`tiny_models`)
    and the scripted server at ``server_url``; ``sections`` update the defaults here, section by section."""
    server = {"base_url": server_url, "model": "scripted", "concurrency": 4, "max_retries": 0}
    defaults: dict[str, dict] = {
        "record": {"top_k": 4},
        "crop": {"exemplars": 4, "neurons_per_batch": 4, "batch_size": 8},
        "caption": {"backend": "openai", "openai": server, "batch_size": 8},
        "summarize": {
            "backend": "openai",
            "openai": server,
            "n_summaries": 2,
            "requests_per_call": 8,
        },
        "synthesize": {"model": str(models / "sd"), "size": 32, "steps": 2, "images_per_concept": 2, "batch_size": 4},
        "score": {"batch_size": 8},
        "embed": {"clip_model": str(models / "clip")},
    }
    for name, values in sections.items():
        defaults[name] = {**defaults.get(name, {}), **values}
    return write_cifar_config(
        folder, images, layers=[LAYER], stop_after=None, prompts_dir=str(ROOT / "prompts"), **defaults
    )


def tiny_models(folder: Path) -> Path:
    """Tiny random Stable Diffusion and CLIP folders under ``folder``; returns it."""
    tiny_stable_diffusion(folder / "sd")
    tiny_clip(folder / "clip")
    return folder


def describe_command(config: Path, neurons: str, processes: int = 1) -> list[str]:
    """`dnd describe` in a new process, or under ``torchrun`` with ``processes`` ranks (gloo, on the CPU)."""
    describe = ["-m", "dnd", "describe", "--config", str(config), "--neurons", neurons]
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
