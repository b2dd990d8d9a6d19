"""CloudVolume precomputed volumes (gs://, s3://, https://, file://): random 2D samples, not whole volumes.

Such volumes are tens of TB, so, as in the paper, we sample `n` patch-sized xy squares per
dataset at mip 0: positions drawn from a generator seeded by (seed, dataset name), so a run is
reproducible; a draw is skipped when more than half its pixels are the fill value 0 (outside
the imaged area / missing chunks) or when it is constant. At most 20·n draws are tried; fewer
valid samples than `n` is reported, not hidden, in the array attributes.
"""
from __future__ import annotations

import hashlib

import numpy as np

from cem_pipeline.sources.readers.base import ReaderError

MAX_DRAWS_PER_SAMPLE = 20
MAX_PADDING_FRACTION = 0.5


def stable_seed(seed: int, name: str) -> list[int]:
    return [int(seed), int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")]


def sample(url: str, dataset: str, n: int, patch: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(samples (k, patch, patch) in the volume's dtype, coords (k, 3) of their x, y, z origin, info)."""
    from cloudvolume import CloudVolume

    try:
        volume = CloudVolume(url, mip=0, bounded=True, fill_missing=True, progress=False, parallel=1)
        lo = np.array(volume.bounds.minpt, dtype=np.int64)
        hi = np.array(volume.bounds.maxpt, dtype=np.int64)
        resolution = [float(v) for v in volume.resolution]
        dtype = np.dtype(volume.dtype)
    except Exception as exc:
        raise ReaderError(url, f"cannot open CloudVolume ({type(exc).__name__}: {exc})") from None
    size = hi - lo
    if size[0] < patch or size[1] < patch:
        raise ReaderError(url, f"xy extent {size[0]}x{size[1]} is smaller than one {patch}-px patch")
    rng = np.random.default_rng(stable_seed(seed, dataset))
    samples, coords = [], []
    draws = 0
    while len(samples) < n and draws < MAX_DRAWS_PER_SAMPLE * n:
        draws += 1
        x = int(lo[0] + rng.integers(0, size[0] - patch + 1))
        y = int(lo[1] + rng.integers(0, size[1] - patch + 1))
        z = int(lo[2] + rng.integers(0, size[2]))
        try:
            cut = np.asarray(volume[x:x + patch, y:y + patch, z:z + 1])
        except Exception as exc:
            raise ReaderError(url, f"read failed at x={x} y={y} z={z} ({type(exc).__name__}: {exc})") from None
        plane = cut[..., 0, 0].T  # cloudvolume is (x, y, z, c); patches are (y, x)
        if np.mean(plane == 0) > MAX_PADDING_FRACTION or plane.min() == plane.max():
            continue
        samples.append(np.ascontiguousarray(plane))
        coords.append((x, y, z))
    if not samples:
        raise ReaderError(url, f"no valid sample in {draws} draws (all padding or constant)")
    info = {"resolution_xyz_nm": resolution, "bounds_min": lo.tolist(), "bounds_max": hi.tolist(),
            "draws": draws, "requested": n, "dtype": str(dtype)}
    return np.stack(samples), np.array(coords, dtype=np.int64), info
