from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, echo_result


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("export")
    def export(config: Optional[Path] = ConfigArg,
               workers: Optional[int] = typer.Option(None, help="DatasetWriter processes (default export.num_workers)")) -> None:
        """Write the selected patches to .beton file(s) with a Parquet/JSON sidecar; mark them in the catalog."""
        from cem_pipeline.export.select import ExportError
        from cem_pipeline.export.writer import run_export

        cfg = config_or_exit(config)
        try:
            result = run_export(cfg, num_workers=workers)
        except (ExportError, FileNotFoundError, ValueError) as exc:
            typer.secho(f"export: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        for note in result.notes:
            typer.echo(f"note: {note}")
        for path in result.files:
            typer.echo(f"wrote {path}")
        typer.echo(f"{result.rows} patches in {result.seconds:.1f} s; mean {result.mean:.6f} std {result.std:.6f}; "
                   f"metadata {result.meta_path}")

    def _run(name: str, as_json: bool, workdir: Optional[Path], workers: int, **kwargs) -> None:
        from cem_pipeline.bench.export import bench_export
        from cem_pipeline.bench.loader import bench_loader

        with tempfile.TemporaryDirectory(prefix=f"cem-bench-{name}-") as tmp:
            root = workdir or Path(tmp)
            result = {"export": bench_export, "loader": bench_loader}[name](root, workers, **kwargs)
        echo_result(result, as_json)

    WorkdirOpt = typer.Option(None, help="reuse/keep this bench workdir (default: a temporary one)")

    @bench_app.command("loader")
    def bench_loader(as_json: bool = typer.Option(False, "--json"), workdir: Optional[Path] = WorkdirOpt,
                     workers: int = typer.Option(os.cpu_count() or 1, help="loader workers, both sides"),
                     batch_size: int = 64, batches: int = 40,
                     rounds: int = typer.Option(4, help="alternating timing rounds (shared machines)")) -> None:
        """MoCo view pairs/s: .beton + ffcv + batched augment vs one TIFF per patch + PIL + torchvision."""
        _run("loader", as_json, workdir, workers, batch_size=batch_size, batches=batches, rounds=rounds)

    @bench_app.command("export")
    def bench_export(as_json: bool = typer.Option(False, "--json"), workdir: Optional[Path] = WorkdirOpt,
                     workers: int = typer.Option(os.cpu_count() or 1, help="writer processes")) -> None:
        """Patches written/s: `cem export` vs one TIFF per patch, each read on its own."""
        _run("export", as_json, workdir, workers)
