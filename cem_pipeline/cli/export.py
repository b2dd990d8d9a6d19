"""`cem export`: the selected patches to .beton."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, workdir_locked


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(config: Optional[Path] = ConfigArg,
               workers: Optional[int] = typer.Option(None, help="DatasetWriter processes (default export.num_workers)")) -> None:
        """Write the selected patches to .beton file(s) with a Parquet/JSON sidecar; mark them in the catalog."""
        from cem_pipeline.export.select import ExportError
        from cem_pipeline.export.writer import run_export

        cfg = config_or_exit(config)
        try:
            with workdir_locked(cfg.workdir, "export"):
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
