"""Which catalog rows go into the export, and in which order.

Default selection: informative exemplars (`is_exemplar AND informative`). A missing stage is not
an error: the selection falls back to what exists (exemplars only, informative only, or every
patch) and says so, because exporting an un-deduplicated set is sometimes what a user wants but
should never happen silently. `selection` replaces the default with any DuckDB SQL WHERE
expression over `catalog.connect_duckdb`'s `patches` view (base columns + stage columns).

Per-dataset caps (`max_per_dataset`, `max_dataset_fraction`) keep the few datasets that supply
most patches (paper: ~20 % of volumes give 80 % of patches) from dominating; which rows survive a
cap is a seeded draw per dataset, independent of other datasets.

Order: storage order (dataset, volume, axis, chunk block, slice, y, x), which the writer puts
the rows in with core.patches.plan_reads, so that it reads each zarr block once; the `.beton` row
order is that order. Training shuffles with the loader's seeded RANDOM/QUASI_RANDOM order, so
nothing is gained by shuffling the file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cem_pipeline.core.catalog import catalog_dir, connect_duckdb, stage_dir
from cem_pipeline.core.config import ExportConfig
from cem_pipeline.core.freshness import StaleStageError, require_fresh


class ExportError(RuntimeError):
    """The export cannot proceed; the message names the file, expression or setting at fault."""


@dataclass
class Selection:
    rows: pd.DataFrame
    notes: list[str] = field(default_factory=list)


BASE_COLUMNS = ["patch_id", "dataset", "volume", "axis", "slice", "y", "x", "h", "w"]


def _stage_present(workdir: Path, stage: str) -> bool:
    directory = stage_dir(workdir, stage)
    return directory.exists() and any(directory.glob("*.parquet"))


def default_where(workdir: Path) -> tuple[str, list[str]]:
    """The default WHERE clause for the stages that exist, with a note for each missing one."""
    have_dedup = _stage_present(workdir, "dedup")
    have_score = _stage_present(workdir, "score")
    terms, notes = [], []
    if have_dedup:
        terms.append("coalesce(is_exemplar, false)")
    else:
        notes.append(f"stage 'dedup' missing ({stage_dir(workdir, 'dedup')}): not restricting to exemplars")
    if have_score:
        terms.append("coalesce(informative, false)")
    else:
        notes.append(f"stage 'score' missing ({stage_dir(workdir, 'score')}): not restricting to informative patches")
    return (" AND ".join(terms) or "true"), notes


def query_rows(workdir: Path, where: str, extra_columns: list[str]) -> pd.DataFrame:
    if not catalog_dir(workdir).exists() or not any(catalog_dir(workdir).rglob("*.parquet")):
        raise ExportError(f"{catalog_dir(workdir)}: no catalog; run `cem ingest` first")
    con = connect_duckdb(workdir)
    try:
        available = {row[0] for row in con.execute("DESCRIBE patches").fetchall()}
        missing = [c for c in extra_columns if c not in available]
        if missing:
            raise ExportError(f"label columns {missing} are not in the catalog; available: {sorted(available)}")
        columns = ", ".join(f'"{c}"' for c in dict.fromkeys(BASE_COLUMNS + extra_columns))
        try:
            frame = con.execute(f"SELECT {columns} FROM patches WHERE {where}").df()
        except Exception as exc:  # duckdb raises several error classes for a bad expression
            raise ExportError(f"export.selection: cannot evaluate WHERE {where!r}: {exc}") from None
    finally:
        con.close()
    frame["dataset"] = frame["dataset"].astype(str)
    for name in ("slice", "y", "x", "h", "w"):
        frame[name] = frame[name].astype(np.int64)
    frame["patch_id"] = frame["patch_id"].astype(np.int64)
    return frame


def _dataset_seed(seed: int, dataset: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{dataset}".encode(), digest_size=8).digest(), "little")


def fraction_cap(counts: np.ndarray, fraction: float) -> int:
    """Largest per-dataset cap c with c <= fraction * sum(min(n, c)): no dataset supplies more
    than `fraction` of the capped total. c / total(c) never decreases with c, so bisect."""
    counts = np.asarray(counts)
    if fraction * len(counts) < 1:
        raise ExportError(
            f"export.max_dataset_fraction={fraction} is below 1/{len(counts)} datasets: no selection can satisfy it"
        )
    low, high = int(counts.min()), int(counts.max())
    while low < high:
        mid = (low + high + 1) // 2
        if mid <= fraction * np.minimum(counts, mid).sum():
            low = mid
        else:
            high = mid - 1
    return low


def cap_per_dataset(rows: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """Keep at most `cap` rows per dataset, a seeded draw per dataset (rows sorted by patch_id first,
    so the draw does not depend on catalog file order)."""
    kept = []
    for name, group in rows.groupby("dataset", sort=True):
        if len(group) > cap:
            group = group.sort_values("patch_id")
            pick = np.random.default_rng(_dataset_seed(seed, str(name))).choice(len(group), cap, replace=False)
            group = group.iloc[np.sort(pick)]
        kept.append(group)
    return pd.concat(kept, ignore_index=True) if kept else rows.iloc[:0]


def select_patches(workdir: Path, config: ExportConfig, seed: int) -> Selection:
    """Rows to export (unsorted), after selection, edge rule and per-dataset caps; refuses stale upstream tables."""
    try:
        require_fresh(workdir, ("dedup", "score"), "export")
    except StaleStageError as exc:
        raise ExportError(str(exc)) from None
    if config.selection:
        where, notes = config.selection, [f"selection: {config.selection}"]
    else:
        where, notes = default_where(workdir)
        notes.append(f"selection: {where}")
    rows = query_rows(workdir, where, list(config.label_columns))
    size = config.patch_size
    too_big = rows[(rows.h > size) | (rows.w > size)]
    if len(too_big):
        raise ExportError(
            f"{len(too_big)} selected patches are larger than export.patch_size={size} "
            f"(first: patch_id {too_big.patch_id.iloc[0]}, {too_big.h.iloc[0]}x{too_big.w.iloc[0]}); "
            "set export.patch_size to the ingest patch size"
        )
    if config.edge_patches == "drop":
        edge = (rows.h < size) | (rows.w < size)
        if edge.any():
            notes.append(f"dropped {int(edge.sum())} edge patches smaller than {size}x{size}")
        rows = rows[~edge]
    if len(rows) and config.max_per_dataset is not None:
        rows = cap_per_dataset(rows, config.max_per_dataset, seed)
    if len(rows) and config.max_dataset_fraction is not None:
        cap = fraction_cap(rows.groupby("dataset").size().to_numpy(), config.max_dataset_fraction)
        notes.append(f"max_dataset_fraction {config.max_dataset_fraction}: at most {cap} patches per dataset")
        rows = cap_per_dataset(rows, cap, seed)
    return Selection(rows.reset_index(drop=True), notes)
