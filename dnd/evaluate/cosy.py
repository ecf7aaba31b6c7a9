"""CoSy (Kopf et al., NeurIPS 2024): does a neuron's label name what drives it? (method.md, section 3)

For a neuron with label *d*, ``cosy.images_per_label`` images are generated from the prompt of ``cosy.prompt_file``
(``prompts/cosy.md``) with *d* in place of ``{description}`` by the generator ``cosy.generator`` names (by default
the published protocol's, SDXL base 1.0: see :data:`~dnd.config.COSY_GENERATORS` and :func:`cosy_run_config`); the
control set is the probing set. With the neuron's activations ``s_1 … s_m`` on the images of its label and
``c_1 … c_n`` on the control images (each summarised as stage 1 does: ``record.summary`` / ``record.tokens``), two
scores, both higher-is-better, are computed by :func:`roc_auc` and :func:`mean_activation_difference`:

- **AUC**: the ROC-AUC of the activation as a score separating synthetic (1) from control (0) images;
- **MAD**: the difference of the two means in units of the control set's standard deviation.

The work, once per call (one layer, the requested neurons):

1. the control activations are stage 1's, recorded now or reused from the stage store;
2. each *distinct* label is generated once, however many neurons carry it. Image ``i`` of a prompt has stage 5's seed
   (a hash of run seed, prompt and ``i``) and stage 5's image-store key (generator name, prompt, seed), so images are
   generated once and reused by every later evaluation; the generator is loaded only when an image is missing;
3. the target network runs once over all synthetic images, in batches of ``probe.batch_size``, all neurons at once;
4. AUC and MAD per neuron (all neurons in one tensor operation), then their mean, median and spread over the layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from dnd.activations import StoredActivations, load_activations
from dnd.backends.container import Backends
from dnd.compare.readers import LabelSet
from dnd.config import RunConfig
from dnd.errors import DnDError
from dnd.evaluate.metrics import roc_auc
from dnd.evaluate.output import write_csv_or_json
from dnd.image_store import generate_missing, image_store, plan_images
from dnd.pipeline import Pipeline
from dnd.prompts import format_fix, read_prompt, single_prompt

#: The placeholder the prompt of ``cosy.prompt_file`` must hold.
PLACEHOLDER = "description"
#: MAD divides by the control set's sample standard deviation, which needs this many control images.
MIN_CONTROL_IMAGES = 2
CSV_COLUMNS = ("source", "layer", "unit", "label", "auc", "mad")
#: What one row of the CSV results holds.
CSV_ROW = "neuron"


# --- the metrics --------------------------------------------------------------------------------------------------


def mean_activation_difference(synthetic: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """MAD = ``(mean(synthetic) − mean(control)) / std(control)`` per leading index, float64 ``[...]``.

    Inputs as for :func:`roc_auc`, with ``n ≥ 2``. ``std`` is the *sample* standard deviation (``n − 1`` in its
    denominator): the control images are a sample standing in for natural images at large, so the unbiased estimate
    of their spread is the one to divide by; it is also torch's default ``std()``, which CoSy implementations call.
    With the hundreds of images of a real probing set the two estimates differ by well under 1 %. A neuron that is
    constant on the control set has no spread to measure in: its MAD is NaN (undefined) rather than a division by
    an invented unit.
    """
    control = control.double()
    spread = control.std(dim=-1, correction=1)
    difference = synthetic.double().mean(dim=-1) - control.mean(dim=-1)
    return torch.where(spread > 0, difference / spread, math.nan)


# --- results ------------------------------------------------------------------------------------------------------


class MetricStats(BaseModel):
    """One metric over a layer's neurons: its mean, median (linearly interpolated) and population std over the
    ``n`` neurons where it is defined (a MAD can be undefined); None when it is defined for none."""

    n: int
    mean: float | None
    median: float | None
    std: float | None

    @classmethod
    def of(cls, values: torch.Tensor) -> MetricStats:
        """Statistics of ``values [n_neurons]``, NaN entries left out."""
        defined = values[~values.isnan()].double()
        if not defined.numel():
            return cls(n=0, mean=None, median=None, std=None)
        return cls(
            n=defined.numel(),
            mean=defined.mean().item(),
            median=defined.quantile(0.5).item(),
            std=defined.std(correction=0).item(),
        )


class NeuronCosy(BaseModel):
    unit: int
    label: str
    auc: float
    mad: float | None = Field(description="None (undefined) where the neuron is constant on the control set.")


class CosyResult(BaseModel):
    """CoSy scores of one label set on one layer, with what they were computed from."""

    source: str
    layer: str
    protocol: str = Field(description="cosy.generator: published, or a cheaper stand-in.")
    deviations: list[str] = Field(
        description="Settings that differ from the published protocol (empty: comparable with published numbers)."
    )
    generator: str = Field(description="The generator's name: model and every setting that changes the pixels.")
    prompt: str = Field(description="The prompt template (the text of cosy.prompt_file).")
    images_per_label: int
    n_control: int = Field(description="Readable probing images: the control set.")
    neurons: list[NeuronCosy] = Field(description="Every evaluated neuron, by unit.")
    unlabelled: list[int] = Field(description="Requested neurons without a label in the source (not evaluated).")
    auc: MetricStats
    mad: MetricStats
    images_generated: int = Field(description="Images this evaluation generated.")
    images_reused: int = Field(description="Images found in the image store.")

    def lowest(self, count: int) -> list[NeuronCosy]:
        """The ``count`` neurons with the lowest AUC (their labels separate worst), lowest first."""
        return sorted(self.neurons, key=lambda neuron: neuron.auc)[:count]


# --- the evaluation -----------------------------------------------------------------------------------------------


def cosy_run_config(config: RunConfig) -> RunConfig:
    """``config`` with ``synthesize`` set to the text-to-image settings of its CoSy protocol
    (:meth:`~dnd.config.CosyConfig.generator_settings`), so that ``Backends`` of it build CoSy's generator."""
    return config.model_copy(update={"synthesize": config.cosy.generator_settings(config.synthesize)})


