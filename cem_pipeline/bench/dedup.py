"""`cem bench dedup`: ours vs the paper's loop, measured in the same run.

small:  one group of synthetic near-duplicate hashes (synthetic_hashes.py); `kernel.cluster_ordered` vs
        `reference.reference_clusters` (the paper's boolean-array loop; the packed-uint64 numpy loop is timed
        too) on the same order; fails unless the exemplars are identical.
cemraw: CEMraw-scale (by default 5.3M hashes in 600 heavy-tailed groups) written as a catalog,
        deduplicated through Dask on a LocalCluster, with peak worker RSS sampled; then a second run that must find every group
        unchanged (incremental path). Its baseline is the paper's loop on one 20k-hash group of the same
        generator (a rate on a much smaller group: the quadratic reference only gets slower with size).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cem_pipeline.bench.errors import BenchMismatch
from cem_pipeline.bench.synthetic_hashes import (
    gini,
    heavy_tailed_sizes,
    near_duplicate_hashes,
)
from cem_pipeline.core import catalog
from cem_pipeline.dedup.kernel import cluster_distinct, cluster_ordered, max_distance
from cem_pipeline.dedup.reference import reference_clusters


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_small(n: int, distance: int, rule: str, seed: int, sweep: bool) -> dict:
    rng = np.random.default_rng(seed)
    hashes = near_duplicate_hashes(n, rng)
    t = max_distance(distance, rule)
    for method in ("scan", "mih"):  # compile / load the numba cache outside the timing
        cluster_ordered(hashes[:4096], min(max(t, 0), 63), method)
    ours, ours_s = _timed(cluster_ordered, hashes, t)
    reference, ref_s = _timed(reference_clusters, hashes, t, bits=True)
    packed, packed_s = _timed(reference_clusters, hashes, t, bits=False)
    for name, other in (("boolean", reference), ("packed", packed)):
        if not np.array_equal(ours.leader, other.leader) or not np.array_equal(ours.distance, other.distance):
            raise BenchMismatch(f"clusters differ from the {name} reference on {n} hashes (d={distance}, {rule})")
    result = {
        "baseline_per_s": n / ref_s,
        "ours_per_s": n / ours_s,
        "ratio": ref_s / ours_s,
        "hashes": n,
        "distance": distance,
        "rule": rule,
        "clusters": ours.n_clusters,
        "removed_fraction": 1 - ours.n_clusters / n,
        "distinct_hashes": int(np.unique(hashes).size),
        "method": ours.method,
        "ours_s": ours_s,
        "baseline_s": ref_s,
        "packed_baseline_per_s": n / packed_s,
        "ratio_vs_packed": packed_s / ours_s,
        "identical_exemplars": True,
    }
    if sweep:
        result["sweep_s"] = sweep_methods(hashes)
    return result


def sweep_methods(hashes: np.ndarray) -> dict:
    """Seconds of scan and of mih at each block count, per cutoff: the data behind kernel's cost model."""
    distinct = np.unique(hashes)
    distinct = distinct[np.random.default_rng(0).permutation(distinct.size)]
    out: dict = {}
    for t in (2, 4, 8, 12, 16):
        row = {"scan": _timed(cluster_distinct, distinct, t, "scan")[1]}
        for m in sorted({4, 5, 6, 7, 9, max(4, min(t + 1, 21))}):
            row[f"mih{m}"] = _timed(cluster_distinct, distinct, t, "mih", m)[1]
        row["auto"] = cluster_distinct(distinct, t)[1]
        out[str(t)] = row
    return out


def write_synthetic_catalog(workdir: Path, sizes: np.ndarray, rng: np.random.Generator) -> None:
    """One dataset per group, CATALOG_SCHEMA columns, near-duplicate hashes, unique patch ids."""
    ids = rng.permutation(int(sizes.sum())).astype(np.int64) * 7919 + 1
    start = 0
    for g, size in enumerate(sizes):
        name = f"synth{g:04d}"
        n = int(size)
        zeros = np.zeros(n, np.int32)
        frame = pd.DataFrame({
            "patch_id": ids[start:start + n], "dataset": name, "volume": f"{name}/vol", "source_file": "synthetic",
            "axis": "xy", "slice": np.arange(n, dtype=np.int32), "y": zeros, "x": zeros,
            "h": zeros + 224, "w": zeros + 224, "dhash": near_duplicate_hashes(n, rng),
            "mean": np.zeros(n, np.float32), "std": np.zeros(n, np.float32),
        })
        start += n
        directory = catalog.catalog_dir(workdir) / f"dataset={name}"
        directory.mkdir(parents=True)
        table = pa.Table.from_pandas(frame, schema=catalog.CATALOG_SCHEMA, preserve_index=False).drop_columns(["dataset"])
        pq.write_table(table, directory / "part.parquet")


