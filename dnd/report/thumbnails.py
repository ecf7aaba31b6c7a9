"""Thumbnails of a report, made once and named by what they show.

A thumbnail lives at ``<report>/thumbs/<key[:2]>/<key>.webp``, where ``key`` hashes the identity of its picture (see
:class:`~dnd.report.pictures.Painter`: everything the pixels depend on) and its size and encoding. A render asks for
the thumbnails it shows (:meth:`Gallery.want`), then :meth:`Gallery.make` draws only those whose file is missing, so a
re-render after a prompt edit re-uses every thumbnail whose picture did not change and draws only the new ones (for
example the images generated for new concepts). Files no render asks for any more are removed by
:meth:`Gallery.prune`, so the folder holds what the report shows and nothing else.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dnd.data import UnreadableImage
from dnd.progress import track
from dnd.report.pictures import Painter, Picture
from dnd.store import atomic_write_bytes, content_key

FOLDER = "thumbs"
FORMAT = "webp"
QUALITY = 72
#: Downscaling filter: sharp thumbnails of photos; generated images and crops alike.
RESAMPLE = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class Thumb:
    """A thumbnail of a picture: ``key`` names its file."""

    key: str
    size: int

    @property
    def path(self) -> str:
        """Its path relative to the report folder (forward slashes, for links)."""
        return thumbnail_path(self.key)


def thumbnail_path(key: str) -> str:
    """The path of thumbnail ``key`` relative to the report folder."""
    return f"{FOLDER}/{key[:2]}/{key}.{FORMAT}"


@dataclass
class GalleryCounts:
    """What :meth:`Gallery.make` did: thumbnails ``written`` and ``reused``, pictures ``drawn`` and those that
    ``failed`` (unreadable sources), and the target network's ``forward_batches`` for heat maps."""

    written: int = 0
    reused: int = 0
    drawn: int = 0
    failed: int = 0
    forward_batches: int = 0


@dataclass
class Gallery:
    """The thumbnails one render shows, in the report folder ``root``."""

    root: Path
    painter: Painter
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    _wanted: dict[str, tuple[Picture, int]] = field(default_factory=dict)
    _errors: dict[str, str] = field(default_factory=dict)

    def want(self, picture: Picture, size: int) -> Thumb:
        """The thumbnail of ``picture`` that fits in ``size`` × ``size`` pixels (made by :meth:`make`)."""
        key = content_key({"picture": self.painter.identity(picture), "size": size, "format": [FORMAT, QUALITY]})
        self._wanted[key] = (picture, size)
        return Thumb(key, size)

    def error(self, thumb: Thumb) -> str | None:
        """Why ``thumb`` could not be made (its source image is unreadable), or None."""
        return self._errors.get(thumb.key)

    def make(self, description: str) -> GalleryCounts:
        """Draw every wanted thumbnail whose file is missing; each picture is drawn once for all its sizes."""
        counts = GalleryCounts()
        missing: dict[Picture, list[str]] = defaultdict(list)
        for key, (picture, _) in self._wanted.items():
            if (self.root / thumbnail_path(key)).is_file():
                counts.reused += 1
            else:
                missing[picture].append(key)
        if not missing:
            return counts
        self.painter.prepare(list(missing))
        counts.forward_batches = self.painter.forward_batches

        def make_one(picture: Picture) -> tuple[list[str], str | None]:
            keys = missing[picture]
            try:
                image = self.painter.draw(picture)
            except UnreadableImage as exc:
                return keys, str(exc)
            for key in keys:
                atomic_write_bytes(self.root / thumbnail_path(key), _encode(image, self._wanted[key][1]))
            return keys, None

        # PIL decodes, resizes and encodes with the GIL released, so threads use every core.
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for keys, error in track(pool.map(make_one, missing), description, total=len(missing)):
                if error is None:
                    counts.drawn += 1
                    counts.written += len(keys)
                else:
                    counts.failed += 1
                    self._errors.update(dict.fromkeys(keys, error))
        return counts

    def prune(self) -> int:
        """Remove thumbnail files that this render does not show; return how many."""
        folder = self.root / FOLDER
        removed = 0
        for path in folder.glob(f"*/*.{FORMAT}") if folder.is_dir() else []:
            if path.stem not in self._wanted:
                path.unlink()
                removed += 1
        return removed


def _encode(image: Image.Image, size: int) -> bytes:
    """``image`` shrunk to fit ``size`` × ``size`` (never enlarged), encoded as :data:`FORMAT`."""
    thumbnail = image.copy()
    thumbnail.thumbnail((size, size), RESAMPLE)
    buffer = io.BytesIO()
    thumbnail.save(buffer, format=FORMAT, quality=QUALITY, method=4)
    return buffer.getvalue()