def evaluate_cosy(
    config: RunConfig,
    labels: LabelSet,
    layer: str,
    neurons: list[int] | None,
    backends: Backends | None = None,
) -> CosyResult:
    """CoSy AUC and MAD of ``neurons`` of ``layer`` (default: every neuron ``labels`` labels there), each scored on
    the images of its first label against the probing set of ``config``; models come from ``backends`` (default:
    ``Backends`` of :func:`cosy_run_config`, i.e. with CoSy's generator).

    Raises :class:`DnDError` when the prompt file is missing or malformed, ``layer`` is not in ``labels``, none of the
    requested neurons has a label, a labelled neuron is beyond the layer's size, or a stored image is unreadable.
    """
    prompt = cosy_prompt(config)
    config = cosy_run_config(config)
    backends = backends or Backends(config)
    # 1. The neurons to score: those requested that have a label in this layer.
    labels.check_layers([layer])
    rows = labels.units(layer)
    requested = sorted(rows) if neurons is None else neurons
    unlabelled = [n for n in requested if n not in rows]
    chosen = [n for n in requested if n in rows]
    if not chosen:
        labelled = sorted(rows)
        raise DnDError(
            f"none of the requested neurons has a label in {labels.source} (layer {layer} labels units "
            f"{labelled[0]}–{labelled[-1]}, {len(labelled)} of them): choose --neurons among those"
        )
    label_of = {n: rows[n].labels[0] for n in chosen}
    # 2. Control activations [n_control, n_neurons]: stage 1 over the probing set, recorded or reused.
    pipeline = Pipeline(config, backends)
    control, _ = load_activations(pipeline.run_until("record", [layer])[layer])
    _check_fit(labels, layer, chosen, control)
    # 3. images_per_label images per distinct label, generated only where the image store lacks them.
    store = image_store(config.output_dir)
    prompts = {label: prompt.format(**{PLACEHOLDER: label}) for label in dict.fromkeys(label_of.values())}
    requests, keys_of = plan_images(prompts, config.cosy.images_per_label, config.seed, backends.generator_identity())
    generated, _calls = generate_missing(store, backends, requests, config.cosy.batch_size, f"cosy {layer}: generate")
    short = [label for label, keys in keys_of.items() if any(store.is_nothing(key) for key in keys)]
    if short:
        raise DnDError(
            f"{backends.generator_identity()} has fewer than cosy.images_per_label={config.cosy.images_per_label} "
            f"images for {len(short)} label(s), e.g. {short[0]!r}: lower cosy.images_per_label, "
            f"synthesize.min_similarity, or retrieve from a larger synthesize.pool"
        )
    # 4. The layer's activations on every synthetic image [n_synthetic, n_neurons], in one batched pass.
    computed = StoredActivations.compute(
        backends.target,
        layer,
        config.record,
        store,
        list(requests),
        config.probe.batch_size,
        config.probe.num_workers,
        f"cosy {layer}: target network",
    )
    if computed.errors:
        key, error = next(iter(computed.errors.items()))
        raise DnDError(
            f"generated image {store.path(key)} is unreadable ({error}): delete it and evaluate again to generate it "
            f"anew"
        )
    synthetic, row_of = computed.values, computed.rows
    # 5. Per neuron, its own label's images against the control set, every neuron in one tensor operation.
    units = torch.tensor(chosen)
    images = torch.tensor([[row_of[key] for key in keys_of[label_of[n]]] for n in chosen])  # [n_chosen, Q]
    own = synthetic[images, units[:, None]]  # [n_chosen, Q]
    against = control[:, units].T  # [n_chosen, n_control]
    auc, mad = roc_auc(own, against), mean_activation_difference(own, against)
    # 6. The scores per neuron and their summary over the layer.
    return CosyResult(
        source=labels.source,
        layer=layer,
        protocol=config.cosy.generator,
        deviations=config.cosy.deviations(),
        generator=backends.generator_identity(),
        prompt=prompt,
        images_per_label=config.cosy.images_per_label,
        n_control=control.shape[0],
        neurons=[
            NeuronCosy(unit=n, label=label_of[n], auc=a, mad=None if math.isnan(m) else m)
            for n, a, m in zip(chosen, auc.tolist(), mad.tolist(), strict=True)
        ],
        unlabelled=unlabelled,
        auc=MetricStats.of(auc),
        mad=MetricStats.of(mad),
        images_generated=generated,
        images_reused=len(requests) - generated,
    )


