"""The fast CPU path: a malloc setting for the whole process and the memory format of convolutional networks.

Why: with glibc's default malloc, every tensor buffer above the mmap threshold (at most 32 MiB, adjusted
dynamically) is mapped from the OS when allocated and unmapped when freed, so each forward pass of a batch faults in
its activations afresh: on 2 cores an EfficientNet-Lite0 forward of 50 images spent more time in the kernel than
computing. Raising the mmap and trim thresholds keeps freed buffers in the heap for the next batch (about 3× the
throughput); channels-last convolutions add about 1.4× on top. See ``make bench`` (benchmarks/bench_cpu.py).

:func:`tune_process` is applied when a run starts on the CPU (:class:`dnd.backends.container.Backends` resolves the
device) and in every DataLoader worker (:func:`worker_init`); while workers decode images, the main process leaves them
a core each (:class:`BesideWorkers`). ``DND_CPU_TUNING=0`` in the environment turns it all off. On a GPU device nothing
changes. The cost: memory a run freed is kept by the process for reuse instead of being returned to the OS, so its
resident size stays near its peak until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")

#: mallopt() parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: Buffers up to this size come from the heap and stay there when freed (an activation map of a batch is tens to
#: hundreds of MiB). glibc 2.36 accepts it; some glibc versions refuse thresholds above 32 MiB, and there
#: :func:`tune_process` turns mmap'd chunks off instead (M_MMAP_MAX = 0), which keeps every buffer in the heap too.
MMAP_THRESHOLD = 1 << 30
#: Freed memory at the top of the heap is returned to the OS only beyond this (the largest value mallopt takes).
TRIM_THRESHOLD = (1 << 31) - 1
DISABLE_VARIABLE = "DND_CPU_TUNING"

_applied: dict[str, int] = {}


def tune_process() -> dict[str, int]:
    """Raise glibc's mmap and trim thresholds for this process (once); return the values glibc accepted.

    Returns an empty dict where nothing was changed: not glibc (macOS, Windows, musl), or ``DND_CPU_TUNING=0``.
    """
    if _applied or os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return dict(_applied)
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return {}
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        _applied["mmap_threshold"] = MMAP_THRESHOLD
    elif mallopt(M_MMAP_MAX, 0) == 1:
        _applied["mmap_max"] = 0
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        _applied["trim_threshold"] = TRIM_THRESHOLD
    return dict(_applied)


def tuned() -> bool:
    """Whether :func:`tune_process` changed this process's malloc settings."""
    return bool(_applied)


def worker_init(enabled: bool, _worker_id: int) -> None:
    """A DataLoader worker tunes itself like its parent (forked workers already inherited it; spawned ones start
    afresh): ``enabled`` is the parent's :func:`tuned`. Called by :func:`dnd.children.worker_init`."""
    if enabled:
        tune_process()


class BesideWorkers(Iterable[T]):
    """Iterates ``loader`` (a DataLoader with ``workers`` worker processes) with this process's torch threads lowered
    by one per worker while it runs, so decoding workers and the forward pass do not fight over the cores.

    Measured on 2 cores while recording 300 ImageNet samples with 2 workers: 2 threads ran at 24 images per CPU-second
    (threads waiting for cores the workers held), 1 thread at 40. Only on a tuned (CPU) run; elsewhere it changes
    nothing. The thread count is restored when the iteration ends.
    """

    def __init__(self, loader: Iterable[T], workers: int):
        self.loader, self.workers = loader, workers

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[T]:
        threads = torch.get_num_threads()
        lowered = max(1, threads - self.workers) if tuned() and self.workers else threads
        torch.set_num_threads(lowered)
        try:
            yield from self.loader
        finally:
            torch.set_num_threads(threads)


def memory_format(module: nn.Module, device: torch.device) -> torch.memory_format:
    """``channels_last`` for a network with 2-d convolutions on the CPU (faster there for every network we
    measured: EfficientNet-Lite0, ResNet-18, CIFAR ResNet-20), the default layout everywhere else."""
    if device.type == "cpu" and any(isinstance(layer, nn.Conv2d) for layer in module.modules()):
        return torch.channels_last
    return torch.contiguous_format


def _glibc_mallopt() -> ctypes._CFuncPtr | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
