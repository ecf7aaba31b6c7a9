"""The pictures of a report: what each one shows, what its pixels depend on, and how to draw it.

Three kinds of picture:

- :class:`ProbePicture`: a probing image as the network sees it (``target.view``), or a crop of it (an exemplar);
- :class:`HeatmapPicture`: one of a neuron's top images with the neuron's activation map overlaid as a heat map and the
  boxes of the crops that became its exemplars drawn on it;
- :class:`StoredPicture`: an image of the image store (generated, or retrieved, by stage 5).

:class:`Painter` gives each picture its *identity*, the JSON payload of everything its pixels depend on (the target
network, the probing set's fingerprint, the image, the box, the layer and neuron, the drawing style), which names its
thumbnail; and it draws the pictures whose thumbnails are missing. Heat maps need the layer's spatial maps: the
painter runs the target network once per batch of distinct top images, for every neuron that needs them at once, and
only for pictures that have to be drawn, so a re-render with every thumbnail in place never loads the network.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from dnd.artifacts import CropBox, ExemplarImage
from dnd.batching import chunks
from dnd.data import UnreadableImage, open_rgb
from dnd.exemplars import render_exemplar
from dnd.layer_reductions import unit_maps_reducer
from dnd.progress import track

if TYPE_CHECKING:
    from dnd.image_store import ImageStore
    from dnd.stages.base import StageContext

#: Bumped whenever the drawing changes, so every thumbnail made by an older drawing is made again.
STYLE_VERSION = 1
#: The heat map's colours and how strongly they cover the image at the neuron's highest activation.
COLORMAP = "inferno"
HEAT_OPACITY = 0.65
#: Exemplar boxes: colour and width in pixels of a 160-pixel-wide picture (scaled with the image).
BOX_COLOUR = (0, 230, 255)
BOX_WIDTH_AT_160 = 2


@dataclass(frozen=True)
class ProbePicture:
    """Probing image ``probe_index`` as the network sees it, cropped to ``box`` (resized back) when one is given."""

    probe_index: int
    image_id: str
    box: CropBox | None = None


@dataclass(frozen=True)
class HeatmapPicture:
    """Top image ``probe_index`` of ``neuron`` with the neuron's activation map and its exemplars' ``boxes``.

    ``group`` holds the probe indices of all the neuron's top images: a map is coloured on the scale of the whole
    group (from zero, or its lowest value, to its highest), so heat maps of one neuron can be compared.
    """

    neuron: int
    probe_index: int
    image_id: str
    boxes: tuple[CropBox, ...]
    group: tuple[int, ...]


@dataclass(frozen=True)
class StoredPicture:
    """Image ``image_id`` of the image store (its id is already the key of what made its pixels)."""

    image_id: str


Picture = ProbePicture | HeatmapPicture | StoredPicture


class Painter:
    """Identities and drawings of one layer's pictures, from a run's context (probing set, target network, store)."""

    def __init__(self, ctx: StageContext, layer: str, store: ImageStore, batch_size: int):
        self.ctx, self.layer, self.store, self.batch_size = ctx, layer, store, batch_size
        self.maps: dict[tuple[int, int], np.ndarray] = {}  # (neuron, probe index) -> map [h, w], scaled to 0..1
        self.forward_batches = 0

    @cached_property
    def _source(self) -> dict[str, Any]:
        """What every probe picture depends on besides its own image: the network (its view) and the probing set."""
        return {"target": self.ctx.backends.target_identity(), "probe": self.ctx.probe.fingerprint}

    def identity(self, picture: Picture) -> dict[str, Any]:
        """The JSON payload of everything ``picture``'s pixels depend on."""
        if isinstance(picture, StoredPicture):
            return {"stored": picture.image_id}
        boxes = [picture.box] if isinstance(picture, ProbePicture) else list(picture.boxes)
        identity = {
            **self._source,
            "image": picture.image_id,
            "boxes": [None if box is None else box.model_dump() for box in boxes],
        }
        if isinstance(picture, HeatmapPicture):
            identity.update(
                layer=self.layer,
                neuron=picture.neuron,
                group=list(picture.group),
                style=[STYLE_VERSION, COLORMAP, HEAT_OPACITY, BOX_COLOUR, BOX_WIDTH_AT_160],
            )
        return identity

    def prepare(self, pictures: list[Picture]) -> None:
        """Load what drawing ``pictures`` needs and compute the activation maps of the heat maps among them, in batched
        forward passes.

        Each distinct image of the neurons' groups runs once, however many neurons share it; only the maps of the
        neurons that have it in their group are kept (``[h, w]`` each), never a whole layer's output.
        """
        if any(not isinstance(p, StoredPicture) for p in pictures):
            # Built here, once: drawing threads must not each start loading the network or listing the probe.
            _ = self.ctx.backends.target, self.ctx.probe
        groups = {p.neuron: p.group for p in pictures if isinstance(p, HeatmapPicture)}
        users: dict[int, list[int]] = defaultdict(list)  # probe index -> neurons whose group holds it
        for neuron, group in groups.items():
            for index in group:
                users[index].append(neuron)
        indices = sorted(users)
        if not indices:
            return
        target = self.ctx.backends.target
        raw: dict[tuple[int, int], np.ndarray] = {}
        batches = chunks(indices, self.batch_size)
        for batch in track(batches, f"report {self.layer}: activation maps"):
            readable = []
            for index in batch:
                try:
                    readable.append((index, target.view(self.ctx.probe.load(index))))
                except UnreadableImage:
                    continue  # its picture reports the error when it is drawn
            if not readable:
                continue
            pixels = torch.stack([target.tensorize(view) for _, view in readable])
            needed = sorted({neuron for index, _ in readable for neuron in users[index]})
            column = {neuron: position for position, neuron in enumerate(needed)}
            reduce = unit_maps_reducer(target.units, needed)  # the maps of the neurons (or units) shown only
            output = target.capture(pixels, [self.layer], reduce, self.ctx.config.record.autocast)
            maps = output[self.layer].float().cpu().numpy()  # [B, len(needed), h, w]
            self.forward_batches += 1
            for row, (index, _) in enumerate(readable):
                for neuron in users[index]:
                    raw[neuron, index] = maps[row, column[neuron]]
        for neuron, group in groups.items():
            found = [raw[neuron, index] for index in group if (neuron, index) in raw]
            if not found:
                continue
            # Heat starts at zero where the neuron fires positively (negative values of a layer without a ReLU are
            # not firing); a neuron that never does is shown from its lowest value to its highest.
            low, high = min(float(m.min()) for m in found), max(float(m.max()) for m in found)
            low = max(low, 0.0) if high > 0 else low
            span = high - low
            for index in group:
                if (neuron, index) in raw:
                    scaled = (raw[neuron, index] - low) / span if span > 0 else np.zeros_like(raw[neuron, index])
                    self.maps[neuron, index] = np.clip(scaled, 0.0, 1.0)

    def draw(self, picture: Picture) -> Image.Image:
        """The full-size pixels of ``picture`` (RGB); raises :class:`UnreadableImage` when its source cannot be read.

        Thread-safe once :meth:`prepare` has run for the heat maps among the pictures.
        """
        if isinstance(picture, StoredPicture):
            return open_rgb(self.store.path(picture.image_id))
        box = picture.box if isinstance(picture, ProbePicture) else None
        # Exemplars are drawn by the stages' own renderer, so the report shows exactly the pixels that were ranked.
        source = ExemplarImage(image_id=picture.image_id, probe_index=picture.probe_index, box=box, activation=0.0)
        view = render_exemplar(self.ctx.probe, self.ctx.backends.target, source)
        if isinstance(picture, ProbePicture):
            return view
        heat = self.maps.get((picture.neuron, picture.probe_index))
        drawn = view if heat is None else overlay_heatmap(view, heat)
        return draw_boxes(drawn, picture.boxes)


