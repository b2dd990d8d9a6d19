"""Re-extract catalog patches from store.zarr: exact provenance, one chunk-grouped reader for every stage.

A catalog row (volume, axis, slice, y, x, h, w) names plane[y:y+h, x:x+w] of the array at `volume`
(the array path "<dataset>/<key>", see core.store; the planes are core.geometry's). Reading patch by
patch would decode a zarr chunk once per patch that touches it, so rows are read in blocks:

* `plan_reads` sorts rows in storage order and gives each a `block` id, after checking that every box
  lies inside its volume (a bad catalog row is an error naming it, not a silently clipped patch).
  A block is the rows of one volume whose patches start in the same zarr chunk; with `per_axis`
  (the default) also of one plane axis, so that each block is a consecutive run of rows in the
  (dataset, volume, axis, chunk, slice, y, x) order that export writes.
* `read_block` reads one block with one zarr read covering all its rows and cuts the patches from
  it in memory, so memory is bounded by one chunk plus a patch margin per axis.

`read_patches` (filter, dedup report, label page) plans without `per_axis`, so patches of all three
planes that share a chunk cost one read, and returns the patches in the caller's row order. Export's
DatasetWriter workers (export.blocks.PatchSource) read the planned blocks one at a time, each
worker keeping only the block it is on.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import zarr

from cem_pipeline.core.geometry import AXES, PLANE_AXES, SLICE_AXIS, patch_region
from cem_pipeline.core.store import store_path

_COLUMNS = ("volume", "axis", "slice", "y", "x", "h", "w")
# Per axis (in AXES order), the volume axes of a row's (slice, y, x): a permutation of (z, y, x).
_VOLUME_AXES = np.array([(SLICE_AXIS[a], *PLANE_AXES[a]) for a in AXES], dtype=np.int64)


def _where(store, volume: str) -> str:
    if isinstance(store, zarr.Group):
        return f"{store.store}/{store.path + '/' if store.path else ''}{volume}"
    return str(store_path(store) / volume)


def open_volume(store, volume: str) -> zarr.Array:
    """The (Z, Y, X) uint8 array of catalog volume `volume`, from a Workdir, a workdir root, the store
    path or an open zarr group."""
    try:
        if isinstance(store, zarr.Group):
            array = store[volume]
        else:
            array = zarr.open_array(str(store_path(store) / volume), mode="r", zarr_format=3)
    except Exception as exc:
        raise FileNotFoundError(f"{_where(store, volume)}: cannot open the zarr array of catalog volume '{volume}': {exc}") from None
    if not isinstance(array, zarr.Array) or array.ndim != 3 or array.dtype != np.uint8:
        shape = f"{array.dtype} {array.shape}" if isinstance(array, zarr.Array) else "a group"
        raise ValueError(f"{_where(store, volume)}: expected a uint8 (Z, Y, X) array, got {shape}")
    return array


def _axis_codes(axes) -> np.ndarray:
    """Each row's axis as its position in AXES; -1 for an unknown axis."""
    codes = np.full(len(axes), -1, dtype=np.int64)
    axes = np.asarray(axes, dtype=object)
    for code, axis in enumerate(AXES):
        codes[axes == axis] = code
    return codes


def _boxes(codes: np.ndarray, slices, ys, xs, hs, ws) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) first voxel and one-past-last voxel, in (z, y, x), of each row's patch (codes from _axis_codes)."""
    n = len(codes)
    lookup = _VOLUME_AXES[codes]
    rows = np.arange(n)[:, None]
    start = np.empty((n, 3), dtype=np.int64)
    extent = np.empty((n, 3), dtype=np.int64)
    start[rows, lookup] = np.stack([np.asarray(v, dtype=np.int64) for v in (slices, ys, xs)], axis=1)
    extent[rows, lookup] = np.stack([np.ones(n, np.int64), np.asarray(hs, np.int64), np.asarray(ws, np.int64)], axis=1)
    return start, start + extent


def _describe(row: pd.Series) -> str:
    name = f"patch_id {row['patch_id']}, " if "patch_id" in row.index else ""
    return f"{name}axis {row['axis']}, slice {row['slice']}, y {row['y']}, x {row['x']}, {row['h']}x{row['w']}"


def _check_columns(rows: pd.DataFrame) -> None:
    missing = set(_COLUMNS) - set(rows.columns)
    if missing:
        raise ValueError(f"rows lack columns {sorted(missing)}")


