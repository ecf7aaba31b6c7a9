"""Work done in batches: cutting a list into batches, the cached batched map, and batches resumed after a kill.

- :func:`chunks` cuts a list into consecutive batches.
- :func:`cached_map` gives the value of each key from a key → value store, computing the missing ones in batches
  with a model that is loaded only if something is missing, and storing each batch's values the moment they exist:
  stage 3's captions, stage 5's generated images, stage 6's embeddings and the LLM replies all go through it.
- :func:`resumable_batches` works through items in batches whose results are saved one file per batch in a progress
  folder, so a rerun after a kill reads the finished batches instead of computing them again (stage 2's batches of
  neurons, stage 6's activations on generated images).

Both spread their work over a job's processes (:class:`dnd.distributed.Ranks`) when given them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from dnd.distributed import Ranks
from dnd.progress import track

T = TypeVar("T")
In = TypeVar("In")  # what a batch function takes
V = TypeVar("V")
R = TypeVar("R")


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` cut into consecutive batches of ``size`` (the last one shorter), in order; none for no items."""
    if size < 1:
        raise ValueError(f"a batch holds at least one item, not {size}")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


# --- the cached batched map -----------------------------------------------------------------------------------------


class KeyValueStore(Protocol[V]):
    """Where :func:`cached_map` finds and keeps values: an :class:`~dnd.store.ItemCache`, an :class:`EncodedCache`
    in front of one, or any other store with these two methods."""

    def get(self, key: str) -> V | None: ...

    def put(self, key: str, value: V) -> None: ...


class EncodedCache(Generic[V]):
    """A JSON item cache (:class:`~dnd.store.ItemCache`) holding values of another type: ``encode(value)`` is what
    is stored (``None``: store nothing, so the value is computed again next time, e.g. a failed LLM reply), and
    ``decode(stored)`` the value read back."""

    def __init__(self, cache: KeyValueStore[Any], encode: Callable[[V], Any], decode: Callable[[Any], V]):
        self.cache, self.encode, self.decode = cache, encode, decode

    def get(self, key: str) -> V | None:
        stored = self.cache.get(key)
        return None if stored is None else self.decode(stored)

    def put(self, key: str, value: V) -> None:
        stored = self.encode(value)
        if stored is not None:
            self.cache.put(key, stored)


@dataclass(frozen=True)
class BatchFunction(Generic[In, V]):
    """A loaded model's batched call: ``run(inputs)`` gives one output per input, in order.

    ``name`` says who answers in an error ("captioner blip:...", "image embedder"); ``outputs`` and ``inputs`` name
    what it returns and takes ("captions", "images"), so a wrong count reads "captioner X returned 3 captions for
    4 images".
    """

    run: Callable[[list[In]], Sequence[V]]
    name: str
    outputs: str = "results"
    inputs: str = "inputs"


@dataclass
class CachedValues(Generic[V]):
    """What :func:`cached_map` gives: ``values`` (key → value, every distinct key in the order given) and the counts
    of this process's share of the keys: ``items`` (distinct keys), ``hits`` (found in the store), ``fresh`` (the keys
    computed now, in order) and ``calls`` (batches run)."""

    values: dict[str, V] = field(default_factory=dict)
    items: int = 0
    hits: int = 0
    fresh: list[str] = field(default_factory=list)
    calls: int = 0

    @property
    def computed(self) -> int:
        """How many values were computed now."""
        return len(self.fresh)


