"""Pillow's 8-bit resampler, re-implemented exactly: filters, fixed-point taps, rounding, BILINEAR enlargement.

The filter coefficients are computed as Pillow computes them (``ImagingResample`` in
libImaging/Resample.c: double precision, libm ``sin``, normalised, then fixed point with 22
fraction bits), and every pass reproduces Pillow's integer rounding and clipping. Both dHash
kernels take their LANCZOS taps and their BILINEAR enlargement of edge patches from here, so
the constants exist once.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
from numba import njit

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
    single-axis orders on ~1000 shapes; tests/integration/test_dhash.py re-checks it on every run.
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
