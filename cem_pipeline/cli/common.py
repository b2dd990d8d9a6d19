"""Helpers shared by subcommands: load a config or exit with its error, and the CONFIG argument."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from cem_pipeline.core.config import CemConfig, ConfigError, load_config

ConfigArg = typer.Argument(None, help="YAML config (default: built-in defaults)", show_default=False)


def config_or_exit(path: Optional[Path]) -> CemConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def echo_result(result: dict, as_json: bool) -> None:
    """A benchmark's result: one JSON object (machine-readable contract) or aligned `key: value` lines."""
    if as_json:
        typer.echo(json.dumps(result))
        return
    width = max((len(key) for key in result), default=0)
    for key, value in result.items():
        typer.echo(f"{key:>{width}}: {value:.4g}" if isinstance(value, float) else f"{key:>{width}}: {value}")


@contextmanager
def workdir_locked(workdir: Path, command: str) -> Iterator[None]:
    """Hold the workdir's run lock for a command that writes it; exit 2 naming the holder when it is taken."""
    from cem_pipeline.core.lock import WorkdirBusy, WorkdirLock

    lock = WorkdirLock(workdir, command)
    try:
        lock.acquire()
    except WorkdirBusy as exc:
        typer.secho(f"{command}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    try:
        yield
    finally:
        lock.release()
