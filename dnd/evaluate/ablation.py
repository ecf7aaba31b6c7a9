"""Ablation: do the neurons whose labels name a class matter for recognising that class? (causal, as in MILAN's and
CLIP-Dissect's neuron-editing studies)

For a labelled image set whose classes are the network's own output classes (a ``<class>/`` folder tree; class *k*
is the *k*-th folder in sorted order, which is the network's output *k*, e.g. CIFAR-10's test set for a CIFAR-10
network):

1. for each class *c*, the ``k`` neurons of the layer whose first label is nearest to *c*'s name (its folder name,
   ``_`` read as a space) in a text space (ties: the lower unit);
2. those neurons are zeroed by a forward hook on the layer, and the network's accuracy is measured on every class
   before and after;
3. the **targeted drop** is the fall of *c*'s own accuracy, the **untargeted drop** the mean fall over the other
   classes; *c*'s score is targeted minus untargeted, and the layer's is the mean over classes.

A label set whose labels find the neurons a class depends on scores above the **random neurons** baseline reported
beside it: ``k`` neurons drawn at random (among the labelled ones) per class, several seeded draws. Every set after
the first gets the first's score minus its own, class by class, with a seeded 95 % bootstrap interval.

The work is one pass over the set per group of ablations: the layer's output is repeated once per ablation inside
the hook, so the layers before it run once per image however many ablations there are. Each ablation's predictions
are cached per network, image set, layer and zeroed units (item cache ``ablation``), so the same ablation is never
run twice, whichever label set asked for it.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from pydantic import BaseModel, Field

from dnd import layout
from dnd.backends.container import Backends
from dnd.backends.embedders import TextEmbedder
from dnd.batching import chunks
from dnd.compare.readers import LabelSet
from dnd.config import RunConfig
from dnd.data import UnreadableImage, batch_loader
from dnd.errors import DnDError
from dnd.evaluate.classifiers import check_class_folders, labelled_set_config
from dnd.evaluate.metrics import PairedDifference, paired_difference, scores_by_item
from dnd.evaluate.output import write_csv_or_json
from dnd.pipeline import Pipeline
from dnd.progress import track
from dnd.store import ItemCache, content_key

#: The item-cache namespace of ablated predictions.
ABLATION_CACHE = "ablation"
RANDOM = "random neurons"
#: Ablations run together in one pass (the layer's output repeated this many times in memory).
ABLATIONS_PER_PASS = 32
CSV_COLUMNS = ("source", "draw", "layer", "embedder", "class", "units", "labels", "own_before", "own_after")
CSV_COLUMNS += ("targeted_drop", "untargeted_drop", "score")
#: What one row of the CSV results holds.
CSV_ROW = "label set, draw and class"


class ClassAblation(BaseModel):
    class_name: str
    draw: int = Field(0, description="Which seeded draw of the label set (baselines have several).")
    units: list[int] = Field(description="The zeroed neurons, nearest description first.")
    labels: list[str]
    own_before: float = Field(description="Accuracy on the class before the ablation.")
    own_after: float
    targeted_drop: float = Field(description="own_before − own_after.")
    untargeted_drop: float = Field(description="Mean accuracy drop over the other classes.")
    score: float = Field(description="targeted_drop − untargeted_drop.")


class AblationResult(BaseModel):
    source: str
    draws: int
    targeted_drop: float = Field(description="Mean over classes (and draws).")
    untargeted_drop: float
    score: float
    first_minus_this: PairedDifference | None = Field(
        None, description="The first label set's score minus this one's, class by class, with a 95 % bootstrap interval"
    )
    classes: list[ClassAblation]


class AblationEvaluation(BaseModel):
    layer: str
    embedder: str
    k: int
    images_folder: str
    n_images: int = Field(description="Readable images of the set.")
    accuracy: float = Field(description="The network's accuracy on the set before any ablation.")
    results: list[AblationResult] = Field(description="The label sets in order given, then the random baseline.")


def evaluate_ablation(
    config: RunConfig,
    sources: dict[str, list[LabelSet]],
    layer: str,
    images: Path,
    embedder: TextEmbedder,
    k: int = 3,
    random_draws: int = 5,
    backends: Backends | None = None,
) -> AblationEvaluation:
    """Ablate, per class of the folder tree ``images``, the ``k`` neurons of ``layer`` that each label set of
    ``sources`` (name → its draws) names nearest to the class in ``embedder``'s space, and ``random_draws`` seeded
    draws of ``k`` random labelled neurons; see the module docstring.

    ``config`` names the network; its probing set is replaced by ``images``. Raises :class:`DnDError` when a set
    lacks the layer or labels units beyond it, ``k`` exceeds the layer or the labelled neurons, or the folders are
    not the network's classes.
    """
    if config.units.sae is not None or config.units.directions is not None:
        raise DnDError(
            "dnd evaluate ablation zeroes a layer's neurons, not SAE latents or directions: evaluate the labels of "
            "a run without units.sae / units.directions"
        )
    labelled = labelled_set_config(config, images)
    backends = backends or Backends(labelled)
    pipeline = Pipeline(labelled, backends)
    for draws in sources.values():
        for labels in draws:
            labels.check_layers([layer])
    probe = pipeline.context.probe
    check_class_folders(probe, images)
    n_neurons = _layer_width(pipeline, backends, layer)
    first = next(iter(sources.values()))[0]
    candidates = sorted(first.units(layer))
    _check_units(sources, layer, n_neurons, k, len(candidates))
    class_texts = [name.replace("_", " ") for name in probe.class_names]
    # 1. The neurons to zero: per label set and draw, the k nearest per class; per random draw, k labelled ones.
    chosen: dict[str, list[list[tuple[int, ...]]]] = {}
    texts = list(dict.fromkeys(row.labels[0] for draws in sources.values() for s in draws for row in s.rows))
    vectors = embedder.embed(class_texts + texts)
    class_vectors, row_of = vectors[: len(class_texts)], {text: i for i, text in enumerate(texts)}
    for name, draws in sources.items():
        chosen[name] = []
        for labels in draws:
            units = sorted(labels.units(layer))
            label_vectors = vectors[[len(class_texts) + row_of[labels.units(layer)[u].labels[0]] for u in units]]
            similarity = class_vectors @ label_vectors.T  # [n_classes, n_units]
            order = torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :k]
            chosen[name].append([tuple(units[i] for i in row) for row in order.tolist()])
    chosen[RANDOM] = [
        [
            tuple(candidates[i] for i in torch.randperm(len(candidates), generator=generator)[:k].tolist())
            for _ in class_texts
        ]
        for generator in (torch.Generator().manual_seed(config.seed + draw) for draw in range(random_draws))
    ]
    # 2. Every distinct ablation's predictions (and the network's own), computed once and cached.
    ablations = [(), *dict.fromkeys(units for draws in chosen.values() for draw in draws for units in draw)]
    predictions, truth = _predictions(pipeline, backends, layer, n_neurons, ablations)
    classes = torch.tensor(truth)
    correct = {units: predictions[units] == classes for units in ablations}  # [n_images] bool each
    per_class = {units: _class_accuracy(hits, classes, len(class_texts)) for units, hits in correct.items()}
    # 3. Drops per class, per label set and draw.
    before = per_class[()]
    results = []
    for name, draws in chosen.items():
        rows = []
        for draw, per_class_units in enumerate(draws):
            label_of = sources[name][draw].units(layer) if name in sources else first.units(layer)
            for c, units in enumerate(per_class_units):
                drop = before - per_class[units]  # [n_classes]
                others = torch.cat([drop[:c], drop[c + 1 :]]).mean().item()
                rows.append(
                    ClassAblation(
                        class_name=class_texts[c],
                        draw=draw,
                        units=list(units),
                        labels=[label_of[u].labels[0] for u in units],
                        own_before=before[c].item(),
                        own_after=per_class[units][c].item(),
                        targeted_drop=drop[c].item(),
                        untargeted_drop=others,
                        score=drop[c].item() - others,
                    )
                )
        results.append(
            AblationResult(
                source=name,
                draws=len(draws),
                targeted_drop=fmean(row.targeted_drop for row in rows),
                untargeted_drop=fmean(row.untargeted_drop for row in rows),
                score=fmean(row.score for row in rows),
                classes=rows,
            )
        )
    by_class = [scores_by_item([(row.class_name, row.score) for row in result.classes]) for result in results]
    for result, scores in zip(results[1:], by_class[1:], strict=True):
        result.first_minus_this = paired_difference(by_class[0], scores, config.seed)
    return AblationEvaluation(
        layer=layer,
        embedder=embedder.name,
        k=k,
        images_folder=str(images),
        n_images=len(truth),
        accuracy=correct[()].double().mean().item(),
        results=results,
    )


def _layer_width(pipeline: Pipeline, backends: Backends, layer: str) -> int:
    """The number of neurons of ``layer``, from one forward pass on the set's first readable image."""
    probe = pipeline.context.probe
    for index in range(len(probe)):
        try:
            image = probe.load(index)
        except UnreadableImage:
            continue
        output = backends.target.capture(backends.target.preprocess(image).unsqueeze(0), [layer])[layer]
        return output.shape[2 if output.dim() == 3 else 1]
    raise DnDError(f"none of the {len(probe)} images of {pipeline.config.probe.path} can be read")


