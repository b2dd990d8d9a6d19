"""A small labelled workdir for the filter tests, built from the real cdeep3m SBEM slices.

Informative patches are real EM tiles. Uninformative ones are what the paper's annotators
rejected, made from the same real slices: heavily blurred low-contrast versions (featureless
cytoplasm / out-of-focus) and empty-resin-like constant + sensor noise.
The catalog and store follow cem_pipeline.catalog's schema and store.py's layout (the catalog's
`volume` is the array path "<dataset>/<key>").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from scipy.ndimage import gaussian_filter

from cem_pipeline.core.catalog import (
    CATALOG_SCHEMA,
    catalog_dir,
    patch_id,
    write_stage_part,
)
from cem_pipeline.core.workdir import Workdir
from cem_pipeline.filter.labels import write_labels

TILE = 64


def _downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    z, y, x = volume.shape
    return volume.reshape(z, y // factor, factor, x // factor, factor).mean(axis=(2, 4)).astype(np.uint8)


def em_volumes(cdeep3m: np.ndarray) -> dict[tuple[str, str], tuple[np.ndarray, str]]:
    """(dataset, volume) -> (uint8 z,y,x volume, label) from 4x-downsampled real slices (256 x 256)."""
    real = _downsample(cdeep3m[:8], 4)
    rng = np.random.default_rng(7)
    flat = []
    for plane in _downsample(cdeep3m[8:12], 4).astype(np.float32):
        smooth = gaussian_filter(plane, sigma=8)
        flat.append(np.clip(smooth.mean() + 0.1 * (smooth - smooth.mean()), 0, 255))
    resin = [np.clip(rng.uniform(150, 230) + rng.normal(0, 2.0, (256, 256)), 0, 255) for _ in range(2)]
    return {
        ("cdeep3m", "real"): (real, "informative"),
        ("cdeep3m", "flat"): (np.stack(flat).astype(np.uint8), "uninformative"),
        ("resin", "blank"): (np.stack(resin).astype(np.uint8), "uninformative"),
    }


def build_workdir(root: Path, cdeep3m: np.ndarray, non_exemplar_every: int | None = 5) -> tuple[Workdir, pd.DataFrame]:
    """Store + base catalog + (optionally) a dedup table; returns the workdir and the true labels."""
    workdir = Workdir(root).create()
    group = zarr.open_group(str(workdir.store), mode="w")
    rows, truth = [], []
    for (dataset, name), (volume, label) in em_volumes(cdeep3m).items():
        group.create_array(f"{dataset}/{name}", data=volume, chunks=(1, 256, 256))
        for z in range(volume.shape[0]):
            for y in range(0, volume.shape[1], TILE):
                for x in range(0, volume.shape[2], TILE):
                    tile = volume[z, y : y + TILE, x : x + TILE]
                    pid = patch_id(dataset, f"{dataset}/{name}", "xy", z, y, x)
                    rows.append(dict(patch_id=pid, dataset=dataset, volume=f"{dataset}/{name}", source_file=f"{name}.png", axis="xy",
                                     slice=z, y=y, x=x, h=TILE, w=TILE, dhash=0, mean=float(tile.mean()),
                                     std=float(tile.std())))
                    truth.append((pid, label))
    table = pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA)
    pq.write_to_dataset(table, catalog_dir(workdir.root), partition_cols=["dataset"])
    catalog = table.to_pandas()
    if non_exemplar_every:
        for dataset, part in catalog.groupby("dataset"):
            exemplar = np.arange(len(part)) % non_exemplar_every != 0
            write_stage_part(workdir.root, "dedup", dataset, pd.DataFrame(
                {"patch_id": part["patch_id"].to_numpy(), "cluster_id": np.arange(len(part)),
                 "is_exemplar": exemplar, "distance_to_leader": np.zeros(len(part), np.int32)}))
    return workdir, pd.DataFrame(truth, columns=["patch_id", "label"])


def label_all(workdir: Workdir, truth: pd.DataFrame) -> None:
    """What the demo corpus does: known labels straight into the labels table, no person needed."""
    write_labels(workdir.labels, truth)
