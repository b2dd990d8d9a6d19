"""`cem status CONFIG`: each stage as fresh / stale / missing, with counts."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(config: Optional[Path] = ConfigArg) -> None:
        """Is each stage (ingest, dedup, filter, export) fresh, stale (computed from older inputs) or missing?"""
        from cem_pipeline.core.config import ConfigError
        from cem_pipeline.core.freshness import downstream_states
        from cem_pipeline.ingest.graph import ingest_state

        cfg = config_or_exit(config)
        try:
            states = [ingest_state(cfg), *downstream_states(cfg.workdir)]
        except ConfigError as exc:
            typer.secho(f"status: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        typer.echo(f"workdir: {cfg.workdir}")
        for state in states:
            typer.echo(state.line())