def _check_units(sources: dict[str, list[LabelSet]], layer: str, n_neurons: int, k: int, labelled: int) -> None:
    for draws in sources.values():
        draws[0].check_units(layer, n_neurons)
    if k > n_neurons:
        raise DnDError(f"--k {k} is larger than {layer}, which has {n_neurons} neurons: choose --k {n_neurons} or less")
    if k >= labelled:
        raise DnDError(
            f"--k {k} leaves no choice: only {labelled} neurons of {layer} are labelled; choose --k {labelled - 1} or "
            f"less, or label more neurons"
        )


def _predictions(
    pipeline: Pipeline, backends: Backends, layer: str, n_neurons: int, ablations: list[tuple[int, ...]]
) -> tuple[dict[tuple[int, ...], torch.Tensor], list[int]]:
    """``(predicted class of each readable image [n] per ablation, true class per image)``; cached ablations are read,
    the rest computed in passes of :data:`ABLATIONS_PER_PASS`."""
    config, probe = pipeline.config, pipeline.context.probe
    cache = ItemCache(layout.cache_dir(config.output_dir), ABLATION_CACHE)

    def key(units: tuple[int, ...]) -> str:
        identity = {"target": backends.target_identity(), "images": probe.fingerprint, "layer": layer}
        return content_key({**identity, "zeroed": sorted(units)})

    found: dict[tuple[int, ...], Any] = {units: cache.get(key(units)) for units in ablations}
    missing = [units for units, value in found.items() if value is None]
    if missing:
        computed = _run_ablations(pipeline, backends, layer, n_neurons, missing)
        for units, value in zip(missing, computed, strict=True):
            cache.put(key(units), value)
            found[units] = value
    rows = found[()]["rows"]
    truth = [probe.labels[row] for row in rows]  # type: ignore[index]
    return {units: torch.tensor(value["predictions"]) for units, value in found.items()}, truth


