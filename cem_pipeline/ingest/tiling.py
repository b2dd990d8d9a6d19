"""Which planes a volume is cut into, and the patch grid on each plane.

Planes (paper text and code, with its bugs fixed):

* A 3D volume is cut along xy, xz and yz when |z - x| / x < anisotropy_threshold (0.2, paper)
  for its (z, y, x) voxel size in nm, and along xy only otherwise. Every slice is used (the
  paper's code drops the last one of each axis).
* Unknown voxel size: `ingest.unknown_spacing` — "xy" (default) cuts xy only, because cutting a
  serial-section stack of unknown spacing sideways produces stretched, unnatural images;
  "isotropic" follows the paper's code (no spacing = isotropic).
* Video frames are xy only (frames have no physical z spacing), as cem-dataset does.
* 2D images (Z = 1) are xy only.

Tiles, per plane axis of length L (patch P = 224, min_edge E = 112): tiles start at 0, P, 2P, …;
a last tile shorter than P is kept (as an edge patch with its true h/w) when it is at least E
long and dropped otherwise — the paper's text ("discarded if either of their dimensions were
less than 112"); its code's round(L / P) rule differs on exact halves and is not followed.
So 600 -> 224, 224, 152; 500 -> 224, 224 (52 dropped); 150 -> one 150 tile; 100 -> nothing.
An image smaller than P in both dimensions thus gives one native-size patch when both sides
are >= E, and none otherwise.

Blocks: a Dask task handles one block of the stored volume, a whole number of zarr chunks;
chunks are P along every axis that is tiled, so every patch lies inside exactly one chunk and
one block, and a block needs nothing from its neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from cem_pipeline.core.geometry import AXES


def tile_starts(length: int, patch: int, min_edge: int) -> list[tuple[int, int]]:
    """(start, size) of every kept tile along one axis."""
    tiles = []
    for start in range(0, length, patch):
        size = min(patch, length - start)
        if size == patch or size >= min_edge:
            tiles.append((start, size))
    return tiles


def anisotropy(voxel_size) -> float | None:
    if voxel_size is None or voxel_size[0] is None or not voxel_size[2]:
        return None
    return abs(float(voxel_size[0]) - float(voxel_size[2])) / float(voxel_size[2])


def plane_axes(kind: str, voxel_size, threshold: float, unknown_spacing: str) -> tuple[str, ...]:
    if kind in ("image", "video"):
        return ("xy",)
    ratio = anisotropy(voxel_size)
    if ratio is None:
        return AXES if unknown_spacing == "isotropic" else ("xy",)
    return AXES if ratio < threshold else ("xy",)


def productive_axes(axes, shape: tuple[int, int, int], patch: int, min_edge: int) -> tuple[str, ...]:
    """The requested axes that yield at least one tile for this shape (a 20-slice stack has no xz tiles)."""
    z, y, x = shape
    rows_cols = {"xy": (y, x), "xz": (z, x), "yz": (z, y)}
    return tuple(a for a in axes if tile_starts(rows_cols[a][0], patch, min_edge) and tile_starts(rows_cols[a][1], patch, min_edge))


def chunk_shape(shape: tuple[int, int, int], axes, patch: int, xy_depth: int = 16) -> tuple[int, int, int]:
    """P^3 for cross-sectioned volumes (one chunk read feeds all three planes); (k, P, P) for xy-only."""
    z, y, x = shape
    depth = patch if len(axes) > 1 else xy_depth
    return (min(z, depth), min(y, patch), min(x, patch))


def blocks(shape: tuple[int, int, int], chunks: tuple[int, int, int], budget_bytes: float) -> list[tuple[slice, slice, slice]]:
    """Chunk-aligned blocks of at most ~budget bytes (uint8), grown along x, then y, then z."""
    size = list(chunks)
    for axis in (2, 1, 0):
        while size[axis] < shape[axis] and np.prod(size) / size[axis] * (size[axis] + chunks[axis]) <= budget_bytes:
            size[axis] += chunks[axis]
        size[axis] = min(size[axis], shape[axis])
    out = []
    for z0 in range(0, shape[0], size[0]):
        for y0 in range(0, shape[1], size[1]):
            for x0 in range(0, shape[2], size[2]):
                out.append((slice(z0, min(z0 + size[0], shape[0])), slice(y0, min(y0 + size[1], shape[1])),
                            slice(x0, min(x0 + size[2], shape[2]))))
    return out


@dataclass
class PatchGroup:
    """Patches of one plane axis and one (h, w), as a strided view of the block (no copy).

    `tiles` has shape (planes, rows, h, cols, w); patch (p, i, k) = tiles[p, i, :, k, :], and
    slices / ys / xs list the patches in that row-major order.
    """

    axis: str
    slices: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    h: int
    w: int
    tiles: np.ndarray

    def stack(self) -> np.ndarray:
        """The patches as one contiguous (n, h, w) copy."""
        return np.ascontiguousarray(self.tiles.transpose(0, 1, 3, 2, 4)).reshape(-1, self.h, self.w)


def _within(tiles, lo: int, hi: int):
    return [(s, n) for s, n in tiles if lo <= s < hi]


def _runs(tiles) -> list[tuple[int, int, int]]:
    """Consecutive tiles of equal size as (first start, count, size): the full tiles, then an edge tile."""
    runs: list[list[int]] = []
    for start, size in tiles:
        if runs and runs[-1][2] == size and runs[-1][0] + runs[-1][1] * size == start:
            runs[-1][1] += 1
        else:
            runs.append([start, 1, size])
    return [tuple(r) for r in runs]  # type: ignore[misc]


def _cut(planes: np.ndarray, axis: str, first: int, rows, row_offset: int, cols, col_offset: int) -> list[PatchGroup]:
    """Every tile of every plane of `planes` (n, R, C): one strided view per tile-size class."""
    n = planes.shape[0]
    groups = []
    for rs, nr, h in _runs(rows):
        for cs, nc, w in _runs(cols):
            sub = planes[:, rs - row_offset:rs - row_offset + nr * h, cs - col_offset:cs - col_offset + nc * w]
            groups.append(PatchGroup(
                axis=axis,
                slices=np.repeat(np.arange(first, first + n, dtype=np.int32), nr * nc),
                ys=np.tile(np.repeat(rs + h * np.arange(nr, dtype=np.int32), nc), n),
                xs=np.tile(cs + w * np.arange(nc, dtype=np.int32), n * nr),
                h=h, w=w, tiles=sub.reshape(n, nr, h, nc, w),
            ))
    return groups


def block_patches(block: np.ndarray, region, shape, axes, patch: int, min_edge: int) -> list[PatchGroup]:
    """Every patch whose tile starts inside this block, grouped by axis and size, as views of the block.

    Coordinates follow the catalog: xy plane = vol[s], xz = vol[:, s, :] (rows z, cols x),
    yz = vol[:, :, s] (rows z, cols y); the patch is plane[y:y+h, x:x+w].
    """
    (z0, z1), (y0, y1), (x0, x1) = [(r.start, r.stop) for r in region]
    Z, Y, X = shape
    tz = _within(tile_starts(Z, patch, min_edge), z0, z1)
    ty = _within(tile_starts(Y, patch, min_edge), y0, y1)
    tx = _within(tile_starts(X, patch, min_edge), x0, x1)
    groups: list[PatchGroup] = []
    if "xy" in axes:
        groups += _cut(block, "xy", z0, ty, y0, tx, x0)
    if "xz" in axes:
        groups += _cut(block.transpose(1, 0, 2), "xz", y0, tz, z0, tx, x0)
    if "yz" in axes:
        groups += _cut(yz_planes(block), "yz", x0, tz, z0, ty, y0)
    return groups


@njit(cache=True, nogil=True, boundscheck=False)
def _transpose_to_yz(block, out):  # pragma: no cover - compiled
    """out[x, z, y] = block[z, y, x] in 32 x 32 (y, x) tiles, so reads and writes stay in cache."""
    n_z, n_y, n_x = block.shape
    for z in range(n_z):
        for y0 in range(0, n_y, 32):
            for x0 in range(0, n_x, 32):
                for x in range(x0, min(x0 + 32, n_x)):
                    row = out[x, z]
                    for y in range(y0, min(y0 + 32, n_y)):
                        row[y] = block[z, y, x]


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _swap_bits(a, b, shift, mask):  # pragma: no cover - compiled
    t = ((a >> shift) ^ b) & mask
    return a ^ (t << shift), b ^ t


@njit(cache=True, nogil=True, boundscheck=False)
def _transpose_words_to_yz(words, out_words, n_z, n_y, n_x):  # pragma: no cover - compiled
    """The yz transpose on 8 x 8 byte squares held in eight uint64 words (SWAR).

    `words` is the (n_z, n_y, n_x) block as uint64 (n_x % 8 == 0); `out_words` the (n_x, n_z,
    out_y) output (out_y % 8 == 0), of which the first n_y // 8 * 8 rows of y are written. Three
    rounds of masked shifts transpose a square in registers, eight bytes per load and store.
    Each output row is written sequentially (y innermost), which keeps stores in cache.
    """
    m32 = np.uint64(0x00000000FFFFFFFF)
    m16 = np.uint64(0x0000FFFF0000FFFF)
    m8 = np.uint64(0x00FF00FF00FF00FF)
    s32, s16, s8 = np.uint64(32), np.uint64(16), np.uint64(8)
    in_row = n_x // 8
    out_row = out_words.shape[0] // (n_x * n_z)
    for z in range(n_z):
        for b in range(in_row):
            dst = (8 * b * n_z + z) * out_row
            step = n_z * out_row
            for yw in range(n_y // 8):
                src = (z * n_y + 8 * yw) * in_row + b
                a0, a1 = words[src], words[src + in_row]
                a2, a3 = words[src + 2 * in_row], words[src + 3 * in_row]
                a4, a5 = words[src + 4 * in_row], words[src + 5 * in_row]
                a6, a7 = words[src + 6 * in_row], words[src + 7 * in_row]
                a0, a4 = _swap_bits(a0, a4, s32, m32)
                a1, a5 = _swap_bits(a1, a5, s32, m32)
                a2, a6 = _swap_bits(a2, a6, s32, m32)
                a3, a7 = _swap_bits(a3, a7, s32, m32)
                a0, a2 = _swap_bits(a0, a2, s16, m16)
                a1, a3 = _swap_bits(a1, a3, s16, m16)
                a4, a6 = _swap_bits(a4, a6, s16, m16)
                a5, a7 = _swap_bits(a5, a7, s16, m16)
                a0, a1 = _swap_bits(a0, a1, s8, m8)
                a2, a3 = _swap_bits(a2, a3, s8, m8)
                a4, a5 = _swap_bits(a4, a5, s8, m8)
                a6, a7 = _swap_bits(a6, a7, s8, m8)
                d = dst + yw
                out_words[d], out_words[d + step] = a0, a1
                out_words[d + 2 * step], out_words[d + 3 * step] = a2, a3
                out_words[d + 4 * step], out_words[d + 5 * step] = a4, a5
                out_words[d + 6 * step], out_words[d + 7 * step] = a6, a7


def yz_planes(block: np.ndarray) -> np.ndarray:
    """The block's yz planes as an (x, z, y) array whose rows are contiguous.

    A yz patch read in place has every pixel of a row in another cache line (stride = X), which
    makes hashing it far slower than an xy patch; one transpose per block puts its rows back in
    order. Blocks whose width is a multiple of 8 (every chunk-aligned block of a volume whose
    width is) go through the SWAR kernel; the rest through the tiled byte copy (both beat numpy's
    own 3D transposed copy by a wide margin). y is padded to a multiple of 8 in memory and the
    result is a view without the padding.
    """
    block = np.ascontiguousarray(block)
    n_z, n_y, n_x = block.shape
    if n_x % 8 or block.dtype.itemsize != 1:
        out = np.empty((n_x, n_z, n_y), dtype=block.dtype)
        _transpose_to_yz(block, out)
        return out
    padded = np.empty((n_x, n_z, -(-n_y // 8) * 8), dtype=block.dtype)
    _transpose_words_to_yz(block.reshape(-1).view(np.uint64), padded.reshape(-1).view(np.uint64), n_z, n_y, n_x)
    whole = n_y // 8 * 8
    if whole < n_y:
        _transpose_to_yz(block[:, whole:, :], padded[:, :, whole:n_y])
    return padded[:, :, :n_y]
