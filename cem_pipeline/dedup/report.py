"""What deduplication did: a per-dataset table, and a montage of near-duplicate clusters to judge the cutoff
by eye (the paper chose d = 12 "by visual inspection of groups")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from cem_pipeline.core import catalog
from cem_pipeline.core.patches import read_patches
from cem_pipeline.core.workdir import Workdir

TILE = 112  # montage tile edge in pixels (patches are downsampled 2x)


def dataset_table(workdir: Path) -> pd.DataFrame:
    """Per dataset: raw patches, clusters touched, exemplars kept, removed fraction; last row TOTAL.
    Patches not deduplicated yet count as raw only (column `pending`)."""
    con = catalog.connect_duckdb(workdir)
    if "dedup" not in {row[0] for row in con.execute("SHOW TABLES").fetchall()}:
        raise FileNotFoundError(f"{catalog.stage_dir(workdir, 'dedup')}: no dedup results; run `cem dedup` first")
    query = """
        SELECT {key} AS dataset, count(*) AS raw, count(DISTINCT cluster_id) AS clusters,
               count(*) FILTER (WHERE is_exemplar) AS kept, count(*) FILTER (WHERE cluster_id IS NULL) AS pending
        FROM patches {group}
    """
    per = con.execute(query.format(key="dataset", group="GROUP BY dataset ORDER BY dataset")).df()
    total = con.execute(query.format(key="'TOTAL'", group="")).df()
    table = pd.concat([per, total], ignore_index=True)
    table["removed"] = 1.0 - table["kept"] / table["raw"].where(table["raw"] > 0)
    return table[["dataset", "raw", "clusters", "kept", "removed", "pending"]]


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'dataset':<32} {'raw':>10} {'clusters':>10} {'kept':>10} {'removed':>8}"]
    for row in table.itertuples():
        pending = f"  ({row.pending} not deduplicated)" if row.pending else ""
        lines.append(f"{row.dataset:<32} {row.raw:>10,} {row.clusters:>10,} {row.kept:>10,} {row.removed:>8.1%}{pending}")
    return "\n".join(lines)


def _tile(patch: np.ndarray) -> Image.Image:
    """Edge patches (smaller than the others) are padded black to a square before downsampling."""
    side = max(patch.shape)
    square = np.zeros((side, side), np.uint8)
    square[: patch.shape[0], : patch.shape[1]] = patch
    return Image.fromarray(square).resize((TILE, TILE), Image.BILINEAR)


def write_montage(workdir: Path, n_clusters: int, members: int, seed: int) -> Path:
    """PNG of `n_clusters` random clusters with more than one patch: one row each, the leader first
    (outlined), then up to `members` random members labelled with their Hamming distance to the leader."""
    frame = catalog.read_catalog(workdir)
    if "cluster_id" not in frame:
        raise FileNotFoundError(f"{catalog.stage_dir(workdir, 'dedup')}: no dedup results; run `cem dedup` first")
    frame = frame.dropna(subset=["cluster_id"])
    sizes = frame.groupby("cluster_id").size()
    multi = np.sort(sizes.index[sizes > 1].to_numpy())
    if multi.size == 0:
        raise ValueError("no near-duplicate clusters (every cluster has one patch): nothing to show")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(multi, size=min(n_clusters, multi.size), replace=False)
    rows = []
    for cluster in chosen:
        cluster_rows = frame[frame["cluster_id"] == cluster].sort_values("patch_id")
        leader = cluster_rows[cluster_rows["is_exemplar"].astype(bool)]
        others = cluster_rows[~cluster_rows["is_exemplar"].astype(bool)]
        picked = others.iloc[np.sort(rng.choice(len(others), size=min(members, len(others)), replace=False))]
        rows.append(pd.concat([leader, picked]))
    patches = read_patches(Workdir(Path(workdir)).store, pd.concat(rows, ignore_index=True))
    columns = max(len(r) for r in rows)
    canvas = Image.new("L", (columns * (TILE + 4) + 4, len(rows) * (TILE + 18) + 4), 255)
    draw = ImageDraw.Draw(canvas)
    index = 0
    for r, cluster_rows in enumerate(rows):
        for c, row in enumerate(cluster_rows.itertuples()):
            x, y = 4 + c * (TILE + 4), 4 + r * (TILE + 18)
            canvas.paste(_tile(patches[index]), (x, y))
            index += 1
            label = f"{row.dataset} leader" if c == 0 else f"d={int(row.distance_to_leader)}"
            draw.text((x, y + TILE + 2), label[:18], fill=0)
            if c == 0:
                draw.rectangle((x - 2, y - 2, x + TILE + 1, y + TILE + 1), outline=0, width=2)
    out = Workdir(Path(workdir)).reports / "dedup_montage.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
