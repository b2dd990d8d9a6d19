"""What every reader returns, and the small pieces they share.

A reader turns one source file (or directory of slices) into a `Volume`: a lazy dask array of
shape (Z, Y, X) — or (Z, Y, X, C) when the pixels carry colour channels — plus its voxel size.
Nothing is read until a block of the dask array is computed, so a volume larger than a
worker's memory is standardised block by block. Readers never convert intensities; that is
`standardize.py`'s job, done once per block for every format alike.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

Kind = Literal["image", "volume", "video"]


class ReaderError(ValueError):
    """A source that cannot be ingested; str() is 'FILE: reason' so the errors table needs nothing else."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # exceptions cross process boundaries in Dask; keep both fields
        return (type(self), (self.path, self.reason))


@dataclass
class Volume:
    data: Any  # dask.array.Array, (Z, Y, X) or (Z, Y, X, C) when `channels`
    voxel_size: tuple[float | None, float, float] | None  # (z, y, x) in nm; z None for a 2D image
    kind: Kind
    source_file: str
    channels: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])  # type: ignore[return-value]


class LazyArray:
    """A picklable array-like that opens its file for every slice, so dask tasks on other
    processes can read a region of an HDF5/MRC/NIfTI file without shipping an open handle."""

    def __init__(self, loader: str, args: tuple, shape: tuple[int, ...], dtype: np.dtype):
        self.loader = loader  # "module:function" taking (*args, key) -> ndarray
        self.args = args
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        module, name = self.loader.split(":")
        func: Callable = getattr(importlib.import_module(module), name)
        return np.asarray(func(*self.args, key))


def to_nm(value: float, unit: str | None) -> float | None:
    """A physical length in nm, or None for units we cannot trust (pixels, inches, unknown)."""
    if value is None or not np.isfinite(value) or value <= 0:
        return None
    factors = {
        "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
        "um": 1e3, "µm": 1e3, "\u03bcm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometre": 1e3,
        "\\u00b5m": 1e3, "mm": 1e6, "millimeter": 1e6, "m": 1e9, "meter": 1e9, "a": 0.1, "angstrom": 0.1, "å": 0.1,
    }
    factor = factors.get((unit or "").strip().lower())
    return None if factor is None else float(value) * factor


_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"\x1f\x8b", "gzip"),
    (b"NRRD", "nrrd"),
    (b"RIFF", "riff"),
    (b"BM", "bmp"),
]


def sniff(path: str) -> str | None:
    """The container a file's first bytes announce, or None when they announce nothing we know."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    return None
