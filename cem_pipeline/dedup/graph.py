"""Deduplicate the whole catalog: one Dask task per group, incremental per group.

Groups are the distinct values of `dedup.group_by` catalog columns (default one per dataset; ["dataset",
"volume"] is the paper's per-volume grouping) or "global" (one group: cross-dataset duplicates).

Incremental, but correct (unlike the paper's "skip groups whose output exists"): each group keeps a state
file `stages/dedup/_state/<part>.json` with a fingerprint = BLAKE2b of (algorithm version, distance, rule,
seed, group key, the group's patch_ids sorted, and their dHashes in that order). A task always reads its
group's two columns (16 bytes per patch) and recomputes only when the fingerprint differs or the part is
missing, so adding a dataset recomputes only its group, a re-ingested dataset recomputes, and changing
d, the rule or the seed recomputes everything. Parts of groups that no longer exist (dataset removed,
group_by changed) are deleted so the joined catalog never holds stale or double rows.

Order: within a group the patches are sorted by patch_id (so catalog file order never matters), then
permuted with `kernel.group_rng(seed, group key)`; that permutation is the paper's random order.

Memory model: a task holds only its group: patch_id + dhash (16 B/patch) read with a pyarrow filter on the
group columns, the kernel's working set (32-80 B/patch, see kernel.py) and the output frame (~17 B/patch):
~130 B/patch, so a 5M-patch group needs ~0.7 GB on one worker and the client holds only per-group counts.
Tasks are submitted largest first, so a heavy-tailed size distribution still packs onto the workers.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from cem_pipeline.core import catalog
from cem_pipeline.core.atomic import write_text_atomic
from cem_pipeline.core.freshness import record_inputs
from cem_pipeline.dedup.kernel import cluster_ordered, group_rng, max_distance

ALGORITHM_VERSION = 1  # bump when a change alters results, so every group recomputes
BYTES_PER_PATCH = 130  # peak memory of one group's task per patch (module docstring), with margin
STAGE = "dedup"


@dataclass(frozen=True)
class Group:
    """One deduplication group: catalog column values (empty for "global") and its patch count."""

    columns: tuple[tuple[str, Any], ...]
    size: int

    @property
    def key(self) -> str:
        """Stable text key: seeds the group's shuffle and names nothing by itself."""
        return "global" if not self.columns else json.dumps([[c, v] for c, v in self.columns])

    @property
    def part(self) -> str:
        """File-safe part name: readable values plus an 8-hex digest of the key (no collisions)."""
        if not self.columns:
            return "global"
        readable = "__".join(f"{c}={v}" for c, v in self.columns)
        readable = re.sub(r"[^A-Za-z0-9_.=-]+", "_", readable)[:80]
        return f"{readable}-{hashlib.blake2b(self.key.encode(), digest_size=4).hexdigest()}"

    def filter(self):
        expr = None
        for column, value in self.columns:
            term = ds.field(column).is_null() if value is None else ds.field(column) == value
            expr = term if expr is None else expr & term
        return expr


def list_groups(workdir: Path, group_by: Sequence[str] | str) -> list[Group]:
    """Every group in the catalog with its size, largest first."""
    if group_by == "global":
        table = catalog.read_table(workdir, ["patch_id"])
        return [Group((), len(table))] if len(table) else []
    columns = list(group_by)
    unknown = [c for c in columns if c not in catalog.CATALOG_SCHEMA.names]
    if unknown:
        raise ValueError(f"dedup.group_by: unknown catalog column(s) {unknown}; columns: {catalog.CATALOG_SCHEMA.names}")
    frame = catalog.read_table(workdir, columns)
    if frame.empty:
        return []
    counts = frame.groupby(columns, dropna=False, sort=True).size()
    groups = []
    for values, size in counts.items():
        values = values if isinstance(values, tuple) else (values,)
        clean = tuple(None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in values)
        groups.append(Group(tuple(zip(columns, clean)), int(size)))
    return sorted(groups, key=lambda g: (-g.size, g.part))


def read_group(workdir: Path, group: Group) -> pd.DataFrame:
    """patch_id + dhash of one group. When the group fixes `dataset`, only that hive partition's files are
    opened (not the whole catalog: with hundreds of datasets, discovery per task would dominate)."""
    values = dict(group.columns)
    if "dataset" not in values:
        return catalog.read_table(workdir, ["patch_id", "dhash"], filter=group.filter())
    directory = catalog.catalog_dir(workdir) / f"dataset={values['dataset']}"
    if not directory.is_dir():
        return pd.DataFrame({"patch_id": np.empty(0, np.int64), "dhash": np.empty(0, np.uint64)})
    rest = Group(tuple((c, v) for c, v in group.columns if c != "dataset"), group.size)
    table = ds.dataset(directory, format="parquet").to_table(columns=["patch_id", "dhash"], filter=rest.filter())
    return table.to_pandas()


def state_path(workdir: Path, part: str) -> Path:
    return catalog.stage_dir(workdir, STAGE) / "_state" / f"{part}.json"


