"""What ingest put in the catalog, per dataset: the table `cem catalog` prints."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cem_pipeline.core.catalog import read_table

AXES = ("xy", "xz", "yz")


def catalog_counts(workdir: Path) -> pd.DataFrame | None:
    """Patches, volumes and patches per plane axis of every dataset, with a TOTAL row; None for an empty catalog."""
    frame = read_table(workdir, columns=["dataset", "volume", "axis"])
    if frame.empty:
        return None
    counts = frame.groupby("dataset").agg(patches=("axis", "size"), volumes=("volume", "nunique"))
    axes = frame.pivot_table(index="dataset", columns="axis", aggfunc="size", fill_value=0)
    table = counts.join(axes).fillna(0)
    for axis in AXES:
        if axis not in table:
            table[axis] = 0
    table = table[["patches", "volumes", *AXES]].astype(int)
    table.loc["TOTAL"] = table.sum()
    return table