def _plan(rows: pd.DataFrame, arrays: Mapping[str, zarr.Array], store, per_axis: bool) -> pd.DataFrame:
    volumes = rows["volume"].astype(str).to_numpy(dtype=object)
    codes = _axis_codes(rows["axis"].astype(str).to_numpy(dtype=object))
    if (codes < 0).any():
        bad = codes < 0
        first = sorted(set(volumes[bad]))[0]
        raise ValueError(f"catalog rows of {first} have unknown axis values {sorted(set(rows['axis'].astype(str)[bad]))}; "
                         f"axes are {', '.join(AXES)}")
    start, stop = _boxes(codes, rows["slice"], rows["y"], rows["x"], rows["h"], rows["w"])
    shape = np.empty((len(rows), 3), dtype=np.int64)
    chunks = np.empty((len(rows), 3), dtype=np.int64)
    for volume, array in arrays.items():
        mine = volumes == volume
        shape[mine], chunks[mine] = array.shape, array.chunks
    inside = (start >= 0).all(axis=1) & (stop <= shape).all(axis=1) & (rows["h"].to_numpy() > 0) & (rows["w"].to_numpy() > 0)
    if not inside.all():
        volume = sorted(set(volumes[~inside]))[0]
        outside = ~inside & (volumes == volume)
        raise ValueError(
            f"{_where(store, volume)}: {int(outside.sum())} catalog boxes fall outside the volume "
            f"{tuple(arrays[volume].shape)} (first: {_describe(rows[outside].iloc[0])})"
        )
    chunk = start // chunks  # core.geometry.chunk_of of every row
    if per_axis:  # chunk index along the row's slice axis, then along its plane's rows and columns
        chunk = np.take_along_axis(chunk, _VOLUME_AXES[codes], axis=1)
    frame = rows.assign(_axis=codes if per_axis else 0, _c0=chunk[:, 0], _c1=chunk[:, 1], _c2=chunk[:, 2], _order=codes)
    head = [c for c in ("dataset",) if c in rows.columns] + ["volume", "_axis", "_c0", "_c1", "_c2"]
    tail = ["_order", "slice", "y", "x"] + (["patch_id"] if "patch_id" in rows.columns else [])
    ordered = frame.sort_values(head + tail, kind="stable")
    block_keys = ordered[head]
    ordered["block"] = (block_keys != block_keys.shift()).any(axis=1).cumsum().to_numpy() - 1
    return ordered.drop(columns=["_axis", "_c0", "_c1", "_c2", "_order"])


def _open_all(store, volumes) -> dict[str, zarr.Array]:
    return {volume: open_volume(store, volume) for volume in sorted(set(map(str, volumes)))}


def plan_reads(rows: pd.DataFrame, store, per_axis: bool = True) -> pd.DataFrame:
    """`rows` in storage order with a `block` id (0, 1, ... in that order), after checking every box lies
    inside its volume. The index is kept, so callers can map patches back to their rows."""
    _check_columns(rows)
    if rows.empty:
        return rows.assign(block=np.zeros(0, np.int64))
    return _plan(rows, _open_all(store, rows["volume"].unique()), store, per_axis)


def block_spans(blocks: np.ndarray) -> dict[int, tuple[int, int]]:
    """Block id -> (first row, one past its last row) of plan_reads' `block` column (blocks are consecutive)."""
    blocks = np.asarray(blocks)
    if blocks.size == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
    ends = np.r_[starts[1:], blocks.size]
    return {int(b): (int(lo), int(hi)) for b, lo, hi in zip(blocks[starts], starts, ends)}


def read_block(array, axes, slices, ys, xs, hs, ws) -> list[np.ndarray]:
    """The (h, w) patches of one block's rows, in the order given, from one zarr read covering them all.
    The patches are views of that read, so a block's memory is released with its last patch."""
    codes = _axis_codes(axes)
    if (codes < 0).any():
        raise ValueError(f"unknown axis values {sorted(set(np.asarray(axes, dtype=object)[codes < 0]))}; axes are {', '.join(AXES)}")
    start, stop = _boxes(codes, slices, ys, xs, hs, ws)
    lo, hi = start.min(axis=0), stop.max(axis=0)
    data = np.asarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    patches = []
    for axis, index, y, x, h, w in zip(axes, slices, ys, xs, hs, ws):
        region = patch_region(str(axis), int(index), int(y), int(x), int(h), int(w))
        local = tuple(slice(r.start - o, r.stop - o) if isinstance(r, slice) else int(r - o) for r, o in zip(region, lo))
        patches.append(data[local])
    return patches


def read_patch(workdir_or_store, row: Mapping[str, Any]) -> np.ndarray:
    """One patch as a (h, w) uint8 array."""
    array = open_volume(workdir_or_store, str(row["volume"]))
    region = patch_region(str(row["axis"]), int(row["slice"]), int(row["y"]), int(row["x"]), int(row["h"]), int(row["w"]))
    return np.asarray(array[region])


def read_patches(store, rows: pd.DataFrame) -> list[np.ndarray]:
    """Every row's patch as a (h, w) uint8 array, in the frame's row order; one read per (array, chunk)."""
    _check_columns(rows)
    frame = rows.reset_index(drop=True)
    if frame.empty:
        return []
    arrays = _open_all(store, frame["volume"].unique())
    planned = _plan(frame, arrays, store, per_axis=False)
    out: list[np.ndarray | None] = [None] * len(frame)
    positions = planned.index.to_numpy()
    columns = {c: planned[c].to_numpy() for c in _COLUMNS}
    for lo, hi in block_spans(planned["block"].to_numpy()).values():
        patches = read_block(arrays[str(columns["volume"][lo])], *(columns[c][lo:hi] for c in _COLUMNS[1:]))
        for position, patch in zip(positions[lo:hi], patches):
            out[position] = patch
    return out  # type: ignore[return-value]
