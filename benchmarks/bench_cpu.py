"""The fast CPU path: forward throughput of EfficientNet-Lite0 with and without the tuning of :mod:`dnd.cpu`.

Malloc settings belong to a whole process, so each variant runs in its own fresh process (this module run as a
script), and the variants take turns, best of ``REPEATS``: the machine's other load affects them alike. Variants:
``untuned`` (glibc defaults, contiguous layout: the product before the tuning), ``malloc`` (the mmap and trim
thresholds only) and ``tuned`` (what the product does on the CPU: the thresholds and channels-last).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import ROOT

BATCH = 50
FORWARDS = 4
REPEATS = 3
VARIANTS = ("untuned", "malloc", "tuned")


def run() -> dict[str, Any]:
    best: dict[str, dict[str, float]] = {}
    for _ in range(REPEATS):
        for variant in VARIANTS:
            result = _measure(variant)
            if variant not in best or result["images_per_s"] > best[variant]["images_per_s"]:
                best[variant] = result
    untuned = best["untuned"]["images_per_s"]
    return {
        "network": "efficientnet_lite0 (pip package weights)",
        "batch": BATCH,
        "forwards_timed": FORWARDS,
        "torch_threads": best["tuned"]["threads"],
        **{f"{variant}": best[variant] for variant in VARIANTS},
        "malloc_over_untuned": round(best["malloc"]["images_per_s"] / untuned, 2),
        "tuned_over_untuned": round(best["tuned"]["images_per_s"] / untuned, 2),
    }


def _measure(variant: str) -> dict[str, float]:
    """One variant in a fresh process: ``{"images_per_s", "user_s", "system_s", "threads"}``."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_cpu", variant],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _forward(variant: str) -> dict[str, float]:
    """Time ``FORWARDS`` forward passes of a batch of ``BATCH`` random 224-pixel images after a warm-up."""
    from dnd import cpu

    if variant in ("malloc", "tuned"):
        cpu.tune_process()  # before any big allocation, as the product does when a CPU run starts

    import torch

    from dnd.backends.targets import load_target
    from dnd.config import TargetConfig

    torch.manual_seed(0)
    target = load_target(TargetConfig(name="efficientnet_lite0")).to("cpu")
    if variant != "tuned":
        target.module.to(memory_format=torch.contiguous_format)
        target.memory_format = torch.contiguous_format
    pixels = torch.randn(BATCH, 3, 224, 224)
    target.forward(pixels)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(FORWARDS):
        target.forward(pixels)
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "images_per_s": round(BATCH * FORWARDS / seconds, 1),
        "user_s": round(after.ru_utime - before.ru_utime, 2),
        "system_s": round(after.ru_stime - before.ru_stime, 2),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: python -m benchmarks.bench_cpu {{{','.join(VARIANTS)}}}")
    print(json.dumps(_forward(sys.argv[1])))
