"""``dnd evaluate``: label sets scored quantitatively (final-layer, cosy, classifiers, simulation, ablation).

Each command checks its input (``--out`` first), calls its evaluation in ``dnd.evaluate`` and prints its tables
(``dnd.cli.tables``). Heavy modules are imported inside the commands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape

from dnd.cli import spaces, tables
from dnd.cli.console import SHOWN_WARNINGS, warn_unparsed, wrapped_err, wrapped_out
from dnd.cli.options import BinsOption, DeviceOption, EmbedderOption, PaperEmbedderOption, check_out
from dnd.errors import DnDError
from dnd.neurons import parse_neurons

if TYPE_CHECKING:
    from dnd.evaluate.final_layer import GroundTruth

LabelSourceArgument = Annotated[
    str,
    typer.Argument(
        help="Label file (PATH, PATH:LAYER or a quoted glob, as for compare) or one of our runs' score-<key> folders.",
        show_default=False,
    ),
]
LabelledLayerOption = Annotated[
    str, typer.Option("--layer", "-l", help="Layer module path, as the label file names it.", show_default=False)
]
ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="YAML config naming the network the labels describe.", show_default=False),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set probe.batch_size=256.", show_default=False),
]
ShufflesOption = Annotated[
    int, typer.Option("--shuffles", min=1, help="Seeded draws of the shuffled-labels baseline (the null).")
]
ClassFoldersOption = Annotated[
    Path,
    typer.Option(
        "--images",
        help="A labelled image set: one folder per class (<class>/<image>), e.g. ../shared/data/cifar10-test; for "
        "ablation the network's own classes (class k = the k-th folder in sorted order = output k).",
        show_default=False,
    ),
]
#: An evaluation's results, as its ``write_results`` takes them.
Results = TypeVar("Results")


def final_layer(
    labels: Annotated[str, typer.Argument(help="Label file: PATH or PATH:LAYER.", show_default=False)],
    classes: Annotated[
        Path,
        typer.Option(
            "--classes",
            help="Class names, line k = class k (e.g. imagenet_labels.txt, categories_places365.txt).",
            show_default=False,
        ),
    ],
    embedder: PaperEmbedderOption = None,
    ground_truth: Annotated[
        list[str] | None,
        typer.Option(
            "--ground-truth",
            "-g",
            help="Reading of a class line (repeatable): first-synonym ('tench' of 'tench, Tinca tinca') or "
            "full-line (the whole line, as the DnD authors compare). Default: both.",
            show_default=False,
        ),
    ] = None,
    layer: Annotated[
        str | None, typer.Option("--layer", "-l", help="The output layer, when the file has several.")
    ] = None,
    bins: BinsOption = 10,
    device: DeviceOption = "auto",
) -> None:
    """Final-layer evaluation: mean cosine similarity between each output unit's label and its class name.

    Example: dnd evaluate final-layer ../shared/reference/dnd/resnet50_imagenet_broden_fc.csv
    --classes ../shared/reference/concept-sets/imagenet_labels.txt --embedder minilm
    """
    from dnd.compare.readers import read_label_source
    from dnd.evaluate.final_layer import evaluate_final_layer, read_class_names

    truths = _ground_truths(ground_truth)
    label_set = read_label_source(labels)
    warn_unparsed(label_set)
    class_names = {truth: read_class_names(classes, truth) for truth in truths}
    text_spaces = spaces.evaluation_spaces(embedder, device)
    results = evaluate_final_layer(label_set, class_names, text_spaces, bins, layer)
    for truth in truths:
        wrapped_out.print(tables.final_layer(label_set.name, truth, results))
    spaces.report_stand_ins(text_spaces)


def cosy(
    labels: LabelSourceArgument,
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            help="YAML config: the network, the probing set (the control images) and the protocol (cosy.*).",
            show_default=False,
        ),
    ],
    layer: LabelledLayerOption,
    neurons: Annotated[
        str | None,
        typer.Option("--neurons", "-n", help="Neurons to evaluate, e.g. 0-63 or 1,5,7-9; default: every labelled one."),
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results: .csv (one row per neuron) or .json (all).")
    ] = None,
    lowest: Annotated[
        int, typer.Option("--lowest", min=0, help="Neurons listed whose labels drive them least (lowest AUC).")
    ] = 10,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set cosy.images_per_label=20.", show_default=False),
    ] = None,
) -> None:
    """CoSy: per neuron, AUC and MAD of its activations on images generated from its label against the probing set.

    By default the published protocol: 50 images per label from SDXL base 1.0 with the prompt "realistic photo of a
    close up of {description}". --set cosy.generator=sd15 or sd-turbo is cheaper but not comparable with published
    numbers; cosy.generator=synthesize uses the config's synthesize.* settings. Images are made once per distinct
    label and reused by later evaluations.

    Example: dnd evaluate cosy ../shared/reference/clip-dissect/resnet50_imagenet_broden.csv
    --config configs/resnet50_imagenet.yaml --layer layer4 --neurons 0-63 --out cosy.csv
    """
    from dnd.compare.readers import read_label_source
    from dnd.config import load_config
    from dnd.evaluate.cosy import CSV_ROW, evaluate_cosy, write_results

    check_out(out_path, CSV_ROW)
    label_set = read_label_source(labels)
    warn_unparsed(label_set)
    result = evaluate_cosy(load_config(config, set_), label_set, layer, parse_neurons(neurons))
    if result.unlabelled:
        shown = ", ".join(map(str, result.unlabelled[:SHOWN_WARNINGS]))
        more = f" and {len(result.unlabelled) - SHOWN_WARNINGS} more" if len(result.unlabelled) > SHOWN_WARNINGS else ""
        wrapped_err.print(f"[yellow]no label in {label_set.name}, not evaluated:[/] {shown}{more}", highlight=False)
    wrapped_out.print(tables.cosy_summary(label_set.name, layer, result))
    if lowest:
        wrapped_out.print(tables.cosy_lowest(layer, result, lowest))
    wrapped_out.print(
        f"images: {result.images_generated} generated, {result.images_reused} reused, by {escape(result.generator)}",
        highlight=False,
    )
    if not result.deviations:
        wrapped_out.print(
            "protocol: published (CoSy's generator, image count and prompt): comparable numbers", highlight=False
        )
    else:
        wrapped_out.print(
            f"[bold yellow]protocol: not the published one[/] ({escape(', '.join(result.deviations))}): these numbers "
            f"are not comparable with published CoSy numbers",
            highlight=False,
        )
    _write(out_path, write_results, result)


def classifiers(
    labels: LabelSourceArgument,
    config: ConfigOption,
    layer: LabelledLayerOption,
    images: ClassFoldersOption,
    embedder: PaperEmbedderOption = None,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write results: .csv (one row per class and space) or .json (all)."),
    ] = None,
    device: DeviceOption = "auto",
    set_: SetOption = None,
) -> None:
    """Neurons as classifiers (DnD appendix B.8): per class of a labelled image set, the neuron whose description is
    nearest to the class name, and the AUROC of its activation as a one-vs-rest classifier; the mean over classes.

    The network's activations on the set are recorded once (stage 1, the set as the probe) and reused later.

    Example: dnd evaluate classifiers outputs/cifar10_resnet20/layer3/score-<key> --config configs/cifar10_resnet20.yaml
    --layer layer3 --images ../shared/data/cifar10-test --embedder minilm
    """
    from dnd.compare.readers import read_label_source
    from dnd.config import load_config
    from dnd.evaluate.classifiers import CSV_ROW, evaluate_classifiers, write_results

    check_out(out_path, CSV_ROW)
    label_set = read_label_source(labels)
    warn_unparsed(label_set)
    if not images.is_dir():
        raise DnDError(f"--images {images}: no such folder (give a labelled image set, one folder per class)")
    run_config = load_config(config, set_)
    text_spaces = spaces.evaluation_spaces(embedder, device)
    evaluation = evaluate_classifiers(run_config, label_set, layer, images, text_spaces)
    for result in evaluation.results:
        wrapped_out.print(tables.classifiers(layer, images.name, result))
    wrapped_out.print(
        f"{evaluation.labelled_units} neurons of {layer} described in {escape(label_set.name)} were candidates; "
        f"{evaluation.results[0].n_images} images"
        + (f" ({evaluation.skipped_images} unreadable, left out)" if evaluation.skipped_images else ""),
        highlight=False,
    )
    spaces.report_stand_ins(text_spaces)
    _write(out_path, write_results, evaluation)


def simulation(
    labels: LabelSourceArgument,
    config: ConfigOption,
    layer: LabelledLayerOption,
    simulator: Annotated[
        str,
        typer.Option(
            "--simulator",
            help="Image-text model predicting activations from labels: auto (SigLIP ViT-SO400M-14-384 where it "
            "loads, else captions), captions (offline: MiniLM similarity of the label with each image's caption by "
            "the config's captioner), clip (embed.clip_model), or any transformers image-text model id or folder.",
        ),
    ] = "auto",
    shuffles: ShufflesOption = 5,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results: .csv (one row per neuron) or .json (all).")
    ] = None,
    set_: SetOption = None,
) -> None:
    """Simulation: per neuron, the correlation between its held-out activations and those its label predicts
    (image-text similarity of label and image), beside the shuffled, constant and most-frequent-caption baselines.

    The probing images are split into fit and held-out halves by a seeded hash of their ids (seed: the config's);
    scores are over the held-out half. The baseline of most frequent captions reads the config's caption stage
    (made first if missing). A second table gives the labels' Pearson minus each baseline's, neuron by neuron, with
    a seeded 95% bootstrap interval.

    Example: dnd evaluate simulation outputs/offline/blocks.10/score-<key> --config configs/offline.yaml
    --layer blocks.10 --simulator captions --out simulation.csv
    """
    from dnd.compare.readers import read_label_source
    from dnd.config import load_config
    from dnd.evaluate.baselines import quality_sources, run_captions
    from dnd.evaluate.simulation import CSV_ROW, GOOD_CORRELATION, evaluate_simulation, write_results
    from dnd.image_embeddings import image_text_space
    from dnd.pipeline import Pipeline

    check_out(out_path, CSV_ROW)
    label_set = read_label_source(labels)
    warn_unparsed(label_set)
    label_set.check_layers([layer])
    pipeline = Pipeline(load_config(config, set_))
    space, stand_in = image_text_space(simulator, pipeline.backends)
    captions = run_captions(pipeline, layer, sorted(label_set.units(layer)))
    sources = quality_sources(label_set, layer, captions, pipeline.config.seed, shuffles)
    evaluation = evaluate_simulation(pipeline, sources, layer, space)
    wrapped_out.print(tables.simulation(layer, space.name, evaluation, GOOD_CORRELATION))
    wrapped_out.print(tables.versus_first(evaluation.results, "Pearson", "neuron", "neurons"))
    wrapped_out.print(f"simulator: {escape(evaluation.simulator)}", highlight=False)
    if stand_in is not None:
        wrapped_out.print(
            f"[bold yellow]note:[/] the offline stand-in simulated ({escape(stand_in)}): it sees an image only through "
            f"its caption; for the protocol's simulator use --simulator google/siglip-so400m-patch14-384 (or clip) "
            f"where the model loads",
            highlight=False,
        )
    _write(out_path, write_results, evaluation)


def ablation(
    labels: LabelSourceArgument,
    config: ConfigOption,
    layer: LabelledLayerOption,
    images: ClassFoldersOption,
    k: Annotated[int, typer.Option("--k", min=1, help="Neurons zeroed per class.")] = 3,
    random_draws: Annotated[
        int, typer.Option("--random-draws", min=1, help="Seeded draws of the random-neurons baseline.")
    ] = 5,
    shuffles: ShufflesOption = 5,
    embedder: EmbedderOption = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results: .csv (one row per class) or .json (all).")
    ] = None,
    device: DeviceOption = "auto",
    set_: SetOption = None,
) -> None:
    """Ablation: per class, zero the k neurons whose labels are nearest the class name and measure the network's
    accuracy on that class (targeted drop) and on the others (untargeted drop); score = targeted − untargeted.

    Reported beside the labels: random neurons and the shuffled, constant and most-frequent-caption baselines (the
    last from the config's caption stage, made first if missing), and in a second table the labels' score minus
    each of theirs, class by class, with a seeded 95% bootstrap interval. Each ablation's predictions are cached.

    Example: dnd evaluate ablation outputs/cifar10_resnet20/layer3/score-<key> --config configs/cifar10_resnet20.yaml
    --layer layer3 --images ../shared/data/cifar10-test --k 3 --out ablation.csv
    """
    from dnd.compare.readers import read_label_source
    from dnd.config import load_config
    from dnd.evaluate.ablation import CSV_ROW, evaluate_ablation, write_results
    from dnd.evaluate.baselines import quality_sources, run_captions
    from dnd.pipeline import Pipeline

    check_out(out_path, CSV_ROW)
    if not images.is_dir():
        raise DnDError(f"--images {images}: no such folder (give the network's classes, one folder per class)")
    label_set = read_label_source(labels)
    warn_unparsed(label_set)
    label_set.check_layers([layer])
    run_config = load_config(config, set_)
    captions = run_captions(Pipeline(run_config), layer, sorted(label_set.units(layer)))
    sources = quality_sources(label_set, layer, captions, run_config.seed, shuffles)
    space = next(iter(spaces.embedders(embedder, device)))  # the first --embedder: one space chooses the neurons
    evaluation = evaluate_ablation(run_config, sources, layer, images, space, k, random_draws)
    wrapped_out.print(tables.ablation(layer, space.name, images.name, evaluation))
    wrapped_out.print(tables.versus_first(evaluation.results, "score", "class", "classes"))
    _write(out_path, write_results, evaluation)


def _write(path: Path | None, write_results: Callable[[Results, Path], None], results: Results) -> None:
    """Write ``results`` with their evaluation's ``write_results`` where ``--out`` was given, and say so."""
    if path is not None:
        write_results(results, path)
        wrapped_out.print(f"wrote {path}", highlight=False)


def _ground_truths(values: list[str] | None) -> list[GroundTruth]:
    """The ``--ground-truth`` readings, in canonical order (default: all); raises :class:`DnDError` naming them."""
    from dnd.evaluate.final_layer import GROUND_TRUTHS

    unknown = [value for value in values or [] if value not in GROUND_TRUTHS]
    if unknown:
        raise DnDError(f"--ground-truth {unknown[0]!r}: choose {' or '.join(GROUND_TRUTHS)} (repeatable)")
    return [truth for truth in GROUND_TRUTHS if not values or truth in values]
