"""Stage 1: recording throughput against a bare forward pass over the same batches, and the full stage.

The network is EfficientNet-Lite0 with its real ImageNet weights (pip package); the images are the ImageNet samples
in ../shared when present, else random images. Data loading is excluded from the ratio (both sides run over the same
preprocessed batches in memory) and included in the full-stage figure. The process is tuned for the CPU first, as a
CPU run of the product is (:mod:`dnd.cpu`), so both sides run at the speed a user gets.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import IMAGENET_SAMPLES, best_of_interleaved, best_seconds, peak_memory_mb
from dnd import cpu
from dnd.backends.container import Backends
from dnd.backends.targets import load_target
from dnd.config import TargetConfig, load_config
from dnd.layer_reductions import reduce_positions
from dnd.pipeline import Pipeline

IMAGES = 256
BATCH_SIZE = 32
LAYERS = ("blocks.10", "fc")
REPEATS = 5  # a middle layer (the pass stops there) and the output (the whole network runs)


def run() -> dict[str, Any]:
    cpu.tune_process()
    torch.manual_seed(0)
    target = load_target(TargetConfig(name="efficientnet_lite0"))
    with tempfile.TemporaryDirectory() as tmp:
        probe_dir = _probe_folder(Path(tmp))
        images = sorted(probe_dir.iterdir())[:IMAGES]
        pixels = torch.stack([target.preprocess(Image.open(p).convert("RGB")) for p in images])
        batches = list(pixels.split(BATCH_SIZE))

        @torch.no_grad()
        def bare() -> None:
            for batch in batches:
                target.module(batch)

        def recording(layer: str) -> Callable[[], None]:
            def record() -> None:
                for batch in batches:
                    target.capture(batch, [layer], lambda _path, out: reduce_positions(out, "mean", "cls").cpu())

            return record

        # Interleaved repeats, so that drift in the machine's speed affects both sides alike.
        timings = best_of_interleaved({"bare": bare, **{layer: recording(layer) for layer in LAYERS}}, REPEATS)
        results: dict[str, Any] = {
            "network": "efficientnet_lite0",
            "images": len(images),
            "batch_size": BATCH_SIZE,
            "torch_threads": torch.get_num_threads(),
            "bare_forward_images_per_s": round(len(images) / timings["bare"], 1),
            "layers": {
                layer: {
                    "record_images_per_s": round(len(images) / timings[layer], 1),
                    "ratio_to_bare_forward": round(timings["bare"] / timings[layer], 3),
                }
                for layer in LAYERS
            },
        }

        config = load_config(
            None,
            [
                f"output_dir={tmp}/outputs",
                "target.name=efficientnet_lite0",
                f"probe.path={probe_dir}",
                f"probe.limit={IMAGES}",
                f"probe.batch_size={BATCH_SIZE}",
                "probe.num_workers=2",
            ],
        )
        pipeline = Pipeline(config, Backends(config, target=target))
        stage_s = best_seconds(lambda: pipeline.run_until("record", ["blocks.10"], force_stages={"record"}), repeats=1)
        results["full_stage_images_per_s_with_loading"] = round(len(images) / stage_s, 1)
        results["peak_memory_mb"] = round(peak_memory_mb(target.device), 1)
    return results


def _probe_folder(tmp: Path) -> Path:
    if IMAGENET_SAMPLES.is_dir():
        return IMAGENET_SAMPLES
    rng = np.random.default_rng(0)
    folder = tmp / "random-images"
    folder.mkdir()
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder
