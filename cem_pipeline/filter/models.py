"""The two classifiers the paper compares, each behind the Classifier protocol, and which `filter.model` is which.

Neither file format runs code when read: the network is a state_dict read with
torch.load(weights_only=True), the random forest a skops file whose types are checked against an
explicit list before anything is built (pickle, and so joblib, would run whatever the file says).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from cem_pipeline.core.atomic import atomic_path
from cem_pipeline.core.config import FilterConfig
from cem_pipeline.filter.classifier import WeightsError, classifier_from_state, load_classifier, train_classifier
from cem_pipeline.filter.features import FEATURE_NAMES, forest_scores, train_random_forest
from cem_pipeline.filter.holdout import HoldoutResult
from cem_pipeline.filter.protocol import Classifier
from cem_pipeline.filter.scoring import prepare_model, score_images, use_bf16

# What a forest from features.build_forest holds beyond the types skops trusts by default, as
# skops.io.get_untrusted_types lists it for a saved forest; anything else in a file is refused.
FOREST_TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)


class Resnet34Classifier:
    """The paper's network (filter/classifier.py); saved as a state_dict in the authors' released layout."""

    kind: ClassVar[str] = "resnet34"
    model_file: ClassVar[str] = "patch_classifier.pt"

    def __init__(self, config: FilterConfig, model: nn.Module | None = None, device: torch.device = torch.device("cpu")):
        self.config = config
        self.model = model
        self.device = device

    def _fitted(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("resnet34 classifier has no weights yet; train or load it first")
        return self.model

    def train(self, images: Sequence[np.ndarray], labels: np.ndarray) -> HoldoutResult:
        result = train_classifier(images, labels, self.config)
        self.model = result.model
        return result

    def save(self, path: Path) -> Path:
        with atomic_path(path) as temporary:
            torch.save(self._fitted().state_dict(), temporary)
        return Path(path)

    def load(self, path: Path) -> Resnet34Classifier:
        self.model = load_classifier(Path(path))
        return self

    def default_weights(self, models: Path) -> Path:
        """filter.weights (e.g. the authors' release) when set, else the one `cem train-filter` wrote."""
        return Path(self.config.weights) if self.config.weights else Path(models) / self.model_file

    def for_worker(self, gpus: float, threads: int, worker: str) -> Resnet34Classifier:
        """A fresh model on the worker's GPU (Dask resource GPU) or on its CPU with all its threads."""
        device = torch.device("cpu")
        if gpus:
            if not torch.cuda.is_available():
                raise RuntimeError(f"worker {worker} advertises GPU={gpus:g} but torch sees no CUDA device")
            device = torch.device("cuda")
        else:
            torch.set_num_threads(max(1, threads))
        model = prepare_model(classifier_from_state(self._fitted().state_dict()), device)
        return Resnet34Classifier(self.config, model, device)

    def score(self, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        return score_images(self._fitted(), images, self.config.input_size, batch_size, self.device,
                            use_bf16(self.device, self.config.cpu_bf16))


class ForestClassifier:
    """The paper's alternative: four image statistics per patch (filter/features.py) and a balanced random forest."""

    kind: ClassVar[str] = "random_forest"
    model_file: ClassVar[str] = "patch_classifier_rf.skops"

    def __init__(self, config: FilterConfig, forest=None):
        self.config = config
        self.forest = forest

    def _fitted(self):
        if self.forest is None:
            raise RuntimeError("random-forest classifier is not fitted yet; train or load it first")
        return self.forest

    def train(self, images: Sequence[np.ndarray], labels: np.ndarray) -> HoldoutResult:
        result = train_random_forest(images, labels, self.config)
        self.forest = result.model
        return result

    def save(self, path: Path) -> Path:
        import skops.io

        with atomic_path(path) as temporary:
            skops.io.dump(self._fitted(), temporary)
        return Path(path)

    def load(self, path: Path) -> ForestClassifier:
        import skops.io
        from sklearn.ensemble import RandomForestClassifier

        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: no such random-forest file")
        try:
            forest = skops.io.load(path, trusted=list(FOREST_TRUSTED_TYPES))
        except Exception as exc:  # zip errors for foreign files, UntrustedTypesFoundException for unexpected contents
            first_line = (str(exc).splitlines() or [""])[0]
            raise WeightsError(f"{path}: not a skops random-forest patch classifier ({type(exc).__name__}: {first_line})") from None
        if not isinstance(forest, RandomForestClassifier) or getattr(forest, "n_features_in_", None) != len(FEATURE_NAMES):
            raise WeightsError(f"{path}: expected a RandomForestClassifier fitted on the {len(FEATURE_NAMES)} patch features "
                               f"({', '.join(FEATURE_NAMES)}), got {type(forest).__name__}")
        self.forest = forest
        return self

    def default_weights(self, models: Path) -> Path:
        """The one `cem train-filter` wrote (filter.weights is a resnet34 state_dict)."""
        return Path(models) / self.model_file

    def for_worker(self, gpus: float, threads: int, worker: str) -> ForestClassifier:
        """As it is: the forest runs on the CPU in the task's thread."""
        return self

    def score(self, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """All of a task's patches at once (a forest gains nothing from batching)."""
        return forest_scores(self._fitted(), images)


CLASSIFIERS: dict[str, type[Resnet34Classifier] | type[ForestClassifier]] = {
    cls.kind: cls for cls in (Resnet34Classifier, ForestClassifier)
}


def classifier_for(kind: str, config: FilterConfig) -> Classifier:
    """An untrained classifier of `kind` (a key of CLASSIFIERS) configured by `config`."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {kind!r}; one of {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[kind](config)
