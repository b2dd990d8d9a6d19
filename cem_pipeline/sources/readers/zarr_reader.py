"""Zarr (v2 or v3) arrays and OME-Zarr images, read by region in the store's own chunks.

A path to an array is used as is; a group is resolved through `dataset_path`, else the first
OME-NGFF multiscale level (full resolution), whose scale transform and axis units give the
voxel size. Singleton t/c axes are dropped; more than three non-singleton axes is an error.
"""
from __future__ import annotations

import dask.array as da
import zarr

from cem_pipeline.sources.readers.base import ReaderError, Volume, to_nm

_UNITS = {"nanometer": "nm", "micrometer": "um", "millimeter": "mm", "angstrom": "a", "meter": "m"}


def _ome(group) -> tuple[str, list, list] | None:
    multiscales = group.attrs.get("multiscales") or group.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    first = multiscales[0]
    level = first["datasets"][0]
    scale = next((t["scale"] for t in level.get("coordinateTransformations", []) if t.get("type") == "scale"), None)
    axes = first.get("axes") or [{"name": n} for n in "zyx"]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    return level["path"], axes, scale


def read(path: str, dataset_path: str | None) -> Volume:
    try:
        node = zarr.open(path, mode="r")
        axes, scale = None, None
        if isinstance(node, zarr.Group):
            if dataset_path is None:
                ome = _ome(node)
                if ome is None:
                    arrays = sorted(name for name, _ in node.arrays())
                    if len(arrays) != 1:
                        raise ReaderError(path, f"set dataset_path: the group holds arrays {arrays[:10]}")
                    dataset_path = arrays[0]
                else:
                    dataset_path, axes, scale = ome
            node = node[dataset_path]
        array = node
        shape = array.shape
    except ReaderError:
        raise
    except Exception as exc:
        raise ReaderError(path, f"not a readable zarr store ({type(exc).__name__}: {exc})") from None
    names = [a["name"] for a in axes] if axes and len(axes) == len(shape) else [None] * len(shape)
    keep = [i for i, s in enumerate(shape) if s > 1 or i >= len(shape) - 2]
    if len(keep) > 3:
        raise ReaderError(path, f"{len(keep)}D array (shape {tuple(shape)}) is not supported")
    data = da.from_zarr(path, component=dataset_path) if dataset_path else da.from_zarr(path)
    data = data[tuple(slice(None) if i in keep else 0 for i in range(len(shape)))]
    if data.ndim == 2:
        data = data[None]
    voxel = None
    if scale is not None and axes:
        spatial = [i for i in keep if names[i] in ("z", "y", "x")]
        units = {a["name"]: _UNITS.get(a.get("unit", ""), a.get("unit")) for a in axes}
        nm = {names[i]: to_nm(float(scale[i]), units.get(names[i])) for i in spatial}
        if nm.get("y") and nm.get("x"):
            voxel = (nm.get("z") if data.shape[0] > 1 else None, nm["y"], nm["x"])
    return Volume(data, voxel,
                  "image" if data.shape[0] == 1 else "volume", path, meta={"dataset_path": dataset_path})
