"""The paper's setting at real size: what ResNet-50 ``layer3`` costs with BLIP, Stable Diffusion and CLIP on this
machine's GPU, measured, for each preset of the README beside the released code's one-at-a-time way.

``python -m benchmarks.run gpu`` (or ``python -m benchmarks.bench_gpu --size real|smoke``). Weights cannot be
downloaded here, but compute does not depend on them: the models are full size with random weights, built from their
published configurations (:mod:`benchmarks.gpu_models`) and loaded through the product's own loaders. The run is the
product's: the pipeline's six stages on the paper config (``configs/resnet50_imagenet.yaml``) over a slice of the
layer (``real``: 5,000 synthetic probe images of ImageNet's size, the first 64 neurons), with a scripted instant LLM
(:class:`ScriptedLLM`: N = 5 summaries per neuron drawn from a few concepts, so neurons share them as real ones do).

Each stage's rate (items per second: probe images, crop images, captioned images, generated images, neurons scored)
is measured under every preset: the default (mixed precision, SD 1.5 with DPM-Solver at 50 steps), the target-network
presets (float32, bfloat16, compiled; they re-run record, crop and score), the generator presets (``configs/fast.yaml``:
DPM-Solver at 20 steps; SD-Turbo in one step; they re-run synthesize) and the released code's way (every batch of
size 1, the target network in float32, nothing shared between neurons). The rates are then extrapolated to the whole
layer (1,024 neurons over ImageNet val's 50,000 images) and to the whole network (``layer1``-``layer4`` and ``fc``)
with :func:`benchmarks.cost_model.work_items` and :func:`~benchmarks.cost_model.stage_seconds`. What is assumed, not
measured: the LLM's latency (stage 4 answers instantly here), and that the generated images per neuron are those of
the cost model (55 without reuse; times the distinct share of the published labels with it).

On a CPU (``smoke``, the default there) the same code runs with small models of the same architectures on a few
images: a test of the benchmark, not a measurement. A ``real`` run on CUDA writes ``outputs/bench/gpu-real-cuda.json``,
which the cost model (:mod:`benchmarks.cost_model`) then uses instead of its assumed A100 figures.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks import cost_model, gpu_models
from benchmarks.common import ROOT

STAGES = cost_model.STAGES
LAYER = "layer3"
PAPER_CONFIG = ROOT / "configs" / "resnet50_imagenet.yaml"
FAST_CONFIG = ROOT / "configs" / "fast.yaml"
#: SD-Turbo in place of Stable Diffusion 1.5 (the README's ``--set`` group): one step of its own scheduler, no guidance.
TURBO_SETTINGS = ("synthesize.scheduler=model_default", "synthesize.steps=1", "synthesize.guidance_scale=0")
#: The released code: one image (or request) at a time everywhere, the target network in float32, images loaded in
#: the main process.
RELEASED_SETTINGS = (
    "probe.batch_size=1",
    "probe.num_workers=0",
    "crop.batch_size=1",
    "caption.batch_size=1",
    "synthesize.batch_size=1",
    "score.batch_size=1",
    "embed.batch_size=1",
    "embed.half_precision=false",
    "record.autocast=off",
    "execution.memory_format=contiguous",
)
#: Concepts the scripted LLM answers with (the paper's examples and labels of its kind).
CONCEPTS = (
    "striped textures",
    "dog faces",
    "red cars",
    "wooden furniture",
    "ocean waves",
    "bird feathers",
    "city skylines",
    "green leaves",
    "human hands",
    "snowy mountains",
    "bicycle wheels",
    "fruit markets",
    "brick walls",
    "cat eyes",
    "airplane wings",
    "colorful umbrellas",
)


@dataclass(frozen=True)
class Size:
    """How much of the layer a run measures, and the batch sizes it runs at."""

    scale: str  # the models: gpu_models.SCALES
    probe_images: int
    image_size: tuple[int, int]  # synthetic probe images (width, height)
    neurons: int
    concepts: int  # distinct concepts the scripted LLM draws a neuron's summaries from
    images_per_concept: int  # Q
    generated_size: int  # synthesize.size
    released_probe_images: int  # the released code's way is measured on fewer (it is slow)
    released_neurons: int
    batch_sizes: dict[str, int] = field(default_factory=dict)
    #: Smoke runs only: each preset's sampling steps times this (at least 1), and further ``--set`` overrides.
    steps_fraction: float = 1.0
    settings: tuple[str, ...] = ()


SIZES = {
    "real": Size(
        scale="real",
        probe_images=5_000,
        image_size=(500, 375),  # ImageNet val's most common size
        neurons=64,
        concepts=16,
        images_per_concept=10,
        generated_size=512,
        released_probe_images=256,
        released_neurons=1,
        batch_sizes={"probe": 256, "crop": 128, "caption": 64, "synthesize": 16, "score": 128, "embed": 256},
    ),
    "smoke": Size(
        scale="smoke",
        probe_images=16,
        image_size=(80, 60),
        neurons=2,
        concepts=1,
        images_per_concept=1,
        generated_size=32,
        released_probe_images=10,
        released_neurons=1,
        batch_sizes={"probe": 8, "crop": 16, "caption": 8, "synthesize": 8, "score": 16, "embed": 16},
        steps_fraction=0.1,
        settings=("caption.max_new_tokens=6",),
    ),
}


@dataclass(frozen=True)
class Preset:
    """A preset of the README: its config file and ``--set`` overrides, the stages it changes (the others keep the
    default preset's rates) and whether it runs only on CUDA."""

    config: Path
    settings: tuple[str, ...]
    stages: tuple[str, ...]
    cuda_only: bool = False
    warm_up: bool = False  # compiled: the first pass compiles; the rate is the second's


TARGET_STAGES = ("record", "crop", "score")
DEFAULT_PRESET = "mixed precision (default)"
RELEASED = "released code (one at a time)"
PRESETS = {
    DEFAULT_PRESET: Preset(PAPER_CONFIG, (), STAGES),
    "exact (float32 target)": Preset(
        PAPER_CONFIG, ("record.autocast=off", "execution.memory_format=contiguous"), TARGET_STAGES
    ),
    "bfloat16 target": Preset(PAPER_CONFIG, ("record.autocast=bfloat16",), TARGET_STAGES, cuda_only=True),
    "compiled target": Preset(PAPER_CONFIG, ("execution.compile=true",), TARGET_STAGES, cuda_only=True, warm_up=True),
    "fast: DPM-Solver 20 steps (configs/fast.yaml)": Preset(FAST_CONFIG, (), ("synthesize",)),
    "SD-Turbo, 1 step": Preset(PAPER_CONFIG, TURBO_SETTINGS, ("synthesize",)),
    RELEASED: Preset(PAPER_CONFIG, RELEASED_SETTINGS, STAGES),
}
#: What each stage's rate counts, per second.
UNITS = {
    "record": "probe images",
    "crop": "images (top images and crops)",
    "caption": "images captioned",
    "summarize": "LLM requests (scripted: instant)",
    "synthesize": "images generated",
    "score": "neurons",
}


class ScriptedLLM:
    """Stage 4's LLM for the benchmark: instant and always usable. A caption's shortening is its first three words;
    a summary is one of ``concepts``, chosen by a hash of the descriptions and the sample, so a neuron's N answers
    hold a few distinct concepts and different neurons share them."""

    def __init__(self, concepts: list[str]):
        self.concepts = concepts
        self.name = f"bench:scripted-llm:{hashlib.sha256('|'.join(concepts).encode()).hexdigest()[:8]}"

    def chat(self, requests: list[Any]) -> list[Any]:
        from dnd.backends.chat import ChatReply

        return [ChatReply(self._answer(request), prompt_tokens=300, completion_tokens=4) for request in requests]

    def _answer(self, request: Any) -> str:
        asked = request.messages[-1][1]
        if asked.startswith("Caption:"):
            return " ".join(asked.removeprefix("Caption:").split()[:3])
        digest = hashlib.sha256(f"{asked}|{request.sample}".encode()).digest()
        return self.concepts[int.from_bytes(digest[:4], "little") % len(self.concepts)]


def run(size: str | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Measure every preset on the slice ``size`` names (default: ``real`` on CUDA, ``smoke`` elsewhere), extrapolate,
    write the JSON to ``out_dir`` (default ``outputs/bench``) as ``gpu-<size>-<device type>.json`` and return it."""
    from dnd.devices import resolve_device

    device = resolve_device("auto")
    size = size or ("real" if device.type == "cuda" else "smoke")
    spec = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        bench = _Bench(spec, device, Path(tmp))
        try:
            presets = {name: bench.measure(name, preset) for name, preset in PRESETS.items()}
        finally:
            bench.close()
    measured = {name: result for name, result in presets.items() if "stages" in result}
    per_neuron = _per_neuron(measured[DEFAULT_PRESET], spec.neurons)
    for name, result in measured.items():
        released = name == RELEASED
        result["rates"] = _rates(result, measured[DEFAULT_PRESET], PRESETS[name].stages, released)
        result.update(extrapolate(result["rates"], per_neuron[RELEASED if released else "ours"], released))
    results = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)",
        "size": size,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slice": {
            "layer": LAYER,
            "probe_images": spec.probe_images,
            "probe_image_size": list(spec.image_size),
            "neurons": spec.neurons,
            "concepts_drawn_from": spec.concepts,
            "images_per_concept": spec.images_per_concept,
            "generated_size": spec.generated_size,
            "released_code": {"probe_images": spec.released_probe_images, "neurons": spec.released_neurons},
            "batch_sizes": spec.batch_sizes,
        },
        "models": bench.models,
        "load_seconds": {name: round(seconds, 2) for name, seconds in bench.load_seconds.items()},
        "execution": bench.execution,
        "per_neuron": per_neuron,
        "assumed": (
            f"stage 4's LLM at {cost_model.LLM_SECONDS_PER_REQUEST:g} s per request, {cost_model.LLM_CONCURRENCY} in "
            f"flight (1 for the released code); {cost_model.GENERATED_PER_NEURON} generated images per neuron, times "
            f"the distinct share of the published fc labels with reuse; the slice's crops and captions per neuron for "
            f"every layer"
        ),
        "presets": presets,
    }
    out_dir = out_dir or ROOT / "outputs" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"gpu-{size}-{device.type}.json").write_text(json.dumps(results, indent=1))
    return results


def extrapolate(rates: dict[str, float], per_neuron: dict[str, float], released: bool) -> dict[str, Any]:
    """The hours of the whole layer (``layer``: 1,024 neurons of ``layer3``) and of the whole network (``network``:
    ``layer1``-``layer4`` and ``fc``) over ImageNet val at ``rates`` (items per second per stage; record's for the
    network under ``record_network``), with ``per_neuron`` work; the released code does not split over GPUs."""
    network_rates = {**rates, "record": rates["record_network"]}
    layer = cost_model.work_items({LAYER: cost_model.NEURONS}, per_neuron, cost_model.PROBE_IMAGES)
    network = cost_model.work_items(cost_model.RESNET50_LAYERS, per_neuron, cost_model.PROBE_IMAGES)
    return {
        "layer": cost_model.hours(cost_model.stage_seconds(layer, rates), splits_over_gpus=not released),
        "network": cost_model.hours(cost_model.stage_seconds(network, network_rates), splits_over_gpus=not released),
    }


def _rates(result: dict[str, Any], default: dict[str, Any], own: tuple[str, ...], released: bool) -> dict[str, float]:
    """Items per second per stage: the preset's own measurement for the stages it changes, the default's for the
    others; stage 4's is assumed (``cost_model``'s LLM latency, with its concurrency unless ``released``)."""
    rates = {}
    for stage in (*STAGES, "record_network"):
        measured = result["stages"] if stage.removesuffix("_network") in own else default["stages"]
        rates[stage] = measured[stage]["per_s"]
    concurrency = 1 if released else cost_model.LLM_CONCURRENCY
    rates["summarize"] = concurrency / cost_model.LLM_SECONDS_PER_REQUEST
    return rates


def _per_neuron(default: dict[str, Any], neurons: int) -> dict[str, dict[str, float]]:
    """Work per neuron, ours and the released code's: crops and captioned images as measured on the slice (the
    released code captions every exemplar), LLM requests as measured (15 for the released code), and the cost
    model's generated images (reused across neurons only in ours)."""
    stages = default["stages"]
    crops = stages["crop"]["counts"]["crops"] / neurons
    ours = {
        "crops": round(crops, 2),
        "captions": round(stages["caption"]["counts"]["captioned"] / neurons, 2),
        "llm_requests": round(stages["summarize"]["counts"]["llm_requests"] / neurons, 2),
        "generated_images": round(cost_model.GENERATED_PER_NEURON * cost_model.distinct_concept_share(), 2),
    }
    released = {
        "crops": round(crops, 2),
        "captions": float(cost_model.TOP_K),
        "llm_requests": float(cost_model.LLM_REQUESTS_PER_NEURON),
        "generated_images": float(cost_model.GENERATED_PER_NEURON),
    }
    return {"ours": ours, RELEASED: released}


