"""TIFF through tifffile: 2D images, multi-page stacks, ImageJ hyperstacks and OME-TIFF.

Pages (z planes) are read on demand, PAGES_PER_CHUNK per dask chunk and per open of the file.
Voxel size comes from, in order: FEI/Thermo SEM tags (Scan.PixelWidth/PixelHeight, metres),
OME PhysicalSize{X,Y,Z} with their units, ImageJ resolution tags plus `spacing`/`unit`.
Plain TIFF resolution tags (DPI) describe paper, not specimens, and are ignored.
"""
from __future__ import annotations

import dask.array as da
import numpy as np
import tifffile

from .base import LazyArray, ReaderError, Volume, to_nm

PAGES_PER_CHUNK = 32


def region(path: str, key) -> np.ndarray:
    """Pages key[0] of the first series, cropped to the rest of key, with one open of the file
    (opening parses the IFD chain, so one open per page would be quadratic in the page count)."""
    key = key if isinstance(key, tuple) else (key,)
    pages = range(*key[0].indices(10**12)) if isinstance(key[0], slice) else [int(key[0])]
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if series.dataoffset is not None and not series.pages[0].axes.startswith("S"):
                # uncompressed and contiguous: map it and read only the bytes of the region
                dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
                shape = (len(series.pages),) + tuple(series.pages[0].shape)
                mapped = np.memmap(path, dtype=dtype, mode="r", offset=series.dataoffset, shape=shape)
                out = np.array(mapped[key])
                return out.astype(out.dtype.newbyteorder("=")) if out.dtype.byteorder not in ("=", "|") else out
            planes = []
            for index in pages:
                page = series.pages[index]
                array = page.asarray()
                if page.axes.startswith("S"):  # planar (separate) RGB: samples first on disk, last for us
                    array = np.moveaxis(array, 0, -1)
                planes.append(array[key[1:]])
    except Exception as exc:
        raise ReaderError(path, f"truncated or corrupt page ({type(exc).__name__}: {exc})") from None
    out = np.stack(planes) if isinstance(key[0], slice) else planes[0]
    return out.astype(out.dtype.newbyteorder("=")) if out.dtype.byteorder == ">" else out


def _fei(tif: tifffile.TiffFile):
    meta = tif.fei_metadata if tif.is_fei else None
    scan = (meta or {}).get("Scan") or {}
    x, y = scan.get("PixelWidth"), scan.get("PixelHeight") or scan.get("PixelWidth")
    if x and y:
        return (None, round(float(y) * 1e9, 6), round(float(x) * 1e9, 6))
    return None


def _ome(tif: tifffile.TiffFile):
    if not tif.is_ome:
        return None
    import xml.etree.ElementTree as ET

    root = ET.fromstring(tif.ome_metadata)
    pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "ZYX":
        value = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        sizes.append(to_nm(float(value), unit) if value else None)
    return None if sizes[1] is None or sizes[2] is None else tuple(sizes)


def _imagej(tif: tifffile.TiffFile):
    if not tif.is_imagej:
        return None
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    tags = tif.pages[0].tags
    try:
        xr = tags["XResolution"].value
        yr = tags["YResolution"].value
    except KeyError:
        return None
    x = to_nm(xr[1] / xr[0], unit) if xr[0] else None
    y = to_nm(yr[1] / yr[0], unit) if yr[0] else None
    z = to_nm(float(meta["spacing"]), unit) if "spacing" in meta else None
    return None if x is None or y is None else (z, y, x)


def read(path: str) -> Volume:
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ReaderError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    with tif:
        try:
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
            n_pages = len(series.pages)
            voxel = _fei(tif) or _ome(tif) or _imagej(tif)
            first = series.pages[0]
            page_shape = tuple(first.shape)
            if first.axes.startswith("S"):
                page_shape = page_shape[1:] + page_shape[:1]
        except Exception as exc:
            raise ReaderError(path, f"corrupt TIFF structure ({type(exc).__name__}: {exc})") from None
    keep = [(a, s) for a, s in zip(axes, shape) if s > 1 or a in "YX"]
    spatial = [(a, s) for a, s in keep if a not in "SC"]
    if len(spatial) > 3:
        raise ReaderError(path, f"{len(spatial)}D image (axes {axes}, shape {shape}) is not supported")
    if any(a == "C" for a, _ in keep) and keep[-1][0] != "C":
        raise ReaderError(path, f"channels not last (axes {axes}, shape {shape}) are not supported")
    n_planes = int(np.prod([s for a, s in spatial[:-2]])) if len(spatial) > 2 else 1
    if n_planes != n_pages:
        raise ReaderError(path, f"truncated or corrupt: {n_pages} page(s) found, the metadata says {n_planes} (axes {axes})")
    plane = page_shape
    if len(plane) == 2:
        channels = 0
    elif len(plane) == 3 and plane[-1] in (2, 3, 4):
        channels = plane[-1]
    else:
        raise ReaderError(path, f"page shape {plane} (axes {axes}) is not a 2D plane or RGB(A)")
    height, width = plane[0], plane[1]
    shape3 = (n_pages, height, width) + ((channels,) if channels else ())
    lazy = LazyArray("cem_pipeline.readers.tiff:region", (path,), shape3, dtype.newbyteorder("="))
    data = da.from_array(lazy, chunks=(PAGES_PER_CHUNK,) + shape3[1:], asarray=False)
    kind = "image" if n_pages == 1 else "volume"
    if voxel is not None and kind == "image":
        voxel = (None, voxel[1], voxel[2])
    return Volume(data, voxel, kind, path, channels=bool(channels), meta={"axes": axes})
