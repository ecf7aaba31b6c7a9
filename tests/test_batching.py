"""Work in batches: chunks, the cached batched map (hits, misses, lazy loading, counts) and batches resumed from a
progress folder after a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnd.batching import BatchFunction, EncodedCache, cached_map, chunks, resumable_batches
from dnd.distributed import Ranks
from dnd.store import ItemCache, atomic_write_text


class Memory:
    """A key → value store in memory that records every put."""

    def __init__(self, values: dict[str, object] | None = None):
        self.values = dict(values or {})
        self.puts: list[str] = []

    def get(self, key: str) -> object | None:
        return self.values.get(key)

    def put(self, key: str, value: object) -> None:
        self.puts.append(key)
        self.values[key] = value


class Doubler:
    """A "model" that doubles numbers, counting how often it was loaded and called; it fails on ``fail_on``."""

    def __init__(self, fail_on: int | None = None, drop: bool = False):
        self.loaded, self.calls, self.fail_on, self.drop = 0, [], fail_on, drop

    def load(self) -> BatchFunction[int, int]:
        self.loaded += 1
        return BatchFunction(self.run, "doubler x2", "doubles", "numbers")

    def run(self, numbers: list[int]) -> list[int]:
        self.calls.append(numbers)
        if self.fail_on in numbers:
            raise RuntimeError(f"cannot double {self.fail_on}")
        doubled = [2 * n for n in numbers]
        return doubled[:-1] if self.drop else doubled


class SecondOfTwo(Ranks):
    """Rank 1 of a job of two, alone in the test: collectives are no-ops and rank 0's decisions are taken here."""

    rank, world_size = 1, 2


def test_chunks_cut_a_list_into_consecutive_batches():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunks((1, 2), 5) == [[1, 2]] and chunks([], 3) == []
    with pytest.raises(ValueError, match="at least one item"):
        chunks([1], 0)


def test_missing_keys_are_computed_in_batches_and_stored_cached_ones_are_read():
    cache, model = Memory({"2": 4, "5": 10}), Doubler()
    inputs_asked: list[str] = []

    def number(key: str) -> int:
        inputs_asked.append(key)
        return int(key)

    result = cached_map(cache, ["1", "2", "3", "1", "4", "5"], number, model.load, 2, "test")
    assert result.values == {"1": 2, "2": 4, "3": 6, "4": 8, "5": 10}
    assert list(result.values) == ["1", "2", "3", "4", "5"]  # every distinct key, in the order given
    assert (result.items, result.hits, result.fresh, result.computed, result.calls) == (5, 2, ["1", "3", "4"], 3, 2)
    assert model.calls == [[1, 3], [4]] and model.loaded == 1  # a repeated key is computed once
    assert inputs_asked == ["1", "3", "4"]  # inputs of the missing keys only
    assert cache.puts == ["1", "3", "4"] and cache.values["4"] == 8


def test_a_fully_cached_map_never_loads_the_model():
    model = Doubler()
    result = cached_map(Memory({"1": 2, "2": 4}), ["2", "1"], int, model.load, 8)
    assert model.loaded == 0 and model.calls == []
    assert (result.values, result.hits, result.computed, result.calls) == ({"2": 4, "1": 2}, 2, 0, 0)


def test_a_wrong_number_of_outputs_is_an_error_naming_who_returned_it():
    cache = Memory()
    with pytest.raises(RuntimeError, match=r"^doubler x2 returned 1 doubles for 2 numbers$"):
        cached_map(cache, ["1", "2"], int, Doubler(drop=True).load, 2)
    assert cache.puts == []  # nothing of the wrong batch is stored


def test_each_batch_is_stored_as_it_finishes_so_a_failing_batch_keeps_the_earlier_ones():
    cache = Memory()
    with pytest.raises(RuntimeError, match="cannot double 3"):
        cached_map(cache, ["1", "2", "3", "4"], int, Doubler(fail_on=3).load, 2)
    assert cache.values == {"1": 2, "2": 4}
    model = Doubler()
    again = cached_map(cache, ["1", "2", "3", "4"], int, model.load, 2)
    assert model.calls == [[3, 4]] and again.hits == 2 and again.values == {"1": 2, "2": 4, "3": 6, "4": 8}


def test_computed_values_can_be_stored_without_being_kept():
    cache = Memory({"1": 2})
    result = cached_map(cache, ["1", "2"], int, Doubler().load, 4, keep_computed=False)
    assert result.values == {"1": 2} and result.fresh == ["2"] and cache.values["2"] == 4


