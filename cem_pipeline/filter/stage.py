"""The filter stage's entry points, one per command: `cem label` (import_workdir_labels, open_label_page),
`cem train-filter` (train_filter) and `cem filter` (run_filter).

Each takes the config, works in its workdir and returns what the command prints, so the CLI only
parses and prints. Progress a person waits on (a training run, a cluster) is announced through
`echo` before the long part starts. Inputs a user can fix raise FilterError, saying what to run.
torch and Dask are imported inside the functions that need them, so `cem label` starts quickly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cem_pipeline.core.atomic import write_text_atomic
from cem_pipeline.core.catalog import read_table
from cem_pipeline.core.config import CemConfig
from cem_pipeline.core.freshness import StaleStageError, require_fresh
from cem_pipeline.core.patches import read_patches
from cem_pipeline.core.workdir import Workdir
from cem_pipeline.filter.holdout import HoldoutResult
from cem_pipeline.filter.label_app.server import LabelServer, LabelSession, make_server
from cem_pipeline.filter.labels import import_labels, read_labels, training_targets
from cem_pipeline.filter.report import count_table, kept_dropped_montage, roc_png
from cem_pipeline.filter.selection import filter_candidates


class FilterError(RuntimeError):
    """A missing or unusable stage input (no labels, no patches, no model, a busy port); the message names it."""


def _quiet(message: str) -> None:
    return None


# ---- cem label -------------------------------------------------------------------------------

def import_workdir_labels(config: CemConfig, source: Path) -> tuple[Path, pd.DataFrame]:
    """Add the labels of a Parquet/CSV file to the workdir's labels table; returns its path and all labels (LabelsError)."""
    workdir = Workdir(config.workdir).create()
    return workdir.labels, import_labels(workdir.labels, source)


def label_session(config: CemConfig) -> LabelSession:
    """The candidates in their seeded labelling order and the labels so far."""
    workdir = Workdir(config.workdir).create()
    return LabelSession(workdir, config.filter.label_target, config.filter.seed)


@dataclass
class LabelPage:
    """A labelling server bound but not yet serving; the caller runs server.serve_forever and closes it."""

    session: LabelSession
    server: LabelServer

    @property
    def url(self) -> str:
        """The page's address with its session token: the only way to label through it."""
        return self.server.url


def open_label_page(config: CemConfig, port: int | None = None) -> LabelPage:
    """Bind the labelling page on 127.0.0.1:port (default filter.label_port; 0 = any free port)."""
    session = label_session(config)
    if not len(session.candidates):
        raise FilterError(f"{session.workdir.catalog}: no patches to label; run `cem ingest` first")
    port = config.filter.label_port if port is None else port
    try:
        server = make_server(session, port)
    except OSError as exc:
        raise FilterError(f"127.0.0.1:{port}: cannot listen ({exc.strerror}); pass --port 0 for any free port") from None
    return LabelPage(session, server)


# ---- cem train-filter ------------------------------------------------------------------------

@dataclass
class TrainedFilter:
    result: HoldoutResult
    model_path: Path
    roc_png: Path
    summary: dict


def train_filter(config: CemConfig, kind: str, echo: Callable[[str], None] = _quiet) -> TrainedFilter:
    """Train classifier `kind` on the labelled patches; write the model, the hold-out ROC PNG and a JSON summary.

    Raises FilterError when there is nothing to train on, and ValueError (WeightsError included)
    when training cannot run (a class with too few labels, a bad filter.init_weights).
    """
    from cem_pipeline.filter.models import classifier_for

    classifier = classifier_for(kind, config.filter)
    workdir = Workdir(config.workdir).create()
    targets = training_targets(read_labels(workdir.labels))
    if not len(targets):
        raise FilterError(f"{workdir.labels}: no informative/uninformative labels yet; run `cem label` first")
    rows = read_table(workdir.root).merge(targets, on="patch_id", how="inner")
    if len(rows) < len(targets):
        raise FilterError(f"{workdir.labels}: {len(targets) - len(rows)} labelled patch ids are not in the catalog {workdir.catalog}")
    images = read_patches(workdir.store, rows)
    labels = rows["target"].to_numpy(np.int64)
    echo(f"training {kind} on {len(labels)} labels ({int(labels.sum())} informative)")
    result = classifier.train(images, labels)
    path = classifier.save(workdir.models / classifier.model_file)
    roc = roc_png(result.y_true, result.y_score, workdir.reports / f"filter_roc_{kind}.png", f"{kind}: hold-out ROC")
    summary = {**result.summary(), "model_path": str(path), "roc_png": str(roc)}
    write_text_atomic(workdir.reports / f"filter_train_{kind}.json", json.dumps(summary, indent=2))
    return TrainedFilter(result, path, roc, summary)


# ---- cem filter ------------------------------------------------------------------------------

@dataclass
class FilterRun:
    scored: pd.DataFrame
    note: str
    """Which population was scored (dedup exemplars, or every patch)."""
    counts: str
    """Per-dataset patches before and after filtering, as a printable table."""
    threshold: float
    montage: Path


def run_filter(config: CemConfig, kind: str, weights: Path | None = None, echo: Callable[[str], None] = _quiet) -> FilterRun:
    """Score the filter candidates with classifier `kind` through Dask; write the score table and a kept/dropped montage.

    `weights` defaults to the classifier's default_weights. Raises FilterError (a stale dedup table, no
    model, no patches), WeightsError (a file that is not such a model) and ClusterError.
    """
    from cem_pipeline.core.cluster import open_client, worker_resources
    from cem_pipeline.filter.models import classifier_for
    from cem_pipeline.filter.scoring import score_catalog

    classifier = classifier_for(kind, config.filter)
    workdir = Workdir(config.workdir).create()
    try:
        require_fresh(workdir.root, "dedup", "filter")  # exemplars of an older catalog would leave new patches unscored
    except StaleStageError as exc:
        raise FilterError(str(exc)) from None
    path = Path(weights) if weights else classifier.default_weights(workdir.models)
    if not path.exists():
        raise FilterError(f"{path}: no classifier; run `cem train-filter` or pass --weights")
    classifier.load(path)
    candidates, note = filter_candidates(workdir.root)
    if not len(candidates):
        raise FilterError(f"{workdir.catalog}: no patches to score; run `cem ingest` first")
    gpu = worker_resources(config.cluster).get("GPU", 0) > 0
    echo(f"scoring {note} with {kind} {path} on {'GPU' if gpu else 'CPU'} workers")
    threshold = config.filter.threshold
    with open_client(config.cluster, workdir.logs / "jobs") as client:
        scored = score_catalog(client, workdir.root, workdir.store, candidates, classifier, config.filter.batch_size,
                               config.filter.part_size, threshold, gpu)
    counts = count_table(scored, read_table(workdir.root, ["dataset"])["dataset"])
    montage = kept_dropped_montage(workdir.store, candidates, scored, config.filter.montage_per_class, config.seed,
                                   workdir.reports / "filter_kept_dropped.png", f"{kind}, threshold {threshold:g}")
    return FilterRun(scored, note, counts, threshold, montage)
