"""Per-volume ingest fingerprints: what a volume's stored pixels and catalog rows are a function of.

A volume is skipped on re-run only when its fingerprint is unchanged, so the fingerprint covers the
source's identity (path, size, mtime_ns of every file it reads), every manifest field and ingest
setting that changes its pixels or patches, and `CODE_VERSION`. Settings that only change how the
work is split (block_mb, fail_on_error, the cluster) are left out: they do not change the result.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cem_pipeline.core.config import IngestConfig
from cem_pipeline.sources.items import VolumeItem

CODE_VERSION = 1
"""Bump whenever standardisation, tiling or hashing changes its output: every volume is then recomputed."""

PIXEL_SETTINGS = ("patch_size", "min_edge", "anisotropy_threshold", "intensity", "percentiles", "max_volume_gb",
                  "hash_size", "unknown_spacing")
"""The IngestConfig fields a volume's pixels, planes or patches depend on."""

CLOUDVOLUME_SETTINGS = ("cloudvolume_samples",)


def file_identity(path: str) -> list:
    """(path, size, mtime_ns) of a file; of every file below a directory (a zarr store); a URL or a
    missing path as itself (a missing file then fails its reader, with a clear error)."""
    target = Path(path)
    if not target.exists():
        return [path, None, None]
    if target.is_dir():
        entries = sorted(p for p in target.rglob("*") if p.is_file())
        return [path, [[str(p.relative_to(target)), *_size_and_mtime(p)] for p in entries]]
    return [path, *_size_and_mtime(target)]


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def fingerprint_inputs(item: VolumeItem, settings: IngestConfig, seed: int) -> dict:
    """The JSON-able inputs the fingerprint hashes (kept separate so a test or a log can show them)."""
    names = PIXEL_SETTINGS + (CLOUDVOLUME_SETTINGS if item.format == "cloudvolume" else ())
    return {
        "code_version": CODE_VERSION,
        "array": item.array_path,
        "format": item.format,
        "source": item.source,
        "files": [file_identity(f) for f in item.files],
        "dataset_path": item.dataset_path,
        "voxel_size": None if item.voxel_size is None else [float(v) for v in item.voxel_size],
        "invert": item.invert,
        "samples": item.samples,
        "settings": {name: getattr(settings, name) for name in names},
        **({"seed": seed} if item.format == "cloudvolume" else {}),
    }


def volume_fingerprint(item: VolumeItem, settings: IngestConfig, seed: int) -> str:
    text = json.dumps(fingerprint_inputs(item, settings, seed), sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()
