"""Synthetic dHash groups with CEMraw-like near-duplicate structure, for the dedup benchmark.

Real CEMraw redundancy has two sources (paper): adjacent cross-sections of a 3D volume (the hash of the
patch at one (y, x) drifts a few bits per slice: a bit-flip random walk per tile column) and uniform regions
such as empty resin (many identical hashes). Group sizes over source volumes are heavy-tailed (paper:
20% of volumes give 80% of patches).
"""
from __future__ import annotations

import numpy as np


def near_duplicate_hashes(n: int, rng: np.random.Generator, flips_per_slice: float = 3.0,
                          mean_slices: int = 40, resin_fraction: float = 0.05) -> np.ndarray:
    """n uint64 hashes: random walks (one per tile column, Poisson(flips_per_slice) bit flips per slice,
    geometric lengths with mean `mean_slices`) plus `resin_fraction` of copies of a few constant hashes."""
    n_resin = int(n * resin_fraction)
    n_walk = n - n_resin
    lengths = rng.geometric(1.0 / mean_slices, size=max(1, 2 * n_walk // mean_slices + 1))
    lengths = lengths[np.cumsum(lengths) <= n_walk]
    lengths = np.append(lengths, n_walk - lengths.sum())
    lengths = lengths[lengths > 0]
    starts = np.cumsum(lengths) - lengths
    n_flips = np.minimum(rng.poisson(flips_per_slice, size=n_walk), 6)
    flips = np.zeros(n_walk, np.uint64)
    for k in range(6):
        bits = np.left_shift(np.uint64(1), rng.integers(0, 64, size=n_walk, dtype=np.uint64))
        flips ^= np.where(n_flips > k, bits, np.uint64(0))
    flips[starts] = 0
    walk = np.bitwise_xor.accumulate(flips)
    chain = np.repeat(np.arange(lengths.size), lengths)
    origin = rng.integers(0, np.iinfo(np.int64).max, size=lengths.size, dtype=np.int64).astype(np.uint64)
    walks = origin[chain] ^ walk ^ walk[starts][chain]
    resin_values = rng.integers(0, np.iinfo(np.int64).max, size=max(1, n_resin // 500 + 1), dtype=np.int64).astype(np.uint64)
    resin = resin_values[rng.integers(0, resin_values.size, size=n_resin)]
    hashes = np.concatenate([walks, resin])
    return hashes[rng.permutation(n)]


def heavy_tailed_sizes(total: int, groups: int, rng: np.random.Generator, sigma: float = 1.9) -> np.ndarray:
    """`groups` positive sizes summing to `total`, log-normal (sigma 1.9 gives a Gini near 0.8)."""
    weights = rng.lognormal(0.0, sigma, size=groups)
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(np.int64)
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return sizes


def gini(sizes: np.ndarray) -> float:
    """Gini coefficient (0 = equal sizes, 1 = one group has everything)."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    n = x.size
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))
