"""Neurons as classifiers for new concepts (DnD, appendix B.8; method.md, "Extensions published with the method").

A description is useful if it predicts what the neuron responds to. Given a labelled image set the network was not
trained to classify (any ``<class>/<image>`` folder tree: CIFAR-10, CIFAR-100, ...), for every class *c*:

1. *c*'s name (its folder name, ``_`` read as a space) and every labelled neuron's description (its first label) are
   embedded in a text space; the neuron whose description is nearest to *c* (highest cosine similarity) is *c*'s
   classifier;
2. that neuron's activation on each image of the set (summarised as stage 1 does) is its score, and the **AUROC** of
   the score separating *c*'s images (1) from all others (0) measures how well the description found a neuron for
   *c*; 0.5 is chance;
3. the layer's result is the mean AUROC over the classes.

Ties, as we read the paper: where several neurons are equally near to a class (their similarities within
:data:`TIE_TOLERANCE`, which in practice means identical descriptions), none of them is preferred: the class's
AUROC is the mean of their AUROCs. Images with equal scores count half, as in the Mann–Whitney statistic
(:func:`~dnd.evaluate.metrics.roc_auc`, what ``sklearn.metrics.roc_auc_score`` gives).

The activations come from stage 1 itself, run with the labelled set as the probing set: recorded once, in batches,
cached in the stage store under a key of the network and the set, and reused by every later evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from dnd.activations import load_activations
from dnd.backends.container import Backends
from dnd.backends.embedders import TextEmbedder
from dnd.compare.readers import LabelSet
from dnd.config import RunConfig
from dnd.data import ProbeSet
from dnd.errors import DnDError
from dnd.evaluate.metrics import roc_auc
from dnd.evaluate.output import write_csv_or_json
from dnd.pipeline import Pipeline

#: Neurons whose descriptions are this close in cosine similarity to a class's best are tied for it.
TIE_TOLERANCE = 1e-6
CSV_COLUMNS = ("source", "layer", "embedder", "class", "images", "units", "label", "similarity", "auroc")
#: What one row of the CSV results holds.
CSV_ROW = "class and text space"


class ClassMatch(BaseModel):
    """One class of the labelled set and the neuron(s) whose description is nearest to its name."""

    class_name: str = Field(description="The class as embedded: its folder name with '_' read as a space.")
    images: int = Field(description="Images of this class in the set (the positives).")
    units: list[int] = Field(description="The nearest neurons: one, or several tied (see TIE_TOLERANCE).")
    labels: list[str] = Field(description="Their descriptions, in the order of units.")
    similarity: float = Field(description="Cosine similarity of the nearest description to the class name.")
    aurocs: list[float] = Field(description="Each nearest neuron's AUROC for this class, in the order of units.")
    auroc: float = Field(description="The class's AUROC: the mean of aurocs.")


class ClassifierResult(BaseModel):
    """Every class of a labelled set matched to a neuron of one layer, in one text space."""

    source: str
    layer: str
    embedder: str
    images_folder: str
    n_images: int = Field(description="Readable images of the set, all classes.")
    classes: list[ClassMatch]
    mean_auroc: float = Field(description="Mean of the classes' AUROCs.")


class ClassifierEvaluation(BaseModel):
    """The results in each text space, with what they share."""

    results: list[ClassifierResult]
    labelled_units: int = Field(description="Neurons of the layer with a description (the candidates).")
    skipped_images: int = Field(description="Unreadable images of the set, left out.")


def evaluate_classifiers(
    config: RunConfig,
    labels: LabelSet,
    layer: str,
    images: Path,
    embedders: Iterable[TextEmbedder],
    backends: Backends | None = None,
) -> ClassifierEvaluation:
    """Match every class of the labelled folder tree ``images`` to the nearest-described neuron of ``layer`` (among
    those ``labels`` describes) in each of ``embedders``' spaces, and score it by AUROC on the set.

    ``config`` names the network (and how stage 1 summarises the layer); its probing set is replaced by ``images``.
    ``backends`` defaults to ``Backends`` of that config. ``embedders`` is iterated only after the checks and the
    recording. Raises :class:`DnDError` when the layer is not in ``labels``, ``images`` is not a tree of at least two
    class folders, or a described neuron is beyond the layer's size.
    """
    # 1. The candidates: every neuron of the layer with a description.
    labels.check_layers([layer])
    rows = labels.units(layer)
    units = sorted(rows)
    descriptions = [rows[unit].labels[0] for unit in units]
    # 2. The layer's activations on the labelled set [n_images, n_neurons], by stage 1 with the set as the probe.
    labelled = labelled_set_config(config, images)
    pipeline = Pipeline(labelled, backends or Backends(labelled))
    activations, probe_indices = load_activations(pipeline.run_until("record", [layer])[layer])
    probe = pipeline.context.probe
    check_class_folders(probe, images)
    beyond = [unit for unit in units if unit >= activations.shape[1]]
    if beyond:
        raise DnDError(
            f"{labels.name} describes units {beyond[:5]} of {layer}, but this network's {layer} has "
            f"{activations.shape[1]} neurons: is the label file for the network in the config?"
        )
    classes = torch.tensor(probe.labels)[probe_indices]  # [n_images]: class index of each recorded row
    class_texts = [name.replace("_", " ") for name in probe.class_names]
    # 3. Per text space: the nearest description(s) per class, and the AUROC of their activations.
    results = []
    for embedder in embedders:
        vectors = embedder.embed(class_texts + descriptions)  # rows L2-normalised
        similarity = vectors[: len(class_texts)] @ vectors[len(class_texts) :].T  # [n_classes, n_units]
        matches = [
            _match(index, name, similarity[index], units, descriptions, activations, classes)
            for index, name in enumerate(class_texts)
        ]
        results.append(
            ClassifierResult(
                source=labels.source,
                layer=layer,
                embedder=embedder.name,
                images_folder=str(images),
                n_images=activations.shape[0],
                classes=matches,
                mean_auroc=sum(match.auroc for match in matches) / len(matches),
            )
        )
    skipped = len(probe) - activations.shape[0]
    return ClassifierEvaluation(results=results, labelled_units=len(units), skipped_images=skipped)


def labelled_set_config(config: RunConfig, images: Path) -> RunConfig:
    """``config`` with the labelled folder tree ``images`` as its whole probing set (class = top-level folder)."""
    probe = config.probe.model_copy(update={"kind": "folder", "path": images, "limit": None})
    return config.model_copy(update={"probe": probe})


def _match(
    index: int,
    name: str,
    similarity: torch.Tensor,
    units: list[int],
    descriptions: list[str],
    activations: torch.Tensor,
    classes: torch.Tensor,
) -> ClassMatch:
    """Class ``index`` against its nearest description(s): ``similarity [n_units]`` of its name to each description,
    ``activations [n_images, n_neurons]`` and ``classes [n_images]`` of the set."""
    best = similarity.max()
    tied = (similarity >= best - TIE_TOLERANCE).nonzero().flatten().tolist()
    positive = classes == index
    aurocs = [roc_auc(activations[positive, units[t]], activations[~positive, units[t]]).item() for t in tied]
    return ClassMatch(
        class_name=name,
        images=int(positive.sum()),
        units=[units[t] for t in tied],
        labels=[descriptions[t] for t in tied],
        similarity=best.item(),
        aurocs=aurocs,
        auroc=sum(aurocs) / len(aurocs),
    )


def check_class_folders(probe: ProbeSet, images: Path) -> None:
    """Raise :class:`DnDError` unless ``probe`` (read from ``images``) is a class-folder tree of two or more classes."""
    if probe.labels is None or len(probe.class_names) < 2:
        raise DnDError(
            f"{images} must hold one folder per class with the images inside (<class>/<image>, e.g. "
            f"../shared/data/cifar10-test), at least two classes and no image at its top level"
        )


def write_results(evaluation: ClassifierEvaluation, path: Path) -> None:
    """``.csv``: one row per class and text space (tied units joined by spaces, their labels by ' | ');
    ``.json``: everything."""
    rows = (
        [
            result.source,
            result.layer,
            result.embedder,
            match.class_name,
            match.images,
            " ".join(map(str, match.units)),
            " | ".join(match.labels),
            match.similarity,
            match.auroc,
        ]
        for result in evaluation.results
        for match in result.classes
    )
    write_csv_or_json(path, evaluation, CSV_ROW, CSV_COLUMNS, rows)