class _Bench:
    """The models (built once, each loaded once), the synthetic probing set, and one measured run per preset."""

    def __init__(self, spec: Size, device: torch.device, folder: Path):
        self.spec, self.device, self.folder = spec, device, folder
        self.load_seconds: dict[str, float] = {}
        started = time.perf_counter()
        self.folders = {
            "blip": gpu_models.build_blip(folder / "blip", spec.scale, device),
            "clip": gpu_models.build_clip(folder / "clip", spec.scale, device),
            "sd15": gpu_models.build_stable_diffusion(folder / "sd15", "sd15", spec.scale, device),
            "sd_turbo": gpu_models.build_stable_diffusion(folder / "sd_turbo", "sd_turbo", spec.scale, device),
        }
        self.load_seconds["building and saving the random models"] = time.perf_counter() - started
        self.target = gpu_models.target_network(spec.scale)
        self.models = {name: {"parameters": gpu_models.parameters(path)} for name, path in self.folders.items()}
        self.models["target"] = {
            "name": self.target.name,
            "parameters": sum(p.numel() for p in self.target.module.parameters()),
        }
        self.probe = _synthetic_probe(folder / "probe", spec.probe_images, spec.image_size)
        self.released_probe = folder / "probe-released"
        self.released_probe.mkdir()
        for path in sorted(self.probe.iterdir())[: spec.released_probe_images]:
            (self.released_probe / path.name).symlink_to(path)
        self._loaded: dict[str, Any] = {}
        self.execution: dict[str, Any] = {}
        if device.type == "cpu":
            from benchmarks.bench_scale import PeakRss

            self._rss = PeakRss()

    def close(self) -> None:
        """Stop the memory sampler (CPU), so a run inside another process leaves no thread behind."""
        if self.device.type == "cpu":
            self._rss.close()

    def measure(self, name: str, preset: Preset) -> dict[str, Any]:
        """Run the stages ``preset`` changes (all six for the default and the released code's way) on the slice;
        seconds, counts, rate and peak memory per stage."""
        if preset.cuda_only and self.device.type != "cuda":
            return {"skipped": "CUDA only (ignored on the CPU)", "settings": list(preset.settings)}
        released = name == RELEASED
        output = self.folder / ("out-released" if released else "out")  # the released code reuses nothing of ours
        config = self._config(preset, output, released)
        pipeline = self._pipeline(config, released)
        neurons = list(range(self.spec.released_neurons if released else self.spec.neurons))
        forced = preset.stages != STAGES  # the default's outputs are there: a preset recomputes its own stages
        stages: dict[str, Any] = {}
        for stage in STAGES if not forced else preset.stages:
            if preset.warm_up:
                self._stage(pipeline, stage, [LAYER], neurons, forced)
            stages[stage] = self._stage(pipeline, stage, [LAYER], neurons, forced)
            if stage == "record":  # one pass records the whole network: what stage 1 costs there
                layers = list(cost_model.RESNET50_LAYERS)
                stages["record_network"] = self._stage(pipeline, "record", layers, neurons, True)
        return {
            "config": preset.config.name,
            "settings": list(preset.settings),
            "stages": stages,
        }

    def _config(self, preset: Preset, output: Path, released: bool) -> Any:
        from dnd.config import load_config

        spec, batch = self.spec, self.spec.batch_sizes
        model = self.folders["sd_turbo" if preset.settings == TURBO_SETTINGS else "sd15"]
        workers = 0 if spec.scale == "smoke" else min(8, os.cpu_count() or 1)
        overrides = [
            f"output_dir={output}",
            f"prompts_dir={ROOT / 'prompts'}",
            "probe.kind=folder",
            f"probe.path={self.released_probe if released else self.probe}",
            f"probe.num_workers={workers}",
            f"caption.model={self.folders['blip']}",
            f"synthesize.model={model}",
            f"synthesize.size={spec.generated_size}",
            f"synthesize.images_per_concept={spec.images_per_concept}",
            f"embed.clip_model={self.folders['clip']}",
            *(f"{stage}.batch_size={batch[stage]}" for stage in ("probe", "crop", "caption", "synthesize", "score")),
            f"embed.batch_size={batch['embed']}",
            *spec.settings,
            *preset.settings,
        ]
        config = load_config(preset.config, overrides)
        config.synthesize.steps = max(1, round(config.synthesize.steps * spec.steps_fraction))
        return config

    def _pipeline(self, config: Any, released: bool) -> Any:
        """The pipeline on ``config`` with this benchmark's models, each loaded once (timed) and shared by every
        preset it serves; the target network is a copy of the same weights, moved and compiled as the preset says."""
        from dnd.backends.captioners import BlipCaptioner
        from dnd.backends.container import Backends
        from dnd.backends.embedders import load_clip
        from dnd.backends.generators import DiffusersGenerator, generator_name
        from dnd.backends.target_network import TargetNetwork
        from dnd.pipeline import Pipeline

        captioner = self._load("BLIP", lambda: BlipCaptioner(config.caption, self.device))
        clip_kind = "float16" if config.embed.half_precision and self.device.type == "cuda" else "float32"
        clip_name = f"CLIP ({clip_kind}, batch {config.embed.batch_size})"
        clip = self._load(clip_name, lambda: load_clip(config.embed, self.device))
        generator = self._load(
            generator_name(config.synthesize), lambda: _warm(DiffusersGenerator(config.synthesize, self.device))
        )
        self.execution.setdefault("stable_diffusion", _pipeline_settings(generator.pipeline))
        target = TargetNetwork(self.target.name, copy.deepcopy(self.target.module), self.target.preprocess)
        concepts = [f"{concept} {index}" for index in range(200) for concept in CONCEPTS] if released else None
        llm = ScriptedLLM(concepts or list(CONCEPTS[: self.spec.concepts]))  # released: no concept shared
        backends = Backends(config, target=target, captioner=captioner, concept_llm=llm, generator=generator, clip=clip)
        return Pipeline(config, backends)

    def _load(self, name: str, load: Any) -> Any:
        if name not in self._loaded:
            started = time.perf_counter()
            self._loaded[name] = load()
            self.load_seconds[name] = time.perf_counter() - started
        return self._loaded[name]

    def _stage(self, pipeline: Any, stage: str, layers: list[str], neurons: list[int], forced: bool) -> dict[str, Any]:
        """Run ``stage`` (earlier ones are fresh) and measure it: seconds, the manifest's counts, items per second
        (:data:`UNITS`) and the peak memory (GPU memory allocated on CUDA, the process's resident memory on a CPU)."""
        from dnd.layout import MANIFEST_FILE

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss.reset()
        started = time.perf_counter()
        folders = pipeline.run_until(stage, layers, neurons, force_stages={stage} if forced else None)
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else self._rss.peak
        counts = json.loads((folders[layers[0]] / MANIFEST_FILE).read_text())["counts"]
        items = {
            "record": counts.get("images_recorded", 0),
            "crop": counts.get("images_loaded", 0) + counts.get("crops", 0),
            "caption": counts.get("captioned", 0),
            "summarize": counts.get("llm_requests", 0),
            "synthesize": counts.get("images_generated", 0),
            "score": len(neurons),
        }[stage]
        return {
            "seconds": round(seconds, 3),
            "items": items,
            "per_s": round(items / seconds, 4) if items else None,
            "unit": UNITS[stage],
            "peak_memory_mb": round(peak / 2**20, 1),
            "counts": counts,
        }


