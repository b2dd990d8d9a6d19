"""A .beton in `cem export`'s format from an in-memory patch stack, for benchmarks and tests with no catalog."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cem_pipeline.export.sidecar import CORE_FIELDS, META_VERSION, beton_fields


class ArrayPatches:
    """Indexable (image, patch_id, dataset, h, w) rows over an in-memory (N, S, S) uint8 stack."""

    def __init__(self, patches: np.ndarray):
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> tuple:
        size = self.patches.shape[1]
        return np.ascontiguousarray(self.patches[index]), int(index), 0, size, size


def write_patch_beton(patches: np.ndarray, path: str | Path, num_workers: int = 1, dataset: str = "arrays") -> Path:
    """Write an in-memory uint8 (N, S, S) stack in `cem export`'s format, with its sidecars
    (`<stem>.manifest.parquet`, `<stem>.json`; patch_id = row), for benchmarks and tests that
    have patches but no catalog."""
    from ffcv.writer import DatasetWriter

    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.dtype != np.uint8 or patches.shape[1] != patches.shape[2] or not len(patches):
        raise ValueError(f"{path}: need a non-empty uint8 (N, S, S) stack, got {patches.dtype} {patches.shape}")
    path = Path(path)
    n, size = len(patches), patches.shape[1]
    DatasetWriter(str(path), beton_fields(size, {}), num_workers=num_workers).from_indexed_dataset(ArrayPatches(patches))
    full = np.full(n, size, dtype=np.int64)
    stem = path.name.removesuffix(".beton")
    pd.DataFrame({"row": np.arange(n), "patch_id": np.arange(n), "dataset": dataset, "dataset_index": 0,
                  "volume": dataset, "axis": "xy", "slice": np.arange(n), "y": 0, "x": 0, "h": full, "w": full,
                  "source_h": full, "source_w": full}).to_parquet(path.with_name(f"{stem}.manifest.parquet"), index=False)
    pixels = patches.astype(np.float64) / 255.0
    meta = {"version": META_VERSION, "name": stem, "files": [path.name], "rows": [n], "total_rows": n,
            "patch_size": size, "edge_patches": "pad", "pad_mode": "reflect", "mean": float(pixels.mean()),
            "std": float(pixels.std()), "pixels": int(pixels.size), "datasets": [dataset], "fields": list(CORE_FIELDS),
            "label_columns": {}, "seed": None, "order": "given", "selection": ["in-memory array"]}
    path.with_name(f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path
