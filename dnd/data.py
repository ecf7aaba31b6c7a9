"""Probing image sets and safe image loading.

A probing set is an ordered list of images with stable ids (relative paths for a folder, prefixed with the folder's
name for several folders, ``cifar10/test/00042`` for torchvision sets). Unreadable images are never fatal: loading
reports them so a stage can skip and count them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dnd import children, cpu
from dnd.config import ProbeConfig
from dnd.errors import DnDError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


class UnreadableImage(Exception):
    """An image file that cannot be decoded (corrupt, truncated, not an image)."""


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file fully into RGB, raising :class:`UnreadableImage` for anything broken.

    Broken means anything that stops the decoding: a broken symbolic link, an empty, truncated or corrupt file, one
    that is no image, or one PIL refuses as a decompression bomb (over twice ``PIL.Image.MAX_IMAGE_PIXELS``, about
    179 million pixels): a hostile or damaged file costs its own image, never the run.
    """
    try:
        if path.is_symlink() and not path.exists():
            raise UnreadableImage(f"broken symbolic link to {os.readlink(path)}, which does not exist")
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file")
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here rather than inside a worker's transform
            return image.convert("RGB")
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as exc:
        reason = str(exc).rstrip(".")
        raise UnreadableImage(f"too large to decode safely: {reason}; downscale it, or leave it out") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error, MemoryError, ... on hostile files
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from None


@dataclass
class ProbeSet:
    """An ordered probing set.

    ``ids[i]`` names image ``i``; ``labels[i]`` is its class index where the set has classes (class folders,
    ImageNet wnids, CIFAR), else ``labels`` is None; ``fingerprint`` changes whenever the set's contents do.
    """

    ids: list[str]
    load: Callable[[int], Image.Image]
    fingerprint: str
    labels: list[int] | None = None
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def open_probe(config: ProbeConfig) -> ProbeSet:
    """Build the probing set that ``config`` describes; raise :class:`DnDError` if it is missing or empty."""
    probe = _torchvision_probe(config) if config.kind in ("cifar10", "cifar100") else _folder_probe(config)
    if config.limit is not None and config.limit < len(probe):
        probe = _first(probe, config.limit)
    return probe


def probe_folders(config: ProbeConfig, setting: str = "probe.path") -> list[Path]:
    """The folders of a folder probe (``probe.path``: one folder or a list), in order.

    Raises :class:`DnDError` when none is given, one does not exist, or one is listed twice or lies inside another
    (its images would be probed twice). Errors name ``setting``, the config key that chose the folders.
    """
    if config.path is None or config.path == []:
        raise DnDError(
            f"{setting} is required for probe.kind={config.kind!r}: set it to an image folder or a list of them"
        )
    roots = [Path(path).expanduser() for path in (config.path if isinstance(config.path, list) else [config.path])]
    for root in roots:
        if not root.is_dir():
            raise DnDError(f"{_folder_of(setting)} {root} does not exist (set {setting} to a folder of images)")
    resolved = [root.resolve() for root in roots]
    for i, inner in enumerate(resolved):
        for j, outer in enumerate(resolved):
            if i != j and inner.is_relative_to(outer) and (inner != outer or i > j):
                relation = "is the same folder as" if inner == outer else "lies inside"
                raise DnDError(
                    f"{setting}: {roots[i]} {relation} {roots[j]}, so its images would be probed twice; "
                    f"list each folder once"
                )
    return roots


def open_image_folders(path: Path | list[Path], setting: str) -> ProbeSet:
    """Every image under ``path`` (a folder or a list of them), as a folder probe would read them; errors name
    ``setting``, the config key that chose the folders (e.g. ``synthesize.pool``)."""
    return _folder_probe(ProbeConfig(kind="folder", path=path), setting)


def _folder_of(setting: str) -> str:
    """How errors name a folder chosen by ``setting``."""
    return "probe folder" if setting == "probe.path" else f"{setting}: folder"


