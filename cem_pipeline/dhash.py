"""Batched difference hash, bit-exact with the paper's per-patch imagehash call.

The paper hashes every patch with
``imagehash.dhash(Image.fromarray(patch).resize((224, 224), BILINEAR), hash_size=8)``
(imagehash 4.3.2, Pillow). Calling PIL once per patch costs ~200 us, so this module
re-implements Pillow's 8-bit resampler (``ImagingResample`` in libImaging/Resample.c) for
whole batches: the filter coefficients are computed exactly as Pillow computes
them (double precision, libm ``sin``, normalised, then fixed point with 22 fraction bits),
and every pass reproduces Pillow's integer rounding and clipping. Hash bits are packed
row-major into a uint64 with the first bit most significant, the same integer as
``int(str(imagehash.dhash(...)), 16)``.

The LANCZOS step (224x224 -> (hash_size + 1) x hash_size, ~250k multiply-adds per patch) runs
in one of two compiled kernels, picked per call by `_kernels`:

* on CPUs with AVX-512 VNNI, Pillow's own integer sums, exactly (`dhash_vnni`);
* elsewhere, float32 SIMD dot products; results whose error bound straddles a rounding
  boundary (~1%) are redone in Pillow's int32 arithmetic, so the hash is exact as well.

Edge patches are enlarged with Pillow's integer BILINEAR inside the same kernels; patches
over 224 px go through per-pass integer kernels that visit only each output's non-zero taps.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from numba import njit

from .patch_stats import tile_sums

PATCH_SIZE = 224
PRECISION_BITS = 32 - 8 - 2
_ONE = 1 << PRECISION_BITS
_HALF = 1 << (PRECISION_BITS - 1)


def _bilinear(x: float) -> float:
    x = -x if x < 0.0 else x
    return 1.0 - x if x < 1.0 else 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


_FILTERS: dict[str, tuple[Callable[[float], float], float]] = {
    "bilinear": (_bilinear, 1.0),
    "lanczos": (_lanczos, 3.0),
}


@lru_cache(maxsize=64)
def resample_coefficients(in_size: int, out_size: int, filter_name: str) -> np.ndarray:
    """Pillow's fixed-point filter weights as a dense (in_size, out_size) int64 matrix.

    Mirrors precompute_coeffs + normalize_coeffs_8bpc for a full-image box: same window
    rounding, same order of the normalising sum, same round-half-away-from-zero to 22 bits.
    Pure Python on purpose: libm sin, no SIMD approximations, so weights match bit for bit.
    """
    func, base_support = _FILTERS[filter_name]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    inv_filterscale = 1.0 / filterscale
    weights = np.zeros((in_size, out_size), dtype=np.int64)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [func((x + xmin - center + 0.5) * inv_filterscale) for x in range(xmax)]
        total = 0.0
        for w in taps:
            total += w
        if total != 0.0:
            taps = [w / total for w in taps]
        for x, w in enumerate(taps):
            weights[xmin + x, xx] = int(-0.5 + w * _ONE) if w < 0 else int(0.5 + w * _ONE)
    weights.setflags(write=False)
    return weights


def _vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Pillow >= 13 runs the vertical pass first when the height shrinks much more than the width.

    Pillow 13.0.0 (python-pillow/Pillow#9549) picks vertical-first exactly when the height
    shrinks and ``in_h - out_h > 2 * (in_w - out_w)``; older releases always go horizontal
    first. The rule was read off the installed Pillow by comparing resize() with the two
    single-axis orders on ~1000 shapes; tests/test_dhash.py re-checks it on every run.
    """
    return out_h < in_h and (in_h - out_h) > 2 * (in_w - out_w)


@lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int, filter_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int32 weights plus each output's non-zero tap range [first, last): a pass costs taps, not in*out."""
    weights = resample_coefficients(in_size, out_size, filter_name)
    nonzero = weights != 0
    first = nonzero.argmax(axis=0).astype(np.int64)
    last = (in_size - nonzero[::-1].argmax(axis=0)).astype(np.int64)
    return weights.astype(np.int32), first, last


