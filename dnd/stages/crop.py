"""Stage 2 — crop: attention crops of each neuron's top images, ranked with the originals into exemplars.

For a layer with spatial maps ``[C, H, W]``, each distinct top image of the requested neurons is run through the
network once, however many neurons share it; each neuron's map of it gives at most ``crop.max_crops_per_image``
boxes (:func:`attention_boxes`); every crop, resized back to the network's input size, is run through the network
in batches that mix all neurons and summarised like stage 1; originals and crops are ranked by the neuron's
activation and the best ``crop.exemplars`` kept. Layers without spatial maps (linear outputs, transformer tokens)
keep their top images. Boxes are in the pixel coordinates of the network's view of an image (``target.view``).

The kernel runs this ``crop.neurons_per_batch`` neurons at a time and keeps each batch as it finishes (so a killed run
redoes at most one batch); the batches are the work spread over the processes of a job.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import torch

from dnd.artifacts import CropBox, ExemplarImage, Exemplars, NeuronExemplars, NeuronTopImages, TopImages
from dnd.batching import chunks
from dnd.data import image_loader
from dnd.exemplars import crop_view
from dnd.layer_reductions import summary_reducer, unit_maps_reducer
from dnd.progress import track
from dnd.stages.base import NeuronWork, StageContext, StageSpec

if TYPE_CHECKING:
    from dnd.backends.target_network import TargetNetwork
    from dnd.config import RecordConfig

#: Backend-call counts in the manifest.
COUNTS = ("images_loaded", "unreadable_images", "crops", "forward_batches")


def iou(a: CropBox, b: CropBox) -> float:
    """Intersection over union of two boxes (0.0 when both are empty)."""
    intersection = max(min(a.x1, b.x1) - max(a.x0, b.x0), 0) * max(min(a.y1, b.y1) - max(a.y0, b.y0), 0)
    union = _area(a) + _area(b) - intersection
    return intersection / union if union else 0.0


def _area(box: CropBox) -> int:
    return (box.x1 - box.x0) * (box.y1 - box.y0)


def attention_boxes(
    activation_map: np.ndarray,
    image_size: tuple[int, int],
    max_crops: int,
    max_iou_between: float,
    max_iou_with_image: float,
) -> list[CropBox]:
    """Boxes around the high regions of ``activation_map [h, w]`` over an image of ``image_size`` = (W, H).

    The map is upsampled (bilinear) to the image, min–max scaled to 0–255 and binarised with Otsu's threshold; the
    bounding rectangle of each external contour is a candidate. Candidates are taken largest first and accepted
    while fewer than ``max_crops`` are kept, if their IoU with every kept box is ≤ ``max_iou_between`` and their IoU
    with the whole image is < ``max_iou_with_image``. A constant (or non-finite) map has no high region: no box.
    Returns the kept boxes, largest first; they bound pixels of the mask, so they always lie inside the image.
    """
    import cv2

    width, height = image_size
    activations = np.asarray(activation_map, dtype=np.float32)
    upsampled = cv2.resize(activations, (width, height), interpolation=cv2.INTER_LINEAR)
    span = float(upsampled.max() - upsampled.min())
    if not math.isfinite(span) or span <= 0:
        return []
    scaled = cv2.normalize(upsampled, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    _, mask = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rectangles = (cv2.boundingRect(contour) for contour in contours)
    candidates = sorted(
        (CropBox(x0=x, y0=y, x1=x + w, y1=y + h) for x, y, w, h in rectangles),
        key=lambda box: (-_area(box), box.y0, box.x0),  # position breaks ties, so the order is deterministic
    )
    whole = CropBox(x0=0, y0=0, x1=width, y1=height)
    kept: list[CropBox] = []
    for box in candidates:
        if len(kept) == max_crops:
            break
        if iou(box, whole) < max_iou_with_image and all(iou(box, other) <= max_iou_between for other in kept):
            kept.append(box)
    return kept


def compute(ctx: StageContext, work: NeuronWork) -> tuple[Exemplars, dict[str, int]]:
    """The exemplars of ``work.neurons`` of one layer, and backend-call counts."""
    # 1. The neurons' top images, from stage 1.
    top = work.artifact("record", TopImages)
    entries = [work.entries["record"][neuron] for neuron in work.neurons]
    # 2. Crop where the layer has spatial maps; elsewhere the top images are the exemplars.
    cropped = ctx.config.crop.enabled and len(top.output_shape) == 3
    if cropped:
        neurons, counts = _crop_and_rank(ctx, work.layer, top, entries)
    else:
        neurons = [_uncropped(top, entry, ctx.config.crop.exemplars) for entry in entries]
        counts = dict.fromkeys(COUNTS, 0)
    return Exemplars(layer=work.layer, cropped=cropped, neurons=neurons), counts


def _originals(top: TopImages, entry: NeuronTopImages) -> list[ExemplarImage]:
    """A neuron's top images as uncropped exemplars with their recorded activations, best first."""
    return [
        ExemplarImage(image_id=image_id, probe_index=top.probe_indices[row], activation=activation)
        for row, image_id, activation in zip(entry.rows, entry.image_ids, entry.activations, strict=True)
    ]


def _uncropped(top: TopImages, entry: NeuronTopImages, exemplars: int) -> NeuronExemplars:
    originals = _originals(top, entry)
    return NeuronExemplars(neuron=entry.neuron, exemplars=originals[:exemplars], candidates=len(originals))


