"""`cem train seg`, `cem infer` and `cem evaluate`: segmentation transfer (training/seg)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from cem_pipeline.cli.train import train_app

SegConfigArg = typer.Argument(..., help="segmentation YAML config (see training/seg/configs/)")


def _load(path: Path):
    from cem_pipeline.core.config import ConfigError
    from training.seg.config import load_seg_config

    try:
        return load_seg_config(path)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _run(action, config) -> object:
    """Run a stage; data/checkpoint/config problems become a red message and exit code 1."""
    from training.seg.datasets import DatasetError
    from training.seg.model import EncoderLoadError

    try:
        return action(config, log=lambda line: typer.echo(line, err=True))
    except (DatasetError, EncoderLoadError, FileNotFoundError, ValueError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    @train_app.command("seg")
    def train_seg(config: Path = SegConfigArg) -> None:
        """Fine-tune the U-Net/ResNet50 on a benchmark (AdamW + OneCycle, fixed iterations); writes OUTPUT/model.pt."""
        from training.seg.train import run_training

        typer.echo(str(_run(run_training, _load(config))))

    @app.command("infer")
    def infer(config: Path = SegConfigArg) -> None:
        """Segment infer.input (a zarr array) or the benchmark's evaluation items; probabilities + labels as zarr."""
        from training.seg.evaluate import run_inference

        for path in _run(run_inference, _load(config)):
            typer.echo(str(path))

    @app.command("evaluate")
    def evaluate(config: Path = SegConfigArg) -> None:
        """Predict the evaluation items, print IoU as JSON; writes OUTPUT/metrics.json and overlay PNGs."""
        from training.seg.evaluate import run_evaluation

        metrics = _run(run_evaluation, _load(config))
        typer.echo(json.dumps({k: metrics[k] for k in ("name", "mean_iou", "per_class_iou", "classes")}))
