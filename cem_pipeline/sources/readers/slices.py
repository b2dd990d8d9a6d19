"""A directory (or glob) of numbered 2D slices as one volume.

Files are ordered by the integers in their names (natural sort: img2 < img10), so zero padding
does not matter. Each slice is one dask chunk read by the 2D or TIFF reader; all slices must
share shape and dtype, which is checked on the first and last slice at open time and on every
slice as it is read (a mismatch is an error naming the slice, never a silently broken volume).
"""
from __future__ import annotations

import re

import dask
import dask.array as da
import numpy as np

from cem_pipeline.sources.readers import image2d, tiff
from cem_pipeline.sources.readers.base import ReaderError, Volume

TIFF_SUFFIXES = (".tif", ".tiff")


def natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _open2d(path: str) -> Volume:
    volume = tiff.read(path) if path.lower().endswith(TIFF_SUFFIXES) else image2d.read(path)
    if volume.shape[0] != 1:
        raise ReaderError(path, f"slice has {volume.shape[0]} pages; a slice directory needs 2D images")
    return volume


def _slice(path: str, shape: tuple, dtype: str) -> np.ndarray:
    array = np.asarray(_open2d(path).data[0].compute(scheduler="synchronous"))
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ReaderError(path, f"slice is {array.shape} {array.dtype}, the stack is {shape} {dtype}")
    return array


def read(files: list[str], source: str) -> Volume:
    if not files:
        raise ReaderError(source, "no slices found")
    first, last = _open2d(files[0]), _open2d(files[-1])
    shape, dtype = first.data.shape[1:], first.data.dtype
    if last.data.shape[1:] != shape or last.data.dtype != dtype:
        raise ReaderError(files[-1], f"slice is {last.data.shape[1:]} {last.data.dtype}, the stack is {shape} {dtype}")
    planes = [
        da.from_delayed(dask.delayed(_slice, pure=True)(f, tuple(shape), str(dtype)), shape=shape, dtype=dtype)
        for f in files
    ]
    voxel = first.voxel_size
    return Volume(
        da.stack(planes), None if voxel is None else (None, voxel[1], voxel[2]), "volume", source,
        channels=first.channels, meta={"n_files": len(files)},
    )
