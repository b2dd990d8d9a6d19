"""`cem label --demo-corpus`: the demo generator's truth stands in for the person at the labelling page.

The patches labelled are the ones the page would show first (the same seeded order and
filter.label_target), so the demo trains the filter on what a person would have labelled.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cem_pipeline.core.config import CemConfig
from cem_pipeline.demo.corpus import demo_labels_for_catalog
from cem_pipeline.filter.labels import LabelsError, record_labels
from cem_pipeline.filter.stage import label_session


def label_from_demo_corpus(config: CemConfig, corpus: Path) -> tuple[Path, pd.DataFrame]:
    """Record the truth of the first filter.label_target candidates; returns the labels table's path and all labels.

    Raises LabelsError when none of the candidates comes from this demo corpus.
    """
    session = label_session(config)
    truth = demo_labels_for_catalog(corpus, session.candidates.head(session.target))
    if not len(truth):
        raise LabelsError(f"{corpus}: none of the catalog's patches come from this demo corpus")
    labels_path = session.workdir.labels
    return labels_path, record_labels(labels_path, truth)
