"""Worker processes that never outlive the process that started them.

A DataLoader worker whose parent is killed (SIGKILL, an out-of-memory kill) is left running: PyTorch's watchdog only
notices between batches, and a worker blocked on a lock its dead parent held waits for ever. Such an orphan keeps
CPU, memory and the descriptors it inherited. On Linux, :func:`die_with_parent` asks the kernel to SIGKILL the
worker the moment its parent exits; elsewhere it does nothing, and the watchdog remains the only safeguard.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys

from dnd import cpu

#: ``prctl`` option: the signal this process gets when its parent dies (``<linux/prctl.h>``).
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """Have this process SIGKILLed when its parent (``parent_pid``) exits; exit at once if it already has.

    Returns whether the kernel took the request (Linux only). The signal follows the parent *thread* that forked
    this process, so a worker must be started from a thread that lives as long as the worker is needed (every
    DataLoader of dnd is iterated by the thread that created it).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        taken = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the parent died before the request was made: no signal will come
        os._exit(1)
    return taken


def worker_init(tuned: bool, parent_pid: int, _worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: die with the parent, and tune the CPU like it (:func:`dnd.cpu.worker_init`).
    Use as :func:`worker_init_fn` gives it."""
    die_with_parent(parent_pid)
    cpu.worker_init(tuned, _worker_id)


def worker_init_fn() -> functools.partial[None]:
    """The ``worker_init_fn`` to give a DataLoader created in this process (picklable, for spawned workers)."""
    return functools.partial(worker_init, cpu.tuned(), os.getpid())
