"""`cem bench all`: every benchmark, one after another, each in its own `cem bench NAME --json` process.

One process per benchmark: a benchmark sets process-wide state (torch and numba thread counts, a
Dask cluster, CUDA context) that would otherwise leak into the next one, and the command recorded
for a result is then exactly the command that produced it. They run strictly in sequence: on a
small machine two at once would each measure the other's load. Before the first, every numba
kernel is compiled or loaded from its on-disk cache (`warm_kernels`), so that a cold cache's
compile time is not counted by whichever benchmark happens to use a kernel first.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Bench:
    """One `cem bench NAME`: whether it reads the real EM, and its arguments at full and at quick size."""

    name: str
    needs_data: bool
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = field(default=())


# the pipeline's order; full: the defaults (dedup at both scales); quick: tiny sizes, all eight in a few minutes
BENCHES = (
    Bench("ingest", True, (), ("--slices", "20", "--baseline-patches", "20")),
    Bench("dhash", True, (), ("--patches", "512", "--baseline-patches", "64")),
    Bench("dedup", False, ("--scale", "all"), ("--scale", "small", "--hashes", "2000")),
    Bench("score", False, (), ("--n", "16", "--batch-size", "8")),
    Bench("export", True, (), ("--sources", "cdeep3m_test")),
    Bench("loader", True, (), ("--sources", "cdeep3m_test", "--batch-size", "8", "--batches", "4", "--rounds", "2")),
    Bench("mocov2", True, (), ("--batch-size", "4", "--steps", "1")),
    Bench("infer", True, (), ("--depth", "8", "--side", "64")),
)
NAMES = tuple(b.name for b in BENCHES)


@dataclass
class Run:
    """One benchmark process: its command as a user would type it, and its result or failure."""

    name: str
    command: str
    date: str
    seconds: float
    result: dict | None
    exit_code: int
    error: str = ""
    machine: dict = field(default_factory=dict)


def warm_kernels() -> dict[str, float]:
    """Compile (or load from the on-disk cache) every numba kernel the benchmarks use, on tiny inputs;
    seconds per kernel family."""
    import numpy as np

    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]) -> None:
        started = time.perf_counter()
        fn()
        seconds[name] = time.perf_counter() - started

    def hashing() -> None:
        from cem_pipeline.ingest.graph import load_kernels
        from cem_pipeline.ingest.hashing import dhash_patches

        load_kernels()
        patches = np.random.default_rng(0).integers(0, 256, (4, 224, 224), dtype=np.uint8)
        dhash_patches(patches, 8, threads=1)
        dhash_patches(patches, 8, threads=2)

    def dedup() -> None:
        from cem_pipeline.dedup.kernel import cluster_ordered

        hashes = np.random.default_rng(0).integers(0, np.iinfo(np.int64).max, 4096, dtype=np.int64).astype(np.uint64)
        for method in ("scan", "mih"):
            cluster_ordered(hashes, 12, method)

    def augment() -> None:
        import torch

        from training.data.augment import TwoViewAugment

        TwoViewAugment(0.5, 0.2, "cpu", seed=0)(torch.zeros((2, 224, 224), dtype=torch.uint8))

    timed("ingest tiling + dHash", hashing)
    timed("dedup clustering", dedup)
    timed("MoCo CPU augmentation", augment)
    return seconds


def command_for(bench: Bench, quick: bool, data: Path | None) -> list[str]:
    """`bench NAME --json ...` arguments of one benchmark (after the `cem` program name)."""
    args = ["bench", bench.name, "--json", *(bench.quick if quick else bench.full)]
    if bench.needs_data and data is not None:
        args += ["--data", str(data)]
    return args


def run_one(bench: Bench, quick: bool, data: Path | None, log: Callable[[str], None]) -> Run:
    """Run `cem bench NAME --json` in a fresh interpreter; its stderr goes straight to ours."""
    from cem_pipeline.bench.machine import machine_info, utc_now

    args = command_for(bench, quick, data)
    command = "cem " + shlex.join(args)
    log(f"== {command}")
    date = utc_now()
    machine = machine_info()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cem_pipeline.cli", *args], stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    error = "" if proc.returncode == 0 and result is not None else (
        f"exit code {proc.returncode}" + ("" if result is not None else "; no JSON result on stdout"))
    return Run(bench.name, command, date, seconds, result, proc.returncode, error, machine)


def run_all(quick: bool, data: Path | None, log: Callable[[str], None],
            on_run: Callable[[Run], None] | None = None) -> list[Run]:
    """Warm the kernels, then every benchmark in BENCHES order, never two at once."""
    log("warming numba kernels first (a cold cache would put compile time into the first benchmark to use them) ...")
    for name, seconds in warm_kernels().items():
        log(f"   {name}: {seconds:.1f} s")
    runs = []
    for bench in BENCHES:
        run = run_one(bench, quick, data, log)
        log(f"   {bench.name}: {'ok' if not run.error else 'FAILED (' + run.error + ')'} in {run.seconds:.0f} s")
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return runs
