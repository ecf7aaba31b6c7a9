"""What describing every neuron of ResNet-50 ``layer3`` (1,024 neurons) over ImageNet val (50,000 images) should cost
on one GPU and on eight, for each throughput preset of the README, next to the released code's way of working.

Each stage's time is its work items divided by the throughput of whatever does them, the slowest part of a stage
setting its pace (e.g. decoding JPEGs on the CPU against the forward pass on the GPU):

- **work items** come from the method's defaults and from :mod:`benchmarks.bench_scale`'s measured run (crops per
  neuron, unique exemplar images per neuron). LLM requests are counted without reuse between neurons (15 per neuron,
  an upper bound). Generated images are 55 per neuron times the share of distinct concepts measured on the authors'
  published labels of ResNet-50's ``fc`` (1,000 neurons, ../shared/reference/dnd): only identical concepts are
  generated once, and free-form LLM labels repeat rarely;
- **CPU per-item costs are measured here** (:func:`measure_cpu`): decoding an ImageNet photo and preprocessing it
  for ResNet-50, finding a neuron's attention boxes on a 14 × 14 map, cutting and resizing a crop;
- **GPU per-item figures are assumed**, for an NVIDIA A100, from the sources in :data:`SOURCES`, unless a measured
  run of :mod:`benchmarks.bench_gpu` on a GPU has written :data:`MEASURED_GPU`: the hours are then its measured
  per-stage rates extrapolated to the same job (:func:`work_items`, :func:`stage_seconds`), and the assumed ones
  are kept beside them.

Eight GPUs divide every stage's work by eight (the stages split their unique items over the processes); the CPU
figures assume 8 cores per GPU for loading and cropping.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SHARED

#: Where a full-size run of benchmarks.bench_gpu on CUDA writes its measurements.
MEASURED_GPU = ROOT / "outputs" / "bench" / "gpu-real-cuda.json"
PUBLISHED_LABELS = SHARED / "reference" / "dnd" / "resnet50_imagenet_broden_fc.csv"

NEURONS = 1024
PROBE_IMAGES = 50_000
TOP_K = 10
SUMMARIES = 5
LLM_REQUESTS_PER_NEURON = 15  # no reuse: a shortening per exemplar caption and the summaries
GENERATED_PER_NEURON = 55  # no reuse: 5–6 concepts × 10 images
TOP_POOL = 10  # generated images per neuron that Image Products embeds
CPU_CORES_PER_GPU = 8
#: The stages in order, as work items and measured rates name them.
STAGES = ("record", "crop", "caption", "summarize", "synthesize", "score")
#: ResNet-50's layers a whole-network run describes, with their neurons; ``fc`` has no spatial maps, so no crops.
RESNET50_LAYERS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048, "fc": 1000}
LAYERS_WITHOUT_MAPS = frozenset({"fc"})
LLM_SECONDS_PER_REQUEST = 1.0  # a hosted model's latency for a short answer (gpt-4o-mini class)
LLM_CONCURRENCY = 8  # summarize.openai.concurrency, per process

#: Where the assumed GPU figures come from.
SOURCES = {
    "resnet50": "NVIDIA DeepLearningExamples, TensorFlow ResNet-50 v1.5 README, inference on 1x A100 40GB, batch 256: "
    "TF32 1,912 img/s, mixed precision 3,229 img/s, mixed precision + XLA 3,676 img/s (XLA standing in for "
    "torch.compile); batch 1 TF32: 191 img/s (the released code's one image at a time)",
    "stable_diffusion": "fal-ai/stable-diffusion-benchmarks, SD 1.5 512 px, 50 steps, A100 80GB, diffusers: 1.60 s per "
    "image with SDPA in fp16; sayakpaul/sample-datasets SD 1.5 results: 1.51 s for 30 steps in fp32 (2.5 s for 50)",
    "sd_turbo": "about 0.2 s per 512 px image in one step (Stability's SDXL-Turbo card quotes 207 ms on an A100; "
    "SD-Turbo's UNet is smaller)",
    "blip": "our estimate, no published figure found: ViT-B/16 at 384 px plus ~15 greedy decoder steps, batched: "
    "150 img/s in fp16, 60 img/s in fp32, 20 img/s one image at a time",
    "clip": "our estimate: ViT-B/16 at 224 px costs about 4x ResNet-50's FLOPs: 480 img/s in float32 (TF32), a "
    "quarter of ResNet-50's; 48 img/s one image at a time",
    "llm": f"{LLM_SECONDS_PER_REQUEST:g} s per request, {LLM_CONCURRENCY} in flight per process (a hosted API; "
    "rate limits permitting)",
}

#: The other models' figures, the same under every preset: dnd runs BLIP and Stable Diffusion in float16 on CUDA and
#: CLIP in float32 whatever the target network's settings.
MODELS = {"blip": 150, "clip": 480, "sd_seconds": 1.60}
#: Per-item GPU throughput (items/s; seconds per image for Stable Diffusion) under each preset of the README. The
#: presets set the target network's precision, layout and compilation; the last one also swaps the generator.
PRESETS: dict[str, dict[str, float]] = {
    "exact (float32 target)": {**MODELS, "resnet50": 1912},
    "mixed precision (default)": {**MODELS, "resnet50": 3229},
    "compiled target": {**MODELS, "resnet50": 3676},
    "mixed precision + SD-Turbo (configs/turbo.yaml)": {**MODELS, "resnet50": 3229, "sd_seconds": 0.2},
}
#: The released code: one image at a time through every network, one request at a time, models reloaded per call
#: (not counted here).
RELEASED_CODE = {"resnet50": 191, "blip": 20, "clip": 48, "sd_seconds": 1.60}


def measure_cpu(samples: int = 40) -> dict[str, float]:
    """Seconds per item on one core of this machine: decoding + preprocessing an ImageNet photo for ResNet-50,
    finding a neuron's attention boxes on a 14 × 14 map of a 224 px image, and cutting + resizing + tensorizing a
    crop."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.models import ResNet50_Weights

    from dnd.artifacts import CropBox
    from dnd.backends.preprocess import split_preprocess
    from dnd.exemplars import crop_view
    from dnd.stages.crop import attention_boxes

    torch.set_num_threads(1)
    preprocess = ResNet50_Weights.IMAGENET1K_V2.transforms()
    view, tensorize = split_preprocess(preprocess)
    paths = sorted((SHARED / "data" / "imagenet-samples").iterdir())[:samples]
    started = time.perf_counter()
    views = []
    for path in paths:
        with Image.open(path) as image:
            views.append(view(image.convert("RGB")))
        tensorize(views[-1])
    decode = (time.perf_counter() - started) / len(paths)
    maps = np.random.default_rng(0).random((samples, 14, 14)).astype(np.float32) ** 4  # a few high regions each
    started = time.perf_counter()
    for activation_map in maps:
        attention_boxes(activation_map, (224, 224), 4, 0.5, 0.8)
    boxes = (time.perf_counter() - started) / samples
    started = time.perf_counter()
    for image in views:
        tensorize(crop_view(image, CropBox(x0=30, y0=40, x1=150, y1=170)))
    crop = (time.perf_counter() - started) / samples
    return {"decode_and_preprocess_s": decode, "attention_boxes_s": boxes, "crop_and_tensorize_s": crop}


