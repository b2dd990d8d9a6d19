"""`cem bench dhash`: batched dHash vs the paper's per-patch imagehash call on real EM patches."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import echo_result


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("dhash")
    def bench_dhash(
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        em_root: Optional[Path] = typer.Option(None, help="real EM data folder (default: CEM_SHARED_EM or ../shared/data/em)"),
        patches: int = typer.Option(20000, min=1, help="patches hashed by ours"),
        baseline_patches: int = typer.Option(1000, min=1, help="patches hashed by the per-patch baseline"),
        hash_size: int = typer.Option(8, min=2, max=8),
        threads: int = typer.Option(0, min=0, help="threads for ours (0 = every core); one thread is timed too"),
    ) -> None:
        """Patches/s of cem's batched dHash and of imagehash per patch; fails if any hash differs."""
        from cem_pipeline.bench.dhash import benchmark
        from cem_pipeline.bench.em_data import shared_em_root

        try:
            result = benchmark(em_root or shared_em_root(), patches, baseline_patches, hash_size, threads)
        except FileNotFoundError as exc:
            typer.secho(f"bench dhash: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        echo_result(result, as_json)
        if result["mismatches"]:
            typer.secho(f"{result['mismatches']} hashes differ from imagehash", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
