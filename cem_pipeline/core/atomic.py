"""Every file cem writes appears whole or not at all: written beside its final name, then renamed.

A killed process, a dead Dask worker or a full disk leaves at most a hidden temporary file, never
a truncated catalog part, stage table, checkpoint or .beton that a later run would trust. The
temporary name starts with '.' (pyarrow datasets and globs skip it) and carries the process id, so
two workers retrying the same task never write into each other's file.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path`
    in one rename, otherwise it is removed and `path` is left as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)
