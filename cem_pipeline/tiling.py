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

AXES = ("xy", "xz", "yz")


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


def yz_planes(block: np.ndarray) -> np.ndarray:
    """The block's yz planes as one contiguous (x, z, y) copy.

    A yz patch read in place has every pixel of a row in another cache line (stride = X), which
    made hashing it ~15x slower than an xy patch; one tiled transpose per block (~1.6 GB/s, numpy's
    own 3D transposed copy does ~0.25 GB/s) puts its rows back in order.
    """
    out = np.empty((block.shape[2], block.shape[0], block.shape[1]), dtype=block.dtype)
    _transpose_to_yz(np.ascontiguousarray(block), out)
    return out


def plane(volume, axis: str, index: int):
    """The 2D plane a catalog row's (axis, slice) names, from any array-like (zarr, numpy)."""
    if axis == "xy":
        return volume[index, :, :]
    if axis == "xz":
        return volume[:, index, :]
    if axis == "yz":
        return volume[:, :, index]
    raise ValueError(f"unknown axis {axis!r}; axes are {', '.join(AXES)}")


def patch_region(axis: str, index: int, y: int, x: int, h: int, w: int) -> tuple[slice | int, slice | int, slice | int]:
    """The (z, y, x) index into the volume of one catalog patch."""
    if axis == "xy":
        return (index, slice(y, y + h), slice(x, x + w))
    if axis == "xz":
        return (slice(y, y + h), index, slice(x, x + w))
    if axis == "yz":
        return (slice(y, y + h), slice(x, x + w), index)
    raise ValueError(f"unknown axis {axis!r}; axes are {', '.join(AXES)}")
