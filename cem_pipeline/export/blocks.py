"""Reading selected patches from the zarr store block by block, for ffcv's DatasetWriter.

Catalog rows name a plane of a (Z, Y, X) uint8 array at `store.zarr/<volume>` (the `volume` column
is the array path "<dataset>/<key>", see store.py)
(axis xy -> vol[slice], xz -> vol[:, slice, :], yz -> vol[:, :, slice]) and a box
plane[y:y+h, x:x+w]. Rows are grouped into blocks: same volume and axis, and the same zarr
chunk along the slicing axis and along both plane axes (by the patch's start). A block is read
with one zarr slice covering all its rows, so memory per worker is bounded by one chunk plus a
patch margin per axis, and neighbouring patches never trigger separate chunk decodes.

`PatchSource` is the indexable dataset handed to DatasetWriter: rows are in block order, its
worker processes take consecutive runs of rows, and each keeps the last block it read.
"""
from __future__ import annotations

import ctypes
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd

from cem_pipeline.core.geometry import PLANE_AXES, SLICE_AXIS


def open_volume(store: Path, volume: str):
    import zarr

    path = Path(store) / volume
    try:
        array = zarr.open_array(str(path), mode="r", zarr_format=3)
    except Exception as exc:
        raise FileNotFoundError(f"{path}: cannot open the zarr array of catalog volume '{volume}': {exc}") from None
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(f"{path}: expected a uint8 (Z, Y, X) array, got {array.dtype} {array.shape}")
    return array


def plan_blocks(rows: pd.DataFrame, store: Path) -> pd.DataFrame:
    """Rows sorted in storage order with a `block` id, after checking every box lies inside its volume."""
    if rows.empty:
        return rows.assign(block=np.zeros(0, np.int64))
    parts = []
    for (dataset, volume), group in rows.groupby(["dataset", "volume"], sort=True):
        array = open_volume(store, str(volume))
        shape, chunks = np.array(array.shape), np.array(array.chunks)
        group = group.copy()
        bad_axis = ~group.axis.isin(list(SLICE_AXIS))
        if bad_axis.any():
            raise ValueError(f"catalog rows of {dataset}/{volume} have unknown axis values {sorted(set(group.axis[bad_axis]))}")
        s_ax = group.axis.map(SLICE_AXIS).to_numpy()
        a_ax = group.axis.map(lambda a: PLANE_AXES[a][0]).to_numpy()
        b_ax = group.axis.map(lambda a: PLANE_AXES[a][1]).to_numpy()
        inside = (
            (group.slice.to_numpy() >= 0) & (group.slice.to_numpy() < shape[s_ax])
            & (group.y.to_numpy() >= 0) & (group.y.to_numpy() + group.h.to_numpy() <= shape[a_ax])
            & (group.x.to_numpy() >= 0) & (group.x.to_numpy() + group.w.to_numpy() <= shape[b_ax])
            & (group.h.to_numpy() > 0) & (group.w.to_numpy() > 0)
        )
        if not inside.all():
            first = group[~inside].iloc[0]
            raise ValueError(
                f"{Path(store) / str(volume)}: {int((~inside).sum())} catalog boxes fall outside the "
                f"volume {tuple(shape)} (first: patch_id {first.patch_id}, axis {first.axis}, slice {first.slice}, "
                f"y {first.y}, x {first.x}, {first.h}x{first.w})"
            )
        group["_axis_order"] = s_ax
        group["_cs"] = group.slice.to_numpy() // chunks[s_ax]
        group["_ca"] = group.y.to_numpy() // chunks[a_ax]
        group["_cb"] = group.x.to_numpy() // chunks[b_ax]
        parts.append(group)
    ordered = pd.concat(parts, ignore_index=True).sort_values(
        ["dataset", "volume", "_axis_order", "_cs", "_ca", "_cb", "slice", "y", "x", "patch_id"], kind="stable"
    )
    keys = ordered[["dataset", "volume", "_axis_order", "_cs", "_ca", "_cb"]]
    ordered["block"] = (keys != keys.shift()).any(axis=1).cumsum().to_numpy() - 1
    return ordered.drop(columns=["_axis_order", "_cs", "_ca", "_cb"]).reset_index(drop=True)


def read_block(array, axis: str, slices: np.ndarray, ys: np.ndarray, xs: np.ndarray, hs: np.ndarray, ws: np.ndarray):
    """One zarr read covering every row of a block; returns (data, origin) with data indexed
    [slice, plane_a, plane_b] whatever the axis."""
    s0, s1 = int(slices.min()), int(slices.max()) + 1
    a0, a1 = int(ys.min()), int((ys + hs).max())
    b0, b1 = int(xs.min()), int((xs + ws).max())
    if axis == "xy":
        data = array[s0:s1, a0:a1, b0:b1]
    elif axis == "xz":
        data = np.moveaxis(array[a0:a1, s0:s1, b0:b1], 1, 0)
    else:
        data = np.moveaxis(array[a0:a1, b0:b1, s0:s1], 2, 0)
    return np.asarray(data), (s0, a0, b0)


