"""`cem bench NAME` for every benchmark, and `cem bench all`: argument parsing only.

Each command calls `cem_pipeline.bench.NAME.run`, prints its dict (`--json`: one JSON object) and,
with `--markdown`, records it in BENCHMARKS.md (cem_pipeline.bench.markdown). Benchmarks that
read real EM take `--data PATH` (else $CEM_EM_DATA, $CEM_SHARED_EM, ../shared/data/em; see
cem_pipeline.bench.em_data). Exit codes: 2 for missing data or bad arguments, 1 when the benchmark
cannot run or ours and the paper's way disagree (the figures are then void).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Callable, Optional

import typer

from cem_pipeline.cli.common import echo_result

JsonOpt = typer.Option(False, "--json", help="print one JSON object")
DataOpt = typer.Option(None, "--data", help="real EM folder (default: $CEM_EM_DATA, else $CEM_SHARED_EM, else "
                       "../shared/data/em beside the checkout)", show_default=False)
LegacyDataOpt = typer.Option(None, "--data", "--em-root", help="real EM folder (default: $CEM_EM_DATA, else "
                             "$CEM_SHARED_EM, else ../shared/data/em beside the checkout)", show_default=False)
MarkdownOpt = typer.Option(False, "--markdown", help="also record the run in BENCHMARKS.md (this machine's section)")
MarkdownFileOpt = typer.Option(None, "--markdown-file", help="write this file instead of the checkout's BENCHMARKS.md",
                               show_default=False)
WorkdirOpt = typer.Option(None, help="reuse/keep this bench workdir (default: a temporary one)")
SourcesOpt = typer.Option(None, "--sources", help="comma-separated shared sources to ingest (default: all of "
                          "cdeep3m_train, cdeep3m_val, cdeep3m_test, isbi_train, isbi_test, snemi3d, fei)",
                          show_default=False)
RECORDING = ("markdown", "markdown_file")


def _fail(message: str, code: int) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _command_line(ctx: typer.Context) -> str:
    """The command as typed, canonically: `cem bench NAME` and every option not left at its default."""
    parts = ["cem", "bench", ctx.info_name or ""]
    for param in ctx.command.params:
        if param.name in RECORDING or param.param_type_name != "option":
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            names = param.opts if value else param.secondary_opts
            parts += names[:1]
        elif value is not None:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


def _bench(ctx: typer.Context, name: str, measure: Callable[[], dict], as_json: bool, markdown: bool, markdown_file: Optional[Path],
           em_data: Optional[Path] = None, check: Callable[[dict], Optional[str]] = lambda result: None) -> dict:
    """Measure, print, record; `check` returns why a printed result is void (then exit 1)."""
    from cem_pipeline.bench.errors import BenchError, EmDataNotFound

    if markdown:
        import time

        from cem_pipeline.bench.machine import machine_info, utc_now

        machine, date, started = machine_info(), utc_now(), time.perf_counter()
    try:
        result = measure()
    except EmDataNotFound as exc:
        _fail(f"bench {name}: {exc}", 2)
    except BenchError as exc:
        _fail(f"bench {name}: {exc}", 1)
    echo_result(result, as_json)
    problem = check(result)
    if markdown:
        from cem_pipeline.bench.markdown import DEFAULT_FILE, write_runs
        from cem_pipeline.bench.suite import Run

        command = _command_line(ctx)
        run = Run(name, command, date, time.perf_counter() - started, result, 1 if problem else 0, problem or "", machine)
        path = write_runs(markdown_file or DEFAULT_FILE, [run], False, em_data, command + " --markdown", False)
        typer.echo(f"recorded in {path}", err=True)
    if problem:
        _fail(f"bench {name}: {problem}", 1)
    return result


def _em_data(name: str, data: Optional[Path]) -> Path:
    from cem_pipeline.bench.em_data import require_em_data
    from cem_pipeline.bench.errors import EmDataNotFound

    try:
        return require_em_data(data)
    except EmDataNotFound as exc:
        _fail(f"bench {name}: {exc}", 2)


def _sources(name: str, sources: Optional[str]) -> Optional[str]:
    from cem_pipeline.bench.em_data import source_names

    try:
        source_names(sources)
    except ValueError as exc:
        _fail(f"bench {name}: --sources: {exc}", 2)
    return sources


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(help="Benchmarks: ours vs the paper's way, measured in the same run.", no_args_is_help=True)
    app.add_typer(bench_app, name="bench")

    @bench_app.command("ingest")
    def bench_ingest(
        ctx: typer.Context,
        as_json: bool = JsonOpt,
        slices: int = typer.Option(240, help="z slices of the benchmark volume (real cdeep3m slices, repeated)"),
        baseline_patches: int = typer.Option(300, help="patches the paper's way is timed on (rate extrapolated)"),
        data: Optional[Path] = LegacyDataOpt,
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """Patches/s: the paper's per-patch crop+hash+TIFF+npy vs ours (zarr + Parquet via Dask)."""
        from cem_pipeline.bench import ingest

        root = _em_data("ingest", data)
        _bench(ctx, "ingest", lambda: ingest.run(root, slices=slices, baseline_patches=baseline_patches),
               as_json, markdown, markdown_file, root)

    @bench_app.command("dhash")
    def bench_dhash(
        ctx: typer.Context,
        as_json: bool = JsonOpt,
        data: Optional[Path] = LegacyDataOpt,
        patches: int = typer.Option(20000, min=1, help="patches hashed by ours"),
        baseline_patches: int = typer.Option(1000, min=1, help="patches hashed by the per-patch baseline"),
        hash_size: int = typer.Option(8, min=2, max=8),
        threads: int = typer.Option(0, min=0, help="threads for ours (0 = every core); one thread is timed too"),
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """Patches/s of cem's batched dHash and of imagehash per patch; fails if any hash differs."""
        from cem_pipeline.bench import dhash

        root = _em_data("dhash", data)
        _bench(ctx, "dhash", lambda: dhash.run(root, patches, baseline_patches, hash_size, threads), as_json, markdown,
               markdown_file, root,
               check=lambda r: f"{r['mismatches']} hashes differ from imagehash" if r["mismatches"] else None)

    @bench_app.command("dedup")
    def bench_dedup(
        ctx: typer.Context,
        as_json: bool = JsonOpt,
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
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """Hashes/s of ours vs the paper's deduplication loop; fails if the exemplars differ."""
        from cem_pipeline.bench import dedup

        if scale not in dedup.SCALES or rule not in ("le", "lt"):
            _fail("bench dedup: --scale is small|cemraw|all and --rule is le|lt", 2)
        _bench(ctx, "dedup", lambda: dedup.run(scale, hashes, total, groups, workers, distance, rule, seed, sweep),
               as_json, markdown, markdown_file)

    @bench_app.command("score")
    def bench_score(
        ctx: typer.Context,
        as_json: bool = JsonOpt,
        n: int = typer.Option(128, help="patches per measurement"),
        batch_size: int = typer.Option(64, help="our batch size"),
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """Patches/s of the scoring kernel vs the paper's classify_nn.py way (per-patch PIL transforms, batch 128 fp32)."""
        from cem_pipeline.bench import score

        _bench(ctx, "score", lambda: score.run(n, batch_size), as_json, markdown, markdown_file)

    @bench_app.command("export")
    def bench_export(
        ctx: typer.Context,
        as_json: bool = JsonOpt, workdir: Optional[Path] = WorkdirOpt,
        workers: int = typer.Option(os.cpu_count() or 1, help="writer processes"),
        data: Optional[Path] = DataOpt, sources: Optional[str] = SourcesOpt,
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """Patches written/s: `cem export` vs one TIFF per patch, each read on its own."""
        from cem_pipeline.bench import export

        root, sources = _em_data("export", data), _sources("export", sources)
        _bench(ctx, "export", lambda: export.run(workdir, workers, root, sources), as_json, markdown, markdown_file, root)

    @bench_app.command("loader")
    def bench_loader(
        ctx: typer.Context,
        as_json: bool = JsonOpt, workdir: Optional[Path] = WorkdirOpt,
        workers: int = typer.Option(os.cpu_count() or 1, help="loader workers, both sides"),
        batch_size: int = 64, batches: int = 40,
        rounds: int = typer.Option(4, help="alternating timing rounds (shared machines)"),
        data: Optional[Path] = DataOpt, sources: Optional[str] = SourcesOpt,
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """MoCo view pairs/s: .beton + ffcv + batched augment vs one TIFF per patch + PIL + torchvision."""
        from cem_pipeline.bench import loader

        root, sources = _em_data("loader", data), _sources("loader", sources)
        _bench(ctx, "loader", lambda: loader.run(workdir, workers, batch_size, batches, rounds, root, sources),
               as_json, markdown, markdown_file, root)

    @bench_app.command("mocov2")
    def bench_mocov2(
        ctx: typer.Context,
        as_json: bool = JsonOpt,
        batch_size: int = typer.Option(0, help="images per step (default: 8 on CPU, 128 on GPU)"),
        steps: int = typer.Option(0, help="timed steps per side (default: 3 on CPU, 30 on GPU)"),
        threads: int = typer.Option(0, help="torch threads (default: all cores)"),
        data: Optional[Path] = DataOpt,
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """Images/s of the MoCoV2 training step: the paper's data path and fp32 vs ours.

        Paper: per-image torchvision transforms in DataLoader workers, fp32. Ours: ffcv .beton loader
        and batched augmentation (bf16 + channels_last on GPU). Real EM patches (cdeep3m SBEM), 224 px.
        """
        from cem_pipeline.bench import mocov2

        root = _em_data("mocov2", data)
        _bench(ctx, "mocov2", lambda: mocov2.run(root, batch_size or None, steps or None, threads or None),
               as_json, markdown, markdown_file, root)

    @bench_app.command("infer")
    def bench_infer(
        ctx: typer.Context,
        as_json: bool = JsonOpt,
        depth: int = typer.Option(16, help="volume Z (slices of the real cdeep3m SBEM stack)"),
        side: int = typer.Option(96, help="volume Y = X"),
        batch_size: int = typer.Option(16, help="slices per forward pass (ours)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        threads: int = typer.Option(0, help="torch CPU threads (default: torch's)"),
        data: Optional[Path] = DataOpt,
        markdown: bool = MarkdownOpt, markdown_file: Optional[Path] = MarkdownFileOpt,
    ) -> None:
        """Orthoplane inference voxels/s: batched zarr-slab path vs the paper's batch-1 slice loop."""
        from cem_pipeline.bench import infer

        root = _em_data("infer", data)
        _bench(ctx, "infer", lambda: infer.run(root, (depth, side, side), batch_size, device, threads or None),
               as_json, markdown, markdown_file, root)

    @bench_app.command("all")
    def bench_all(
        markdown: bool = typer.Option(False, "--markdown", help="record every run in BENCHMARKS.md, rewriting this "
                                      "machine's section"),
        markdown_file: Optional[Path] = MarkdownFileOpt,
        data: Optional[Path] = DataOpt,
        quick: bool = typer.Option(False, "--quick", help="tiny sizes: a smoke test of every benchmark, not figures "
                                   "to quote (recorded in a separate '(quick)' section)"),
    ) -> None:
        """Every benchmark in turn (never two at once), each as `cem bench NAME --json`, after warming the numba kernels."""
        from cem_pipeline.bench.suite import run_all

        root = _em_data("all", data)
        runs: list = []

        def record(run) -> None:
            runs.append(run)
            if markdown:
                from cem_pipeline.bench.markdown import DEFAULT_FILE, write_runs

                written_by = "cem bench all --markdown" + (" --quick" if quick else "")
                write_runs(markdown_file or DEFAULT_FILE, runs, quick, root, written_by, True)

        run_all(quick, data, lambda line: typer.echo(line, err=True), record)
        _echo_summary(runs)
        if markdown:
            from cem_pipeline.bench.markdown import DEFAULT_FILE

            typer.echo(f"recorded in {markdown_file or DEFAULT_FILE}")
        failed = [run.name for run in runs if run.error]
        if failed:
            _fail(f"bench all: failed: {', '.join(failed)}", 1)


def _echo_summary(runs: list) -> None:
    from cem_pipeline.bench.markdown import summary_rows

    rows = [("benchmark", "unit", "baseline/s", "ours/s", "ratio")]
    rows += [row for run in runs for row in summary_rows(run.name, run.result)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