def _run_ablations(
    pipeline: Pipeline, backends: Backends, layer: str, n_neurons: int, ablations: list[tuple[int, ...]]
) -> list[dict[str, list[int]]]:
    """Run the whole set once per group of ablations; per ablation ``{"rows": readable probe indices, "predictions":
    predicted class per row}``."""
    config, probe, target = pipeline.config, pipeline.context.probe, backends.target
    masks = torch.ones(len(ablations), n_neurons)
    for index, units in enumerate(ablations):
        masks[index, list(units)] = 0
    size = config.probe.batch_size
    batches = chunks(range(len(probe)), size)
    loader = batch_loader(probe, target.preprocess, batches, config.probe.num_workers)
    rows: list[int] = []
    predicted: list[list[torch.Tensor]] = [[] for _ in ablations]
    per_pass = ABLATIONS_PER_PASS
    for batch in track(loader, f"ablation {layer}: {len(ablations)} ablations", total=len(batches)):
        if batch.pixels is None:
            continue
        rows += batch.indices.tolist()
        start = 0
        while start < len(ablations):
            group = masks[start : start + per_pass]
            try:
                logits = _ablated_logits(pipeline, backends, layer, batch.pixels, group)  # [V, B, n_classes]
            except RuntimeError:
                if per_pass == 1:
                    raise
                per_pass = 1  # the layer's output meets earlier tensors (a skip connection): one ablation per pass
                continue
            for offset, classes in enumerate(logits.argmax(dim=-1)):
                predicted[start + offset].append(classes.cpu())
            start += len(group)
    return [{"rows": rows, "predictions": torch.cat(parts).tolist()} for parts in predicted]


