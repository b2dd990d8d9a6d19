"""What export adds to core.patches' chunk-grouped reader: ffcv's DatasetWriter-facing dataset.

The writer plans the selected rows with `core.patches.plan_reads` (storage order, one `block` per
volume, plane axis and zarr chunk). `PatchSource` is the indexable dataset handed to DatasetWriter:
its worker processes take consecutive runs of rows, and each reads a block with one
`core.patches.read_block` call when it reaches it and keeps only that last block, so memory is
bounded by one block per worker and neighbouring patches never trigger separate chunk decodes.
`fit_patch` brings edge patches to the export size; `label_values` turns catalog columns into what
ffcv's IntField / FloatField store.
"""
from __future__ import annotations

import ctypes
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd

from cem_pipeline.core.patches import block_spans, open_volume, read_block


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
        self.spans = block_spans(self.columns["block"])
        self.stats = multiprocessing.Array(ctypes.c_int64, 3)
        self.error = multiprocessing.Array(ctypes.c_char, 4096)
        self._arrays: dict[str, object] = {}
        self._block_id = -1
        self._block = None

    def __len__(self) -> int:
        return len(self.dataset_ids)

    def _load_block(self, block: int) -> None:
        lo, hi = self.spans[block]
        key = self.volumes[lo]
        if key not in self._arrays:
            self._arrays.clear()
            self._arrays[key] = open_volume(self.store, key)
        c = self.columns
        self._block = (lo, read_block(self._arrays[key], self.axes[lo:hi], c["slice"][lo:hi], c["y"][lo:hi], c["x"][lo:hi],
                                      c["h"][lo:hi], c["w"][lo:hi]))
        self._block_id = block

    def patch(self, index: int) -> np.ndarray:
        """The raw (h, w) patch of row `index`, exactly as stored in zarr."""
        block = int(self.columns["block"][index])
        if block != self._block_id:
            self._load_block(block)
        lo, patches = self._block
        return patches[index - lo]

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
