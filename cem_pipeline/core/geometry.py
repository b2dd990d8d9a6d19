"""How a catalog row's (axis, slice, y, x, h, w) maps into its (Z, Y, X) volume, written once.

A patch is plane[y:y+h, x:x+w] of the plane its axis and slice name: xy -> vol[slice],
xz -> vol[:, slice, :] (rows = z), yz -> vol[:, :, slice] (rows = z). Ingest cuts patches this way;
re-extraction, export and the demo's masks read them back through the same maps.
"""
from __future__ import annotations

AXES = ("xy", "xz", "yz")
SLICE_AXIS = {"xy": 0, "xz": 1, "yz": 2}  # volume axis a plane's `slice` indexes
PLANE_AXES = {"xy": (1, 2), "xz": (0, 2), "yz": (0, 1)}  # volume axes of a plane's rows and columns


def _check(axis: str) -> None:
    if axis not in SLICE_AXIS:
        raise ValueError(f"unknown axis {axis!r}; axes are {', '.join(AXES)}")


def plane(volume, axis: str, index: int):
    """The 2D plane a catalog row's (axis, slice) names, from any array-like (zarr, numpy)."""
    _check(axis)
    region: list = [slice(None)] * 3
    region[SLICE_AXIS[axis]] = index
    return volume[tuple(region)]


def patch_region(axis: str, index: int, y: int, x: int, h: int, w: int) -> tuple[slice | int, slice | int, slice | int]:
    """The (z, y, x) index into the volume of one catalog patch."""
    _check(axis)
    region: list = [None] * 3
    rows, cols = PLANE_AXES[axis]
    region[SLICE_AXIS[axis]] = index
    region[rows] = slice(y, y + h)
    region[cols] = slice(x, x + w)
    return tuple(region)  # type: ignore[return-value]


def chunk_of(axis: str, index: int, y: int, x: int, chunks) -> tuple[int, int, int]:
    """The (z, y, x) chunk index holding a patch's first voxel."""
    _check(axis)
    position = [0, 0, 0]
    rows, cols = PLANE_AXES[axis]
    position[SLICE_AXIS[axis]], position[rows], position[cols] = index, y, x
    return tuple(p // c for p, c in zip(position, chunks))  # type: ignore[return-value]