def _crop_and_rank(
    ctx: StageContext, layer: str, top: TopImages, entries: list[NeuronTopImages]
) -> tuple[list[NeuronExemplars], dict[str, int]]:
    """Exemplars of ``entries`` chosen among their top images and attention crops, plus backend-call counts.

    Memory stays bounded by the batch size: at most one batch of views and their layer output and one batch of crop
    tensors are held at a time (crops run as soon as a batch of them is full), never a whole layer's maps.
    """
    config, target = ctx.config, ctx.backends.target
    settings = config.crop
    counts = dict.fromkeys(COUNTS, 0)
    # 1. Candidates start as the originals: they keep their recorded activation, because stage 1 ran the same
    #    network on the same view + tensorize of the same image (tests/stages/test_crop.py re-runs one to check).
    candidates = {entry.neuron: _originals(top, entry) for entry in entries}
    users: dict[int, list[tuple[int, ExemplarImage]]] = defaultdict(list)  # probe index -> (neuron, original)
    for neuron, originals in candidates.items():
        for original in originals:
            users[original.probe_index].append((neuron, original))
    # 2. One batched pass over the unique top images (an image shared by neurons runs once); of each image's
    #    output only the maps of the neurons that have it among their top images are read.
    indices = sorted(users)
    batches = chunks(indices, settings.batch_size)
    views = image_loader(ctx.probe, target.view, batches, config.probe.num_workers)
    crops = _CropBatches(target, layer, config.record, settings.batch_size)
    unreadable: dict[int, str] = {}
    for items in track(views, f"crop {layer}", total=len(batches)):
        unreadable.update({index: error for index, view, error in items if view is None})
        readable = [(index, view) for index, view, _ in items if view is not None]
        if not readable:
            continue
        pixels = torch.stack([target.tensorize(view) for _, view in readable])
        # Only the maps of the neurons (or units: an SAE's latents) that use these images are computed and kept.
        needed = sorted({neuron for index, _ in readable for neuron, _ in users[index]})
        column = {neuron: position for position, neuron in enumerate(needed)}
        reduce = unit_maps_reducer(target.units, needed)
        maps = target.capture(pixels, [layer], reduce, config.record.autocast)[layer]
        counts["images_loaded"] += len(readable)
        counts["forward_batches"] += 1
        for row, (index, view) in enumerate(readable):
            for neuron, original in users[index]:
                # 3. Boxes from the neuron's map, in the coordinates of the view; their crops join a batched pass
                #    shared by all neurons.
                boxes = attention_boxes(
                    maps[row, column[neuron]].float().cpu().numpy(),
                    view.size,
                    settings.max_crops_per_image,
                    settings.max_iou_between_crops,
                    settings.max_iou_with_image,
                )
                for box in boxes:
                    crops.add(neuron, original.model_copy(update={"box": box}), target.tensorize(crop_view(view, box)))
    crops.flush()
    for neuron, crop in crops.done:
        candidates[neuron].append(crop)
    counts.update(crops=len(crops.done), unreadable_images=len(unreadable))
    counts["forward_batches"] += crops.forward_batches
    # 4. Rank originals and crops together; the best crop.exemplars are the neuron's exemplars.
    results = []
    for neuron, ranked in candidates.items():
        lost = [f"{c.image_id} ({unreadable[c.probe_index]})" for c in ranked if c.probe_index in unreadable]
        if lost:
            reason = (
                f"top image(s) unreadable since stage 1 read them: {', '.join(lost)}; restore them and run "
                f"`dnd run crop --force`, or re-record the probing set with `dnd run record --force`"
            )
            results.append(NeuronExemplars(neuron=neuron, failed=reason))
            continue
        ranked.sort(key=lambda candidate: candidate.activation, reverse=True)  # stable: originals win ties
        results.append(NeuronExemplars(neuron=neuron, exemplars=ranked[: settings.exemplars], candidates=len(ranked)))
    return results, counts


class _CropBatches:
    """Crops of any neurons, run through the network ``batch_size`` at a time and summarised like stage 1.

    ``done`` collects ``(neuron, crop)`` with the crop's activation for its own neuron.
    """

    def __init__(self, target: TargetNetwork, layer: str, record: RecordConfig, batch_size: int):
        self.target, self.layer, self.record, self.batch_size = target, layer, record, batch_size
        self.reduce = summary_reducer(record.summary, record.tokens, target.units)
        self.pending: list[tuple[int, ExemplarImage, torch.Tensor]] = []
        self.done: list[tuple[int, ExemplarImage]] = []
        self.forward_batches = 0

    def add(self, neuron: int, crop: ExemplarImage, pixels: torch.Tensor) -> None:
        """Queue ``crop`` (its activation still that of its original) with its input ``pixels [3, H, W]``."""
        self.pending.append((neuron, crop, pixels))
        if len(self.pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pixels = torch.stack([crop_pixels for *_, crop_pixels in self.pending])
        summaries = self.target.capture(pixels, [self.layer], self.reduce, self.record.autocast)[self.layer].cpu()
        self.forward_batches += 1
        for row, (neuron, crop, _) in enumerate(self.pending):
            self.done.append((neuron, crop.model_copy(update={"activation": float(summaries[row, neuron])})))
        self.pending.clear()


SPEC = StageSpec(
    name="crop",
    version=1,
    needs=("record",),
    config_sections=("crop",),
    artifact=Exemplars,
    compute=compute,
    neuron_batch=lambda config: config.crop.neurons_per_batch,
)
