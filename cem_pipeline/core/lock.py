"""One writer per workdir: two commands writing the same store or catalog corrupt it (issue 14, item 2).

The lock is an OS file lock (flock through `filelock`) on WORKDIR/.cem.lock, so the kernel releases it
when its process dies, even by kill -9: a lock left by a dead process is simply taken by the next
command. Beside it, WORKDIR/.cem.lock.json names the holder (command, PID, start time), so that a second
command fails at once with a message saying what is running instead of waiting or corrupting.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from cem_pipeline.core.atomic import write_text_atomic

LOCK_NAME = ".cem.lock"
HOLDER_NAME = ".cem.lock.json"


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir's lock; the message names its command and PID."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def read_holder(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None


def describe_holder(root: Path, holder: dict | None) -> str:
    if holder is None:
        return f"workdir {root} is locked by another cem command (no holder recorded in {HOLDER_NAME})"
    running = f"`cem {holder.get('command')}` (PID {holder.get('pid')}, started {holder.get('started')})"
    if not pid_alive(int(holder.get("pid", -1))):
        return (f"workdir {root} is locked: its recorded holder {running} is no longer running, but a process it "
                f"started still holds {Path(root) / LOCK_NAME}; end that process and retry")
    return f"workdir {root} is in use by {running}; wait for it to finish or stop it, then retry"


class WorkdirLock:
    """Non-blocking exclusive lock of a workdir for one command."""

    def __init__(self, root: Path, command: str):
        self.root = Path(root)
        self.command = command
        self._lock = FileLock(self.root / LOCK_NAME, timeout=0)

    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise WorkdirBusy(describe_holder(self.root, read_holder(self.root))) from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_text_atomic(self.root / HOLDER_NAME, json.dumps({"command": self.command, "pid": os.getpid(), "started": started}))

    def release(self) -> None:
        (self.root / HOLDER_NAME).unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
