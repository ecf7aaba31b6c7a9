"""The processes of one job: a single process by default, or the ranks of a ``torchrun`` / ``accelerate launch`` job.

How work is split (docs/architecture.md, "Several processes"): every stage lists its unique work items the same way
in every process (images to record, neuron batches to crop, images to caption, LLM requests, images to generate,
images to score), each process takes its contiguous :meth:`Ranks.share` of them, and the results meet in the output
folder (shards, per-item caches, the image store: content-keyed and written atomically, so processes share them
safely) or, when small, are exchanged as Python objects (:meth:`Ranks.map`). Decisions that read the output folder
(what is stale, which shards are missing) are taken by rank 0 and handed to all (:meth:`Ranks.agree`), so no rank
acts on a folder another rank is already changing. Only rank 0 writes stage folders; every stage ends at a barrier.

The collectives run over ``torch.distributed`` with the gloo backend on any machine, GPU or not: they carry only
plans, counts and small results, never tensors in bulk, so NCCL would gain nothing. One process alone imports none of
it: :func:`process_ranks` builds a process group only when the launcher has set ``WORLD_SIZE`` above 1.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from dnd.errors import DnDError

T = TypeVar("T")
R = TypeVar("R")

#: How long a rank waits for the others at a barrier or a collective. Ranks wait while one of them finishes a
#: stage alone (rank 0 writing a layer's outputs) or finishes a bigger share; a rank that crashes makes the
#: launcher stop the whole job long before this.
COLLECTIVE_TIMEOUT = timedelta(hours=12)


class Ranks:
    """One process doing all the work: every method is the trivial case. :class:`ProcessGroup` is the several."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes stage folders, exports and messages (rank 0)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous part of ``items``; every rank must pass the same list. Parts differ in length
        by at most one item and together are ``items`` in order."""
        count = len(items)
        return list(items[self.rank * count // self.world_size : (self.rank + 1) * count // self.world_size])

    def barrier(self) -> None:
        """Wait until every process has arrived here."""

    def gather(self, value: T) -> list[T]:
        """Every process's ``value``, in rank order (picklable values)."""
        return [value]

    def agree(self, decide: Callable[[], T]) -> T:
        """``decide()`` run by rank 0 alone and its result handed to every rank (an exception there is raised in all).

        For decisions that read the output folder, which other ranks may be writing to at the same moment.
        """
        return decide()

    def map(self, items: Sequence[T], work: Callable[[list[T]], list[R]]) -> list[R]:
        """``work`` applied to all ``items``, each process doing its :meth:`share`: one result per item, in order, in
        every process. ``work`` takes and returns lists of equal length; results must be picklable."""
        mine = self.share(items)
        results = work(mine)
        if len(results) != len(mine):
            raise RuntimeError(f"work on {len(mine)} items returned {len(results)} results")
        if self.world_size == 1:
            return results
        return [result for part in self.gather(results) for result in part]

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Backend-call counts of every process added up (each process counts its own share of the work)."""
        parts = self.gather(counts)
        names = list(dict.fromkeys(name for part in parts for name in part))
        return {name: sum(part.get(name, 0) for part in parts) for name in names}


class ProcessGroup(Ranks):
    """The ranks of a job started by ``torchrun`` or ``accelerate launch`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    and ``MASTER_PORT`` in the environment), joined over gloo; an existing default process group is reused."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
            # Left to interpreter exit, gloo's threads are torn down mid-flight and the process aborts (SIGABRT),
            # which the launcher reports as a failed job even though every rank finished.
            atexit.register(_leave_process_group)
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def barrier(self) -> None:
        self._dist.barrier()

    def gather(self, value: T) -> list[T]:
        parts: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(parts, value)
        return parts

    def agree(self, decide: Callable[[], T]) -> T:
        message: list[Any] = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                message[0] = ("value", decide())
            except Exception as exc:  # every rank must leave the collective below, then all raise
                failure = exc
                kind = "user error" if isinstance(exc, DnDError) else "error"
                message[0] = (kind, f"{type(exc).__name__}: {exc}" if kind == "error" else str(exc))
        self._dist.broadcast_object_list(message, src=0)
        kind, value = message[0]
        if failure is not None:
            raise failure
        if kind == "user error":
            raise DnDError(value)
        if kind == "error":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


_ranks: Ranks | None = None


def process_ranks() -> Ranks:
    """This job's ranks: joined on first use when a launcher started several processes, else one process alone."""
    global _ranks
    if _ranks is None:
        _ranks = ProcessGroup() if launched_processes() > 1 else Ranks()
    return _ranks


def launched_processes() -> int:
    """How many processes the launcher started for this job (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index among the job's processes on this machine: the GPU it uses (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this is rank 0 (or the only process); read from the environment, so it costs nothing."""
    return int(os.environ.get("RANK", "0")) == 0
