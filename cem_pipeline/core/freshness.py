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

import numpy as np
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


class _Tables:
    """The catalog's patch_ids and each stage table, read once per check (a check of export needs dedup's
    and score's states, and score's own needs dedup's again); ids as sorted unique int64 arrays, since a
    catalog of millions of patches makes Python sets slow and large."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.catalog = np.unique(read_table(self.workdir, ["patch_id"])["patch_id"].to_numpy(np.int64))
        self._frames: dict[str, pd.DataFrame | None] = {}
        self._states: dict[str, StageState] = {}

    def frame(self, table: str) -> pd.DataFrame | None:
        if table not in self._frames:
            self._frames[table] = read_stage(self.workdir, table)
        return self._frames[table]

    def expected(self, table: str) -> np.ndarray | None:
        """The patch_ids a table must have a row for; None when it covers a subset (export: the selection)."""
        if table == "dedup":
            return self.catalog
        if table == "score":
            dedup = self.frame("dedup")
            if dedup is None:
                return self.catalog
            exemplars = dedup["patch_id"].to_numpy(np.int64)[dedup["is_exemplar"].fillna(False).to_numpy(bool)]
            return np.intersect1d(self.catalog, exemplars)
        return None

    def state(self, table: str) -> StageState:
        if table not in self._states:
            self._states[table] = self._judge(table)
        return self._states[table]

    def _judge(self, table: str) -> StageState:
        frame = self.frame(table)
        stage = STAGE_COMMANDS[table]
        if frame is None:
            return StageState(stage, "missing")
        ids = np.unique(frame["patch_id"].to_numpy(np.int64))
        counts = {"rows": len(frame)}
        reasons = [f"computed from an older {name}" for name in changed_inputs(self.workdir, table)]
        orphans = len(np.setdiff1d(ids, self.catalog, assume_unique=True))
        if orphans:
            reasons.append(f"{orphans} rows for patches no longer in the catalog")
        expected = self.expected(table)
        if expected is not None:
            counts["expected"] = len(expected)
            uncovered = len(np.setdiff1d(expected, ids, assume_unique=True))
            if uncovered:
                reasons.append(f"{uncovered} catalog patches have no row")
        for upstream in UPSTREAM[table]:
            if self.state(upstream).state == "stale":
                reasons.append(f"upstream {STAGE_COMMANDS[upstream]} is stale")
        return StageState(stage, "stale" if reasons else "fresh", counts, tuple(reasons))


def table_state(workdir: Path, table: str) -> StageState:
    """State of one stage table (dedup, score or export) against the catalog and its upstream tables."""
    return _Tables(workdir).state(table)


def downstream_states(workdir: Path) -> list[StageState]:
    tables = _Tables(workdir)
    return [tables.state(table) for table in STAGE_COMMANDS]


def require_fresh(workdir: Path, tables: str | tuple[str, ...], consumer: str) -> None:
    """Refuse to build on a stale stage table; a missing one is the consumer's business (it falls back)."""
    checked = _Tables(workdir)
    for table in (tables,) if isinstance(tables, str) else tables:
        state = checked.state(table)
        if state.state == "stale":
            raise StaleStageError(f"{consumer}: stage '{table}' ({stage_dir(workdir, table)}) is stale: "
                                  f"{'; '.join(state.reasons)}; re-run `cem {state.stage}` first")
