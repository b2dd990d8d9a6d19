"""`cem export`: the selected patches into ffcv `.beton` files plus a Parquet/JSON sidecar.

Each `.beton` holds, per row: `image` NDArrayField(uint8, (S, S)), `patch_id` IntField (ffcv's
IntField stores '<i8', so the 64-bit ids are exact), `dataset` IntField (index into the JSON's
`datasets`), `h`/`w` IntField (the real pixels of a padded edge patch are image[:h, :w]), then one
IntField/FloatField per `export.label_columns`.

Edge patches (smaller than S): `pad` (default) reflect-pads at the bottom/right — reflection
rather than a constant so that a consumer that ignores h/w still sees image statistics rather than
a black bar a network could key on; `resize` scales them bilinearly to S (h = w = S); `drop`
leaves them out.

Rows are written in storage order (see export.select and core.patches.plan_reads); ffcv's
DatasetWriter workers take consecutive runs of rows and read zarr block by block
(export.blocks.PatchSource on core.patches.read_block), so memory is bounded by one block per
worker. `shard_size_gb` splits the rows into several files of at most that much pixel data.
Sidecars in WORKDIR/export: `<file>.manifest.parquet` (row -> patch_id, dataset, provenance) per
file and `<name>.json` with the file list and the mean/std of the exported pixels scaled to [0, 1]
(real pixels only, not padding) that trainers normalise with. The catalog's `export` stage records
exported, export_row, export_file per patch; a re-export replaces the previous files and stage
table. Every file is written beside its name and renamed into place (core.atomic), so a killed
export never leaves a truncated .beton or sidecar that a trainer would read.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cem_pipeline.core.atomic import atomic_path, write_text_atomic
from cem_pipeline.core.catalog import stage_dir, write_stage_part
from cem_pipeline.core.config import CemConfig
from cem_pipeline.core.freshness import record_inputs
from cem_pipeline.core.patches import plan_reads
from cem_pipeline.core.workdir import Workdir
from cem_pipeline.export.blocks import PatchSource, label_values
from cem_pipeline.export.select import ExportError, select_patches
from cem_pipeline.export.sidecar import CORE_FIELDS, META_VERSION, beton_fields


@dataclass
class ExportResult:
    files: list[Path]
    meta_path: Path
    rows: int
    mean: float
    std: float
    seconds: float
    notes: list[str]


def shard_bounds(n_rows: int, size: int, shard_size_gb: float | None) -> list[tuple[int, int]]:
    if shard_size_gb is None:
        return [(0, n_rows)]
    per_shard = max(1, int(shard_size_gb * 1e9 // (size * size)))
    return [(lo, min(lo + per_shard, n_rows)) for lo in range(0, n_rows, per_shard)]


def _clear_previous(export_dir: Path, workdir: Path, name: str) -> None:
    for pattern in (f"{name}.beton", f"{name}-*.beton", f"{name}*.manifest.parquet", f"{name}.json"):
        for path in export_dir.glob(pattern):
            path.unlink()
    directory = stage_dir(workdir, "export")
    if directory.exists():
        for path in directory.glob("*.parquet"):
            path.unlink()


def run_export(config: CemConfig, num_workers: int | None = None) -> ExportResult:
    from ffcv.writer import DatasetWriter

    started = time.perf_counter()
    cfg = config.export
    workdir = Workdir(config.workdir).create()
    selection = select_patches(workdir.root, cfg, config.seed)
    if selection.rows.empty:
        raise ExportError(f"{workdir.catalog}: the selection is empty ({'; '.join(selection.notes)})")
    rows = plan_reads(selection.rows, workdir.store).reset_index(drop=True)
    datasets = sorted(rows.dataset.unique().tolist())
    index = {name: i for i, name in enumerate(datasets)}
    label_kinds = {c: ("int" if label_values(rows[c]).dtype == np.int64 else "float") for c in cfg.label_columns}
    fields = beton_fields(cfg.patch_size, label_kinds)
    clash = set(label_kinds) & set(CORE_FIELDS)
    if clash:
        raise ExportError(f"export.label_columns {sorted(clash)} clash with the core fields {CORE_FIELDS}")

    _clear_previous(workdir.export, workdir.root, cfg.name)
    bounds = shard_bounds(len(rows), cfg.patch_size, cfg.shard_size_gb)
    workers = num_workers or cfg.num_workers or -1
    totals = np.zeros(3, dtype=np.int64)
    files, counts = [], []
    for shard, (lo, hi) in enumerate(bounds):
        part = rows.iloc[lo:hi].reset_index(drop=True)
        stem = cfg.name if len(bounds) == 1 else f"{cfg.name}-{shard:05d}"
        path = workdir.export / f"{stem}.beton"
        source = PatchSource(workdir.store, part, index, cfg.patch_size, cfg.edge_patches, list(cfg.label_columns))
        with atomic_path(path) as tmp:  # a failed read raises inside: the partial file is removed
            DatasetWriter(str(tmp), fields, num_workers=workers).from_indexed_dataset(source, chunksize=32)
            failure = source.failure()
            if failure:
                raise ExportError(f"{workdir.store}: reading patches for {path.name} failed at {failure}")
        totals += np.frombuffer(source.stats.get_obj(), dtype=np.int64)
        valid_h = np.full(len(part), cfg.patch_size) if cfg.edge_patches == "resize" else part.h.to_numpy()
        valid_w = np.full(len(part), cfg.patch_size) if cfg.edge_patches == "resize" else part.w.to_numpy()
        manifest = pd.DataFrame({
            "row": np.arange(len(part), dtype=np.int64), "patch_id": part.patch_id.to_numpy(np.int64),
            "dataset": part.dataset.astype(str), "dataset_index": part.dataset.map(index).to_numpy(np.int64),
            "volume": part.volume.astype(str), "axis": part.axis.astype(str), "slice": part.slice, "y": part.y,
            "x": part.x, "h": valid_h.astype(np.int64), "w": valid_w.astype(np.int64),
            "source_h": part.h, "source_w": part.w,
        })
        with atomic_path(workdir.export / f"{stem}.manifest.parquet") as tmp:
            manifest.to_parquet(tmp, index=False)
        write_stage_part(workdir.root, "export", stem, pd.DataFrame({
            "patch_id": manifest.patch_id, "exported": True, "export_row": manifest.row, "export_file": path.name,
        }))
        files.append(path)
        counts.append(len(part))

    record_inputs(workdir.root, "export")
    pixels, total, squares = (int(v) for v in totals)
    mean = total / pixels / 255.0
    std = math.sqrt(max(squares / pixels - (total / pixels) ** 2, 0.0)) / 255.0
    meta = {
        "version": META_VERSION, "name": cfg.name, "files": [p.name for p in files], "rows": counts,
        "total_rows": int(len(rows)), "patch_size": cfg.patch_size, "edge_patches": cfg.edge_patches,
        "pad_mode": "reflect", "mean": mean, "std": std, "pixels": pixels, "datasets": datasets,
        "fields": list(fields), "label_columns": label_kinds, "seed": config.seed, "order": "storage",
        "selection": selection.notes,
    }
    meta_path = workdir.export / f"{cfg.name}.json"
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return ExportResult(files, meta_path, int(len(rows)), mean, std, time.perf_counter() - started, selection.notes)