def _folder_probe(config: ProbeConfig, setting: str = "probe.path") -> ProbeSet:
    """Every image under the ``probe.path`` folders, folder by folder in the order given, each sorted.

    An image's id is its path relative to its folder, prefixed with the folder's name (``val/n01440764/x.JPEG``,
    ``images/ade_train_1.jpg``) when there are several folders, so ids are unique and the same on every machine. The
    fingerprint hashes every id with its file size: it changes when the images do, not when the folders move.
    """
    roots = probe_folders(config, setting)
    prefixes = _folder_prefixes(roots) if len(roots) > 1 else [""]
    paths: list[Path] = []
    ids: list[str] = []
    classes: list[str | None] = []
    class_of = _imagenet_class if config.kind == "imagenet_val" else _folder_class
    for root, prefix in zip(roots, prefixes, strict=True):
        try:
            files = sorted(
                p.relative_to(root).as_posix()
                for p in root.rglob("*")
                # a broken link stays in: it is skipped and named when read, like any unreadable image
                if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or (p.is_symlink() and not p.exists()))
            )
        except OSError as exc:
            raise DnDError(f"{_folder_of(setting)} {root} cannot be read ({exc}); fix its permissions") from None
        if not files:
            kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DnDError(f"{_folder_of(setting)} {root} holds no images (looked recursively for {kinds})")
        paths += [root / name for name in files]
        ids += [prefix + name for name in files]
        classes += [class_of(name) for name in files]
    class_names, labels = _index_classes(classes)
    digest = hashlib.sha256()
    for image_id, path in zip(ids, paths, strict=True):
        digest.update(f"{image_id}\0{_size(path)}\n".encode())
    return ProbeSet(
        ids=ids,
        load=_FileLoader(paths),
        fingerprint=digest.hexdigest()[:16],
        labels=labels,
        class_names=class_names,
    )


def _size(path: Path) -> int:
    """The file's size in bytes, or -1 for a broken link."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _folder_prefixes(roots: list[Path]) -> list[str]:
    """``<folder name>/`` per folder; a name that repeats gets ``-2``, ``-3``, ... in order (``val/``, ``val-2/``)."""
    seen: dict[str, int] = {}
    prefixes = []
    for root in roots:
        name = root.resolve().name
        seen[name] = seen.get(name, 0) + 1
        prefixes.append(f"{name}/" if seen[name] == 1 else f"{name}-{seen[name]}/")
    return prefixes


class _FileLoader:
    """Picklable ``index -> RGB image`` for a list of image files (DataLoader workers may be spawned)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __call__(self, index: int) -> Image.Image:
        return open_rgb(self.paths[index])


