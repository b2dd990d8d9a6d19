from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit
from cem_pipeline.core.config import dump_config


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @config_app.command("show")
    def show(config: Optional[Path] = ConfigArg) -> None:
        """Print the effective config (file values over defaults) as YAML."""
        typer.echo(dump_config(config_or_exit(config)), nl=False)
