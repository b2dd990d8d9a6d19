"""The Parquet catalog: one row per patch, and the per-stage tables joined to it on `patch_id`.

Ingest writes the base catalog (`WORKDIR/catalog/dataset=<name>/*.parquet`, hive-partitioned).
Later stages never rewrite it: each writes its own table keyed by `patch_id` under
`WORKDIR/stages/<stage>/`, so stages stay independent, incremental and safe to re-run, and
`read_catalog` / `connect_duckdb` present the join as one table.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cem_pipeline.core.atomic import atomic_path

CATALOG_SCHEMA = pa.schema(
    [
        ("patch_id", pa.int64()),
        ("dataset", pa.string()),
        ("volume", pa.string()),
        ("source_file", pa.string()),
        ("axis", pa.string()),
        ("slice", pa.int32()),
        ("y", pa.int32()),
        ("x", pa.int32()),
        ("h", pa.int32()),
        ("w", pa.int32()),
        ("dhash", pa.uint64()),
        ("mean", pa.float32()),
        ("std", pa.float32()),
    ]
)

# Stage tables in join order; each has `patch_id` plus the columns listed.
STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "dedup": ("cluster_id", "is_exemplar", "distance_to_leader"),
    "score": ("score", "informative"),
    "export": ("exported", "export_row", "export_file"),
}


def patch_id(dataset: str, volume: str, axis: str, slice_index: int, y: int, x: int) -> int:
    """Stable id from a patch's provenance: the same patch gets the same id on every run and machine."""
    key = f"{dataset}\0{volume}\0{axis}\0{slice_index}\0{y}\0{x}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little", signed=True)


def catalog_dir(workdir: Path) -> Path:
    return Path(workdir) / "catalog"


def stage_dir(workdir: Path, stage: str) -> Path:
    if stage not in STAGE_COLUMNS:
        raise KeyError(f"unknown stage '{stage}'; stages: {', '.join(STAGE_COLUMNS)}")
    return Path(workdir) / "stages" / stage


def _dataset(path: Path) -> ds.Dataset | None:
    if not path.exists() or not any(path.rglob("*.parquet")):
        return None
    return ds.dataset(path, format="parquet", partitioning="hive")


def read_table(workdir: Path, columns: Sequence[str] | None = None, filter=None) -> pd.DataFrame:
    """The base catalog only (no stage columns), as pandas; `filter` is a pyarrow dataset expression."""
    dataset = _dataset(catalog_dir(workdir))
    if dataset is None:
        return CATALOG_SCHEMA.empty_table().to_pandas()
    table = dataset.to_table(columns=list(columns) if columns else None, filter=filter)
    frame = table.to_pandas()
    if "dataset" in frame:
        frame["dataset"] = frame["dataset"].astype(str)
    return frame


def read_stage(workdir: Path, stage: str) -> pd.DataFrame | None:
    dataset = _dataset(stage_dir(workdir, stage))
    if dataset is None:
        return None
    return dataset.to_table(columns=["patch_id", *STAGE_COLUMNS[stage]]).to_pandas()


def read_catalog(workdir: Path, columns: Sequence[str] | None = None, stages: Iterable[str] = tuple(STAGE_COLUMNS)) -> pd.DataFrame:
    """Base catalog left-joined with every stage table that exists."""
    base_columns = None if columns is None else sorted({"patch_id", *[c for c in columns if c in CATALOG_SCHEMA.names]})
    frame = read_table(workdir, base_columns)
    for stage in stages:
        table = read_stage(workdir, stage)
        if table is not None:
            frame = frame.merge(table, on="patch_id", how="left")
    return frame if columns is None else frame[[c for c in columns if c in frame]]


def write_stage_part(workdir: Path, stage: str, part: str, frame: pd.DataFrame) -> Path:
    """Atomically write one part (e.g. one dedup group) of a stage table; a re-run replaces it whole."""
    missing = {"patch_id", *STAGE_COLUMNS[stage]} - set(frame.columns)
    if missing:
        raise ValueError(f"stage '{stage}' table lacks columns {sorted(missing)}")
    path = stage_dir(workdir, stage) / f"{part}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(frame[["patch_id", *STAGE_COLUMNS[stage]]], preserve_index=False), tmp)
    return path


def connect_duckdb(workdir: Path):
    """A DuckDB connection with views `catalog` (base), one per stage, and `patches` (all joined)."""
    import duckdb

    con = duckdb.connect()
    base = catalog_dir(workdir)
    con.execute(
        f"CREATE VIEW catalog AS SELECT * FROM read_parquet('{base.as_posix()}/**/*.parquet', hive_partitioning = true)"
    )
    joined = "catalog"
    for stage in STAGE_COLUMNS:
        directory = stage_dir(workdir, stage)
        if directory.exists() and any(directory.glob("*.parquet")):
            con.execute(f"CREATE VIEW {stage} AS SELECT * FROM read_parquet('{directory.as_posix()}/*.parquet')")
            joined = f"{joined} LEFT JOIN {stage} USING (patch_id)"
    con.execute(f"CREATE VIEW patches AS SELECT * FROM {joined}")
    return con