def _ablated_logits(
    pipeline: Pipeline, backends: Backends, layer: str, pixels: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """The network's outputs ``[V, B, n_classes]`` on ``pixels [B, 3, H, W]`` with ``layer``'s neurons multiplied by
    each row of ``masks [V, n_neurons]`` (0: zeroed). Raises :class:`DnDError` when the outputs are not one score
    per class of the set."""
    target, n_classes = backends.target, len(pipeline.context.probe.class_names)

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        channel = 2 if output.dim() == 3 else 1  # tokens [B, T, C]: features last; else [B, C, ...]
        shape = [masks.shape[0]] + [1] * output.dim()
        shape[channel + 1] = masks.shape[1]
        repeated = output.unsqueeze(0) * masks.view(shape).to(output)
        return repeated.flatten(0, 1).contiguous(memory_format=_memory_format(output))

    handle = target.layer(layer).register_forward_hook(hook)
    try:
        outputs = target.forward(pixels)
    finally:
        handle.remove()
    if outputs.dim() != 2 or outputs.shape[1] != n_classes:
        raise DnDError(
            f"{target.name} gives outputs of shape {list(outputs.shape[1:])} per image, but the image set has "
            f"{n_classes} class folders: ablation needs the network's own classes as the folders (class k = the k-th "
            f"folder in sorted order = output k), e.g. the CIFAR-10 test set for a CIFAR-10 network"
        )
    return outputs.view(masks.shape[0], pixels.shape[0], n_classes)


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _class_accuracy(hits: torch.Tensor, classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Accuracy per class ``[n_classes]`` float64 from ``hits [n]`` (bool) and ``classes [n]``."""
    totals = torch.bincount(classes, minlength=n_classes).double()
    correct = torch.bincount(classes, weights=hits.double(), minlength=n_classes)
    return correct / totals.clamp(min=1)


def write_results(evaluation: AblationEvaluation, path: Path) -> None:
    """``.csv``: one row per label set, draw and class (units joined by spaces, labels by ' | '); ``.json``: all."""
    rows = (
        [
            result.source,
            row.draw,
            evaluation.layer,
            evaluation.embedder,
            row.class_name,
            " ".join(map(str, row.units)),
            " | ".join(row.labels),
            row.own_before,
            row.own_after,
            row.targeted_drop,
            row.untargeted_drop,
            row.score,
        ]
        for result in evaluation.results
        for row in result.classes
    )
    write_csv_or_json(path, evaluation, CSV_ROW, CSV_COLUMNS, rows)