def _warm(generator: Any) -> Any:
    """``generator`` after one image: the first call of a pipeline pays one-off costs (kernel selection, allocator
    growth) that would otherwise count against the first preset that uses it."""
    from dnd.backends.generators import GenerationRequest

    generator.generate([GenerationRequest("warm-up", seed=0)])
    return generator


def _pipeline_settings(pipeline: Any) -> dict[str, Any]:
    """How the Stable Diffusion pipeline runs: precision, layout and attention of its UNet and VAE."""
    unet = pipeline.unet
    weight = next(unet.parameters())
    conv = next(module for module in unet.modules() if isinstance(module, torch.nn.Conv2d)).weight
    processors = {type(processor).__name__ for processor in unet.attn_processors.values()}
    return {
        "dtype": str(weight.dtype).removeprefix("torch."),
        "channels_last": conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous(),
        "attention_processors": sorted(processors),
        "guidance": "unconditional and conditional passes in one batch (diffusers' pipeline)",
    }


def _synthetic_probe(folder: Path, images: int, size: tuple[int, int]) -> Path:
    """``images`` JPEGs of ``size``: smooth random colour fields with noise, which decode like photos of that size."""
    folder.mkdir(parents=True)

    def write(index: int) -> None:
        rng = np.random.default_rng(index)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-24, 25, (size[1], size[0], 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{index:06d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(write, range(images)))
    return folder


def table(results: dict[str, Any]) -> list[str]:
    """The table ``python -m benchmarks.run gpu`` prints: per preset, each stage's measured rate, the peak memory and
    the hours of the whole layer and network."""
    slice_ = results["slice"]
    lines = [
        f"{results['device']}, {results['size']} size: {slice_['neurons']} neurons of {slice_['layer']}, "
        f"{slice_['probe_images']} probe images, Q = {slice_['images_per_concept']}; hours extrapolated to "
        f"{cost_model.NEURONS} neurons x {cost_model.PROBE_IMAGES} images (layer) and layer1-4 + fc (network)",
        f"{'preset':<46}{'record':>9}{'crop':>8}{'caption':>9}{'s/image':>9}{'score':>8}{'peak':>9}"
        f"{'layer h':>9}{'on 8':>7}{'network h':>11}",
        f"{'':<46}{'img/s':>9}{'img/s':>8}{'img/s':>9}{'SD':>9}{'n/s':>8}{'MB':>9}",
    ]
    for name, result in results["presets"].items():
        if "skipped" in result:
            lines.append(f"{name:<46}  skipped: {result['skipped']}")
            continue
        rates, layer = result["rates"], result["layer"]
        peak = max(stage["peak_memory_mb"] for stage in result["stages"].values())
        eight = f"{layer['total_8_gpus']:>7.2f}" if layer["total_8_gpus"] is not None else f"{'-':>7}"
        lines.append(
            f"{name:<46}{rates['record']:>9.1f}{rates['crop']:>8.1f}{rates['caption']:>9.1f}"
            f"{1 / rates['synthesize']:>9.3f}{rates['score']:>8.2f}{peak:>9.0f}{layer['total_1_gpu']:>9.2f}{eight}"
            f"{result['network']['total_1_gpu']:>11.2f}"
        )
    lines.append(f"assumed: {results['assumed']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), help="default: real on CUDA, smoke elsewhere")
    results = run(parser.parse_args().size)
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
