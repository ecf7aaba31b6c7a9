"""Stage 4 on class-name captions with the real SmolLM2: LLM requests per neuron, why answers were re-asked, labels.

The captions are what an ImageNet classifier says about each exemplar: its top class names up to a probability mass,
at most three, joined with " or " ("goldfish or tench", "lakeside"), spelled as torchvision's ImageNet categories.
:class:`ClassNamesCaptioner` makes them with EfficientNet-Lite0 here. Two cases, both real neurons and real
exemplars (stages 1-3 run for real, then stage 4 runs as the product runs it):

- ``imagenet``: EfficientNet-Lite0 ``blocks.10`` over the 1,000 ImageNet samples (``configs/offline.yaml``); its
  class names describe ImageNet images well;
- ``cifar``: CIFAR-10 ResNet-20 ``layer3`` and ``fc`` (its output, one neuron per CIFAR-10 class) over the
  CIFAR-10 test images; EfficientNet-Lite0 names 32 px CIFAR images poorly ("fox squirrel", "moving van"), which is
  the hard case for the summary.

:func:`run` (what ``make bench`` calls) works in a temporary folder. A neuron's ``labels`` are its candidate concepts
(or why it failed); with ``--labels`` its ``details`` are printed too: its captions, most frequent first, and its
rejected answers.

Stage 4 is asked afresh on every run (its reply cache is emptied first); stages 1-3 stay cached in the output folder,
so after editing ``prompts/`` or ``summarize.*`` a re-run costs only the LLM. Alone::

    PYTHONPATH=$PWD python -m benchmarks.bench_summarize [--out outputs/bench-summarize] [--neurons 32]
        [--case imagenet --case cifar] [--set summarize.temperature=0.3 ...] [--labels]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.common import IMAGENET_SAMPLES, ROOT, SHARED
from dnd.artifacts import Captions, Concepts, TopImages
from dnd.backends.container import Backends
from dnd.backends.llms import ConceptLLM
from dnd.backends.target_network import TargetNetwork
from dnd.backends.targets import load_target
from dnd.concept_answers import REJECTIONS
from dnd.config import RunConfig, TargetConfig, load_config
from dnd.pipeline import Pipeline
from dnd.store import read_model

CIFAR_IMAGES = SHARED / "data" / "cifar10-test"
NEURONS = 32
#: case -> (config file, [(layer, neurons at most)])
CASES: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "imagenet": ("configs/offline.yaml", [("blocks.10", NEURONS)]),
    "cifar": ("configs/cifar10_resnet20.yaml", [("layer3", NEURONS), ("fc", 10)]),
}


class ClassNamesCaptioner:
    """Captions an image with an ImageNet classifier's top class names: classes in order of probability until their
    mass reaches ``mass``, at most ``most``, joined with " or "."""

    def __init__(self, network: TargetNetwork, mass: float = 0.5, most: int = 3):
        from torchvision.models import ResNet50_Weights

        self.network, self.mass, self.most = network, mass, most
        self.categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]  # metadata only: nothing is downloaded
        self.name = f"bench:{network.name}-classes(mass={mass},most={most})"

    @torch.inference_mode()
    def caption(self, images: list[Image.Image]) -> list[str]:
        pixels = torch.stack([self.network.preprocess(image.convert("RGB")) for image in images])
        probabilities = self.network.module(pixels.to(self.network.device)).softmax(dim=1).cpu()
        captions = []
        for row in probabilities:
            ranked, classes = row.sort(descending=True)
            count = min(int((ranked.cumsum(0) < self.mass).sum()) + 1, self.most)
            captions.append(" or ".join(self.categories[i] for i in classes[:count]))
        return captions


def run(
    out: Path | None = None,
    cases: list[str] | None = None,
    neurons: int = NEURONS,
    overrides: list[str] | None = None,
    details: bool = False,
) -> dict[str, Any]:
    """Stage 4 on every case: requests per neuron, re-asks by reason, seconds, each neuron's labels (and with
    ``details`` its captions and rejected answers)."""
    missing = [str(path) for path in (IMAGENET_SAMPLES, CIFAR_IMAGES) if not path.is_dir()]
    if missing:
        return {"skipped": f"needs {', '.join(missing)}"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = out or Path(tmp)
        classifier = load_target(TargetConfig(name="efficientnet_lite0"))
        captioner = ClassNamesCaptioner(classifier)
        llm: ConceptLLM | None = None
        results: dict[str, Any] = {"captioner": captioner.name}
        for case in cases or list(CASES):
            config_file, layers = CASES[case]
            config = _config(config_file, folder / case, overrides or [])
            backends = Backends(config, captioner=captioner, concept_llm=llm)
            for layer, most in layers:
                results[f"{case}:{layer}"] = _measure(Pipeline(config, backends), layer, most, neurons, details)
            llm = backends.concept_llm  # loaded once, handed on to the next case
        return results


def _config(config_file: str, out: Path, overrides: list[str]) -> RunConfig:
    return load_config(
        ROOT / config_file,
        [
            f"output_dir={out}",
            f"prompts_dir={ROOT / 'prompts'}",
            "summarize.simplify_captions=false",  # class names are concept labels already
            *overrides,
        ],
    )


def _measure(pipeline: Pipeline, layer: str, most: int, neurons: int, details: bool) -> dict[str, Any]:
    """Stages 1-3 of ``layer`` (cached when already there), then stage 4 asked afresh; what it did and said."""
    pipeline.run_until("record", [layer])
    count = min(neurons, most, pipeline.store.load(layer, "record", pipeline.key("record", layer), TopImages).n_neurons)
    wanted = list(range(count))
    pipeline.run_until("caption", [layer], wanted)
    shutil.rmtree(pipeline.config.output_dir / "cache" / "llm", ignore_errors=True)
    folder = pipeline.run_until("summarize", [layer], wanted, force_stages={"summarize"})[layer]
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = manifest["counts"]
    concepts = read_model(folder / "artifact.json", Concepts)
    captions = pipeline.store.load(layer, "caption", pipeline.key("caption", layer), Captions)
    entries = [entry for entry in concepts.neurons if entry.neuron in wanted]
    captioned = {entry.neuron: [caption.text for caption in entry.captions] for entry in captions.neurons}
    result = {
        "neurons": count,
        "llm_requests_per_neuron": round(counts["llm_requests"] / count, 2),
        "reasks_per_neuron": round(counts["reasks"] / count, 2),
        "rejected": {kind: counts[f"rejected_{kind}"] for kind in REJECTIONS},
        "failed_neurons": counts["failed_neurons"],
        "completion_tokens_per_request": round(counts["completion_tokens"] / max(counts["llm_requests"], 1), 1),
        "seconds": manifest["seconds"],
        "labels": {entry.neuron: entry.concepts or entry.failed for entry in entries},
    }
    if details:
        result["details"] = {
            entry.neuron: {"captions": _tally(captioned.get(entry.neuron, [])), "rejected": entry.rejected}
            for entry in entries
        }
    return result


def _tally(captions: list[str]) -> str:
    """A neuron's captions, most frequent first, with counts: "lakeside x4; seashore or lakeside x2; ..."."""
    return "; ".join(f"{text} x{n}" if n > 1 else text for text, n in Counter(captions).most_common())


def _print(results: dict[str, Any]) -> None:
    for name, result in results.items():
        if not isinstance(result, dict) or "labels" not in result:
            print(f"{name}: {result}")
            continue
        summary = {key: value for key, value in result.items() if key not in ("labels", "details")}
        print(f"== {name}: {json.dumps(summary)}")
        if "details" in result:
            for neuron, concepts in result["labels"].items():
                details = result["details"][neuron]
                print(f"  {neuron:>3} {details['captions']}")
                print(f"      -> {concepts}")
                for reason in details["rejected"]:
                    print(f"      rejected {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-summarize", help="stages 1-3 cached here")
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: every case")
    parser.add_argument("--neurons", type=int, default=NEURONS, help="the first this many neurons of each layer")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--labels", action="store_true", help="print every neuron's captions and labels")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.out, args.case, args.neurons, args.set, details=args.labels)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
