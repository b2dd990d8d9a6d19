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

The LANCZOS step (224x224 -> (hash_size + 1) x hash_size, ~250k multiply-adds per patch)
runs in a compiled numba kernel with Pillow's int32 arithmetic; the BILINEAR step for
edge patches runs in per-pass numba kernels that visit only each output's non-zero taps.
"""
from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Callable, Sequence

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


@lru_cache(maxsize=16)
def _lanczos_plan(size: int, hash_size: int) -> tuple[np.ndarray, ...]:
    """Weights and tap ranges of both LANCZOS passes (size -> hash_size + 1 wide, hash_size high)."""
    if _vertical_first(size, size, hash_size, hash_size + 1):
        raise ValueError(f"Pillow would resize {size}x{size} -> {hash_size + 1}x{hash_size} vertically first")
    plan: list[np.ndarray] = []
    for out_size in (hash_size + 1, hash_size):
        weights, first, last = _taps(size, out_size, "lanczos")
        if 255 * int(np.abs(weights.astype(np.int64)).sum(axis=0).max()) + _HALF >= 2**31:
            raise ValueError(f"fixed-point sums of a {size}->{out_size} resize would overflow int32")
        plan += [weights, first, last]
    return tuple(plan)


@njit(cache=True, nogil=True, boundscheck=False)
def _lanczos_kernel(batch, kh, h_first, h_last, kv, v_first, v_last, out):  # pragma: no cover - compiled
    """Pillow's two 8-bit fixed-point passes for every patch, in int32 like Resample.c.

    Each patch is transposed first so the inner loop runs over contiguous rows with one
    broadcast weight, which LLVM turns into SIMD multiply-adds. Serial on purpose: Dask
    supplies the parallelism, and nogil lets its threads run kernels side by side.
    """
    n, h, w = batch.shape
    out_w = kh.shape[1]
    out_h = kv.shape[1]
    columns = np.empty((w, h), np.int32)
    mid = np.empty((out_w, h), np.int32)
    acc = np.empty(h, np.int32)
    for b in range(n):
        for r in range(h):
            for x in range(w):
                columns[x, r] = batch[b, r, x]
        for j in range(out_w):
            acc[:] = _HALF
            for x in range(h_first[j], h_last[j]):
                k = kh[x, j]
                for r in range(h):
                    acc[r] += columns[x, r] * k
            for r in range(h):
                v = acc[r] >> PRECISION_BITS
                mid[j, r] = 0 if v < 0 else (255 if v > 255 else v)
        for i in range(out_h):
            for j in range(out_w):
                s = _HALF
                for r in range(v_first[i], v_last[i]):
                    s += mid[j, r] * kv[r, i]
                v = s >> PRECISION_BITS
                out[b, i, j] = 0 if v < 0 else (255 if v > 255 else v)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, k, k) bool -> uint64, row-major, first bit most significant."""
    flat = bits.reshape(bits.shape[0], -1).astype(np.uint64)
    shifts = np.arange(flat.shape[1] - 1, -1, -1, dtype=np.uint64)
    return np.bitwise_or.reduce(flat << shifts, axis=1)


def _hash_square(batch: np.ndarray, hash_size: int) -> np.ndarray:
    """dHash of a (N, 224, 224) uint8 batch: LANCZOS to (hash_size, hash_size + 1), compare columns."""
    small = np.empty((batch.shape[0], hash_size, hash_size + 1), dtype=np.uint8)
    _lanczos_kernel(batch, *_lanczos_plan(batch.shape[2], hash_size), small)
    return _pack_bits(small[:, :, 1:] > small[:, :, :-1])


def _check_hash_size(hash_size: int) -> None:
    if not 2 <= hash_size <= 8:
        raise ValueError(f"hash_size must be 2..8 so the hash fits a uint64, got {hash_size}")


def dhash_patches(
    patches: np.ndarray | Sequence[np.ndarray], hash_size: int = 8, chunk: int = 1024
) -> np.ndarray:
    """uint64 dHash of every patch, bit-exact with the paper's imagehash call.

    `patches` is a (N, H, W) uint8 array or a list of 2D uint8 arrays of any sizes; patches
    that are not 224x224 are first BILINEAR-resized to 224x224 as the paper does. `chunk`
    bounds the working memory of the edge-patch resize.
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
        for start in range(0, len(stack), chunk):
            part = np.ascontiguousarray(stack[start : start + chunk])
            if (h, w) != (PATCH_SIZE, PATCH_SIZE):
                part = resize_like_pillow(part, PATCH_SIZE, PATCH_SIZE, "bilinear")
            out[index[start : start + chunk]] = _hash_square(part, hash_size)
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


def benchmark(em_root, n_ours: int = 20000, n_baseline: int = 1000, hash_size: int = 8) -> dict:
    """Patches/s of dhash_patches vs the per-patch imagehash call on the same real patches.

    Also checks that both agree on the baseline subset, so a fast wrong kernel cannot pass.
    """
    patches = real_em_patches(em_root, n_ours)
    subset = patches[:n_baseline]
    start = time.perf_counter()
    reference = np.array([imagehash_reference(p, hash_size) for p in subset], dtype=np.uint64)
    baseline_s = time.perf_counter() - start
    dhash_patches(subset[:8], hash_size)
    start = time.perf_counter()
    ours = dhash_patches(patches, hash_size)
    ours_s = time.perf_counter() - start
    mismatches = int((ours[: len(subset)] != reference).sum())
    baseline_per_s = len(subset) / baseline_s
    ours_per_s = len(patches) / ours_s
    return {
        "benchmark": "dhash",
        "hash_size": hash_size,
        "n_baseline": len(subset),
        "n_ours": len(patches),
        "baseline_per_s": baseline_per_s,
        "ours_per_s": ours_per_s,
        "ratio": ours_per_s / baseline_per_s,
        "mismatches": mismatches,
    }
