"""`cem ingest`, `cem catalog` and `cem bench ingest`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, echo_result


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
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

        cfg = config_or_exit(config)
        workdir = Workdir(cfg.workdir).create()
        try:
            with open_client(cfg.cluster, workdir.logs / "jobs") as client:
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
        from cem_pipeline.core.catalog import read_table

        cfg = config_or_exit(config)
        frame = read_table(cfg.workdir, columns=["dataset", "volume", "axis"])
        if frame.empty:
            typer.echo(f"catalog at {cfg.workdir / 'catalog'} is empty")
            return
        counts = frame.groupby("dataset").agg(patches=("axis", "size"), volumes=("volume", "nunique"))
        axes = frame.pivot_table(index="dataset", columns="axis", aggfunc="size", fill_value=0)
        table = counts.join(axes).fillna(0)
        for axis in ("xy", "xz", "yz"):
            if axis not in table:
                table[axis] = 0
        table = table[["patches", "volumes", "xy", "xz", "yz"]].astype(int)
        table.loc["TOTAL"] = table.sum()
        typer.echo(table.to_string())

    @bench_app.command("ingest")
    def bench_ingest(
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        slices: int = typer.Option(240, help="z slices of the benchmark volume (real cdeep3m slices, repeated)"),
        baseline_patches: int = typer.Option(300, help="patches the paper's way is timed on (rate extrapolated)"),
        em_root: Optional[Path] = typer.Option(None, help="real EM data root (default ../shared/data/em)"),
    ) -> None:
        """Patches/s: the paper's per-patch crop+hash+TIFF+npy vs ours (zarr + Parquet via Dask)."""
        from cem_pipeline.bench.em_data import shared_em_root
        from cem_pipeline.bench.ingest import run_benchmark

        result = run_benchmark(em_root or shared_em_root(), slices=slices, baseline_patches=baseline_patches)
        echo_result(result, as_json)