def estimate(
    work: dict[str, Any], cpu: dict[str, float] | None = None, measured_gpu: Path = MEASURED_GPU
) -> dict[str, Any]:
    """Minutes per stage and hours in all, per preset, on 1 and 8 GPUs, from the measured ``work`` per neuron
    (:func:`benchmarks.bench_scale._work_per_neuron`) and the CPU costs (measured now unless given); from the GPU
    measurements in ``measured_gpu`` instead where that file exists (the assumed figures' hours are then kept under
    ``hours_from_assumed_figures``)."""
    cpu = cpu or measure_cpu()
    distinct = distinct_concept_share()
    items = {
        "probe_images": PROBE_IMAGES,
        "crop_forwards": NEURONS * (TOP_K + work["crops_per_neuron"]),
        "captions": NEURONS * work["unique_exemplar_images_per_neuron"],
        "llm_requests": NEURONS * LLM_REQUESTS_PER_NEURON,
        "generated_images": NEURONS * GENERATED_PER_NEURON * distinct,
        "clip_embeddings": NEURONS * (work["unique_exemplar_images_per_neuron"] + TOP_POOL + SUMMARIES),
    }
    presets = {name: _hours(items, gpu, cpu, batched=True) for name, gpu in PRESETS.items()}
    naive = {**items, "captions": NEURONS * TOP_K, "generated_images": NEURONS * GENERATED_PER_NEURON}
    presets["released code (one at a time)"] = _hours(naive, RELEASED_CODE, cpu, batched=False)
    model = {
        "job": f"ResNet-50 layer3 ({NEURONS} neurons), ImageNet val ({PROBE_IMAGES} images), A100 GPUs",
        "distinct_concept_share_published_fc_labels": round(distinct, 3),
        "work_items": {name: round(value) for name, value in items.items()},
        "cpu_seconds_per_item_measured": {name: round(value, 5) for name, value in cpu.items()},
        "cpu_cores_per_gpu_assumed": CPU_CORES_PER_GPU,
        "gpu_figures_assumed": {"presets": PRESETS, "released_code": RELEASED_CODE, "sources": SOURCES},
        "hours": presets,
    }
    if measured_gpu.is_file():
        measured = json.loads(measured_gpu.read_text())
        model["job"] = model["job"].replace("A100 GPUs", measured["device"])
        model["gpu_figures_measured"] = {
            "file": str(measured_gpu),
            "device": measured["device"],
            "when": measured["when"],
            "rates": {name: preset["rates"] for name, preset in measured["presets"].items()},
            "assumed": measured["assumed"],
        }
        model["hours_from_assumed_figures"] = presets
        model["hours"] = {name: preset["layer"] for name, preset in measured["presets"].items()}
    return model


