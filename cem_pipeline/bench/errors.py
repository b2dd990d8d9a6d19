"""Why a benchmark gives no result: the CLI turns each into a message and an exit code."""
from __future__ import annotations


class BenchError(RuntimeError):
    """The benchmark cannot run (e.g. too few slices for the requested size); the message says why."""


class EmDataNotFound(BenchError, FileNotFoundError):
    """The real EM data is not where it was looked for; the message names the folder and how to pass another."""


class BenchMismatch(BenchError, AssertionError):
    """Ours and the paper's way disagree: the benchmark result is void."""