def fingerprint(group: Group, patch_ids: np.ndarray, dhashes: np.ndarray, distance: int, rule: str, seed: int) -> str:
    """Everything the group's result depends on; patch_ids must be sorted and dhashes in the same order."""
    digest = hashlib.blake2b(digest_size=16)
    header = {"version": ALGORITHM_VERSION, "distance": distance, "rule": rule, "seed": seed, "group": group.key}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(patch_ids, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(dhashes, dtype="<u8").tobytes())
    return digest.hexdigest()


def dedup_frame(group: Group, patch_ids: np.ndarray, dhashes: np.ndarray, distance: int, rule: str, seed: int) -> tuple[pd.DataFrame, str]:
    """The dedup table of one group (patch_ids sorted ascending) and the kernel method used."""
    order = group_rng(seed, group.key).permutation(patch_ids.size)
    t = max_distance(distance, rule)
    clusters = cluster_ordered(dhashes[order], t)
    frame = pd.DataFrame(
        {
            "patch_id": patch_ids[order],
            "cluster_id": patch_ids[order][clusters.leader],
            "is_exemplar": clusters.leader == np.arange(order.size),
            "distance_to_leader": clusters.distance,
        }
    )
    return frame, clusters.method


def dedup_group(workdir: str, group: Group, distance: int, rule: str, seed: int) -> dict[str, Any]:
    """Dask task: read one group's patch_id + dhash, recompute and write its part if its fingerprint changed."""
    start = time.perf_counter()
    workdir = Path(workdir)
    table = read_group(workdir, group)
    order = np.argsort(table["patch_id"].to_numpy(), kind="stable")
    patch_ids = table["patch_id"].to_numpy(np.int64)[order]
    dhashes = table["dhash"].to_numpy(np.uint64)[order]
    del table
    if patch_ids.size and (np.diff(patch_ids) == 0).any():
        raise ValueError(f"{catalog.catalog_dir(workdir)}: group {group.key} has duplicate patch_ids")
    stamp = fingerprint(group, patch_ids, dhashes, distance, rule, seed)
    state_file = state_path(workdir, group.part)
    part_file = catalog.stage_dir(workdir, STAGE) / f"{group.part}.parquet"
    result = {"part": group.part, "group": group.key, "patches": int(patch_ids.size)}
    if state_file.exists() and part_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") == stamp:
            return {**result, "clusters": state["clusters"], "computed": False, "method": state["method"],
                    "seconds": time.perf_counter() - start}
    frame, method = dedup_frame(group, patch_ids, dhashes, distance, rule, seed)
    clusters = int(frame["is_exemplar"].sum())
    state_file.unlink(missing_ok=True)  # a state file always describes the part on disk, even after a crash
    catalog.write_stage_part(workdir, STAGE, group.part, frame)
    # after the part: a crash in between leaves no state, so only costs a recompute
    write_text_atomic(state_file, json.dumps({"fingerprint": stamp, "clusters": clusters, "patches": int(patch_ids.size),
                                              "method": method, "distance": distance, "rule": rule, "seed": seed,
                                              "group": group.key}))
    return {**result, "clusters": clusters, "computed": True, "method": method, "seconds": time.perf_counter() - start}


def remove_stale_parts(workdir: Path, groups: Sequence[Group]) -> list[str]:
    """Delete parts and state of groups that are no longer in the catalog; returns their names."""
    directory = catalog.stage_dir(workdir, STAGE)
    live = {g.part for g in groups}
    removed = []
    for path in sorted(directory.glob("*.parquet")) if directory.exists() else []:
        if path.stem not in live:
            path.unlink()
            state_path(workdir, path.stem).unlink(missing_ok=True)
            removed.append(path.stem)
    return removed


def check_memory(groups: Sequence[Group], client) -> None:
    """Fail before submitting when the largest group cannot fit one worker (a killed worker says less)."""
    limits = [w.get("memory_limit") or 0 for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    limit = max(limits, default=0)
    if groups and limit and groups[0].size * BYTES_PER_PATCH > 0.8 * limit:
        need = groups[0].size * BYTES_PER_PATCH / 2**30
        raise ValueError(
            f"dedup group {groups[0].key} has {groups[0].size:,} patches and needs ~{need:.1f} GiB in one task, "
            f"more than 80% of a worker's {limit / 2**30:.1f} GiB; raise cluster.memory_limit / cluster.memory "
            f"or group more finely (dedup.group_by)"
        )


def run_dedup(client, workdir: Path, distance: int, rule: str, group_by: Sequence[str] | str, seed: int) -> pd.DataFrame:
    """Deduplicate every group of the catalog through `client`; one row per group (computed or cached)."""
    groups = list_groups(workdir, group_by)
    check_memory(groups, client)
    remove_stale_parts(workdir, groups)
    futures = [
        client.submit(dedup_group, str(workdir), g, distance, rule, seed, key=f"dedup-{g.part}-{time.time_ns()}", pure=False)
        for g in groups
    ]
    rows = client.gather(futures)
    record_inputs(workdir, STAGE)
    return pd.DataFrame(rows, columns=["part", "group", "patches", "clusters", "computed", "method", "seconds"])