def work_items(layers: dict[str, int], per_neuron: dict[str, float], probe_images: int) -> dict[str, float]:
    """Work of each stage to describe ``layers`` (module path → neurons) over ``probe_images`` images.

    ``per_neuron`` holds ``crops`` (crop images besides the top-K), ``captions`` (images captioned),
    ``llm_requests`` and ``generated_images``. Stage 1 runs one pass for every layer; crop runs the network on the
    top-K images and the crops of each neuron of a layer with spatial maps (none for ``fc``); score counts neurons.
    """
    neurons = sum(layers.values())
    mapped = sum(count for layer, count in layers.items() if layer not in LAYERS_WITHOUT_MAPS)
    return {
        "record": float(probe_images),
        "crop": mapped * (TOP_K + per_neuron["crops"]),
        "caption": neurons * per_neuron["captions"],
        "summarize": neurons * per_neuron["llm_requests"],
        "synthesize": neurons * per_neuron["generated_images"],
        "score": float(neurons),
    }


def stage_seconds(items: dict[str, float], rates: dict[str, float]) -> dict[str, float]:
    """Seconds per stage: its work ``items`` over its ``rates`` (items per second, e.g. as measured on a slice)."""
    return {stage: items[stage] / rates[stage] for stage in items}


def hours(seconds: dict[str, float], splits_over_gpus: bool = True) -> dict[str, Any]:
    """Minutes per stage on one GPU and hours in all on one and on eight (None where the work does not split)."""
    total = sum(seconds.values())
    return {
        "minutes_per_stage_on_1_gpu": {stage: round(value / 60, 1) for stage, value in seconds.items()},
        "total_1_gpu": round(total / 3600, 2),
        "total_8_gpus": round(total / 8 / 3600, 2) if splits_over_gpus else None,
    }


