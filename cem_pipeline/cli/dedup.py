"""`cem dedup CONFIG [--show N]`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, workdir_locked


def register(app: typer.Typer) -> None:
    @app.command("dedup")
    def dedup(
        config: Optional[Path] = ConfigArg,
        show: int = typer.Option(0, "--show", min=0, help="also write a PNG montage of N random near-duplicate clusters"),
    ) -> None:
        """Remove near-duplicate patches per group (greedy dHash clustering); recomputes only changed groups."""
        from cem_pipeline.core.cluster import ClusterError, open_client
        from cem_pipeline.core.workdir import Workdir
        from cem_pipeline.dedup.graph import run_dedup
        from cem_pipeline.dedup.report import dataset_table, format_table, write_montage

        cfg = config_or_exit(config)
        workdir = Workdir(cfg.workdir).create()
        with workdir_locked(workdir.root, "dedup"):
            if not any(workdir.catalog.rglob("*.parquet")):
                typer.secho(f"dedup: no catalog at {workdir.catalog}; run `cem ingest` first", fg=typer.colors.RED, err=True)
                raise typer.Exit(2)
            settings = cfg.dedup
            try:
                with open_client(cfg.cluster, workdir.logs / "jobs") as client:
                    groups = run_dedup(client, workdir.root, settings.distance, settings.rule, settings.group_by, cfg.seed)
            except (ClusterError, ValueError) as exc:
                typer.secho(f"dedup: {config or 'default config'}: {exc}", fg=typer.colors.RED, err=True)
                raise typer.Exit(2) from None
            computed = int(groups["computed"].sum())
            rule = "<=" if settings.rule == "le" else "<"
            typer.echo(f"groups: {len(groups)} ({computed} recomputed, {len(groups) - computed} unchanged); "
                       f"duplicate if Hamming distance {rule} {settings.distance}; seed {cfg.seed}")
            typer.echo(format_table(dataset_table(workdir.root)))
            if show:
                try:
                    path = write_montage(workdir.root, show, settings.montage_members, cfg.seed)
                except ValueError as exc:
                    typer.secho(f"dedup --show: {exc}", fg=typer.colors.YELLOW, err=True)
                else:
                    typer.echo(f"montage: {path}")
