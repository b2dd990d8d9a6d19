"""Which patches the filter looks at: the dedup exemplars, or every patch when dedup has not run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cem_pipeline.core.catalog import read_catalog


def filter_candidates(workdir: Path) -> tuple[pd.DataFrame, str]:
    """Catalog rows to label / score and a note saying which population that is."""
    catalog = read_catalog(workdir, stages=("dedup",))
    if "is_exemplar" not in catalog:
        return catalog.reset_index(drop=True), f"no dedup table: using all {len(catalog)} patches"
    exemplars = catalog[catalog["is_exemplar"].fillna(False).astype(bool)]
    return exemplars.reset_index(drop=True), f"{len(exemplars)} dedup exemplars of {len(catalog)} patches"
