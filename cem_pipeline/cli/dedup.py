"""`cem dedup CONFIG [--show N]` and `cem bench dedup`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, echo_result


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
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

    @bench_app.command("dedup")
    def bench_dedup(
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        scale: str = typer.Option("small", help="small: one 100k group vs the paper's loop; cemraw: 5.3M hashes "
                                  "in 600 groups through Dask; all: both (cemraw keys prefixed cemraw_)"),
        hashes: int = typer.Option(100_000, min=1000, help="small: hashes in the group"),
        total: int = typer.Option(5_300_000, min=1000, help="cemraw: hashes in all groups"),
        groups: int = typer.Option(600, min=1, help="cemraw: groups"),
        workers: int = typer.Option(2, min=1, help="cemraw: LocalCluster workers"),
        distance: int = typer.Option(12, min=0, max=64),
        rule: str = typer.Option("le", help="le (<= d, paper code) or lt (< d, paper text)"),
        seed: int = typer.Option(0),
        sweep: bool = typer.Option(False, "--sweep", help="small: also time scan vs mih(m) for d = 2..16"),
    ) -> None:
        """Hashes/s of ours vs the paper's deduplication loop; fails if the exemplars differ."""
        from cem_pipeline.bench.dedup import BenchMismatch, bench_cemraw, bench_small

        if scale not in ("small", "cemraw", "all") or rule not in ("le", "lt"):
            typer.secho("bench dedup: --scale is small|cemraw|all and --rule is le|lt", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        result: dict = {}
        try:
            if scale in ("small", "all"):
                result.update(bench_small(hashes, distance, rule, seed, sweep))
            if scale in ("cemraw", "all"):
                cemraw = bench_cemraw(total, groups, distance, rule, seed, workers)
                result.update(cemraw if scale == "cemraw" else {f"cemraw_{k}": v for k, v in cemraw.items()})
        except BenchMismatch as exc:
            typer.secho(f"bench dedup: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        echo_result(result, as_json)