@njit(cache=True, nogil=True, boundscheck=False)
def _clip8(total):  # pragma: no cover - compiled
    value = total >> PRECISION_BITS
    return 0 if value < 0 else (255 if value > 255 else value)


@njit(cache=True, nogil=True, boundscheck=False)
def _pass_along_rows(batch, weights, first, last, out):  # pragma: no cover - compiled
    """One horizontal Pillow pass: out[b, r, j] = clip8(HALF + sum over taps of in[b, r, x] * w[x, j])."""
    n, h, _ = batch.shape
    for b in range(n):
        for r in range(h):
            for j in range(weights.shape[1]):
                total = _HALF
                for x in range(first[j], last[j]):
                    total += np.int64(batch[b, r, x]) * weights[x, j]
                out[b, r, j] = _clip8(total)


@njit(cache=True, nogil=True, boundscheck=False)
def _pass_along_columns(batch, weights, first, last, out):  # pragma: no cover - compiled
    """One vertical Pillow pass, with whole rows as the SIMD-friendly inner loop."""
    n, _, w = batch.shape
    acc = np.empty(w, np.int64)
    for b in range(n):
        for i in range(weights.shape[1]):
            acc[:] = _HALF
            for r in range(first[i], last[i]):
                k = np.int64(weights[r, i])
                for c in range(w):
                    acc[c] += batch[b, r, c] * k
            for c in range(w):
                out[b, i, c] = _clip8(acc[c])


def _horizontal_pass(batch: np.ndarray, out_w: int, filter_name: str) -> np.ndarray:
    out = np.empty((batch.shape[0], batch.shape[1], out_w), dtype=np.uint8)
    _pass_along_rows(batch, *_taps(batch.shape[2], out_w, filter_name), out)
    return out


def _vertical_pass(batch: np.ndarray, out_h: int, filter_name: str) -> np.ndarray:
    out = np.empty((batch.shape[0], out_h, batch.shape[2]), dtype=np.uint8)
    _pass_along_columns(batch, *_taps(batch.shape[1], out_h, filter_name), out)
    return out


def resize_like_pillow(batch: np.ndarray, out_h: int, out_w: int, filter_name: str) -> np.ndarray:
    """Resize a (N, H, W) uint8 batch exactly like PIL Image.resize with the same filter.

    A pass is skipped when its axis keeps its size, and the passes run in Pillow's order,
    since the 8-bit rounding between them makes the order visible. Each pass visits only
    the non-zero taps of every output, in integer arithmetic, so it is exact and cheap.
    """
    _, h, w = batch.shape
    if _vertical_first(h, w, out_h, out_w):
        out = _vertical_pass(batch, out_h, filter_name) if h != out_h else batch
        return _horizontal_pass(out, out_w, filter_name) if w != out_w else out
    out = _horizontal_pass(batch, out_w, filter_name) if w != out_w else batch
    return _vertical_pass(out, out_h, filter_name) if h != out_h else out