def test_a_process_of_a_job_computes_its_share_and_reads_the_others_from_the_store():
    # Rank 0's share ("1", "2") is already in the store, as after the barrier; rank 1's ("3", "4") is computed here.
    cache, model = Memory({"1": 2, "2": 4}), Doubler()
    result = cached_map(cache, ["1", "2", "3", "4"], int, model.load, 8, ranks=SecondOfTwo())
    assert model.calls == [[3, 4]] and result.values == {"1": 2, "2": 4, "3": 6, "4": 8}
    assert (result.items, result.hits, result.computed) == (2, 0, 2)  # the counts are of this process's share
    with pytest.raises(RuntimeError, match="not in the store"):
        cached_map(Memory(), ["1", "2", "3", "4"], int, Doubler().load, 8, ranks=SecondOfTwo())


def test_an_encoded_cache_stores_what_encode_gives_and_skips_none(tmp_path):
    items = ItemCache(tmp_path, "pairs")
    pairs = EncodedCache(items, encode=lambda pair: None if pair[1] < 0 else list(pair), decode=tuple)
    pairs.put("a", (1, 2))
    pairs.put("b", (1, -1))  # not stored: asked again next time
    assert items.get("a") == [1, 2] and pairs.get("a") == (1, 2) and pairs.get("b") is None


class JsonBatches:
    """Batch results (a list of ints) kept as ``sums-*.json`` files holding their items."""

    pattern = "sums-*.json"

    def name(self, items: list[int]) -> str:
        return f"sums-{items[0]}-{items[-1]}.json"

    def save(self, path: Path, items: list[int], result: list[int]) -> None:
        atomic_write_text(path, json.dumps({"items": items, "result": result}))

    def held(self, path: Path) -> list[int]:
        return json.loads(path.read_text())["items"]

    def load(self, path: Path) -> list[int]:
        return json.loads(path.read_text())["result"]


def squares(seen: list[list[int]], fail_on: int | None = None):
    def compute(batches: list[list[int]]):
        for batch in batches:
            seen.append(batch)
            if fail_on in batch:
                raise RuntimeError("killed")
            yield [n * n for n in batch]

    return compute


def test_finished_batches_are_saved_and_a_rerun_computes_only_the_rest(tmp_path):
    progress, seen = tmp_path / "progress", []
    with pytest.raises(RuntimeError, match="killed"):
        resumable_batches([1, 2, 3, 4, 5], 2, squares(seen, fail_on=3), JsonBatches(), progress)
    assert sorted(path.name for path in progress.iterdir()) == ["sums-1-2.json"]  # the batch before the failure
    (progress / "other-kind.json").write_text("{}")  # files of another kind in the folder are left alone
    seen.clear()
    done = resumable_batches([1, 2, 3, 4, 5], 2, squares(seen), JsonBatches(), progress)
    assert seen == [[3, 4], [5]]
    assert done.batches == [([1, 2], [1, 4]), ([3, 4], [9, 16]), ([5], [25])]
    assert (done.computed, done.resumed) == (2, 1)
    seen.clear()
    again = resumable_batches([1, 2, 3, 4, 5], 2, squares(seen), JsonBatches(), progress)
    assert seen == [] and again.batches == done.batches and (again.computed, again.resumed) == (0, 3)


def test_a_saved_batch_holding_any_of_the_items_counts_and_results_come_in_the_order_of_the_items(tmp_path):
    progress, seen = tmp_path / "progress", []
    resumable_batches([4, 5, 6], 3, squares(seen), JsonBatches(), progress)  # an earlier run on other items
    seen.clear()
    done = resumable_batches([1, 2, 5], 2, squares(seen), JsonBatches(), progress)
    assert seen == [[1, 2]]  # 5 is in the saved batch [4, 5, 6]
    assert done.batches == [([1, 2], [1, 4]), ([4, 5, 6], [16, 25, 36])]


def test_without_a_progress_folder_nothing_is_kept(tmp_path):
    seen: list[list[int]] = []
    done = resumable_batches([1, 2, 3], 2, squares(seen), JsonBatches(), None)
    assert done.batches == [([1, 2], [1, 4]), ([3], [9])] and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="progress folder"):
        resumable_batches([1, 2, 3], 2, squares(seen), JsonBatches(), None, ranks=SecondOfTwo())


class SecondOfTwoWithPartner(SecondOfTwo):
    """Rank 1 of two whose partner, rank 0, saves its batch ``[1, 2]`` while rank 1 waits at the barrier."""

    def __init__(self, progress: Path):
        self.progress = progress

    def barrier(self) -> None:
        JsonBatches().save(self.progress / "sums-1-2.json", [1, 2], [1, 4])


def test_a_process_of_a_job_computes_its_share_of_the_batches_and_reads_the_others(tmp_path):
    progress, seen = tmp_path / "progress", []
    ranks = SecondOfTwoWithPartner(progress)
    done = resumable_batches([1, 2, 3, 4], 2, squares(seen), JsonBatches(), progress, ranks=ranks)
    assert seen == [[3, 4]] and done.batches == [([1, 2], [1, 4]), ([3, 4], [9, 16])]
    assert (done.computed, done.resumed) == (1, 0)
