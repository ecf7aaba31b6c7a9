"""The pixels of an exemplar: a probing image as the target network sees it, cropped to a box if it has one.

Stage 2 ranks exemplars by running exactly these pixels through the network; stage 3 captions them and stage 6
embeds them with CLIP, so all three render an exemplar here, the same way. :func:`pixel_hash` identifies pixels
whatever file or crop they came from, so an image shared by several neurons is captioned and embedded once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from dnd.data import UnreadableImage

if TYPE_CHECKING:
    from dnd.artifacts import CropBox, ExemplarImage, NeuronExemplars
    from dnd.backends.target_network import TargetNetwork
    from dnd.data import ProbeSet
    from dnd.distributed import Ranks

#: How a crop is resized back to the view size (smooth upsampling of a small region for network and captioner).
CROP_RESAMPLE = Image.Resampling.BICUBIC


def crop_view(view: Image.Image, box: CropBox) -> Image.Image:
    """``box`` of ``view`` (the network's view of an image), resized back to the view's size."""
    return view.crop((box.x0, box.y0, box.x1, box.y1)).resize(view.size, CROP_RESAMPLE)


def render_exemplar(probe: ProbeSet, target: TargetNetwork, exemplar: ExemplarImage) -> Image.Image:
    """The pixels of ``exemplar``: the network's view of its probe image, cropped and resized back if it has a box."""
    view = target.view(probe.load(exemplar.probe_index))
    return view if exemplar.box is None else crop_view(view, exemplar.box)


def pixel_hash(image: Image.Image) -> str:
    """sha256 of an image's size and RGB bytes: equal pixels, equal hash, whatever file or crop they came from."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()


class ExemplarPixels:
    """Exemplars of one probing set and target, each rendered and hashed once per (probe index, box).

    Only hashes are kept, never pixels, so memory does not grow with the number of exemplars; the last rendering is
    kept, so a :meth:`render` right after :meth:`hash` of the same exemplar costs nothing. A probe image that cannot
    be read is remembered too, so it is tried once.
    """

    def __init__(self, probe: ProbeSet, target: TargetNetwork):
        self.probe, self.target = probe, target
        self._hashes: dict[tuple[int, CropBox | None], str] = {}
        self._unreadable: dict[int, str] = {}  # probe index -> error
        self._last: tuple[tuple[int, CropBox | None], Image.Image] | None = None

    def hash(self, exemplar: ExemplarImage) -> str:
        """:func:`pixel_hash` of ``exemplar``'s pixels; raises :class:`UnreadableImage` when its image cannot be
        read."""
        identity = (exemplar.probe_index, exemplar.box)  # CropBox is frozen, so hashable
        if identity not in self._hashes:
            self._hashes[identity] = pixel_hash(self.render(exemplar))
        return self._hashes[identity]

    def render(self, exemplar: ExemplarImage) -> Image.Image:
        """``exemplar``'s pixels (PIL RGB); raises :class:`UnreadableImage` when its image cannot be read."""
        identity = (exemplar.probe_index, exemplar.box)
        if self._last is not None and self._last[0] == identity:
            return self._last[1]
        if exemplar.probe_index in self._unreadable:
            raise UnreadableImage(self._unreadable[exemplar.probe_index])
        try:
            image = render_exemplar(self.probe, self.target, exemplar)
        except UnreadableImage as exc:
            self._unreadable[exemplar.probe_index] = str(exc)
            raise
        self._last = (identity, image)
        return image


@dataclass
class ExemplarHashes:
    """The :func:`pixel_hash` of each exemplar of a neuron, or, if any of its images cannot be read, which ones."""

    hashes: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # "<image id> (<error>)" of each unreadable exemplar


def hash_exemplars(
    pixels: ExemplarPixels, entries: list[NeuronExemplars], ranks: Ranks, description: str
) -> list[ExemplarHashes]:
    """The pixel hashes of every entry's exemplars, in order; each process of a job renders its share of the entries
    (rendering decodes images, the slow part) and all get every result."""
    from dnd.progress import track

    def hash_share(mine: list[NeuronExemplars]) -> list[ExemplarHashes]:
        results = []
        for entry in track(mine, description):
            result = ExemplarHashes()
            for exemplar in entry.exemplars:
                try:
                    result.hashes.append(pixels.hash(exemplar))
                except UnreadableImage as exc:
                    result.lost.append(f"{exemplar.image_id} ({exc})")
            results.append(result)
        return results

    return ranks.map(entries, hash_share)
