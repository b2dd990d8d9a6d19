"""Re-extract catalog patches from store.zarr: exact provenance, used by filter and export.

A catalog row (volume, axis, slice, y, x, h, w) names plane[y:y+h, x:x+w] of the array at
`volume` (see core.geometry for the planes). `read_patches` is the vectorised form: rows
are grouped by array and by the zarr chunk their patch lies in, each chunk-aligned region is
read once, and patches are cut from it in memory.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping

import numpy as np
import pandas as pd

from cem_pipeline.core.geometry import chunk_of, patch_region
from cem_pipeline.core.store import open_store

_COLUMNS = ("volume", "axis", "slice", "y", "x", "h", "w")


def read_patch(workdir_or_store, row: Mapping[str, Any]) -> np.ndarray:
    """One patch as a (h, w) uint8 array."""
    array = open_store(workdir_or_store)[str(row["volume"])]
    region = patch_region(str(row["axis"]), int(row["slice"]), int(row["y"]), int(row["x"]), int(row["h"]), int(row["w"]))
    return np.asarray(array[region])


def _bounds(region) -> tuple[list[int], list[int]]:
    lo = [r.start if isinstance(r, slice) else r for r in region]
    hi = [r.stop if isinstance(r, slice) else r + 1 for r in region]
    return lo, hi


def read_patches(store, rows: pd.DataFrame) -> list[np.ndarray]:
    """Every row's patch as a (h, w) uint8 array, in the frame's row order; one read per (array, chunk)."""
    missing = set(_COLUMNS) - set(rows.columns)
    if missing:
        raise ValueError(f"rows lack columns {sorted(missing)}")
    group = open_store(store)
    out: list[np.ndarray | None] = [None] * len(rows)
    frame = rows.reset_index(drop=True)
    for volume, part in frame.groupby("volume", sort=True):
        array = group[str(volume)]
        by_chunk: dict[tuple, list[tuple[int, tuple]]] = defaultdict(list)
        values = part[list(_COLUMNS[1:])].to_numpy()
        for position, (axis, index, y, x, h, w) in zip(part.index, values):
            region = patch_region(str(axis), int(index), int(y), int(x), int(h), int(w))
            by_chunk[chunk_of(str(axis), int(index), int(y), int(x), array.chunks)].append((position, region))
        for key in sorted(by_chunk):
            members = by_chunk[key]
            bounds = [_bounds(region) for _, region in members]
            lo = np.min([b[0] for b in bounds], axis=0)
            hi = np.max([b[1] for b in bounds], axis=0)
            block = np.asarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
            for position, region in members:
                local = tuple(
                    slice(r.start - lo[d], r.stop - lo[d]) if isinstance(r, slice) else int(r - lo[d])
                    for d, r in enumerate(region)
                )
                out[position] = block[local]
    return out  # type: ignore[return-value]