def cached_map(
    cache: KeyValueStore[V],
    keys: Iterable[str],
    inputs: Callable[[str], In],
    load: Callable[[], BatchFunction[In, V]],
    batch_size: int,
    description: str | None = None,
    ranks: Ranks | None = None,
    keep_computed: bool = True,
) -> CachedValues[V]:
    """The value of every key in ``keys`` (repeats are looked up once): from ``cache``, or computed.

    The missing keys are computed ``batch_size`` at a time by the :class:`BatchFunction` that ``load()`` gives,
    called once, and only if a key is missing (so a fully cached run never loads a model); ``inputs(key)`` is called
    for a missing key only, just before its batch. Each batch's values are put in ``cache`` as soon as it returns, so
    an error in a later batch (or a kill) keeps the earlier ones. ``description`` labels a progress bar over the
    batches (none without it).

    With ``ranks``, each process looks up or computes its :meth:`~dnd.distributed.Ranks.share` of the distinct keys,
    waits for the others, and reads theirs from ``cache``, so every value must be stored there. With
    ``keep_computed=False`` the computed values are only stored, not returned (images that would fill memory).

    Raises ``RuntimeError`` when the batch function returns another number of outputs than it was given inputs.
    """
    distinct = list(dict.fromkeys(keys))
    mine = distinct if ranks is None else ranks.share(distinct)
    result: CachedValues[V] = CachedValues(items=len(mine))
    found: dict[str, V] = {}
    for key in mine:
        value = cache.get(key)
        if value is None:
            result.fresh.append(key)
        else:
            found[key] = value
    result.hits = len(found)
    batches = chunks(result.fresh, batch_size)
    if batches:
        function = load()
        for batch in track(batches, description) if description else batches:
            outputs = function.run([inputs(key) for key in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"{function.name} returned {len(outputs)} {function.outputs} for {len(batch)} {function.inputs}"
                )
            result.calls += 1
            for key, output in zip(batch, outputs, strict=True):
                cache.put(key, output)
                if keep_computed:
                    found[key] = output
    if ranks is not None and ranks.world_size > 1:
        ranks.barrier()
        for key in distinct:  # the other processes' shares
            if key not in found and key not in mine:
                value = cache.get(key)
                if value is None:
                    raise RuntimeError(f"the value of {key} is not in the store after every process finished")
                found[key] = value
    result.values = {key: found[key] for key in distinct if key in found}
    return result


# --- resumable batches ----------------------------------------------------------------------------------------------


class BatchFiles(Protocol[T, R]):
    """How one kind of batch result is kept in a progress folder: one file per batch, written atomically."""

    #: The glob pattern of this kind's files (other kinds may share the folder).
    pattern: str

    def name(self, items: list[T]) -> str:
        """The file name of the batch of ``items`` (matching :attr:`pattern`)."""
        ...

    def save(self, path: Path, items: list[T], result: R) -> None:
        """Write the batch of ``items`` and its result to ``path`` atomically."""
        ...

    def held(self, path: Path) -> list[T]:
        """The items of the batch saved at ``path``."""
        ...

    def load(self, path: Path) -> R:
        """The result of the batch saved at ``path``."""
        ...


@dataclass
class ResumedBatches(Generic[T, R]):
    """What :func:`resumable_batches` gives: ``batches``, each ``(items, result)``, covering every item (a batch
    read back from an earlier run may also hold items beyond them), in the order of the items; ``computed`` counts
    the batches this process computed and ``resumed`` those read back (on rank 0 only, so counts add up over
    processes)."""

    batches: list[tuple[list[T], R]]
    computed: int
    resumed: int


def resumable_batches(
    items: list[T],
    size: int,
    compute: Callable[[list[list[T]]], Iterable[R]],
    files: BatchFiles[T, R],
    progress: Path | None,
    ranks: Ranks | None = None,
) -> ResumedBatches[T, R]:
    """Work through ``items`` (distinct) in batches of ``size``, each finished batch saved to ``progress``.

    Batches an earlier run saved there are read instead of computed: a saved batch holding any of ``items`` counts
    as done (rank 0 decides which, for every process), and the rest of the items are cut into batches.
    ``compute(batches)`` yields one result per batch, in order; each is saved the moment it is yielded, so a killed
    run redoes at most the batch it was on. With ``ranks``, each process computes its share of the batches and then
    reads the others' from ``progress``. Without ``progress`` nothing is kept (one process only).
    """
    ranks = ranks or Ranks()
    if ranks.world_size > 1 and progress is None:
        raise ValueError("several processes share their batches through a progress folder: give one")
    folder = progress
    finished = {} if folder is None else ranks.agree(lambda: _finished(folder, files, items))
    held = {item for batch in finished.values() for item in batch}
    batches = chunks([item for item in items if item not in held], size)
    mine = ranks.share(range(len(batches)))
    computed: dict[int, R] = {}
    for index, result in zip(mine, compute([batches[index] for index in mine]), strict=True):
        computed[index] = result
        if folder is not None:
            files.save(folder / files.name(batches[index]), batches[index], result)
    ranks.barrier()
    done = [(batch, files.load(_in(folder, name))) for name, batch in finished.items()]
    for index, batch in enumerate(batches):
        done.append((batch, computed[index] if index in computed else files.load(_in(folder, files.name(batch)))))
    position = {item: place for place, item in enumerate(items)}
    done.sort(key=lambda pair: min(position.get(item, len(position)) for item in pair[0]))
    return ResumedBatches(done, len(mine), len(finished) if ranks.is_main else 0)


def _in(folder: Path | None, name: str) -> Path:
    assert folder is not None  # only batches of other processes or of earlier runs are read, and both need one
    return folder / name


def _finished(progress: Path, files: BatchFiles[T, R], items: list[T]) -> dict[str, list[T]]:
    """The batch files in ``progress`` holding any of ``items``: file name → the items it holds."""
    wanted = set(items)
    found = {}
    for path in sorted(progress.glob(files.pattern)) if progress.is_dir() else []:
        held = files.held(path)
        if wanted.intersection(held):
            found[path.name] = held
    return found
