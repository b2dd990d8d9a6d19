"""NRRD (.nrrd, .nhdr) through pynrrd.

Raw-encoded single-file NRRD is memory-mapped (the data is the last bytes of the file), so it is
read by region; compressed encodings (gzip/bzip2) cannot be seeked and are decoded whole, as one
dask chunk. Voxel size from `spacings` or the norms of `space directions`, with `space units`.
"""
from __future__ import annotations

import os

import dask
import dask.array as da
import nrrd
import numpy as np

from cem_pipeline.sources.readers.base import LazyArray, ReaderError, Volume, to_nm


def _as3d(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 3 else array[None]


def whole(path: str) -> np.ndarray:
    data, _ = nrrd.read(path, index_order="C")
    return _as3d(np.ascontiguousarray(data))


def region(path: str, shape: tuple, dtype: str, key) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    offset = os.path.getsize(path) - nbytes
    mapped = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
    out = np.array(mapped[key])
    return out.astype(out.dtype.newbyteorder("="))


def read(path: str) -> Volume:
    try:
        header = nrrd.read_header(path)
        sizes = [int(s) for s in header["sizes"]]
        dtype = nrrd.reader._determine_datatype(header)
    except Exception as exc:
        raise ReaderError(path, f"not a readable NRRD file ({type(exc).__name__}: {exc})") from None
    if len(sizes) not in (2, 3):
        raise ReaderError(path, f"{len(sizes)}D NRRD (sizes {sizes}) is not supported")
    shape = tuple(reversed(sizes))  # C order: (z, y, x)
    shape3 = shape if len(shape) == 3 else (1,) + shape
    spacing = header.get("spacings")
    if spacing is None and "space directions" in header:
        spacing = [float(np.linalg.norm(d)) if d is not None and np.all(np.isfinite(d)) else np.nan
                   for d in header["space directions"]]
    units = header.get("space units") or header.get("units") or []
    voxel = None
    if spacing is not None and len(spacing) == len(sizes):
        unit = units[0] if units else "nm"
        nm = [to_nm(float(s), unit) for s in reversed(list(spacing))]
        if all(v is not None for v in nm[-2:]):
            voxel = tuple(nm) if len(nm) == 3 else (None, nm[0], nm[1])
    raw = header.get("encoding") == "raw" and "data file" not in header and "datafile" not in header
    if raw:
        order = ">" if header.get("endian") == "big" else "<"
        disk = np.dtype(dtype).newbyteorder(order if np.dtype(dtype).itemsize > 1 else "=")
        lazy = LazyArray("cem_pipeline.sources.readers.nrrd_reader:region", (path, shape3, disk.str), shape3, disk.newbyteorder("="))
        data = da.from_array(lazy, chunks=(1, -1, -1), asarray=False)
    else:
        data = da.from_delayed(dask.delayed(whole, pure=True)(path), shape=shape3, dtype=np.dtype(dtype).newbyteorder("="))
    return Volume(data, voxel, "image" if shape3[0] == 1 else "volume", path, meta={"encoding": header.get("encoding")})
