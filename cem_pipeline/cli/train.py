"""`cem train ...`.

`train_app` is the shared `cem train` sub-typer: other training stages add their command to it
from their own module (`from cem_pipeline.cli.train import train_app; @train_app.command("seg")`),
in any order relative to this module's `register`.
"""
from __future__ import annotations

from pathlib import Path

import typer

train_app = typer.Typer(help="Train models: MoCoV2 pre-training, segmentation transfer.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")

    @train_app.command("mocov2")
    def mocov2(config: Path = typer.Argument(..., help="MoCoV2 YAML config (see training/configs/)")) -> None:
        """Pre-train a 1-channel ResNet50 with MoCoV2 on a .beton.

        Spawns runtime.nproc local processes; under torchrun, one process per GPU.
        """
        from cem_pipeline.core.config import ConfigError
        from training.moco.checkpoint import CheckpointError
        from training.moco.config import load_moco_config
        from training.moco.train import launch

        try:
            launch(load_moco_config(config))
        except (ConfigError, CheckpointError) as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
