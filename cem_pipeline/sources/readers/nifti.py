"""NIfTI-1/2 (.nii, .nii.gz) through nibabel's lazy array proxy.

NIfTI stores (x, y, z[, t]); we present (z, y, x). Scaling (scl_slope/inter) is applied by
nibabel, so the dtype is whatever the proxy yields. Voxel size from pixdim with the header's
spatial unit (mm when unset, as the standard says). A 4th axis longer than 1 is rejected.
"""
from __future__ import annotations

import dask.array as da
import nibabel as nib
import numpy as np

from cem_pipeline.sources.readers.base import LazyArray, ReaderError, Volume, to_nm


def region(path: str, key) -> np.ndarray:
    """(z, y, x) slicing mapped onto nibabel's (x, y, z) proxy."""
    proxy = nib.load(path).dataobj
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (3 - len(key))
    extra = (0,) * (len(proxy.shape) - 3)
    return np.asarray(proxy[(key[2], key[1], key[0]) + extra]).T


def read(path: str) -> Volume:
    try:
        image = nib.load(path)
        shape = image.shape
        zooms = image.header.get_zooms()
        unit = image.header.get_xyzt_units()[0]
        probe = np.asarray(image.dataobj[(slice(0, 1),) * len(shape)])
    except Exception as exc:
        raise ReaderError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(shape) > 3 and any(s > 1 for s in shape[3:]):
        raise ReaderError(path, f"{len(shape)}D NIfTI (shape {shape}) is not supported")
    x, y, z = (tuple(shape[:3]) + (1, 1, 1))[:3]
    unit = "mm" if unit in (None, "unknown") else unit
    sizes = [to_nm(float(v), unit) for v in (tuple(zooms[:3]) + (0.0, 0.0, 0.0))[:3]]
    voxel = None if sizes[0] is None or sizes[1] is None else (sizes[2] if z > 1 else None, sizes[1], sizes[0])
    lazy = LazyArray("cem_pipeline.sources.readers.nifti:region", (path,), (z, y, x), probe.dtype)
    data = da.from_array(lazy, chunks=(min(z, 64), -1, -1), asarray=False)
    return Volume(data, voxel, "image" if z == 1 else "volume", path)
