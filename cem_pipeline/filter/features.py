"""The paper's random-forest alternative: four image statistics per patch and a balanced random forest."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cem_pipeline.core.config import FilterConfig
from cem_pipeline.filter.holdout import HoldoutResult, stratified_split

FEATURE_NAMES = ("lbp_std", "geometric_mean_median", "entropy_std", "canny_mean")


def patch_features(image: np.ndarray) -> np.ndarray:
    """std of LBP(P=8, R=8), median of rank geometric mean (11x11), std of rank entropy (7x7), mean of Canny(sigma=1)."""
    from skimage.feature import canny, local_binary_pattern
    from skimage.filters.rank import entropy, geometric_mean
    from skimage.morphology import footprint_rectangle

    image = np.ascontiguousarray(image, dtype=np.uint8)
    return np.array(
        [
            local_binary_pattern(image, P=8, R=8).std(),
            np.median(geometric_mean(image, footprint_rectangle((11, 11)))),
            entropy(image, footprint_rectangle((7, 7))).std(),
            canny(image, sigma=1).mean(),
        ],
        dtype=np.float64,
    )


def feature_matrix(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([patch_features(image) for image in images]) if len(images) else np.empty((0, len(FEATURE_NAMES)))


def build_forest(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=100, max_depth=8, class_weight="balanced", min_samples_split=8, random_state=seed, n_jobs=1
    )


def train_random_forest(images: Sequence[np.ndarray], labels: np.ndarray, config: FilterConfig) -> HoldoutResult:
    """Same split and report as the network, so the two classifiers are compared like for like (paper fig. 1b)."""
    labels = np.asarray(labels, dtype=np.int64)
    train_index, test_index = stratified_split(labels, config.holdout_fraction, config.seed)
    features = feature_matrix(list(images))
    forest = build_forest(config.seed).fit(features[train_index], labels[train_index])
    return HoldoutResult(
        model=forest,
        kind="random_forest",
        y_true=labels[test_index],
        y_score=forest.predict_proba(features[test_index])[:, 1],
        n_train=len(train_index),
        extra={"feature_importances": dict(zip(FEATURE_NAMES, map(float, forest.feature_importances_)))},
    )


def forest_scores(forest, images: Sequence[np.ndarray]) -> np.ndarray:
    """P(informative) per patch; the scoring stage's kernel when filter.model is random_forest."""
    if not len(images):
        return np.empty(0, np.float32)
    return forest.predict_proba(feature_matrix(images))[:, 1].astype(np.float32)
