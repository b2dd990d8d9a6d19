"""dHash of 224x224 patches, bit-exact with the paper's per-patch imagehash call; dispatch.

The paper hashes every patch with
``imagehash.dhash(Image.fromarray(patch).resize((224, 224), BILINEAR), hash_size=8)``
(imagehash 4.3.2, Pillow). One PIL call per patch is slow, so the package re-implements Pillow's
8-bit resampler for whole batches (`pillow`: coefficients and fixed-point rounding exactly as
Pillow computes them). Hash bits are packed row-major into a uint64 with the first bit most
significant, the same integer as ``int(str(imagehash.dhash(...)), 16)``.

The LANCZOS step (224x224 -> (hash_size + 1) x hash_size) runs in one of two compiled kernels,
picked per call by `_kernels`:

* on CPUs with AVX-512 VNNI and VBMI, Pillow's own integer sums, exactly (`vnni_kernel`);
* elsewhere, float32 SIMD dot products whose few sums too close to a rounding boundary are
  redone in Pillow's int32 arithmetic, so the hash is exact as well (`float_kernel`).

Edge patches are enlarged with Pillow's integer BILINEAR inside the same kernels; patches over
224 px go through per-pass integer kernels that visit only each output's non-zero taps
(`pillow.resize_like_pillow`). `stats` gives each patch's exact sums for mean and std.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from cem_pipeline.ingest.hashing import vnni_kernel
from cem_pipeline.ingest.hashing.float_kernel import (
    _hash_small_tiles_kernel,
    _hash_tiles_kernel,
    _lanczos_plan,
)
from cem_pipeline.ingest.hashing.pillow import (
    PATCH_SIZE,
    _enlarge_plan,
    resize_like_pillow,
)


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

    if vnni_kernel.available() and tiles.strides[4] == 1 and vnni_kernel.fits(PATCH_SIZE, hash_size):
        return vnni_kernel.hash_tiles_kernel, vnni_kernel.hash_small_tiles_kernel, vnni_kernel.plan(PATCH_SIZE, hash_size)
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
