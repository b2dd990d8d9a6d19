"""`cem bench ingest`: the paper's per-patch curation vs ours, on a realistic volume of real EM slices.

Volume: the 20 consecutive cdeep3m SBEM 1024^2 slices repeated (alternately reversed) to
`slices` z planes, written as one multi-page TIFF and declared isotropic, so all three planes
are cut (240 slices: 6,000 xy + 2 x 5,120 xz/yz patches, 1024 = 4 x 224 + a kept 128-px edge).

Baseline (the paper's crop_patches.py, per patch): crop from the in-memory plane, PIL BILINEAR
resize to 224, imagehash.dhash, write one TIFF and one .npy file. Reading the slices from disk
and cutting planes are left out of the baseline (they favour it). It is timed on a subset of
our catalog's rows and its rate extrapolated; `hash_mismatches_vs_baseline` counts where its
hashes differ from ours on that subset (0 unless a kernel is wrong).

Ours: `run_ingest` on the configured LocalCluster (read, store to zarr, tile, hash, Parquet),
timed from submission to the last done-marker. The cluster start and the one-off loading of
the compiled kernels in each fresh worker (`ingest.graph.load_kernels`, paid once per worker
however many volumes follow) are reported separately, and `ours_per_s_with_kernel_load` counts it.
"""
from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cem_pipeline.bench.em_data import cdeep3m_stack
from cem_pipeline.bench.errors import BenchError


def benchmark_volume(em_root: Path, slices: int) -> np.ndarray:
    """The cdeep3m training slices repeated, alternately reversed, to `slices` z planes."""
    stack = cdeep3m_stack(em_root)
    reps = -(-slices // (2 * len(stack)))
    return np.ascontiguousarray(np.concatenate([stack, stack[::-1]] * reps)[:slices])


def paper_way(volume: np.ndarray, rows, out_dir: Path) -> tuple[float, np.ndarray]:
    """Seconds for the paper's per-patch work on `rows`, and the hashes it computes."""
    import imagehash
    import tifffile
    from PIL import Image

    from cem_pipeline.core.geometry import plane

    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = np.zeros(len(rows), dtype=np.uint64)
    start = time.perf_counter()
    for i, row in enumerate(rows.itertuples()):
        patch = np.ascontiguousarray(plane(volume, row.axis, row.slice)[row.y:row.y + row.h, row.x:row.x + row.w])
        bits = imagehash.dhash(Image.fromarray(patch).resize((224, 224), resample=Image.BILINEAR), hash_size=8).hash
        name = out_dir / f"bench-LOC-{row.axis}_{row.slice}_{row.y}_{row.x}"
        tifffile.imwrite(f"{name}.tiff", patch)
        np.save(f"{name}.npy", bits)
        hashes[i] = int("".join("1" if b else "0" for b in bits.flatten()), 2)
    return time.perf_counter() - start, hashes


def _worker_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(em_root: Path, slices: int = 240, baseline_patches: int = 300, n_workers: int = 2) -> dict:
    from cem_pipeline.core.catalog import read_table
    from cem_pipeline.core.cluster import open_client
    from cem_pipeline.core.config import parse_config
    from cem_pipeline.ingest.graph import load_kernels, run_ingest

    volume = benchmark_volume(em_root, slices)
    with tempfile.TemporaryDirectory(prefix="cem-bench-ingest-") as tmp:
        root = Path(tmp)
        import tifffile

        tifffile.imwrite(root / "volume.tif", volume, photometric="minisblack")
        os.sync()  # the kernel's write-back of the input must not run inside either timed section
        config = parse_config({
            "workdir": str(root / "work"),
            "cluster": {"n_workers": n_workers, "threads_per_worker": 1, "memory_limit": "3GiB"},
            "ingest": {"sources": [{"name": "bench", "path": str(root / "volume.tif"), "voxel_size": [6.0, 6.0, 6.0]}]},
        })
        started = time.perf_counter()
        with open_client(config.cluster, root / "logs") as client:
            cluster_s = time.perf_counter() - started
            started = time.perf_counter()
            client.run(load_kernels)
            warm_up_s = time.perf_counter() - started
            summary = run_ingest(config, client, progress=False)
            worker_rss = client.run(_worker_peak_rss_mb)
        if summary.errors:
            raise BenchError(f"benchmark ingest failed: {summary.errors}")
        catalog = read_table(config.workdir)
        subset = catalog.sample(n=min(baseline_patches, len(catalog)), random_state=0)
        os.sync()  # nor the write-back of our store
        baseline_s, baseline_hashes = paper_way(volume, subset, root / "paper")
    mismatches = int((baseline_hashes != subset["dhash"].to_numpy(np.uint64)).sum())
    baseline_per_s = len(subset) / baseline_s
    ours_per_s = summary.patches / summary.seconds
    return {
        "benchmark": "ingest",
        "volume_shape": list(volume.shape),
        "patches": int(summary.patches),
        "patches_by_axis": {k: int(v) for k, v in catalog.groupby("axis").size().items()},
        "baseline_patches_timed": int(len(subset)),
        "baseline_per_s": baseline_per_s,
        "ours_per_s": ours_per_s,
        "ratio": ours_per_s / baseline_per_s,
        "ours_seconds": summary.seconds,
        "baseline_seconds_extrapolated": summary.patches / baseline_per_s,
        "cluster_start_seconds": cluster_s,
        "kernel_load_seconds": warm_up_s,
        "ours_per_s_with_kernel_load": summary.patches / (summary.seconds + warm_up_s),
        "workers": n_workers,
        "hash_mismatches_vs_baseline": mismatches,
        "peak_worker_rss_mb": max(worker_rss.values()),
        "peak_client_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