class _DatasetLoader:
    """Picklable ``index -> RGB image`` for a torchvision dataset of PIL images."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, index: int) -> Image.Image:
        return self.dataset[index][0].convert("RGB")


def _folder_class(relative: str) -> str | None:
    """Class of an image in ``<class>/<file>`` layout; None for a file at the top level."""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else None


def _imagenet_class(relative: str) -> str | None:
    """The wnid of ``<wnid>/<file>`` or of a flat ``<wnid>_<anything>.JPEG``."""
    first = relative.split("/")[0]
    wnid = first if "/" in relative else first.split("_")[0]
    return wnid if wnid.startswith("n") and wnid[1:].isdigit() else None


def _index_classes(classes: Sequence[str | None]) -> tuple[list[str], list[int] | None]:
    if any(c is None for c in classes):
        return [], None
    names = sorted(set(classes))  # type: ignore[arg-type]
    index = {name: i for i, name in enumerate(names)}
    return names, [index[c] for c in classes]  # type: ignore[index]


def _torchvision_probe(config: ProbeConfig) -> ProbeSet:
    from torchvision import datasets

    if isinstance(config.path, list):
        raise DnDError(
            f"probe.kind={config.kind} reads one dataset root from probe.path, not a list; for several image folders "
            f"use probe.kind=folder"
        )
    root = Path(config.path or "~/.cache/dnd/datasets").expanduser()
    dataset_type = datasets.CIFAR10 if config.kind == "cifar10" else datasets.CIFAR100
    try:
        dataset = dataset_type(str(root), train=config.split == "train", download=True)
    except Exception as exc:  # torchvision raises URLError, RuntimeError or OSError depending on the failure
        raise DnDError(
            f"could not download {config.kind} to {root} ({type(exc).__name__}: {exc}). Without network access, "
            f"extract the dataset there yourself or use a folder probe (probe.kind=folder, e.g. "
            f"../shared/data/cifar10-test)"
        ) from None
    ids = [f"{config.kind}/{config.split}/{i:05d}" for i in range(len(dataset))]
    return ProbeSet(
        ids=ids,
        load=_DatasetLoader(dataset),
        fingerprint=f"{config.kind}-{config.split}-{len(dataset)}",
        labels=[int(t) for t in dataset.targets],
        class_names=list(dataset.classes),
    )


def _first(probe: ProbeSet, n: int) -> ProbeSet:
    return ProbeSet(
        ids=probe.ids[:n],
        load=probe.load,
        fingerprint=f"{probe.fingerprint}-first{n}",
        labels=probe.labels[:n] if probe.labels is not None else None,
        class_names=probe.class_names,
    )


class PreprocessedImages(torch.utils.data.Dataset):
    """``probe`` images run through ``preprocess`` (to a tensor ``[3, H, W]``, or any value such as a PIL view).

    Item ``i`` is ``(i, preprocessed image or None, error or None)``: unreadable images come back as errors.
    """

    def __init__(self, probe: ProbeSet, preprocess: Callable[[Image.Image], Any]):
        self.probe = probe
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.probe)

    def __getitem__(self, index: int) -> tuple[int, Any | None, str | None]:
        try:
            return index, self.preprocess(self.probe.load(index)), None
        except UnreadableImage as exc:
            return index, None, str(exc)


@dataclass
class Batch:
    """A collated batch: ``pixels [B, 3, H, W]`` for the readable images ``indices [B]``; ``skipped`` the rest."""

    indices: torch.Tensor
    pixels: torch.Tensor | None
    skipped: list[tuple[int, str]]


def collate_skipping_unreadable(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    readable = [(i, x) for i, x, _ in items if x is not None]
    skipped = [(i, error or "unreadable") for i, x, error in items if x is None]
    if not readable:
        return Batch(torch.empty(0, dtype=torch.long), None, skipped)
    return Batch(
        indices=torch.tensor([i for i, _ in readable], dtype=torch.long),
        pixels=torch.stack([x for _, x in readable]),
        skipped=skipped,
    )


def batch_loader(
    probe: ProbeSet,
    preprocess: Callable[[Image.Image], torch.Tensor],
    batches: list[list[int]],
    num_workers: int,
    pin_memory: bool = False,
) -> cpu.BesideWorkers[Batch]:
    """A DataLoader yielding one :class:`Batch` per index list in ``batches``, in order (``len`` works)."""
    loader = torch.utils.data.DataLoader(
        PreprocessedImages(probe, preprocess),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_skipping_unreadable,
        pin_memory=pin_memory,
        worker_init_fn=children.worker_init_fn(),
    )
    return cpu.BesideWorkers(loader, num_workers)


def image_loader(
    probe: ProbeSet,
    transform: Callable[[Image.Image], Any],
    batches: list[list[int]],
    num_workers: int,
) -> cpu.BesideWorkers[list[tuple[int, Any | None, str | None]]]:
    """``probe``'s images of each index list in ``batches``, decoded and ``transform``-ed (e.g. a PIL view) in
    ``num_workers`` worker processes, in order: each batch is a list of ``(index, image or None, error or None)``."""
    loader = torch.utils.data.DataLoader(
        PreprocessedImages(probe, transform),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=list,
        worker_init_fn=children.worker_init_fn(),
    )
    return cpu.BesideWorkers(loader, num_workers)


def unchanged(image: Image.Image) -> Image.Image:
    """The identity transform for :func:`image_loader` (picklable, for spawned workers)."""
    return image
