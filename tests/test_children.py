"""Worker processes die with their parent: a DataLoader worker busy loading an image when its parent is SIGKILLed
is gone within seconds, instead of finishing (or hanging in) its work as an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: A process iterating dnd's batch loader with 2 workers, each stuck loading an image (a decoder that never ends).
STUCK_WORKERS = """
import os, sys, threading
from dnd.data import ProbeSet, batch_loader

def load_for_ever(index):
    os.write(1, f"worker {os.getpid()}\\n".encode())  # one write: the two workers' lines never interleave
    threading.Event().wait()

probe = ProbeSet(ids=[str(i) for i in range(8)], load=load_for_ever, fingerprint="stuck")
for batch in batch_loader(probe, lambda image: image, [[i] for i in range(8)], num_workers=2):
    pass
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_dataloader_workers_die_with_their_killed_parent():
    parent = subprocess.Popen(
        [sys.executable, "-c", STUCK_WORKERS],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert parent.stdout is not None
    workers = [int(parent.stdout.readline().split()[1]) for _ in range(2)]
    try:
        assert all(alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers), "a worker outlived its parent by 10 s"
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
