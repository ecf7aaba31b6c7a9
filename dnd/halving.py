"""Batches that fit in GPU memory: a batch that runs out of CUDA memory is halved and retried, and every later batch
of the same model starts at the size that fitted.

So the batch sizes in a config can be set for the largest GPU a run may meet: on a smaller one the first batches
find the size that fits (a few seconds lost, never the run), and the size stays there for the rest of the process.
Results do not depend on the batch size beyond floating-point rounding, so nothing in a cache key changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from dnd.errors import DnDError
from dnd.progress import note

T = TypeVar("T")

_OUT_OF_MEMORY = "out of memory"


class FittingBatches:
    """Runs work on items in batches no larger than the largest that fitted so far for one model (``what``)."""

    def __init__(self, what: str):
        self.what = what
        self.limit: int | None = None  # None: no batch has run out of memory yet

    def run(self, work: Callable[[Any], T], items: Sequence[Any] | torch.Tensor, join: Callable[[list[T]], T]) -> T:
        """``work(items)``, or ``join`` of ``work`` on consecutive parts of ``items`` (a list or a tensor's first
        dimension) small enough to fit; ``work`` must give the same result for a part as for the whole."""
        size = len(items) if self.limit is None else min(self.limit, len(items))
        parts: list[T] = []
        start = 0
        while start < len(items):
            part = items[start : start + size]
            try:
                parts.append(work(part))
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not isinstance(exc, torch.OutOfMemoryError) and _OUT_OF_MEMORY not in str(exc):
                    raise
                if len(part) == 1:
                    raise DnDError(
                        f"{self.what} ran out of GPU memory on a single item ({exc}); use a smaller model or "
                        f"input size, another device (--set device=cuda:1) or the CPU (--set device=cpu)"
                    ) from None
                size = len(part) // 2
                self.limit = size
            else:
                start += len(part)
                continue
            _release_cached_memory()
            note(f"{self.what}: out of GPU memory with {len(part)} items per batch, retrying with {size}")
        return parts[0] if len(parts) == 1 else join(parts)


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_fitting: dict[str, FittingBatches] = {}


def fitting(what: str) -> FittingBatches:
    """The batch limit of model ``what`` ("captioner", "generator", ...) for the rest of this process."""
    return _fitting.setdefault(what, FittingBatches(what))


def joined_lists(parts: list[list[T]]) -> list[T]:
    """``join`` for work that returns a list per batch."""
    return [item for part in parts for item in part]


def joined_tensors(parts: list[torch.Tensor]) -> torch.Tensor:
    """``join`` for work that returns a tensor ``[batch, ...]`` per batch."""
    return torch.cat(parts)