class _RssSampler:
    """Peak of the summed RSS of the Dask worker processes, sampled every 0.2 s in a thread."""

    def __init__(self, pids: list[int]):
        import psutil

        self.processes = [psutil.Process(p) for p in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(p.memory_info().rss for p in self.processes if p.is_running()))
            self._stop.wait(0.2)

    def __enter__(self) -> "_RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_cemraw(total: int, groups: int, distance: int, rule: str, seed: int, workers: int) -> dict:
    from cem_pipeline.core.cluster import open_client
    from cem_pipeline.core.config import ClusterConfig
    from cem_pipeline.dedup.graph import run_dedup

    rng = np.random.default_rng(seed)
    sizes = heavy_tailed_sizes(total, groups, rng)
    sample = near_duplicate_hashes(20_000, rng)
    _, ref_s = _timed(reference_clusters, sample, max_distance(distance, rule), bits=True)
    with tempfile.TemporaryDirectory(prefix="cem-bench-dedup-") as tmp:
        workdir = Path(tmp)
        _, write_s = _timed(write_synthetic_catalog, workdir, sizes, rng)
        config = ClusterConfig(n_workers=workers, threads_per_worker=1, memory_limit="4GiB")
        with open_client(config, workdir / "logs") as client:
            client.run(cluster_ordered, np.zeros(8, np.uint64), 0)  # load the numba cache on every worker
            pids = list(client.run(os.getpid).values())
            with _RssSampler(pids) as sampler:
                summary, run_s = _timed(run_dedup, client, workdir, distance, rule, ["dataset"], seed)
            rerun, rerun_s = _timed(run_dedup, client, workdir, distance, rule, ["dataset"], seed)
    kept = int(summary["clusters"].sum())
    return {
        "baseline_per_s": sample.size / ref_s,
        "ours_per_s": total / run_s,
        "ratio": (total / run_s) / (sample.size / ref_s),
        "hashes": total,
        "groups": int(sizes.size),
        "gini": gini(sizes),
        "largest_group": int(sizes.max()),
        "workers": workers,
        "wall_s": run_s,
        "goal_s": 300,
        "peak_worker_rss_mb": sampler.peak / 2**20,
        "removed_fraction": 1 - kept / total,
        "methods": summary["method"].value_counts().to_dict(),
        "catalog_write_s": write_s,
        "rerun_s": rerun_s,
        "rerun_recomputed_groups": int(rerun["computed"].sum()),
        "baseline_note": "paper loop on one 20k-hash group (same generator), single process",
    }


SCALES = ("small", "cemraw", "all")


def run(scale: str = "small", hashes: int = 100_000, total: int = 5_300_000, groups: int = 600, workers: int = 2,
        distance: int = 12, rule: str = "le", seed: int = 0, sweep: bool = False) -> dict:
    """`bench_small` on `hashes`, `bench_cemraw` on `total` in `groups`, or both (scale "all": the
    cemraw keys prefixed `cemraw_`). Raises BenchMismatch when ours and the reference differ."""
    if scale not in SCALES or rule not in ("le", "lt"):
        raise ValueError(f"scale is one of {', '.join(SCALES)} (got {scale!r}) and rule le or lt (got {rule!r})")
    result: dict = {}
    if scale in ("small", "all"):
        result.update(bench_small(hashes, distance, rule, seed, sweep))
    if scale in ("cemraw", "all"):
        cemraw = bench_cemraw(total, groups, distance, rule, seed, workers)
        result.update(cemraw if scale == "cemraw" else {f"cemraw_{k}": v for k, v in cemraw.items()})
    return result