def lanczos_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A LANCZOS pass's taps, refused when Pillow's int32 sums could overflow (both tile kernels
    rely on the exact sum fitting int32)."""
    weights, first, last = _taps(in_size, out_size, "lanczos")
    if 255 * int(np.abs(weights.astype(np.int64)).sum(axis=0).max()) + _HALF >= 2**31:
        raise ValueError(f"fixed-point sums of a {in_size}->{out_size} resize would overflow int32")
    return weights, first, last


def check_hash_resize(size: int, hash_size: int) -> None:
    """The tile kernels run the horizontal pass first; refuse shapes Pillow would resize vertically first."""
    if _vertical_first(size, size, hash_size, hash_size + 1):
        raise ValueError(f"Pillow would resize {size}x{size} -> {hash_size + 1}x{hash_size} vertically first")


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


@njit(cache=True, nogil=True, boundscheck=False)
def _upsample(tile, h_first, h_weights, v_first, v_weights, packed, wide, out):  # pragma: no cover - compiled
    """Pillow's 8-bit BILINEAR enlargement of one tile (horizontal pass first, as Pillow does
    when neither side shrinks), in its int32 arithmetic; a pass whose size does not change is a copy.

    Each input pixel is packed with its next three into one uint32, so an output's (at most
    four) taps cost one gather instead of one gather per tap.
    """
    h, w = tile.shape
    size = out.shape[0]
    acc = np.empty(size, np.int32)
    quads = np.empty(size, np.uint32)
    for r in range(h):
        if w == size:
            for c in range(size):
                wide[r, c] = tile[r, c]
            continue
        for c in range(w):
            packed[c] = np.uint32(tile[r, c])
        for shift in range(1, 4):
            for c in range(w - shift):
                packed[c] |= np.uint32(tile[r, c + shift]) << np.uint32(8 * shift)
        for c in range(size):
            quads[c] = packed[h_first[c]]
        acc[:] = _HALF
        for t in range(h_weights.shape[0]):
            shift = np.uint32(8 * t)
            weights = h_weights[t]
            for c in range(size):
                acc[c] += np.int32((quads[c] >> shift) & np.uint32(255)) * weights[c]
        for c in range(size):
            value = acc[c] >> PRECISION_BITS
            wide[r, c] = 0 if value < 0 else (255 if value > 255 else value)
    enlarge_columns(wide, h, v_first, v_weights, acc, out)


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def enlarge_columns(wide, h, v_first, v_weights, acc, out):  # pragma: no cover - compiled
    """The vertical BILINEAR pass of an enlargement: rows of `wide` (the first h hold the
    horizontally enlarged tile) -> out, whole rows at a time; a copy when h is already the size.
    Enlargements have at most two taps per output, which one fused loop per row handles."""
    size = out.shape[0]
    for r in range(size):
        if h == size:
            for c in range(size):
                out[r, c] = wide[r, c]
            continue
        f = v_first[r]
        if v_weights.shape[1] <= 2:
            first = wide[f]
            second = wide[min(f + 1, h - 1)]
            k0 = v_weights[r, 0]
            k1 = v_weights[r, 1] if v_weights.shape[1] == 2 else np.int32(0)
            for c in range(size):
                value = np.int32(np.int32(_HALF) + np.int32(first[c]) * k0 + np.int32(second[c]) * k1) >> PRECISION_BITS
                out[r, c] = 0 if value < 0 else (255 if value > 255 else value)
            continue
        acc[:] = _HALF
        for t in range(v_weights.shape[1]):
            k = v_weights[r, t]
            row = wide[min(f + t, h - 1)]
            for c in range(size):
                acc[c] = np.int32(acc[c] + np.int32(row[c]) * k)
        for c in range(size):
            value = acc[c] >> PRECISION_BITS
            out[r, c] = 0 if value < 0 else (255 if value > 255 else value)


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


@lru_cache(maxsize=64)
def _enlarge_plan(h: int, w: int) -> tuple[np.ndarray, ...]:
    """BILINEAR taps for h x w -> 224 x 224: each output's first input and its weights per tap slot."""
    def table(in_size: int) -> tuple[np.ndarray, np.ndarray]:
        weights, first, last = _taps(in_size, PATCH_SIZE, "bilinear")
        slots = max(int((last - first).max()), 1)
        if slots > 4:
            raise ValueError(f"a BILINEAR enlargement {in_size} -> {PATCH_SIZE} with {slots} taps per output")
        table = np.zeros((slots, PATCH_SIZE), np.int32)
        for c in range(PATCH_SIZE):
            for t in range(last[c] - first[c]):
                table[t, c] = weights[first[c] + t, c]
        return first, table

    h_first, h_weights = table(w)
    v_first, v_weights = table(h)
    # unsigned: numba then skips negative-index wraparound, so the gather vectorises
    return h_first.astype(np.uint32), h_weights, v_first, np.ascontiguousarray(v_weights.T)


