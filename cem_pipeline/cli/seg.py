"""`cem train seg`, `cem infer`, `cem evaluate` and `cem bench infer`: segmentation transfer (training/seg)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from cem_pipeline.cli.common import echo_result
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


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
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

    @bench_app.command("infer")
    def bench_infer(
        json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
        depth: int = typer.Option(16, help="volume Z (slices of the real cdeep3m SBEM stack)"),
        side: int = typer.Option(96, help="volume Y = X"),
        batch_size: int = typer.Option(16, help="slices per forward pass (ours)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        threads: int = typer.Option(0, help="torch CPU threads (default: torch's)"),
    ) -> None:
        """Orthoplane inference voxels/s: batched zarr-slab path vs the paper's batch-1 slice loop."""
        from cem_pipeline.bench.em_data import shared_em_root
        from cem_pipeline.bench.infer import BenchError, run_benchmark

        shared = shared_em_root()
        try:
            result = run_benchmark((depth, side, side), batch_size, device, shared, threads or None)
        except BenchError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        echo_result(result, json_out)
