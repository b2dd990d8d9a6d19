"""The paper's deduplication loop, kept plain: the yardstick that `kernel.cluster_ordered` must match exactly
(tests) and beat (benchmark).

As in `deduplicate.py`: per leader, compare it with EVERY remaining hash (vectorised numpy), take all matches
(the leader included), delete them, repeat. The paper holds hashes as (n, 64) boolean arrays
(`bits=True`, the benchmark's baseline); `bits=False` is the same loop on packed uint64 with
`np.bitwise_count`, a stronger baseline reported alongside.
"""
from __future__ import annotations

import numpy as np

from cem_pipeline.dedup.kernel import Clusters


def _as_bits(hashes: np.ndarray) -> np.ndarray:
    """(n, 64) bool, most significant bit first, like imagehash's `hash.flatten()`."""
    return np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).astype(bool)


def reference_clusters(hashes: np.ndarray, t: int, bits: bool = True) -> Clusters:
    """Leader position and distance of every hash, processing `hashes` in the given order with cutoff <= t.
    With t < 0 nothing matches, and (unlike the paper's loop, which would never end) each leader forms its
    own cluster."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    leader = np.empty(hashes.size, np.int64)
    ids = np.arange(hashes.size)
    remaining = _as_bits(hashes) if bits else hashes.copy()
    while ids.size:
        if bits:
            distance = np.logical_xor(remaining[0], remaining).sum(1)
        else:
            distance = np.bitwise_count(remaining ^ remaining[0])
        matches = np.flatnonzero(distance <= t) if t >= 0 else np.array([0])
        leader[ids[matches]] = ids[0]
        remaining = np.delete(remaining, matches, axis=0)
        ids = np.delete(ids, matches)
    return Clusters(leader, np.bitwise_count(hashes ^ hashes[leader]).astype(np.int8), "reference")
