"""`cem ingest` and `cem catalog`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, workdir_locked


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        config: Optional[Path] = ConfigArg,
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    ) -> None:
        """Read every source in the manifest into store.zarr and the Parquet catalog (resumable)."""
        from cem_pipeline.core.cluster import ClusterError, open_client
        from cem_pipeline.core.config import ConfigError
        from cem_pipeline.core.workdir import Workdir
        from cem_pipeline.ingest.graph import run_ingest
        from cem_pipeline.sources.manifest import specs_of

        cfg = config_or_exit(config)
        workdir = Workdir(cfg.workdir).create()
        try:
            specs_of(cfg.ingest)  # a bad manifest fails here, before a cluster is started
            with workdir_locked(workdir.root, "ingest"), open_client(cfg.cluster, workdir.logs / "jobs") as client:
                summary = run_ingest(cfg, client, progress=progress)
        except (ClusterError, ConfigError) as exc:
            typer.secho(f"ingest: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        for line in summary.lines():
            typer.echo(line)
        typer.echo(f"catalog: {workdir.catalog}   store: {workdir.store}   errors: {workdir.errors}")
        if summary.errors and cfg.ingest.fail_on_error:
            typer.secho(f"ingest: {len(summary.errors)} source(s) failed and ingest.fail_on_error is set",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(1)

    @app.command("catalog")
    def catalog(config: Optional[Path] = ConfigArg) -> None:
        """Per-dataset counts of the catalog: patches, volumes, and patches per plane axis."""
        from cem_pipeline.ingest.report import catalog_counts

        cfg = config_or_exit(config)
        table = catalog_counts(cfg.workdir)
        if table is None:
            typer.echo(f"catalog at {cfg.workdir / 'catalog'} is empty")
            return
        typer.echo(table.to_string())