def distinct_concept_share() -> float:
    """Distinct labels over all labels in the authors' published ResNet-50 ``fc`` descriptions (1.0 without them)."""
    if not PUBLISHED_LABELS.is_file():
        return 1.0
    with PUBLISHED_LABELS.open() as file:
        labels = [row[1].strip().lower() for row in list(csv.reader(file))[1:] if len(row) > 1 and row[1].strip()]
    return len(set(labels)) / len(labels) if labels else 1.0


def _hours(items: dict[str, float], gpu: dict[str, float], cpu: dict[str, float], batched: bool) -> dict[str, Any]:
    """Minutes per stage on one GPU, hours in all on one and on eight. The released code runs on one GPU, one item at a
    time, on one core."""
    cores = CPU_CORES_PER_GPU if batched else 1
    loading = cpu["decode_and_preprocess_s"] / cores
    crop_cpu = (
        items["crop_forwards"] * cpu["decode_and_preprocess_s"]
        + NEURONS * TOP_K * cpu["attention_boxes_s"]
        + (items["crop_forwards"] - NEURONS * TOP_K) * cpu["crop_and_tensorize_s"]
    ) / cores
    concurrency = LLM_CONCURRENCY if batched else 1
    seconds = {
        "record": items["probe_images"] * max(1 / gpu["resnet50"], loading),
        "crop": max(items["crop_forwards"] / gpu["resnet50"], crop_cpu),
        "caption": items["captions"] * max(1 / gpu["blip"], loading),
        "summarize": items["llm_requests"] * LLM_SECONDS_PER_REQUEST / concurrency,
        "synthesize": items["generated_images"] * gpu["sd_seconds"],
        "score": items["generated_images"] / gpu["resnet50"] + items["clip_embeddings"] / gpu["clip"],
    }
    return hours(seconds, splits_over_gpus=batched)  # the released code uses one GPU


def lines(model: dict[str, Any]) -> list[str]:
    """The cost model as a few lines of text: what was measured, what was assumed, hours per preset."""
    measured = model["cpu_seconds_per_item_measured"].items()
    cpu = ", ".join(f"{name.removesuffix('_s').replace('_', ' ')} {value * 1000:.2f} ms" for name, value in measured)
    measured_gpu = model.get("gpu_figures_measured")
    out = [f"cost model: {model['job']}"]
    if measured_gpu is not None:
        out += [
            f"  measured on {measured_gpu['device']} ({measured_gpu['file']}, {measured_gpu['when']}): every stage's "
            f"throughput under each preset, on a slice of the layer with full-size random-weight models",
            f"  assumed there: {measured_gpu['assumed']}",
        ]
        out += _hour_lines(model["hours"])
        out.append("  with the assumed A100 figures instead:")
    out += [
        f"  measured here: CPU per item on one core ({cpu}); work per neuron from the scaling run (crops, unique "
        f"exemplar images)",
        f"  assumed: A100 throughputs (gpu_figures_assumed.sources), LLM {LLM_SECONDS_PER_REQUEST:g} s per request "
        f"with {LLM_CONCURRENCY} in flight per process, {CPU_CORES_PER_GPU} CPU cores per GPU, "
        f"{LLM_REQUESTS_PER_NEURON} LLM requests and {GENERATED_PER_NEURON} x "
        f"{model['distinct_concept_share_published_fc_labels']} generated images per neuron (the distinct share of "
        f"the published ResNet-50 fc labels)"
        + ("" if measured_gpu else f"; no measured GPU run ({MEASURED_GPU.name}: python -m benchmarks.run gpu, CUDA)"),
    ]
    out += _hour_lines(model.get("hours_from_assumed_figures", model["hours"]))
    return out


def _hour_lines(presets: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, result in presets.items():
        eight = f", {result['total_8_gpus']} h on 8" if result["total_8_gpus"] is not None else ""
        stages = ", ".join(f"{stage} {value:g}" for stage, value in result["minutes_per_stage_on_1_gpu"].items())
        out.append(f"  {name}: {result['total_1_gpu']} h on 1 GPU{eight}  (minutes on 1 GPU: {stages})")
    return out
