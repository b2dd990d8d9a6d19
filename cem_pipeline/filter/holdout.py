"""The paper's evaluation protocol shared by both classifiers: a seeded stratified hold-out split and its AUROC."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class HoldoutResult:
    """A trained model with the hold-out labels and scores its report is drawn from."""

    model: Any
    kind: str
    y_true: np.ndarray
    y_score: np.ndarray
    n_train: int
    extra: dict = field(default_factory=dict)

    @property
    def auroc(self) -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(self.y_true, self.y_score))

    def summary(self) -> dict:
        return {
            "model": self.kind,
            "auroc": self.auroc,
            "n_train": self.n_train,
            "n_holdout": int(len(self.y_true)),
            "holdout_informative": int(self.y_true.sum()),
            **self.extra,
        }


def stratified_split(y: np.ndarray, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, hold-out) keeping the class balance in both, as the paper's 85/15 split does."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    counts = np.bincount(y.astype(int), minlength=2)
    if counts.min() < 2:
        raise ValueError(
            f"need at least 2 labelled patches of each class to split; have {counts[1]} informative, {counts[0]} uninformative"
        )
    index = np.arange(len(y))
    train, test = train_test_split(index, test_size=holdout_fraction, random_state=seed, stratify=y)
    return np.sort(train), np.sort(test)