def _hash_into(kernel, args: tuple, tiles: np.ndarray, threads: int) -> tuple[np.ndarray, ...]:
    """Run the kernel over `threads` contiguous runs of planes at once (kernels release the GIL)."""
    n_planes, n_rows, _, n_cols, _ = tiles.shape
    per_plane = n_rows * n_cols
    hashes = np.zeros(n_planes * per_plane, np.uint64)
    totals = np.zeros(n_planes * per_plane, np.int64)
    squares = np.zeros(n_planes * per_plane, np.int64)

    def run(lo: int, hi: int) -> None:
        out = slice(lo * per_plane, hi * per_plane)
        kernel(tiles[lo:hi], *args, hashes[out], totals[out], squares[out])

    bounds = np.linspace(0, n_planes, min(threads, n_planes) + 1).astype(int)
    runs = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    if len(runs) == 1:
        run(*runs[0])
    elif runs:
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(lambda r: run(*r), runs))
    return hashes, totals, squares


def _kernels(tiles: np.ndarray, hash_size: int) -> tuple:
    """(224 kernel, small-tile kernel, LANCZOS plan): exact VNNI integers when the CPU has them and
    tile rows are contiguous, else float32 with exact settling. Both give imagehash's bits."""
    from . import dhash_vnni

    if dhash_vnni.available() and tiles.strides[4] == 1 and dhash_vnni.fits(PATCH_SIZE, hash_size):
        return dhash_vnni.hash_tiles_kernel, dhash_vnni.hash_small_tiles_kernel, dhash_vnni.plan(PATCH_SIZE, hash_size)
    return _hash_tiles_kernel, _hash_small_tiles_kernel, _lanczos_plan(PATCH_SIZE, hash_size)


def hash_tiles(tiles: np.ndarray, hash_size: int = 8, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dhash, pixel sum, pixel sum of squares) of every tile of a (planes, rows, h, cols, w) uint8 view.

    Tile (p, i, k) is tiles[p, i, :, k, :], listed in that row-major order. The view may be
    any strided window of a volume (a block's planes split into tiles with reshape), so
    ingest hashes patches where they lie. Tiles of 224 x 224 hash directly; smaller ones are
    first enlarged to 224 with Pillow's BILINEAR arithmetic, as the paper's call does.
    Larger tiles are refused: dhash_patches handles every shape. `threads` > 1 splits the planes
    across threads (Dask workers in ingest keep 1: they already fill the cores).
    """
    _check_hash_size(hash_size)
    _check_dtype(tiles, "tiles")
    h, w = tiles.shape[2], tiles.shape[4]
    full, small, lanczos = _kernels(tiles, hash_size)
    if (h, w) == (PATCH_SIZE, PATCH_SIZE):
        return _hash_into(full, lanczos, tiles, threads)
    if not (1 <= h <= PATCH_SIZE and 1 <= w <= PATCH_SIZE):
        raise ValueError(f"hash_tiles takes tiles of 1..{PATCH_SIZE} px per side, got {h}x{w}")
    return _hash_into(small, _enlarge_plan(h, w) + lanczos, tiles, threads)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, k, k) bool -> uint64, row-major, first bit most significant."""
    flat = bits.reshape(bits.shape[0], -1).astype(np.uint64)
    shifts = np.arange(flat.shape[1] - 1, -1, -1, dtype=np.uint64)
    return np.bitwise_or.reduce(flat << shifts, axis=1)


def _check_hash_size(hash_size: int) -> None:
    if not 2 <= hash_size <= 8:
        raise ValueError(f"hash_size must be 2..8 so the hash fits a uint64, got {hash_size}")


def dhash_patches(
    patches: np.ndarray | Sequence[np.ndarray], hash_size: int = 8, chunk: int = 1024, threads: int = 1
) -> np.ndarray:
    """uint64 dHash of every patch, bit-exact with the paper's imagehash call.

    `patches` is a (N, H, W) uint8 array or a list of 2D uint8 arrays of any sizes; patches
    that are not 224x224 are first BILINEAR-resized to 224x224 as the paper does (inside the
    hash kernel when they are smaller, else in `chunk`-sized batches), on `threads` threads.
    """
    _check_hash_size(hash_size)
    if isinstance(patches, np.ndarray) and patches.ndim == 3:
        groups = {patches.shape[1:]: (np.arange(len(patches)), patches)}
        total = len(patches)
        _check_dtype(patches, "patches")
    else:
        groups, total = _group_by_shape(patches)
    out = np.zeros(total, dtype=np.uint64)
    for (h, w), (index, stack) in groups.items():
        if h < 1 or w < 1:
            raise ValueError(f"patches must be non-empty, got shape {(h, w)}")
        if h <= PATCH_SIZE and w <= PATCH_SIZE:
            out[index] = hash_tiles(stack.reshape(len(stack), 1, h, 1, w), hash_size, threads)[0]
            continue
        for start in range(0, len(stack), chunk):
            part = resize_like_pillow(np.ascontiguousarray(stack[start : start + chunk]), PATCH_SIZE, PATCH_SIZE, "bilinear")
            out[index[start : start + chunk]] = hash_tiles(part.reshape(len(part), 1, PATCH_SIZE, 1, PATCH_SIZE), hash_size, threads)[0]
    return out


def _check_dtype(array: np.ndarray, what: str) -> None:
    if array.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {array.dtype}")


def _group_by_shape(patches: Sequence[np.ndarray]) -> tuple[dict, int]:
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, patch in enumerate(patches):
        patch = np.asarray(patch)
        if patch.ndim != 2:
            raise ValueError(f"patch {i} must be 2D, got shape {patch.shape}")
        _check_dtype(patch, f"patch {i}")
        by_shape.setdefault(patch.shape, []).append(i)
    groups = {
        shape: (np.asarray(idx), np.stack([np.asarray(patches[i]) for i in idx])) for shape, idx in by_shape.items()
    }
    return groups, len(patches)


def hash_to_bits(value: int | np.integer, hash_size: int = 8) -> np.ndarray:
    """Inverse of the packing: a (hash_size, hash_size) bool array, as imagehash's `.hash`."""
    _check_hash_size(hash_size)
    n = hash_size * hash_size
    value = int(value)
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], dtype=bool).reshape(hash_size, hash_size)