def fit_patch(patch: np.ndarray, size: int, mode: str) -> np.ndarray:
    """A (size, size) uint8 image from a patch no larger than that: reflect-pad at the bottom/right
    (the real pixels stay at [0:h, 0:w], so a loader can crop them) or bilinear resize."""
    h, w = patch.shape
    if h == size and w == size:
        return np.ascontiguousarray(patch)
    if mode == "resize":
        import cv2

        return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=cv2.INTER_LINEAR)
    pad = ((0, size - h), (0, size - w))
    if min(h, w) < 2:
        return np.pad(patch, pad, mode="edge")
    return np.pad(patch, pad, mode="reflect")


def label_values(column: pd.Series) -> np.ndarray:
    """A catalog column as what an ffcv IntField (int64, missing -> -1) or FloatField (float64,
    missing -> NaN) stores."""
    if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_integer_dtype(column.dtype):
        return column.astype("Int64").fillna(-1).to_numpy(np.int64)
    if column.dtype == object and column.dropna().map(lambda v: isinstance(v, (bool, np.bool_, int, np.integer))).all():
        return column.map(lambda v: -1 if v is None or v is pd.NA else int(v)).to_numpy(np.int64)
    return pd.to_numeric(column, errors="raise").astype(np.float64).to_numpy()


class PatchSource:
    """Indexable (row -> tuple of field values) view of block-ordered rows, for DatasetWriter.

    `stats` (shared int64 [pixels, sum, sum of squares] of the real pixels of each exported image)
    is accumulated by whichever process encodes a row; integer sums make it exact and order-free.

    ffcv 1.0.2's writer waits forever for a worker that raised, so a failed read is recorded in
    the shared `error` buffer and a blank image written instead; the caller checks `failure()`
    and discards the file.
    """

    def __init__(self, store: Path, rows: pd.DataFrame, dataset_index: dict[str, int], size: int, edge_mode: str,
                 label_columns: list[str]):
        self.store = Path(store)
        self.size = size
        self.edge_mode = edge_mode
        self.datasets = rows.dataset.to_numpy(dtype=object)
        self.volumes = rows.volume.to_numpy(dtype=object)
        self.axes = rows.axis.to_numpy(dtype=object)
        self.columns = {c: rows[c].to_numpy(np.int64) for c in ("patch_id", "slice", "y", "x", "h", "w", "block")}
        self.dataset_ids = np.array([dataset_index[d] for d in self.datasets], dtype=np.int64)
        self.labels = [label_values(rows[c]) for c in label_columns]
        starts = np.flatnonzero(np.r_[True, self.columns["block"][1:] != self.columns["block"][:-1]])
        self.block_start = dict(zip(self.columns["block"][starts].tolist(), starts.tolist()))
        self.block_end = dict(zip(self.columns["block"][starts].tolist(), np.r_[starts[1:], len(rows)].tolist()))
        self.stats = multiprocessing.Array(ctypes.c_int64, 3)
        self.error = multiprocessing.Array(ctypes.c_char, 4096)
        self._arrays: dict[str, object] = {}
        self._block_id = -1
        self._block = None

    def __len__(self) -> int:
        return len(self.dataset_ids)

    def _load_block(self, block: int) -> None:
        lo, hi = self.block_start[block], self.block_end[block]
        key = self.volumes[lo]
        if key not in self._arrays:
            self._arrays.clear()
            self._arrays[key] = open_volume(self.store, key)
        c = self.columns
        self._block = read_block(self._arrays[key], self.axes[lo], c["slice"][lo:hi], c["y"][lo:hi], c["x"][lo:hi],
                                 c["h"][lo:hi], c["w"][lo:hi])
        self._block_id = block

    def patch(self, index: int) -> np.ndarray:
        """The raw (h, w) patch of row `index`, exactly as stored in zarr."""
        c = self.columns
        block = int(c["block"][index])
        if block != self._block_id:
            self._load_block(block)
        data, (s0, a0, b0) = self._block
        y, x = c["y"][index] - a0, c["x"][index] - b0
        return data[c["slice"][index] - s0, y:y + c["h"][index], x:x + c["w"][index]]

    def failure(self) -> str | None:
        message = self.error.value.decode(errors="replace")
        return message or None

    def __getitem__(self, index: int) -> tuple:
        try:
            patch = self.patch(index)
        except Exception as exc:  # any read failure must reach the parent, see class docstring
            with self.error.get_lock():
                if not self.error.value:
                    self.error.value = f"row {index} (patch_id {self.columns['patch_id'][index]}, volume "\
                                       f"{self.volumes[index]}): {type(exc).__name__}: {exc}".encode()[:4095]
            patch = np.zeros((int(self.columns["h"][index]), int(self.columns["w"][index])), np.uint8)
        image = fit_patch(patch, self.size, self.edge_mode)
        valid = image if self.edge_mode == "resize" else patch
        pixels = valid.astype(np.int64)
        with self.stats.get_lock():
            self.stats[0] += pixels.size
            self.stats[1] += int(pixels.sum())
            self.stats[2] += int((pixels * pixels).sum())
        c = self.columns
        h, w = (self.size, self.size) if self.edge_mode == "resize" else (int(c["h"][index]), int(c["w"][index]))
        return (image, int(c["patch_id"][index]), int(self.dataset_ids[index]), h, w,
                *(label[index].item() for label in self.labels))
