"""The dHash tile kernel in float32 SIMD with exact integer settling, for every CPU.

Pillow's LANCZOS sums are computed as float32 dot products (weights are Pillow's integers / 2^22,
exact in float32). A float result is trusted only where a rigorous error bound cannot straddle a
rounding boundary; the few other sums are recomputed in Pillow's own int32 arithmetic, so the
hash is bit-exact. This is the fallback where `vnni_kernel.available()` is false.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from cem_pipeline.ingest.hashing.pillow import (
    _HALF,
    _ONE,
    PRECISION_BITS,
    _upsample,
    check_hash_resize,
    lanczos_taps,
)
from cem_pipeline.ingest.hashing.stats import tile_sums

SIMD_TAPS = 16
_UNIT_ROUNDOFF = 2.0**-24


@lru_cache(maxsize=16)
def _float_pass(in_size: int, out_size: int) -> tuple[np.ndarray, ...]:
    """One LANCZOS pass as float32 taps, int32 taps, first input, padded tap count and error bound.

    Weights are Pillow's integers / 2^22 (exact in float32). Tap lists are zero-padded to a
    multiple of SIMD_TAPS so the dot products vectorise with no scalar tail. `bound[j]` is a
    rigorous bound on the float32 sum's error for inputs in [0, 255] whatever the summation
    order (gamma_n * 255 * sum|w|, Higham's bound) plus the rounding of adding 0.5.
    """
    weights, first, last = lanczos_taps(in_size, out_size)
    count = -(-(last - first) // SIMD_TAPS) * SIMD_TAPS
    width = int(count.max())
    as_float = np.zeros((out_size, width), np.float32)
    as_int = np.zeros((out_size, width), np.int32)
    bound = np.zeros(out_size, np.float32)
    gamma = width * _UNIT_ROUNDOFF / (1 - width * _UNIT_ROUNDOFF)
    for j in range(out_size):
        taps = weights[first[j]:last[j], j].astype(np.int64)
        as_float[j, :len(taps)] = taps / _ONE
        as_int[j, :len(taps)] = taps
        bound[j] = gamma * 255 * np.abs(taps).sum() / _ONE + 2.0**-12
    return as_float, as_int, first, count, bound


@lru_cache(maxsize=16)
def _lanczos_plan(size: int, hash_size: int) -> tuple[np.ndarray, ...]:
    """Both LANCZOS passes (size -> hash_size + 1 wide, then hash_size high) for the tile kernel."""
    check_hash_resize(size, hash_size)
    if size % ROWS_PER_SWEEP or size % 8:
        raise ValueError(f"the tile kernel needs a size divisible by {ROWS_PER_SWEEP} and 8, got {size}")
    return _float_pass(size, hash_size + 1) + _float_pass(size, hash_size)


ROWS_PER_SWEEP = 7


@njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _settle(sums, bound, out, unsure):  # pragma: no cover - compiled
    """out = Pillow's clip8((S + 2^21) >> 22) of each float sum; unsure flags the sums too close to call."""
    count = 0
    for r in range(sums.shape[0]):
        t = sums[r] + np.float32(0.5)
        n = np.floor(t)
        d = t - n
        flag = (d < bound) | (d > np.float32(1.0) - bound)
        unsure[r] = flag
        count += flag
        out[r] = min(max(n, np.float32(0.0)), np.float32(255.0))
    return count


@njit(cache=True, nogil=True, boundscheck=False)
def _exact_tap_sum(values, weights, limit):  # pragma: no cover - compiled
    """Pillow's own int32 arithmetic for one output, for sums the float bound cannot settle."""
    total = np.int32(_HALF)
    for t in range(min(limit, weights.shape[0])):
        total = np.int32(total + np.int32(values[t]) * weights[t])
    value = total >> PRECISION_BITS
    return 0 if value < 0 else (255 if value > 255 else value)


@njit(cache=True, nogil=True, boundscheck=False)
def _redo_unsure(unsure, lines, weights, first, limit, out):  # pragma: no cover - compiled
    """Recompute exactly the flagged outputs; flags are scanned eight at a time (~1% are set)."""
    words = unsure.view(np.uint64)
    for k in range(words.shape[0]):
        if words[k]:
            for r in range(8 * k, 8 * k + 8):
                if unsure[r]:
                    out[r] = _exact_tap_sum(lines[r, first:], weights, limit)


@njit(cache=True, nogil=True, boundscheck=False)
def _scratch(size, out_w, out_h, hwidth, vwidth):  # pragma: no cover - compiled
    """Per-call buffers of the tile kernels; padding past the image is zero so padded taps add nothing."""
    return (np.zeros((ROWS_PER_SWEEP, size + hwidth), np.float32), np.zeros((out_w, size), np.float32),
            np.zeros((out_w, size + vwidth), np.float32), np.zeros(9, np.float32),
            np.zeros((out_h, out_w), np.float32), np.zeros(-(-max(size, out_w) // 8) * 8, np.uint8))


@njit(cache=True, nogil=True, fastmath=True, boundscheck=False, inline="always")
def _lanczos_bits(tile, hf, hi, hfirst, hcount, hbound, vf, vi, vfirst, vcount, vbound,
                  rows, sums, mid, small_sums, small, unsure):  # pragma: no cover - compiled
    """(dHash bits, pixel sum, sum of squares) of one 224 x 224 uint8 tile (any strides).

    Pillow's two fixed-point LANCZOS passes are evaluated as float32 dot products; every result
    whose distance to a rounding boundary is within the error bound is recomputed in Pillow's
    int32 arithmetic (~1% of them), so the output is bit-exact. The horizontal pass sweeps
    ROWS_PER_SWEEP rows per pass over each output's weights: it is bound by vector loads, and
    each weight load then serves seven rows instead of one; the vertical pass likewise sweeps
    all columns per weight load. The pixel sums come from the same read of each row and are
    exact: 7 * 224 * 255 < 2^24 in float32, 7 * 224 * 255^2 < 2^31 in int32.
    """
    h, w = tile.shape
    out_w = hf.shape[0]
    out_h = vf.shape[0]
    total = np.int64(0)
    square = np.int64(0)
    for r in range(0, h, ROWS_PER_SWEEP):
        sweep_total = np.float32(0.0)
        sweep_square = np.int32(0)
        for k in range(ROWS_PER_SWEEP):
            line = rows[k]
            for x in range(w):
                v = tile[r + k, x]
                line[x] = v
                sweep_total += np.float32(v)
                sweep_square = np.int32(sweep_square + np.int32(v) * np.int32(v))
        total += np.int64(sweep_total)
        square += np.int64(sweep_square)
        for j in range(out_w):
            f = hfirst[j]
            weights = hf[j]
            seg0, seg1, seg2, seg3 = rows[0, f:], rows[1, f:], rows[2, f:], rows[3, f:]
            seg4, seg5, seg6 = rows[4, f:], rows[5, f:], rows[6, f:]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = np.float32(0.0)
            for t in range(hcount[j]):
                wt = weights[t]
                s0 += seg0[t] * wt
                s1 += seg1[t] * wt
                s2 += seg2[t] * wt
                s3 += seg3[t] * wt
                s4 += seg4[t] * wt
                s5 += seg5[t] * wt
                s6 += seg6[t] * wt
            column = sums[j]
            column[r], column[r + 1], column[r + 2], column[r + 3] = s0, s1, s2, s3
            column[r + 4], column[r + 5], column[r + 6] = s4, s5, s6
    for j in range(out_w):
        if _settle(sums[j, :h], hbound[j], mid[j], unsure[:h]):
            _redo_unsure(unsure[:h], tile, hi[j], hfirst[j], w - hfirst[j], mid[j])
    last = out_w - 1
    for o in range(out_h):
        f = vfirst[o]
        weights = vf[o]
        c0, c1, c2 = mid[0, f:], mid[min(1, last), f:], mid[min(2, last), f:]
        c3, c4, c5 = mid[min(3, last), f:], mid[min(4, last), f:], mid[min(5, last), f:]
        c6, c7, c8 = mid[min(6, last), f:], mid[min(7, last), f:], mid[min(8, last), f:]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = np.float32(0.0)
        for t in range(vcount[o]):
            wt = weights[t]
            s0 += c0[t] * wt
            s1 += c1[t] * wt
            s2 += c2[t] * wt
            s3 += c3[t] * wt
            s4 += c4[t] * wt
            s5 += c5[t] * wt
            s6 += c6[t] * wt
            s7 += c7[t] * wt
            s8 += c8[t] * wt
        small_sums[0], small_sums[1], small_sums[2] = s0, s1, s2
        small_sums[3], small_sums[4], small_sums[5] = s3, s4, s5
        small_sums[6], small_sums[7], small_sums[8] = s6, s7, s8
        if _settle(small_sums[:out_w], vbound[o], small[o], unsure[:out_w]):
            for j in range(out_w):
                if unsure[j]:
                    small[o, j] = _exact_tap_sum(mid[j, f:], vi[o], h - f)
    bits = np.uint64(0)
    for o in range(out_h):
        for j in range(out_w - 1):
            bits = (bits << np.uint64(1)) | np.uint64(small[o, j + 1] > small[o, j])
    return bits, total, square





@njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _hash_tiles_kernel(tiles, hf, hi, hfirst, hcount, hbound, vf, vi, vfirst, vcount, vbound,
                       hashes, totals, squares):  # pragma: no cover - compiled
    """Every 224 x 224 tile of a (planes, rows, h, cols, w) view, hashed where it lies (no copy)."""
    n_planes, n_rows, h, n_cols, _ = tiles.shape
    rows, sums, mid, small_sums, small, unsure = _scratch(h, hf.shape[0], vf.shape[0], hf.shape[1], vf.shape[1])
    index = 0
    for p in range(n_planes):
        for i in range(n_rows):
            for k in range(n_cols):
                hashes[index], totals[index], squares[index] = _lanczos_bits(
                    tiles[p, i, :, k, :], hf, hi, hfirst, hcount, hbound, vf, vi, vfirst, vcount, vbound,
                    rows, sums, mid, small_sums, small, unsure)
                index += 1


@njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _hash_small_tiles_kernel(tiles, h_first, h_weights, v_first, v_weights, hf, hi, hfirst, hcount, hbound,
                             vf, vi, vfirst, vcount, vbound, hashes, totals, squares):  # pragma: no cover - compiled
    """Tiles no larger than 224 on either side: BILINEAR-enlarged to 224 exactly, then hashed;
    the sums are of the tile itself."""
    n_planes, n_rows, h, n_cols, w = tiles.shape
    size = v_first.shape[0]
    wide = np.zeros((h, size), np.int32)
    packed = np.zeros(w, np.uint32)
    square = np.zeros((size, size), np.uint8)
    rows, sums, mid, small_sums, small, unsure = _scratch(size, hf.shape[0], vf.shape[0], hf.shape[1], vf.shape[1])
    index = 0
    for p in range(n_planes):
        for i in range(n_rows):
            for k in range(n_cols):
                tile = tiles[p, i, :, k, :]
                totals[index], squares[index] = tile_sums(tile)
                _upsample(tile, h_first, h_weights, v_first, v_weights, packed, wide, square)
                hashes[index] = _lanczos_bits(square, hf, hi, hfirst, hcount, hbound, vf, vi, vfirst, vcount, vbound,
                                              rows, sums, mid, small_sums, small, unsure)[0]
                index += 1
