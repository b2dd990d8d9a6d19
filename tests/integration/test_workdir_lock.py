"""The per-workdir run lock, with real processes: a second writer fails at once naming the holder; the lock of a
process killed with -9 is taken over."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from cem_pipeline.core.lock import HOLDER_NAME, WorkdirLock, read_holder

CEM = [sys.executable, "-c", "from cem_pipeline.cli import app; app()"]
HOLD = "import sys, time; from cem_pipeline.core.lock import WorkdirLock; lock = WorkdirLock(sys.argv[1], 'ingest'); " \
       "lock.acquire(); print('locked', flush=True); time.sleep(600)"


def test_second_command_fails_then_dead_holder_is_taken_over(tmp_path):
    workdir = tmp_path / "work"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"workdir": str(workdir)}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in ("ingest", "dedup", "export"):
            started = time.monotonic()
            result = subprocess.run([*CEM, command, str(config)], capture_output=True, text=True, timeout=120)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert f"`cem ingest` (PID {holder.pid}" in result.stderr, result.stderr
            assert time.monotonic() - started < 60  # at once: no waiting, no cluster started
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    left = read_holder(workdir)  # kill -9 left the holder file behind
    assert left is not None and left["pid"] == holder.pid
    with WorkdirLock(workdir, "export"):
        assert json.loads((workdir / HOLDER_NAME).read_text())["pid"] == os.getpid()
    assert read_holder(workdir) is None