def cosy_prompt(config: RunConfig) -> str:
    """The prompt template in ``cosy.prompt_file`` (read from ``prompts_dir``); raises :class:`DnDError` naming the
    fix when the file is missing or its one placeholder is not ``{description}``."""
    name = config.cosy.prompt_file
    fix = f"{format_fix(name)}, or choose another file with cosy.prompt_file"
    return single_prompt(name, read_prompt(config.prompts_dir, name), PLACEHOLDER, fix)


def _check_fit(labels: LabelSet, layer: str, chosen: list[int], control: torch.Tensor) -> None:
    """Raise :class:`DnDError` when a chosen unit is beyond the layer or the control set is too small for MAD."""
    n_images, n_neurons = control.shape
    labels.check_units(layer, n_neurons, chosen, "is the label file for this network? Choose others with --neurons")
    if n_images < MIN_CONTROL_IMAGES:
        raise DnDError(
            f"the probing set has {n_images} readable image(s); the control set needs at least {MIN_CONTROL_IMAGES}"
        )


# --- output -------------------------------------------------------------------------------------------------------


def write_results(result: CosyResult, path: Path) -> None:
    """``.csv``: one row per neuron (``source,layer,unit,label,auc,mad``); ``.json``: the whole result. An undefined
    MAD is an empty cell in the CSV and ``null`` in the JSON."""
    rows = (
        [result.source, result.layer, neuron.unit, neuron.label, neuron.auc, "" if neuron.mad is None else neuron.mad]
        for neuron in result.neurons
    )
    write_csv_or_json(path, result, CSV_ROW, CSV_COLUMNS, rows)
