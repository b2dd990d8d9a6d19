"""HDF5 through h5py: the dataset at `dataset_path`, or the only dataset in the file.

Read by region in the file's own chunks. Voxel size from the dataset's (or file's) attributes:
`element_size_um` (z, y, x µm; ilastik / Fiji) or `resolution` / `voxel_size` (z, y, x nm; CREMI).
"""
from __future__ import annotations

import dask.array as da
import h5py
import numpy as np

from cem_pipeline.sources.readers.base import LazyArray, ReaderError, Volume


def region(path: str, name: str, key) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        dataset = handle[name]
        out = dataset[key] if dataset.ndim == 3 else dataset[()][None][key]
    return np.asarray(out)


def _datasets(handle: h5py.File) -> list[str]:
    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _voxel(attrs) -> tuple | None:
    if "element_size_um" in attrs:
        values = [float(v) * 1e3 for v in np.ravel(attrs["element_size_um"])]
    else:
        key = next((k for k in ("resolution", "voxel_size") if k in attrs), None)
        if key is None:
            return None
        values = [float(v) for v in np.ravel(attrs[key])]
    if len(values) == 2:
        values = [None] + values
    return tuple(values) if len(values) == 3 and all(v is None or v > 0 for v in values) else None


def read(path: str, dataset_path: str | None) -> Volume:
    try:
        with h5py.File(path, "r") as handle:
            if dataset_path is None:
                names = _datasets(handle)
                if len(names) != 1:
                    raise ReaderError(path, f"set dataset_path: the file holds {len(names)} datasets ({', '.join(names[:10])})")
                dataset_path = names[0]
            if dataset_path not in handle or not isinstance(handle[dataset_path], h5py.Dataset):
                raise ReaderError(path, f"no dataset '{dataset_path}' in the file")
            dataset = handle[dataset_path]
            shape, dtype, chunks = dataset.shape, dataset.dtype, dataset.chunks
            voxel = _voxel(dataset.attrs) or _voxel(handle.attrs)
    except ReaderError:
        raise
    except Exception as exc:
        raise ReaderError(path, f"not a readable HDF5 file ({type(exc).__name__}: {exc})") from None
    if len(shape) not in (2, 3):
        raise ReaderError(path, f"{len(shape)}D dataset '{dataset_path}' (shape {shape}) is not supported")
    shape3 = tuple(shape) if len(shape) == 3 else (1,) + tuple(shape)
    lazy = LazyArray("cem_pipeline.sources.readers.hdf5:region", (path, dataset_path), shape3, dtype)
    depth = chunks[0] if chunks and len(shape) == 3 else 1
    data = da.from_array(lazy, chunks=(max(1, min(depth, 64)), -1, -1), asarray=False)
    if voxel is not None and shape3[0] == 1:
        voxel = (None, voxel[1], voxel[2])
    return Volume(data, voxel, "image" if shape3[0] == 1 else "volume", path, meta={"dataset_path": dataset_path})
