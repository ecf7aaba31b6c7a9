"""The processes of a job: one process alone by default, and the collectives of two real gloo ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dnd.distributed import Ranks, launched_processes
from dnd.pipeline import Pipeline
from tests.helpers import backends_for, make_config

ROOT = Path(__file__).resolve().parents[1]

TWO_RANKS = """
import sys

from dnd.distributed import process_ranks
from dnd.errors import DnDError

ranks = process_ranks()
assert ranks.world_size == 2
items = list(range(7))
mine = ranks.share(items)
assert mine == ([0, 1, 2] if ranks.rank == 0 else [3, 4, 5, 6])
assert ranks.map(items, lambda part: [f"{ranks.rank}:{item}" for item in part]) == [
    "0:0", "0:1", "0:2", "1:3", "1:4", "1:5", "1:6"
]
assert ranks.sum_counts({"images": len(mine), "only_main": int(ranks.is_main)}) == {"images": 7, "only_main": 1}
assert ranks.agree(lambda: f"decided by {ranks.rank}") == "decided by 0"
try:
    ranks.agree(lambda: (_ for _ in ()).throw(DnDError("the folder is locked")))
except DnDError as exc:  # rank 0's user error reaches every rank, so none waits forever
    assert str(exc) == "the folder is locked"
else:
    raise AssertionError("no error")
ranks.barrier()
sys.stdout.write(f"rank {ranks.rank} ok\\n")  # one write: print's separate newline could interleave with the other rank
"""


def test_one_process_does_all_the_work(tmp_path, image_folder, mixer):
    import torch.distributed

    ranks = Ranks()
    assert (ranks.rank, ranks.world_size, ranks.is_main) == (0, 1, True)
    assert ranks.share([3, 1, 2]) == [3, 1, 2]
    assert ranks.map([1, 2], lambda part: [x * 10 for x in part]) == [10, 20]
    assert ranks.agree(lambda: "here") == "here"
    assert ranks.sum_counts({"a": 1}) == {"a": 1}
    config = make_config(tmp_path, image_folder)
    pipeline = Pipeline(config, backends_for(config, mixer))
    pipeline.run_until("record", ["conv"])
    assert launched_processes() == 1 and type(pipeline.ranks) is Ranks
    assert not torch.distributed.is_initialized()  # no process group was joined


def test_two_gloo_ranks_share_map_count_and_agree(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.split("\n"))[-2:] == ["rank 0 ok", "rank 1 ok"]  # each line whole
