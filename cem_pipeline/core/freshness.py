"""Is a stage table still about the current catalog? Checked, never assumed (issue 14, item 6).

A stage table computed from an older catalog is stale. Two checks: (1) when a stage finishes it records
the fingerprints of its inputs (`record_inputs`: the catalog's and its upstream tables' Parquet files,
path + size + mtime_ns — ingest rewrites a volume's part exactly when it recomputes it) in
stages/<table>/_inputs.json, and a mismatch later means its inputs changed since; (2) patch_ids: the table
misses patches the catalog now has, or holds rows for patches it no longer has — this also covers tables
written without a record. Consumers refuse a stale upstream table (`require_fresh`) and `cem status`
reports every stage as fresh / stale / missing.

What each table must cover: dedup — every catalog patch; score (the filter) — every candidate the filter
scores, i.e. the dedup exemplars (every patch without dedup); export — only patches of the catalog, and
its upstream tables fresh.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cem_pipeline.core.atomic import write_text_atomic
from cem_pipeline.core.catalog import catalog_dir, read_stage, read_table, stage_dir

STAGE_COMMANDS = {"dedup": "dedup", "score": "filter", "export": "export"}
"""Stage table -> the command that writes it (the name `cem status` shows)."""

UPSTREAM = {"dedup": (), "score": ("dedup",), "export": ("dedup", "score")}


class StaleStageError(ValueError):
    """An upstream stage table does not match the current catalog; the message names it and the counts."""


@dataclass(frozen=True)
class StageState:
    stage: str  # the command: ingest, dedup, filter, export
    state: str  # fresh, stale or missing
    counts: dict[str, int] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def line(self) -> str:
        counts = "   ".join(f"{name}: {value}" for name, value in self.counts.items())
        why = f"   ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"{self.stage:<7} {self.state:<8} {counts}{why}".rstrip()


INPUTS_NAME = "_inputs.json"  # '_' keeps it out of the Parquet dataset


def tree_fingerprint(directory: Path) -> str:
    """Hash of (relative path, size, mtime_ns) of every Parquet file below `directory` ("" when it has none)."""
    files = sorted(Path(directory).rglob("*.parquet")) if Path(directory).exists() else []
    entries = [[str(p.relative_to(directory)), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest() if entries else ""


def current_inputs(workdir: Path, table: str) -> dict[str, str]:
    return {"catalog": tree_fingerprint(catalog_dir(workdir)), **{u: tree_fingerprint(stage_dir(workdir, u)) for u in UPSTREAM[table]}}


def record_inputs(workdir: Path, table: str) -> None:
    """Called by a stage when its table is complete: what it was computed from."""
    write_text_atomic(stage_dir(workdir, table) / INPUTS_NAME, json.dumps(current_inputs(workdir, table)))


def changed_inputs(workdir: Path, table: str) -> list[str]:
    """Inputs whose files changed since the table was recorded; [] when unchanged or never recorded."""
    try:
        recorded = json.loads((stage_dir(workdir, table) / INPUTS_NAME).read_text())
    except (OSError, ValueError):
        return []
    return [name for name, value in current_inputs(workdir, table).items() if recorded.get(name) != value]


def _ids(frame: pd.DataFrame | None) -> set[int]:
    return set() if frame is None else set(frame["patch_id"].tolist())


def expected_ids(workdir: Path, table: str, catalog_ids: set[int]) -> set[int] | None:
    """The patch_ids a table must have a row for; None when it covers a subset (export: the selection)."""
    if table == "dedup":
        return catalog_ids
    if table == "score":
        dedup = read_stage(workdir, "dedup")
        return catalog_ids if dedup is None else catalog_ids & _ids(dedup[dedup["is_exemplar"].fillna(False).astype(bool)])
    return None


def table_state(workdir: Path, table: str, catalog_ids: set[int] | None = None) -> StageState:
    """State of one stage table (dedup, score or export) against the catalog and its upstream tables."""
    catalog_ids = _ids(read_table(workdir, ["patch_id"])) if catalog_ids is None else catalog_ids
    frame = read_stage(workdir, table)
    stage = STAGE_COMMANDS[table]
    if frame is None:
        return StageState(stage, "missing")
    ids = _ids(frame)
    counts = {"rows": len(frame)}
    reasons = [f"computed from an older {name}" for name in changed_inputs(workdir, table)]
    orphans = len(ids - catalog_ids)
    if orphans:
        reasons.append(f"{orphans} rows for patches no longer in the catalog")
    expected = expected_ids(workdir, table, catalog_ids)
    if expected is not None:
        counts["expected"] = len(expected)
        uncovered = len(expected - ids)
        if uncovered:
            reasons.append(f"{uncovered} catalog patches have no row")
    for upstream in UPSTREAM[table]:
        if table_state(workdir, upstream, catalog_ids).state == "stale":
            reasons.append(f"upstream {STAGE_COMMANDS[upstream]} is stale")
    return StageState(stage, "stale" if reasons else "fresh", counts, tuple(reasons))


def downstream_states(workdir: Path) -> list[StageState]:
    catalog_ids = _ids(read_table(workdir, ["patch_id"]))
    return [table_state(workdir, table, catalog_ids) for table in STAGE_COMMANDS]


def require_fresh(workdir: Path, table: str, consumer: str) -> None:
    """Refuse to build on a stale stage table; a missing one is the consumer's business (it falls back)."""
    state = table_state(workdir, table)
    if state.state == "stale":
        raise StaleStageError(f"{consumer}: stage '{table}' ({stage_dir(workdir, table)}) is stale: {'; '.join(state.reasons)}; "
                              f"re-run `cem {state.stage}` first")
