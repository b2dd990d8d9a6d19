"""`cem bench dhash`: our batched dHash against the paper's per-patch imagehash call, same real patches.

Which LANCZOS kernel runs (AVX-512 VNNI or float) depends on the CPU; `kernel` in the result says which.
"""
from __future__ import annotations

import os
import time

import numpy as np

from cem_pipeline.bench.em_data import real_em_patches
from cem_pipeline.ingest.hashing import dhash_patches, imagehash_reference, vnni_kernel
from cem_pipeline.ingest.hashing.pillow import PATCH_SIZE


def run(em_root, n_ours: int = 20000, n_baseline: int = 1000, hash_size: int = 8, threads: int = 0) -> dict:
    """Patches/s of dhash_patches (on `threads` threads, 0 = every core, and on one) vs the
    per-patch imagehash call on the same real patches.

    Also counts the hashes that differ on the baseline subset (`mismatches`), so a fast wrong
    kernel cannot pass: the CLI fails the run when there are any.
    """
    threads = threads or os.cpu_count() or 1
    patches = real_em_patches(em_root, n_ours)
    subset = patches[:n_baseline]
    start = time.perf_counter()
    reference = np.array([imagehash_reference(p, hash_size) for p in subset], dtype=np.uint64)
    baseline_s = time.perf_counter() - start
    dhash_patches(subset[:8], hash_size)
    rates = {}
    mismatches = 0
    for n_threads in sorted({1, threads}):
        start = time.perf_counter()
        ours = dhash_patches(patches, hash_size, threads=n_threads)
        rates[n_threads] = len(patches) / (time.perf_counter() - start)
        mismatches += int((ours[: len(subset)] != reference).sum())
    baseline_per_s = len(subset) / baseline_s
    return {
        "benchmark": "dhash",
        "hash_size": hash_size,
        "n_baseline": len(subset),
        "n_ours": len(patches),
        "threads": threads,
        "kernel": "vnni" if vnni_kernel.available() and vnni_kernel.fits(PATCH_SIZE, hash_size) else "float",
        "baseline_per_s": baseline_per_s,
        "ours_per_s": rates[threads],
        "ratio": rates[threads] / baseline_per_s,
        "ours_one_thread_per_s": rates[1],
        "ratio_one_thread": rates[1] / baseline_per_s,
        "mismatches": mismatches,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
