"""Commands that compare and evaluate label sets: ``compare``, ``clip-dissect``, ``evaluate final-layer``, ``evaluate
cosy``, ``evaluate classifiers``, ``evaluate simulation``, ``evaluate ablation``.

Thin like the rest of the CLI: parse, call the library, print. ``dnd.cli`` registers them and turns a
:class:`~dnd.errors.DnDError` into one clear message. Heavy modules are imported inside the commands.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dnd.config import EmbedConfig
from dnd.errors import DnDError
from dnd.layout import CLIP_DISSECT_FILE
from dnd.neurons import parse_neurons

if TYPE_CHECKING:
    from dnd.backends.embedders import TextEmbedder
    from dnd.compare.agreement import SimilarityStats
    from dnd.compare.readers import LabelSet
    from dnd.evaluate.cosy import MetricStats
    from dnd.evaluate.final_layer import GroundTruth

out = Console()
err = Console(stderr=True)

#: Bars of the distribution column, lowest to highest count.
SPARK = " ▁▂▃▄▅▆▇█"
#: Unparsed rows listed per file (the rest are counted).
SHOWN_WARNINGS = 10

EmbedderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--embedder",
        "-e",
        help="Text-embedding space (repeatable): minilm (offline, from its package), clip (embed.clip_model), "
        "mpnet (embed.sentence_model), or a model id or folder. Default: minilm.",
        show_default=False,
    ),
]
PaperEmbedderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--embedder",
        "-e",
        help="Text-embedding space (repeatable): clip (embed.clip_model), mpnet (embed.sentence_model), minilm "
        "(offline, from its package), or a model id or folder. Default: clip and mpnet, the published numbers' "
        "spaces; where one cannot be loaded, minilm stands in and the output says so.",
        show_default=False,
    ),
]
BinsOption = Annotated[int, typer.Option("--bins", min=1, help="Histogram bins over similarity −1…1.")]
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
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DEFAULT_EMBEDDER = "minilm"


def compare(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Two or more label files: PATH, PATH:LAYER (file without a layer column), or a quoted glob "
            "whose files form one set ('dnd/*_layer?.csv').",
            show_default=False,
        ),
    ],
    embedder: EmbedderOption = None,
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", "-l", help="Compare only this layer (repeatable); default: every shared layer."),
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results: .csv (per-layer summary) or .json (all).")
    ] = None,
    top_disagreements: Annotated[
        int, typer.Option("--top-disagreements", min=0, help="Neurons listed where the labels differ most.")
    ] = 10,
    bins: BinsOption = 10,
    device: DeviceOption = "auto",
) -> None:
    """Per-layer agreement of two or more label sets: cosine similarity of each neuron's first labels.

    Example: dnd compare '../shared/reference/dnd/resnet50_imagenet_broden_layer?.csv'
    ../shared/reference/clip-dissect/resnet50_imagenet_broden.csv --embedder minilm --out agreement.json
    """
    from dnd.compare.agreement import compare_label_sets, write_results
    from dnd.compare.readers import read_label_source

    label_sets = [read_label_source(source) for source in sources]
    for label_set in label_sets:
        _print_warnings(label_set)
    embedders = _embedders(embedder, device)
    results = compare_label_sets(label_sets, embedders, bins, layer)
    for sources_pair in dict.fromkeys(result.sources for result in results):
        table = _stats_table(f"{sources_pair[0]}  vs  {sources_pair[1]}", ["layer", "embedder"])
        for result in results:
            if result.sources == sources_pair:
                table.add_row(result.layer, result.embedder, *_stats_cells(result.stats))
        out.print(table)
    if top_disagreements:
        for result in results:
            table = Table(
                title=f"most disagreeing: {result.layer}, {result.embedder}", title_justify="left", box=box.SIMPLE_HEAD
            )
            for column in ("unit", "similarity", *result.sources):
                table.add_column(column, justify="right" if column in ("unit", "similarity") else "left")
            for neuron in result.most_disagreeing(top_disagreements):
                table.add_row(str(neuron.unit), f"{neuron.similarity:.3f}", *map(escape, neuron.labels))
            out.print(table)
    if out_path is not None:
        write_results(results, out_path)
        out.print(f"wrote {out_path}", highlight=False)


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
    _print_warnings(label_set)
    class_names = {truth: read_class_names(classes, truth) for truth in truths}
    spaces = _evaluation_spaces(embedder, device)
    results = evaluate_final_layer(label_set, class_names, spaces, bins, layer)
    for truth in truths:
        title = f"{label_set.name}, {results[0].layer}: labels vs class names ({truth})"
        table = _stats_table(title, ["embedder"])
        for result in results:
            if result.ground_truth == truth:
                table.add_row(result.embedder, *_stats_cells(result.stats))
        out.print(table)
    _report_stand_ins(spaces)


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
    from dnd.evaluate.output import check_out_path

    if out_path is not None:
        check_out_path(out_path, CSV_ROW)
    label_set = read_label_source(labels)
    _print_warnings(label_set)
    run_config = load_config(config, set_)
    result = evaluate_cosy(run_config, label_set, layer, parse_neurons(neurons))
    if result.unlabelled:
        shown = ", ".join(map(str, result.unlabelled[:SHOWN_WARNINGS]))
        more = f" and {len(result.unlabelled) - SHOWN_WARNINGS} more" if len(result.unlabelled) > SHOWN_WARNINGS else ""
        err.print(f"[yellow]no label in {label_set.name}, not evaluated:[/] {shown}{more}", highlight=False)
    table = Table(
        title=f"{label_set.name}: CoSy on {layer}, {result.images_per_label} images per label vs "
        f"{result.n_control} probing images",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("layer", "n", "AUC mean", "median", "std", "MAD mean", "median", "std"):
        table.add_column(column, justify="left" if column == "layer" else "right", no_wrap=True)
    table.add_row(result.layer, str(len(result.neurons)), *_metric_cells(result.auc), *_metric_cells(result.mad))
    out.print(table)
    if lowest:
        table = Table(title=f"lowest AUC: {layer}", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("unit", "AUC", "MAD", "label"):
            table.add_column(column, justify="left" if column == "label" else "right")
        for neuron in result.lowest(lowest):
            table.add_row(str(neuron.unit), f"{neuron.auc:.3f}", _number(neuron.mad, 2), escape(neuron.label))
        out.print(table)
    out.print(
        f"images: {result.images_generated} generated, {result.images_reused} reused, by {escape(result.generator)}",
        highlight=False,
    )
    if not result.deviations:
        out.print("protocol: published (CoSy's generator, image count and prompt): comparable numbers", highlight=False)
    else:
        out.print(
            f"[bold yellow]protocol: not the published one[/] ({escape(', '.join(result.deviations))}): these numbers "
            f"are not comparable with published CoSy numbers",
            highlight=False,
        )
    if out_path is not None:
        write_results(result, out_path)
        out.print(f"wrote {out_path}", highlight=False)


def classifiers(
    labels: LabelSourceArgument,
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="YAML config naming the network the labels describe.", show_default=False),
    ],
    layer: LabelledLayerOption,
    images: Annotated[
        Path,
        typer.Option(
            "--images",
            help="A labelled image set: one folder per class (<class>/<image>), e.g. ../shared/data/cifar10-test.",
            show_default=False,
        ),
    ],
    embedder: PaperEmbedderOption = None,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write results: .csv (one row per class and space) or .json (all)."),
    ] = None,
    device: DeviceOption = "auto",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set probe.batch_size=256.", show_default=False),
    ] = None,
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
    from dnd.evaluate.output import check_out_path

    if out_path is not None:
        check_out_path(out_path, CSV_ROW)
    label_set = read_label_source(labels)
    _print_warnings(label_set)
    if not images.is_dir():
        raise DnDError(f"--images {images}: no such folder (give a labelled image set, one folder per class)")
    run_config = load_config(config, set_)
    spaces = _evaluation_spaces(embedder, device)
    evaluation = evaluate_classifiers(run_config, label_set, layer, images, spaces)
    for result in evaluation.results:
        table = Table(
            title=f"{layer} as classifiers of {images.name} ({result.embedder}): mean AUROC {result.mean_auroc:.4f}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        for column in ("class", "images", "AUROC", "sim.", "neuron", "nearest description"):
            justify = "left" if column in ("class", "nearest description") else "right"
            table.add_column(column, justify=justify, overflow="fold")
        for match in result.classes:
            tied = f" +{len(match.units) - 1}" if len(match.units) > 1 else ""
            table.add_row(
                escape(match.class_name),
                str(match.images),
                f"{match.auroc:.4f}",
                f"{match.similarity:.3f}",
                f"{match.units[0]}{tied}",
                escape(match.labels[0]),
            )
        if any(len(match.units) > 1 for match in result.classes):
            table.caption = "+n: n more neurons as near (ties); the class's AUROC is their mean (--out lists all)"
            table.caption_justify = "left"
        out.print(table)
    out.print(
        f"{evaluation.labelled_units} neurons of {layer} described in {escape(label_set.name)} were candidates; "
        f"{evaluation.results[0].n_images} images"
        + (f" ({evaluation.skipped_images} unreadable, left out)" if evaluation.skipped_images else ""),
        highlight=False,
    )
    _report_stand_ins(spaces)
    if out_path is not None:
        write_results(evaluation, out_path)
        out.print(f"wrote {out_path}", highlight=False)


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
    (made first if missing).

    Example: dnd evaluate simulation outputs/offline/blocks.10/score-<key> --config configs/offline.yaml
    --layer blocks.10 --simulator captions --out simulation.csv
    """
    from dnd.compare.readers import read_label_source
    from dnd.config import load_config
    from dnd.evaluate.baselines import quality_sources, run_captions
    from dnd.evaluate.output import check_out_path
    from dnd.evaluate.simulation import CSV_ROW, GOOD_CORRELATION, evaluate_simulation, write_results
    from dnd.image_embeddings import image_text_space
    from dnd.pipeline import Pipeline

    if out_path is not None:
        check_out_path(out_path, CSV_ROW)
    label_set = read_label_source(labels)
    _print_warnings(label_set)
    label_set.check_layers([layer])
    pipeline = Pipeline(load_config(config, set_))
    space, stand_in = image_text_space(simulator, pipeline.backends)
    captions = run_captions(pipeline, layer, sorted(label_set.units(layer)))
    sources = quality_sources(label_set, layer, captions, pipeline.config.seed, shuffles)
    evaluation = evaluate_simulation(pipeline, sources, layer, space)
    table = Table(
        title=f"simulation of {layer}: held-out correlation of activations with {escape(space.name)} predictions "
        f"({evaluation.n_held_out} held-out images, {evaluation.n_fit} fit)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("labels", "n", "Pearson", "std", f"> {GOOD_CORRELATION}", "Spearman", "std"):
        table.add_column(column, justify="left" if column == "labels" else "right", no_wrap=True)
    for result in evaluation.results:
        draws = f" ×{result.draws}" if result.draws > 1 else ""
        pearson, spearman = result.pearson, result.spearman
        table.add_row(
            escape(result.source + draws),
            str(pearson.n),
            f"{pearson.mean:.4f}",
            f"{pearson.std:.3f}",
            f"{pearson.share_above:.0%}",
            f"{spearman.mean:.4f}",
            f"{spearman.std:.3f}",
        )
    out.print(table)
    out.print(f"simulator: {escape(evaluation.simulator)}", highlight=False)
    if stand_in is not None:
        out.print(
            f"[bold yellow]note:[/] the offline stand-in simulated ({escape(stand_in)}): it sees an image only through "
            f"its caption; for the protocol's simulator use --simulator google/siglip-so400m-patch14-384 (or clip) "
            f"where the model loads",
            highlight=False,
        )
    if out_path is not None:
        write_results(evaluation, out_path)
        out.print(f"wrote {out_path}", highlight=False)


def ablation(
    labels: LabelSourceArgument,
    config: ConfigOption,
    layer: LabelledLayerOption,
    images: Annotated[
        Path,
        typer.Option(
            "--images",
            help="The network's own classes as a labelled image set: one folder per class (<class>/<image>; class k "
            "= the k-th folder in sorted order = output k), e.g. ../shared/data/cifar10-test.",
            show_default=False,
        ),
    ],
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
    last from the config's caption stage, made first if missing). Each ablation's predictions are cached.

    Example: dnd evaluate ablation outputs/cifar10_resnet20/layer3/score-<key> --config configs/cifar10_resnet20.yaml
    --layer layer3 --images ../shared/data/cifar10-test --k 3 --out ablation.csv
    """
    from dnd.compare.readers import read_label_source
    from dnd.config import load_config
    from dnd.evaluate.ablation import CSV_ROW, evaluate_ablation, write_results
    from dnd.evaluate.baselines import quality_sources, run_captions
    from dnd.evaluate.output import check_out_path
    from dnd.pipeline import Pipeline

    if out_path is not None:
        check_out_path(out_path, CSV_ROW)
    if not images.is_dir():
        raise DnDError(f"--images {images}: no such folder (give the network's classes, one folder per class)")
    label_set = read_label_source(labels)
    _print_warnings(label_set)
    label_set.check_layers([layer])
    run_config = load_config(config, set_)
    captions = run_captions(Pipeline(run_config), layer, sorted(label_set.units(layer)))
    sources = quality_sources(label_set, layer, captions, run_config.seed, shuffles)
    space = next(_embedders(embedder, device))  # the first --embedder: one text space chooses the neurons
    evaluation = evaluate_ablation(run_config, sources, layer, images, space, k, random_draws)
    table = Table(
        title=f"ablation of {layer}, k={evaluation.k} per class ({space.name}): accuracy on {images.name} "
        f"{evaluation.accuracy:.4f} before, {evaluation.n_images} images",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("labels", "targeted drop", "untargeted drop", "score"):
        table.add_column(column, justify="left" if column == "labels" else "right", no_wrap=True)
    for result in evaluation.results:
        draws = f" ×{result.draws}" if result.draws > 1 else ""
        cells = (result.targeted_drop, result.untargeted_drop, result.score)
        table.add_row(escape(result.source + draws), *(f"{value:.4f}" for value in cells))
    out.print(table)
    if out_path is not None:
        write_results(evaluation, out_path)
        out.print(f"wrote {out_path}", highlight=False)


def clip_dissect(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config of the run.", show_default=False)],
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer module path.", show_default=False)],
    concepts: Annotated[
        Path, typer.Option("--concepts", help="Concept set, one per line (e.g. 20k.txt).", show_default=False)
    ],
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help=f"Output CSV; default <output_dir>/<name>/<layer>/{CLIP_DISSECT_FILE}."),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Image-text model: clip (embed.clip_model, CLIP-Dissect's), captions (offline stand-in: MiniLM "
            "of each image's caption by the config's captioner), or any transformers image-text model id or folder.",
        ),
    ] = "clip",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set clip_dissect.top_k=50.", show_default=False),
    ] = None,
) -> None:
    """CLIP-Dissect baseline: soft-WPMI labels from the recorded activations, in CLIP-Dissect's CSV format.

    Example: dnd clip-dissect --config configs/offline.yaml --layer blocks.10
    --concepts ../shared/reference/concept-sets/20k.txt --out descriptions.csv
    """
    from dnd.clip_dissect import clip_dissect as run_clip_dissect
    from dnd.clip_dissect import read_concepts, write_descriptions
    from dnd.config import load_config
    from dnd.image_embeddings import image_text_space
    from dnd.pipeline import Pipeline

    run_config = load_config(config, set_)
    concept_list = read_concepts(concepts)
    pipeline = Pipeline(run_config)
    space = None if model == "clip" else image_text_space(model, pipeline.backends)[0]
    labels = run_clip_dissect(pipeline, layer, concept_list, space)
    path = out_path or pipeline.store.layer_dir(layer) / CLIP_DISSECT_FILE
    write_descriptions(labels, path)
    counts = Counter(row.labels[0] for row in labels.rows)
    common = ", ".join(f"{concept} ({n})" for concept, n in counts.most_common(5))
    out.print(
        f"[bold]{layer}[/]: {len(labels.rows)} neurons labelled from {len(concept_list)} concepts → {path}\n"
        f"most frequent: {escape(common)}",
        highlight=False,
    )


def _embedders(specs: list[str] | None, device: str) -> Iterator[TextEmbedder]:
    """The ``--embedder`` models, each loaded only when reached, so bad input fails before any model loads."""
    from dnd.backends.embedders import load_text_embedder
    from dnd.backends.targets import resolve_device

    resolved = resolve_device(device)
    for spec in dict.fromkeys(specs or [DEFAULT_EMBEDDER]):
        yield load_text_embedder(spec, EmbedConfig(), resolved)


def _evaluation_spaces(specs: list[str] | None, device: str) -> Iterable[TextEmbedder]:
    """The ``--embedder`` spaces of an evaluation; by default the paper's (see :class:`PaperTextSpaces`)."""
    from dnd.backends.embedders import PaperTextSpaces
    from dnd.backends.targets import resolve_device

    if specs:
        return _embedders(specs, device)
    return PaperTextSpaces(EmbedConfig(), resolve_device(device))


def _report_stand_ins(spaces: Iterable[TextEmbedder]) -> None:
    """Say, after the results, which paper spaces MiniLM stood in for and why (nothing if none)."""
    from dnd.backends.embedders import OFFLINE_SPACE, PaperTextSpaces

    if not isinstance(spaces, PaperTextSpaces) or not spaces.missing:
        return
    names = " and ".join(spaces.missing)
    out.print(
        f"[bold yellow]note:[/] {OFFLINE_SPACE} stands in for {names}, which could not be loaded here: its numbers "
        f"are not comparable with published {names} numbers. Run where the model(s) load (Hugging Face hub access "
        f"once, or embed.clip_model / embed.sentence_model set to local folders).",
        highlight=False,
    )
    for space, reason in spaces.missing.items():
        err.print(f"[yellow]{space}:[/] {escape(reason)}", highlight=False)


def _ground_truths(values: list[str] | None) -> list[GroundTruth]:
    """The ``--ground-truth`` readings, in canonical order (default: all); raises :class:`DnDError` naming them."""
    from dnd.evaluate.final_layer import GROUND_TRUTHS

    unknown = [value for value in values or [] if value not in GROUND_TRUTHS]
    if unknown:
        raise DnDError(f"--ground-truth {unknown[0]!r}: choose {' or '.join(GROUND_TRUTHS)} (repeatable)")
    return [truth for truth in GROUND_TRUTHS if not values or truth in values]


def _print_warnings(label_set: LabelSet) -> None:
    if not label_set.warnings:
        return
    err.print(f"[yellow]{len(label_set.warnings)} row(s) of {label_set.source} did not parse:[/]", highlight=False)
    for warning in label_set.warnings[:SHOWN_WARNINGS]:
        err.print(f"  {escape(warning)}", highlight=False)
    if len(label_set.warnings) > SHOWN_WARNINGS:
        err.print(f"  … and {len(label_set.warnings) - SHOWN_WARNINGS} more", highlight=False)


def _stats_table(title: str, keys: list[str]) -> Table:
    """A table of similarity statistics (min and max are in the --out files), compact enough for 80 columns."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in keys:
        table.add_column(column, min_width=len(column))
    for column in ("n", "mean", "std", "q1", "median", "q3"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("−1 … 1", no_wrap=True)
    return table


def _stats_cells(stats: SimilarityStats) -> list[str]:
    peak = max(stats.histogram) or 1
    spark = "".join(SPARK[round(count / peak * (len(SPARK) - 1))] for count in stats.histogram)
    quartiles = (f"{value:.3f}" for value in (stats.q1, stats.median, stats.q3))
    return [str(stats.n), f"{stats.mean:.4f}", f"{stats.std:.4f}", *quartiles, spark]


def _metric_cells(stats: MetricStats) -> list[str]:
    """Mean, median and std of a CoSy metric (— where it is defined for no neuron)."""
    return [_number(value, 3) for value in (stats.mean, stats.median, stats.std)]


def _number(value: float | None, digits: int) -> str:
    """``value`` rounded for a table; — for an undefined one (a MAD where the neuron is constant on the control)."""
    return "—" if value is None else f"{value:.{digits}f}"
