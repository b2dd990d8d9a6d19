"""To uint8: the per-block kernels, and the per-volume intensity mapping they share.

Policy (one mapping per volume, so every block and every plane of a volume agrees):

* uint8 sources are stored unchanged under both methods (they already are the paper's format).
* `intensity: percentile` (default) maps the volume's [p_low, p_high] percentiles (default
  0.5 / 99.5) linearly onto [0, 255] and clips. Percentiles come from a histogram summed over
  blocks: exact per integer value for integer data spanning <= 65,536 values (so 12-bit data in
  uint16 fills 0-255 instead of landing in 0-15 as in the paper), 65,536 equal bins between the
  volume's min and max otherwise (float, 32-bit integers). Signed data needs nothing special.
  If p_low == p_high (e.g. a mostly-empty volume) the volume's min and max are used instead.
* `intensity: dtype_max` is the paper's rule: unsigned integers x / dtype max, signed integers
  (x - dtype min) / (dtype range), floats clipped to [0, 1] (the paper's MAX[float32] = 1.0);
  times 255, truncated like the paper's astype(uint8).
* NaN or ±inf anywhere in a float source is an error for that source (a value that cannot be
  placed on the grey scale would otherwise become black or white pixels silently).
* A constant source (min == max) is an error: it holds no image, and any grey we chose for it
  would be an invented patch. (Constant regions inside a non-constant volume are kept.)
* `invert: true` is applied last: v -> 255 - v.
* Colour: alpha is dropped; channels that are identical in a block give that channel, otherwise
  ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, as Pillow's convert("L")); a gray+alpha image
  gives its gray channel.
* In-plane downsampling (volumes above max_volume_gb) averages f x f pixels after the mapping,
  then rounds to the nearest integer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

HIST_BINS = 65536


@dataclass(frozen=True)
class Mapping:
    method: str  # "identity" | "percentile" | "minmax" | "dtype_max"
    lo: float
    hi: float

    def as_attrs(self) -> dict:
        return asdict(self)


def to_gray(block: np.ndarray, channels: bool) -> np.ndarray:
    if not channels:
        return block
    if block.shape[-1] == 2:
        return block[..., 0]
    rgb = block[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.rint(luma).astype(block.dtype) if block.dtype.kind in "ui" else luma.astype(block.dtype)


def block_range(block: np.ndarray) -> tuple[float, float, int]:
    """(min, max, count of NaN/inf) of one raw block."""
    if block.dtype.kind == "f":
        finite = np.isfinite(block)
        bad = int(block.size - np.count_nonzero(finite))
        if bad:
            values = block[finite]
            if values.size == 0:
                return (np.inf, -np.inf, bad)
            return (float(values.min()), float(values.max()), bad)
    return (float(block.min()), float(block.max()), 0)


def histogram_spec(dtype: np.dtype, lo: float, hi: float) -> tuple[float, float, int, bool]:
    """(start, width, bins, exact): integer data with a small range gets one bin per value."""
    if np.dtype(dtype).kind in "ui" and hi - lo + 1 <= HIST_BINS:
        return (lo, 1.0, int(hi - lo + 1), True)
    width = (hi - lo) / HIST_BINS if hi > lo else 1.0
    return (lo, width, HIST_BINS, False)


def block_histogram(block: np.ndarray, spec: tuple[float, float, int, bool]) -> np.ndarray:
    start, width, bins, exact = spec
    if exact:
        index = (block.astype(np.int64, copy=False) - int(start)).ravel()
    else:
        values = block[np.isfinite(block)] if block.dtype.kind == "f" else block.ravel()
        index = np.floor((values.astype(np.float64) - start) / width).astype(np.int64)
        np.clip(index, 0, bins - 1, out=index)
    return np.bincount(index, minlength=bins).astype(np.int64)


def percentile_mapping(counts: np.ndarray, spec, percentiles: tuple[float, float], lo: float, hi: float) -> Mapping:
    """Nearest-rank percentiles from the summed histogram; min/max when they coincide."""
    start, width, _, _ = spec
    total = int(counts.sum())
    cumulative = np.cumsum(counts)
    values = []
    for p in percentiles:
        rank = min(total - 1, int(np.floor(p / 100.0 * (total - 1))))
        values.append(start + width * int(np.searchsorted(cumulative, rank, side="right")))
    low, high = values
    if high <= low:
        return Mapping("minmax", lo, hi)
    return Mapping("percentile", float(low), float(high))


def dtype_max_mapping(dtype: np.dtype) -> Mapping:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return Mapping("dtype_max", 0.0, 1.0)
    info = np.iinfo(dtype)
    return Mapping("dtype_max", float(info.min), float(info.max))


def apply(block: np.ndarray, mapping: Mapping, invert: bool, factor: int = 1) -> np.ndarray:
    """Map a raw gray block (z, y, x) to uint8, downsampling y and x by `factor` (block dims divisible)."""
    if mapping.method == "identity" and factor == 1:
        out = np.asarray(block, dtype=np.uint8)
    else:
        scaled = (block.astype(np.float32) - np.float32(mapping.lo)) * np.float32(255.0 / (mapping.hi - mapping.lo))
        np.clip(scaled, 0, 255, out=scaled)
        if factor > 1:
            z, y, x = scaled.shape
            scaled = scaled.reshape(z, y // factor, factor, x // factor, factor).mean(axis=(2, 4))
            out = np.rint(scaled).astype(np.uint8)
        elif mapping.method == "dtype_max":
            out = scaled.astype(np.uint8)
        else:
            out = np.rint(scaled).astype(np.uint8)
    return np.subtract(255, out, dtype=np.uint8) if invert else out
