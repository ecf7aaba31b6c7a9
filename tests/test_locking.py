"""The run folder's lock: a second run is refused with the holder's name; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dnd.errors import DnDError
from dnd.layout import lock_path
from dnd.locking import RunLock
from dnd.pipeline import Pipeline
from tests.helpers import backends_for, make_config

ROOT = Path(__file__).resolve().parents[1]
HOLD = "from dnd.locking import RunLock; import sys; RunLock(sys.argv[1]).acquire(); print('held', flush=True); input()"


def start_holder(path: Path, script: str) -> tuple[subprocess.Popen, str]:
    """Another process running ``script`` on ``path`` until its stdin closes, and the first line it prints."""
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout is not None
    return holder, holder.stdout.readline().strip()


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``path``'s lock until its stdin closes."""
    holder, said = start_holder(path, HOLD)
    assert said == "held"
    return holder


def test_a_second_run_is_refused_naming_the_holder_until_it_exits(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder)
    pipeline = Pipeline(config, backends_for(config, mixer))
    holder = hold_lock(lock_path(pipeline.store.root))
    try:
        with pytest.raises(DnDError) as refused:
            pipeline.run_until("record", ["conv"])
        message = str(refused.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "delete" in message and str(lock_path(pipeline.store.root)) in message
        assert mixer.module.forward_calls == 0
    finally:
        holder.communicate("\n")
    pipeline.run_until("record", ["conv"])  # released on exit
    assert mixer.module.forward_calls == 3


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "run" / ".lock"
    holder = hold_lock(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(path)
    lock.acquire()
    lock.release()


#: A process that takes the lock, then forks a child that outlives it (as an orphaned worker would).
HOLD_AND_FORK = """
import os, sys, threading
from dnd.locking import RunLock
RunLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:
    threading.Event().wait(60)
    os._exit(0)
print(child, flush=True)
input()
"""


def test_a_forked_child_that_outlives_the_killed_holder_does_not_keep_the_lock(tmp_path):
    path = tmp_path / "run" / ".lock"
    holder, said = start_holder(path, HOLD_AND_FORK)
    child = int(said)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child still runs, holding the inherited descriptor of the lock file...
        lock = RunLock(path)
        lock.acquire()  # ...but not the lock, which went with the process that took it
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_pipelines_of_one_process_share_the_lock(tmp_path):
    path = tmp_path / "run" / ".lock"

    def another_process_gets_it() -> bool:
        attempt = subprocess.run(
            [sys.executable, "-c", "from dnd.locking import RunLock; import sys; RunLock(sys.argv[1]).acquire()", path],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert attempt.returncode == 0 or "in use by another run" in attempt.stderr
        return attempt.returncode == 0

    first, second = RunLock(path), RunLock(path)
    first.acquire()
    second.acquire()  # a nested pipeline of the same process (e.g. an evaluation inside a run)
    first.release()
    assert not another_process_gets_it()  # the second still holds it...
    second.release()
    assert another_process_gets_it()  # ...until the last holder releases it
