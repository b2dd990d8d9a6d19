"""Helpers shared by subcommands: load a config or exit with its error, and the CONFIG argument."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import CemConfig, ConfigError, load_config

ConfigArg = typer.Argument(None, help="YAML config (default: built-in defaults)", show_default=False)


def config_or_exit(path: Optional[Path]) -> CemConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
