"""`cem train ...` and `cem bench mocov2`.

`train_app` is the shared `cem train` sub-typer: other training stages add their command to it
from their own module (`from .train_cmd import train_app; @train_app.command("seg")`), in any
order relative to this module's `register`.
"""
from __future__ import annotations

from pathlib import Path

import typer

from cem_pipeline.cli.common import echo_result

train_app = typer.Typer(help="Train models: MoCoV2 pre-training, segmentation transfer.", no_args_is_help=True)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
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

    @bench_app.command("mocov2")
    def bench_mocov2(
        json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
        batch_size: int = typer.Option(0, help="images per step (default: 8 on CPU, 128 on GPU)"),
        steps: int = typer.Option(0, help="timed steps per side (default: 3 on CPU, 30 on GPU)"),
        threads: int = typer.Option(0, help="torch threads (default: all cores)"),
    ) -> None:
        """Images/s of the MoCoV2 training step: the paper's data path and fp32 vs ours.

        Paper: per-image torchvision transforms in DataLoader workers, fp32. Ours: ffcv .beton loader
        and batched augmentation (bf16 + channels_last on GPU). Real EM patches from ../shared, 224 px.
        """
        from cem_pipeline.bench.mocov2 import BenchError, run_benchmark

        try:
            result = run_benchmark(batch_size=batch_size or None, steps=steps or None, threads=threads or None)
        except BenchError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        echo_result(result, json_out)
