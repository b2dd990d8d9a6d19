"""TIFF through tifffile: 2D images, multi-page stacks, ImageJ hyperstacks and OME-TIFF.

Pages (z planes) are read on demand. Uncompressed pages lying in one run of the file (tifffile's
own stacks, ImageJ, most big EM stacks) are memory-mapped: a block is one copy out of the page
cache. Other files are decoded page by page, PAGES_PER_CHUNK per dask chunk and per open.
Voxel size comes from, in order: FEI/Thermo SEM tags (Scan.PixelWidth/PixelHeight, metres),
OME PhysicalSize{X,Y,Z} with their units, ImageJ resolution tags plus `spacing`/`unit`.
Plain TIFF resolution tags (DPI) describe paper, not specimens, and are ignored.
"""
from __future__ import annotations

import functools
import os

import dask.array as da
import numpy as np
import tifffile

from cem_pipeline.sources.readers.base import LazyArray, ReaderError, Volume, to_nm

PAGES_PER_CHUNK = 32
MAPPED_CHUNK_BYTES = 512 * 2**20


def region(path: str, key) -> np.ndarray:
    """Pages key[0] of the first series, cropped to the rest of key, with one open of the file
    (opening parses the IFD chain, so one open per page would be quadratic in the page count)."""
    key = key if isinstance(key, tuple) else (key,)
    pages = range(*key[0].indices(10**12)) if isinstance(key[0], slice) else [int(key[0])]
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
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


def mapped(path: str, offset: int, disk_dtype: str, shape: tuple, key) -> np.ndarray:
    """A region of an uncompressed, contiguous series as a view of a memory map of the file: no
    IFD is parsed (the layout was read at open), only the region's pages are touched, and the
    one copy is dask's, as it assembles the result (big-endian data is swapped here instead)."""
    try:
        view = np.memmap(path, dtype=np.dtype(disk_dtype), mode="r", offset=offset, shape=shape)[key]
    except Exception as exc:
        raise ReaderError(path, f"cannot map the pixel data ({type(exc).__name__}: {exc})") from None
    native = view.dtype.newbyteorder("=")
    return view if view.dtype == native else view.astype(native)


def _contiguous(tif: tifffile.TiffFile, series) -> tuple[int, str, int] | None:
    """(byte offset, on-disk dtype, file size) when the pixels lie uncompressed, in order, in one
    run of the file (tifffile's `dataoffset`), else None. Planar RGB is left to `region`: its
    samples come first on disk and last for us. The last page must start where the run says:
    no mapped read parses an IFD, so this is where a file cut inside its last IFD is caught."""
    if series.dataoffset is None or series.pages[0].axes.startswith("S"):
        return None
    last = series.pages[len(series.pages) - 1]
    if last.dataoffsets[0] != series.dataoffset + (len(series.pages) - 1) * last.nbytes:
        return None
    return series.dataoffset, np.dtype(series.dtype).newbyteorder(tif.byteorder).str, tif.filehandle.size


def _data(path: str, contiguous, shape3: tuple, dtype: np.dtype) -> da.Array:
    """Memory-mapped reads for a contiguous series, page-by-page decoding otherwise. Mapped chunks
    hold MAPPED_CHUNK_BYTES (PAGES_PER_CHUNK pages at least): a sliced region reads only its own
    bytes whatever the chunk, and a block spanning fewer chunks costs fewer tasks and no
    concatenation. A mapped run past the end of the file is reported here, at open, not as a
    short read later."""
    native = dtype.newbyteorder("=")
    if contiguous is None:
        lazy = LazyArray("cem_pipeline.sources.readers.tiff:region", (path,), shape3, native)
        return da.from_array(lazy, chunks=(PAGES_PER_CHUNK,) + shape3[1:], asarray=False)
    offset, disk, size = contiguous
    page_bytes = int(np.prod(shape3[1:])) * dtype.itemsize
    end = offset + shape3[0] * page_bytes
    if end > size:
        raise ReaderError(path, f"truncated: the pixel data ends at byte {end}, the file has {size}")
    lazy = LazyArray("cem_pipeline.sources.readers.tiff:mapped", (path, offset, disk, shape3), shape3, native)
    depth = max(PAGES_PER_CHUNK, MAPPED_CHUNK_BYTES // page_bytes)
    return da.from_array(lazy, chunks=(depth,) + shape3[1:], asarray=False)


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


@functools.lru_cache(maxsize=64)
def _inspect(path: str, stamp: tuple) -> tuple:
    """What `read` needs from the IFDs, parsed once per process and version of the file: ingest
    opens the volume once per block, and tifffile walks the whole IFD chain on every open (0.3 s
    for 10,000 pages of a plain stack). `stamp` (inode, size, mtime) makes a rewritten file
    parse again; errors are raised, never cached."""
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
            return axes, shape, dtype, n_pages, voxel, page_shape, _contiguous(tif, series)
        except Exception as exc:
            raise ReaderError(path, f"corrupt TIFF structure ({type(exc).__name__}: {exc})") from None


def read(path: str) -> Volume:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ReaderError(path, f"cannot read file ({exc.strerror})") from None
    axes, shape, dtype, n_pages, voxel, page_shape, contiguous = _inspect(
        path, (stat.st_ino, stat.st_size, stat.st_mtime_ns))
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
    data = _data(path, contiguous, shape3, dtype)
    kind = "image" if n_pages == 1 else "volume"
    if voxel is not None and kind == "image":
        voxel = (None, voxel[1], voxel[2])
    return Volume(data, voxel, kind, path, channels=bool(channels), meta={"axes": axes})
