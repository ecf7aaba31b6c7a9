"""One run at a time per run folder: an advisory lock on ``<output_dir>/<run>/.lock`` held while a run writes there.

The lock is a POSIX record lock (``fcntl.lockf``) on the file, which the operating system releases when the holding
process exits, however it exits (a SIGKILL included), so a crashed run never leaves a stale lock behind. Unlike an
``flock``, a record lock belongs to the process alone: forked children (DataLoader workers, any pool) inherit the
descriptor but not the lock, so a child that outlives a killed run cannot keep its folder locked. It also works on
NFS. The file names the holder (pid, host, start time, command) for the message a second run gets. Runs under other
names in the same output folder are not excluded: what they share (per-item caches, the image store) is
content-keyed and written atomically.

A process's record locks on a file go when it closes *any* descriptor of that file, so nothing but this module opens
a ``.lock`` file, and a process that holds it never reads it through another descriptor.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from dnd.errors import DnDError
from dnd.progress import note


class RunLock:
    """The lock of one run folder; :meth:`acquire` raises :class:`DnDError` naming the holder when it is taken.

    Within one process the lock is shared: a second :class:`RunLock` of the same folder (another pipeline in the same
    process) acquires it too, and it is released when the last holder releases it.
    """

    #: Locks this process holds: resolved path -> (file descriptor, holders).
    _held: dict[Path, tuple[int, int]] = {}

    def __init__(self, path: Path):
        self.path = Path(path)
        self._holding = False

    def acquire(self) -> None:
        key = self.path.resolve()
        if key in RunLock._held:
            fd, holders = RunLock._held[key]
            RunLock._held[key] = (fd, holders + 1)
            self._holding = True
            return
        fd = self._lock()
        if fd is not None:
            RunLock._held[key] = (fd, 1)
            self._holding = True

    def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        key = self.path.resolve()
        fd, holders = RunLock._held.pop(key)
        if holders > 1:
            RunLock._held[key] = (fd, holders - 1)
            return
        import fcntl

        os.ftruncate(fd, 0)  # the file stays (removing a locked file lets two runs lock two files)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _lock(self) -> int | None:
        """The descriptor of the freshly locked file, or None where files cannot be locked."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs must not overlap on their own
            note(f"cannot lock {self.path} on this platform: make sure no other run writes to the same folder")
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the whole file, however long it grows
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: the platforms differ
            os.close(fd)
            raise DnDError(self._taken_message()) from None
        except OSError as exc:  # a filesystem without locks (some network mounts)
            os.close(fd)
            note(f"cannot lock {self.path} ({exc}): make sure no other run writes to the same folder")
            return None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["dnd" if sys.argv[0].endswith("__main__.py") else sys.argv[0], *sys.argv[1:]]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return fd

    def _taken_message(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            who = f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}: `{holder['command']}`"
        except (OSError, ValueError, KeyError):
            who = "a process that is just starting"
        folder = self.path.parent
        return (
            f"{folder} is in use by another run ({who}). Wait for it to finish, or write elsewhere "
            f"(--set name=<other> or --set output_dir=<other>). The lock goes away by itself when that process exits, "
            f"even if it is killed; only if no such process runs any more (a crashed machine on a network "
            f"filesystem), delete {self.path}."
        )