def imagehash_reference(patch: np.ndarray, hash_size: int = 8) -> np.uint64:
    """The paper's per-patch call through PIL and imagehash, packed like dhash_patches."""
    import imagehash
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(patch)).resize((PATCH_SIZE, PATCH_SIZE), resample=Image.BILINEAR)
    bits = imagehash.dhash(image, hash_size=hash_size).hash
    return _pack_bits(bits[None])[0]


def real_em_patches(em_root, limit: int) -> np.ndarray:
    """Up to `limit` 224x224 uint8 tiles of the real EM data (cdeep3m, ISBI, SNEMI3D), for the bench.

    Tiles are taken at every 32-px offset so the set is large from a few slices; raises
    FileNotFoundError naming the folder when the data is absent.
    """
    from pathlib import Path

    from PIL import Image

    root = Path(em_root)
    files = sorted((root / "cdeep3m_mito_sbem").rglob("images.*.png"))
    files += sorted((root / "isbi2012_drosophila_l1_vnc_sstem").rglob("*.png"))
    files += sorted((root / "snemi3d_kasthuri2015_atum_sem").rglob("*.png"))
    if not files:
        raise FileNotFoundError(f"no real EM images under {root} (expected cdeep3m_mito_sbem, isbi2012_... folders)")
    tiles: list[np.ndarray] = []
    count = 0
    for path in files:
        image = np.asarray(Image.open(path).convert("L"))
        h, w = image.shape
        for y in range(0, h - PATCH_SIZE + 1, 32):
            for x in range(0, w - PATCH_SIZE + 1, 32):
                tiles.append(image[y : y + PATCH_SIZE, x : x + PATCH_SIZE])
                count += 1
                if count >= limit:
                    return np.stack(tiles)
    return np.stack(tiles)


def benchmark(em_root, n_ours: int = 20000, n_baseline: int = 1000, hash_size: int = 8, threads: int = 0) -> dict:
    """Patches/s of dhash_patches (on `threads` threads, 0 = every core, and on one) vs the
    per-patch imagehash call on the same real patches.

    Also checks that both agree on the baseline subset, so a fast wrong kernel cannot pass.
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
        "baseline_per_s": baseline_per_s,
        "ours_per_s": rates[threads],
        "ratio": rates[threads] / baseline_per_s,
        "ours_one_thread_per_s": rates[1],
        "ratio_one_thread": rates[1] / baseline_per_s,
        "mismatches": mismatches,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
