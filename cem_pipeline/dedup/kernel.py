"""Greedy near-duplicate clustering of ONE group of 64-bit dHashes (pure numpy + numba, no Dask, no I/O).

The rule (paper, `deduplicate.py`): walk the hashes in a given order; the first hash still remaining is a
leader; every remaining hash within the cutoff of the leader (the leader included) joins its cluster and is
removed; repeat until none remain. `cluster_ordered` returns exactly what that loop returns for the same
order (tests compare it with `reference.py`), but fast:

* identical hashes always fall in the same cluster (if one joins a leader, its twins are at the same
  distance), so the loop runs on the distinct values in first-occurrence order and the result is mapped back;
  groups full of identical empty-resin hashes cost nothing extra;
* `scan`: the loop itself in numba: per leader one vectorised (SIMD) XOR+popcount pass over the remaining
  hashes (kept dense by swap-removal) writes a byte mask that is read 8 bytes at a time;
* `mih`: multi-index hashing. The 64 bits are split into m blocks; by pigeonhole any hash within distance t
  of the leader has at least one block within distance floor(t / m) of the leader's block, so only hashes in
  the buckets of those block values are candidates (verified with XOR+popcount). Removed hashes are skipped
  with a path-compressed "next remaining" array per block, so a bucket never re-scans removed entries.

`choose_method` picks scan or mih (and m) from a cost model whose candidate counts are measured on a
subsample of the group itself; its constants were fitted (least squares) to timings of scan and mih
(m = 4, 5, 7) for d = 2, 4, 8, 12 on two 100k synthetic near-duplicate sets on this project's shared
2-core machine; `cem bench dedup --sweep` re-measures both methods (measurements: BENCHMARKS.md). mih wins
for small d, where few buckets hold candidates; the SIMD scan wins for large d such as the paper's d = 12,
because each of mih's candidates is a random memory access that costs far more than a streamed hash.

Memory model for n hashes in a group: input 8n + output 16n bytes; scan adds 33n; mih adds 12*m*n
(ids, positions, skip links per block) + m * 2**b * 8 bytes of bucket starts (b <= 16) — about 80 bytes
per hash at m = 5, so a 5M-hash group needs ~0.5 GB in one task.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

Method = Literal["auto", "scan", "mih"]

# Cost-model constants (nanoseconds), fitted to measured runs (see module docstring):
SCAN_NS_PER_HASH = 0.33  # one remaining hash in the streaming scan of one leader
MIH_NS_PER_LOOKUP = 100.0  # one bucket probe (skip-link find + bucket bounds: cache misses)
MIH_NS_PER_CANDIDATE = 38.0  # one candidate: skip-link step + XOR+popcount (random access)
ALIVE_FRACTION = 0.4  # mean share of a group still remaining when a leader is processed (measured)
COST_SAMPLE = 4096  # values the cost model counts candidates in
COST_LEADERS = 32  # leaders it counts them for
MIN_MIH_SIZE = 2048  # below this the scan always wins (and the index is not worth building)
MAX_BLOCK_BITS = 16  # bucket-start tables stay <= 512 KiB per block


def max_distance(distance: int, rule: str) -> int:
    """Largest Hamming distance that still counts as a duplicate: d for "le" (paper code), d - 1 for "lt"
    (paper text). With "lt" and d = 0 it is -1: nothing matches, so every hash is its own cluster."""
    if rule not in ("le", "lt"):
        raise ValueError(f"unknown distance rule {rule!r}; use 'le' or 'lt'")
    return distance if rule == "le" else distance - 1


def group_rng(seed: int, group_key: str) -> np.random.Generator:
    """The shuffle RNG of one group: PCG64 seeded with SeedSequence([seed mod 2**64 as two 32-bit words,
    the 16-byte BLAKE2b digest of the group key as four 32-bit words]). Stable across runs, machines and
    Python hash seeds, and independent between groups, so a group's result depends only on its own content."""
    seed64 = seed % (1 << 64)
    digest = np.frombuffer(hashlib.blake2b(group_key.encode(), digest_size=16).digest(), dtype="<u4")
    entropy = [seed64 & 0xFFFFFFFF, seed64 >> 32, *(int(w) for w in digest)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


@dataclass(frozen=True)
class Clusters:
    """Per hash (in the order given): position of its leader in that order, and its distance to it."""

    leader: np.ndarray  # int64
    distance: np.ndarray  # int8
    method: str = "scan"  # how it was computed, e.g. "scan", "mih(m=5)", "reference"

    @property
    def n_clusters(self) -> int:
        return int(np.count_nonzero(self.leader == np.arange(self.leader.size)))


@intrinsic
def _popcount(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True)
def _scan(values, t):
    """The paper's loop on distinct values, brute force but cheap: the remaining values live unordered in a
    dense array (removal = swap with the last). Per leader, one branch-free pass that LLVM vectorises (SIMD
    popcount) writes a byte mask; the mask is then read 8 bytes at a time to find the few hits. The next
    leader is the smallest remaining index."""
    n = values.size
    tt = np.uint64(t)
    leader = np.full(n, -1, np.int64)
    alive_v = values.copy()
    alive_i = np.arange(n)
    mask = np.zeros(((n + 7) // 8) * 8, np.uint8)
    words = mask.view(np.uint64)
    hits = np.empty(n, np.int64)
    size = n
    for i in range(n):
        if leader[i] >= 0:
            continue
        lv = values[i]  # still in alive_*: its own hit (distance 0) removes it
        for j in range(size):
            mask[j] = _popcount(alive_v[j] ^ lv) <= tt
        n_words = (size + 7) // 8
        for j in range(size, n_words * 8):
            mask[j] = 0
        n_hits = 0
        for w in range(n_words):
            if words[w]:
                for j in range(w * 8, w * 8 + 8):
                    if mask[j]:
                        hits[n_hits] = j
                        n_hits += 1
        for h in range(n_hits - 1, -1, -1):  # descending: a swapped-in last element is never a hit
            p = hits[h]
            leader[alive_i[p]] = i
            size -= 1
            alive_v[p] = alive_v[size]
            alive_i[p] = alive_i[size]
    return leader


@numba.njit(cache=True, nogil=True, inline="always")
def _find(nxt, j, p):
    """Next remaining sorted position >= p in block j (path halving)."""
    while nxt[j, p] != p:
        nxt[j, p] = nxt[j, nxt[j, p]]
        p = nxt[j, p]
    return p


@numba.njit(cache=True, nogil=True)
def _mih(values, t, offsets, widths, flips, flip_ptr):
    """Multi-index hashing version of `_scan` (same result). flips[flip_ptr[j]:flip_ptr[j+1]] are the XOR
    masks of popcount <= floor(t/m) over block j's width."""
    n = values.size
    m = offsets.size
    tt = np.uint64(t)
    max_bits = 0
    for j in range(m):
        max_bits = max(max_bits, widths[j])
    starts = np.zeros((m, (1 << max_bits) + 1), np.int64)
    sorted_ids = np.empty((m, n), np.int32)
    pos = np.empty((m, n), np.int32)
    nxt = np.empty((m, n + 1), np.int32)
    for j in range(m):
        mask = np.uint64((1 << widths[j]) - 1)
        off = np.uint64(offsets[j])
        for i in range(n):
            starts[j, np.int64((values[i] >> off) & mask) + 1] += 1
        for k in range(1 << widths[j]):
            starts[j, k + 1] += starts[j, k]
        fill = starts[j, : (1 << widths[j])].copy()
        for i in range(n):  # counting sort, stable: ids ascend within a bucket
            k = np.int64((values[i] >> off) & mask)
            p = fill[k]
            fill[k] += 1
            sorted_ids[j, p] = i
            pos[j, i] = p
        for p in range(n + 1):
            nxt[j, p] = p
    leader = np.full(n, -1, np.int64)
    for i in range(n):
        if leader[i] >= 0:
            continue
        lv = values[i]
        leader[i] = i
        for j in range(m):
            nxt[j, pos[j, i]] = pos[j, i] + 1
        for j in range(m):
            mask = np.uint64((1 << widths[j]) - 1)
            key0 = np.int64((lv >> np.uint64(offsets[j])) & mask)
            for q in range(flip_ptr[j], flip_ptr[j + 1]):
                key = key0 ^ flips[q]
                hi = starts[j, key + 1]
                p = _find(nxt, j, starts[j, key])
                while p < hi:
                    c = sorted_ids[j, p]
                    if _popcount(values[c] ^ lv) <= tt:
                        leader[c] = i
                        for jj in range(m):
                            nxt[jj, pos[jj, c]] = pos[jj, c] + 1
                    p = _find(nxt, j, p + 1)
    return leader


def block_layout(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and widths of m near-equal blocks covering 64 bits (wider blocks first)."""
    widths = np.array([64 // m + (1 if j < 64 % m else 0) for j in range(m)], np.int64)
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    return offsets, widths


def _flip_masks(width: int, radius: int) -> np.ndarray:
    """All `width`-bit masks with at most `radius` bits set, lightest first."""
    masks = np.arange(1 << width, dtype=np.int64)
    masks = masks[np.bitwise_count(masks) <= radius]
    return masks[np.argsort(np.bitwise_count(masks), kind="stable")]


def _mih_tables(m: int, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    offsets, widths = block_layout(m)
    radius = t // m
    per_block = [_flip_masks(int(w), radius) for w in widths]
    flip_ptr = np.concatenate([[0], np.cumsum([len(f) for f in per_block])]).astype(np.int64)
    return offsets, widths, np.concatenate(per_block), flip_ptr


def _sample(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed subsample of the values and a few leaders drawn from them, for the cost model."""
    rng = np.random.default_rng(0)
    sample = values[rng.choice(values.size, size=min(values.size, COST_SAMPLE), replace=False)]
    return sample, sample[rng.choice(sample.size, size=min(sample.size, COST_LEADERS), replace=False)]


def mih_cost_ns(values: np.ndarray, t: int, m: int, sample: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Estimated cost per leader of mih with m blocks: probes, plus candidates counted on a subsample (so the
    near-duplicate structure of real groups, which fills the buckets around a leader, is measured, not
    assumed uniform), scaled to the group size and to the share still remaining."""
    population, leaders = sample if sample is not None else _sample(values)
    offsets, widths = block_layout(m)
    radius = t // m
    probes = sum(math.comb(int(w), k) for w in widths for k in range(radius + 1))
    hits = 0
    for off, width in zip(offsets, widths):
        mask = np.uint64((1 << int(width)) - 1)
        keys = (population >> np.uint64(off)) & mask
        leader_keys = (leaders >> np.uint64(off)) & mask
        # Each leader lies in its own population; that self-match is one candidate per block, not a sample.
        hits += int(np.count_nonzero(np.bitwise_count(keys[None, :] ^ leader_keys[:, None]) <= radius)) - leaders.size
    candidates = m + hits / leaders.size * values.size / population.size
    return probes * MIH_NS_PER_LOOKUP + candidates * ALIVE_FRACTION * MIH_NS_PER_CANDIDATE


def choose_method(values: np.ndarray, t: int) -> tuple[str, int]:
    """("scan", 0) or ("mih", m) for distinct values `values` and cutoff t, whichever the model says is cheaper."""
    n = values.size
    if n < MIN_MIH_SIZE or t < 0 or t >= 64:
        return "scan", 0
    best = ("scan", 0)
    best_cost = SCAN_NS_PER_HASH * n * ALIVE_FRACTION
    sample = _sample(values)
    smallest = math.ceil(64 / MAX_BLOCK_BITS)
    for m in range(smallest, max(smallest, min(t + 1, 21)) + 1):  # m > t + 1 only adds blocks; keep m <= t + 1
        cost = mih_cost_ns(values, t, m, sample)
        if cost < best_cost:
            best, best_cost = ("mih", m), cost
    return best


def cluster_distinct(values: np.ndarray, t: int, method: Method = "auto", m: int | None = None) -> tuple[np.ndarray, str]:
    """Leader index of each DISTINCT value, processed in the given order, and the method used."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    if values.size == 0 or t < 0:
        return np.arange(values.size, dtype=np.int64), "none"
    if method == "auto":
        method, m = choose_method(values, t)
    if method == "scan":
        return _scan(values, min(t, 64)), "scan"
    if method != "mih":
        raise ValueError(f"unknown method {method!r}; use 'auto', 'scan' or 'mih'")
    if m is None:
        m = max(math.ceil(64 / MAX_BLOCK_BITS), min(t + 1, 21))
    if not 64 / MAX_BLOCK_BITS <= m <= 64:
        raise ValueError(f"mih needs {math.ceil(64 / MAX_BLOCK_BITS)} <= m <= 64 blocks, got {m}")
    return _mih(values, min(t, 64), *_mih_tables(m, min(t, 64))), f"mih(m={m})"


def cluster_ordered(hashes: np.ndarray, t: int, method: Method = "auto", m: int | None = None) -> Clusters:
    """Greedy leader clustering of `hashes` (uint64) in the given order with cutoff distance <= t."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if hashes.size == 0 or t < 0:
        return Clusters(np.arange(hashes.size, dtype=np.int64), np.zeros(hashes.size, np.int8), "none")
    values, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    by_first = np.argsort(first, kind="stable")  # distinct values in first-occurrence order
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(by_first.size)
    distinct_leader, used = cluster_distinct(values[by_first], t, method, m)
    leader = first[by_first][distinct_leader][rank[inverse.ravel()]].astype(np.int64)
    distance = np.bitwise_count(hashes ^ hashes[leader]).astype(np.int8)
    return Clusters(leader, distance, used)
