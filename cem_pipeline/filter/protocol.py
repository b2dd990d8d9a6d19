"""The one interface behind which the paper's two patch classifiers (resnet34, random forest) sit.

Training, saving, loading and the Dask scorer talk to a `Classifier` and never ask which kind it
is, so a third classifier is one class in filter/models.py and nothing else changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol, Sequence

import numpy as np

from cem_pipeline.filter.holdout import HoldoutResult


class Classifier(Protocol):
    """P(informative) for uint8 patches; trained from labelled patches and kept in one file under WORKDIR/models."""

    kind: ClassVar[str]
    """The `filter.model` / `--model` value that selects it; it also names its reports."""
    model_file: ClassVar[str]
    """Its file name under WORKDIR/models."""

    def train(self, images: Sequence[np.ndarray], labels: np.ndarray) -> HoldoutResult:
        """Fit on the seeded training split (replacing any model held) and return the hold-out's labels and scores."""
        ...

    def save(self, path: Path) -> Path:
        """Write the fitted model to `path` whole or not at all; returns `path`."""
        ...

    def load(self, path: Path) -> Classifier:
        """Read a saved model into this classifier and return it; no code stored in the file runs.
        A file that is not such a model raises WeightsError naming the file and what is wrong."""
        ...

    def default_weights(self, models: Path) -> Path:
        """The file `cem filter` scores with when no --weights is given (`models` is WORKDIR/models)."""
        ...

    def for_worker(self, gpus: float, threads: int, worker: str) -> Classifier:
        """A copy ready to score on one Dask worker with `gpus` GPUs and `threads` threads (`worker` names it in
        errors); the scorer builds it there once and keeps it for the worker's lifetime."""
        ...

    def score(self, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """P(informative) per patch as float32, in batches of `batch_size` where batching applies."""
        ...
