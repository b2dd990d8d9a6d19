"""Readers, one small module per format family, all returning a lazy `Volume` (see base.py).

`open_volume(item)` picks the reader from `item.format` (or the file extension when "auto"),
checks the file's first bytes against the extension (a PNG named .tif is reported, not guessed
at), then validates what every later stage relies on: 2 or 3 spatial dimensions, no dimension
of size 0 or 1 in-plane, and an integer or float dtype.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

import numpy as np

from cem_pipeline.sources.readers.base import LazyArray, ReaderError, Volume, sniff

if TYPE_CHECKING:
    from cem_pipeline.sources.items import VolumeItem

__all__ = ["LazyArray", "ReaderError", "Volume", "detect_format", "open_volume", "validate"]

EXTENSIONS = {
    ".png": "image2d", ".jpg": "image2d", ".jpeg": "image2d", ".bmp": "image2d", ".gif": "image2d",
    ".tif": "tiff", ".tiff": "tiff",
    ".mrc": "mrc", ".rec": "mrc", ".st": "mrc", ".map": "mrc", ".ali": "mrc", ".mrcs": "mrc",
    ".nii": "nifti", ".nii.gz": "nifti",
    ".nrrd": "nrrd", ".nhdr": "nrrd",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".zarr": "zarr",
    ".avi": "video", ".mp4": "video", ".mov": "video", ".mkv": "video", ".m4v": "video",
}
# which sniffed containers each format accepts; formats absent here have no reliable magic
_CONTENT = {
    "image2d": {"png", "jpeg", "bmp", None, "gif"},
    "tiff": {"tiff"},
    "hdf5": {"hdf5"},
    "nifti": {"gzip", None},
    "nrrd": {"nrrd"},
    "mrc": {None},
}
# format -> (reader module in this package, whether its read() takes the dataset path inside the
# file); modules are imported on first use so that opening a TIFF never imports h5py or av
READERS: dict[str, tuple[str, bool]] = {
    "image2d": ("image2d", False),
    "tiff": ("tiff", False),
    "mrc": ("mrc", False),
    "nifti": ("nifti", False),
    "nrrd": ("nrrd_reader", False),
    "hdf5": ("hdf5", True),
    "zarr": ("zarr_reader", True),
    "video": ("video", False),
}
CLOUD_PREFIXES = ("precomputed://", "gs://", "s3://", "http://", "https://", "file://", "matrix://")


def extension(path: str) -> str:
    lower = path.lower().rstrip("/")
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def detect_format(path: str) -> str:
    if path.startswith(CLOUD_PREFIXES):
        return "cloudvolume"
    if os.path.isdir(path):
        if extension(path) == ".zarr" or any(os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zarray", ".zgroup")):
            return "zarr"
        return "slices"
    fmt = EXTENSIONS.get(extension(path))
    if fmt is None:
        raise ReaderError(path, f"unknown file extension '{extension(path)}'; set format in the manifest")
    return fmt


def _check_content(path: str, fmt: str) -> None:
    if fmt not in _CONTENT or not os.path.isfile(path):
        return
    try:
        found = sniff(path)
    except OSError as exc:
        raise ReaderError(path, f"cannot read file ({exc.strerror})") from None
    if found not in _CONTENT[fmt]:
        described = found.upper() if found else "not recognisable"
        raise ReaderError(path, f"content is {described} but the extension '{extension(path)}' says {fmt}")


def validate(volume: Volume) -> Volume:
    """Reject what would otherwise become garbage patches later; messages name file and reason."""
    path, data = volume.source_file, volume.data
    spatial = data.shape[:3]
    if data.ndim != (4 if volume.channels else 3):
        raise ReaderError(path, f"{data.ndim}D array (shape {data.shape}) is not supported")
    if 0 in data.shape:
        raise ReaderError(path, f"empty image (shape {data.shape})")
    if min(spatial[1:]) < 2:
        raise ReaderError(path, f"1-pixel dimension (shape {data.shape}) cannot be tiled")
    kind = np.dtype(data.dtype).kind
    if kind not in "uif" or np.dtype(data.dtype).itemsize > 8:
        raise ReaderError(path, f"unsupported dtype {data.dtype}")
    if volume.channels and data.shape[3] not in (2, 3, 4):
        raise ReaderError(path, f"{data.shape[3]} channels (shape {data.shape}) are not supported")
    return volume


def open_volume(item: "VolumeItem") -> Volume:
    """Open one volume of the manifest lazily; raises ReaderError naming the file and the reason."""
    path = item.files[0] if len(item.files) == 1 else item.source
    fmt = detect_format(path) if item.format == "auto" else item.format
    if fmt == "slices":
        from cem_pipeline.sources.readers import slices

        for f in item.files[:1] + item.files[-1:]:
            _check_content(f, "tiff" if f.lower().endswith(slices.TIFF_SUFFIXES) else "image2d")
        volume = slices.read(list(item.files), item.source)
    else:
        if not os.path.exists(path):
            raise ReaderError(path, "file not found")
        if os.path.isfile(path) and not os.access(path, os.R_OK):
            raise ReaderError(path, "file is not readable (permission denied)")
        _check_content(path, fmt)
        if fmt not in READERS:
            raise ReaderError(path, f"format '{fmt}' has no volume reader")
        module_name, inner_path = READERS[fmt]
        reader = importlib.import_module(f"{__name__}.{module_name}")
        volume = reader.read(path, item.dataset_path) if inner_path else reader.read(path)
    if item.voxel_size is not None:
        volume.voxel_size = tuple(float(v) for v in item.voxel_size)  # type: ignore[assignment]
        volume.meta["voxel_size_from"] = "manifest"
    return validate(volume)