def overlay_heatmap(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """``image`` with ``heat [h, w]`` (0..1) upsampled over it (bilinear) in :data:`COLORMAP`; the colour covers the
    image in proportion to the heat, so where the neuron is silent the photo shows as it is."""
    import cv2
    from matplotlib import colormaps

    width, height = image.size
    upsampled = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    upsampled = np.clip(upsampled, 0.0, 1.0)[..., None]  # [H, W, 1]
    colours = colormaps[COLORMAP](upsampled[..., 0])[..., :3] * 255.0  # [H, W, 3]
    alpha = HEAT_OPACITY * upsampled
    pixels = np.asarray(image, dtype=np.float32) * (1.0 - alpha) + colours * alpha
    return Image.fromarray(pixels.round().astype(np.uint8))


def draw_boxes(image: Image.Image, boxes: tuple[CropBox, ...]) -> Image.Image:
    """``image`` with each box outlined (``x1``/``y1`` exclusive, as in :class:`~dnd.artifacts.CropBox`)."""
    if not boxes:
        return image
    image = image.copy()
    width = max(1, round(BOX_WIDTH_AT_160 * max(image.size) / 160))
    pen = ImageDraw.Draw(image)
    for box in boxes:
        pen.rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), outline=BOX_COLOUR, width=width)
    return image
