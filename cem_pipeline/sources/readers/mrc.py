"""MRC / REC / ST / MAP (cryo-EM, tomography) through mrcfile, memory-mapped.

Modes 0 (int8, signed per the MRC2014 standard), 1 (int16), 2 (float32), 6 (uint16) and 12
(float16) are read as stored. Voxel size comes from the header in Ångström (converted to nm);
0 in the header means "not recorded" and gives no voxel size.
"""
from __future__ import annotations

import dask.array as da
import mrcfile
import numpy as np

from cem_pipeline.sources.readers.base import LazyArray, ReaderError, Volume


def region(path: str, key) -> np.ndarray:
    with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
        out = np.array(data[key])
    return out.astype(out.dtype.newbyteorder("=")) if out.dtype.byteorder == ">" else out


def read(path: str) -> Volume:
    try:
        with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
            shape, dtype = mrc.data.shape, mrc.data.dtype
            size = mrc.voxel_size
            is_stack = mrc.is_image_stack()
    except Exception as exc:
        raise ReaderError(path, f"not a readable MRC file ({type(exc).__name__}: {exc})") from None
    if len(shape) not in (2, 3):
        raise ReaderError(path, f"{len(shape)}D MRC data (shape {shape}) is not supported")
    shape3 = shape if len(shape) == 3 else (1,) + tuple(shape)
    voxel = tuple(float(size[a]) / 10.0 for a in ("z", "y", "x"))
    if voxel[1] <= 0 or voxel[2] <= 0:
        voxel = None
    elif len(shape) == 2 or is_stack or voxel[0] <= 0:
        voxel = (None, voxel[1], voxel[2])
    lazy = LazyArray("cem_pipeline.sources.readers.mrc:region", (path,), shape3, dtype.newbyteorder("="))
    data = da.from_array(lazy, chunks=(1, -1, -1), asarray=False)
    kind = "image" if shape3[0] == 1 else "volume"
    return Volume(data, voxel, kind, path, meta={"mrc_stack": bool(is_stack)})
