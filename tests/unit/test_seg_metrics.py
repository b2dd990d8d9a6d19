"""IoU on hand-computed cases, both empty-class conventions, paper averaging and the Perez rule."""
from __future__ import annotations

import numpy as np
import pytest

from training.seg.metrics import iou_counts, iou_from_counts, mean_iou, perez_filter


def test_iou_hand_computed():
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    truth = np.array([[1, 0, 0], [0, 1, 1]])
    counts = iou_counts(pred, truth, [0, 1])
    assert counts.tolist() == [[2, 4], [2, 4]]
    assert iou_from_counts(counts).tolist() == [0.5, 0.5]

    pred = np.array([[2, 2, 1, 0]])
    truth = np.array([[2, 1, 1, 1]])
    assert iou_from_counts(iou_counts(pred, truth, [1, 2])) == pytest.approx([1 / 3, 1 / 2])


def test_empty_class_conventions():
    empty = np.zeros((4, 4), dtype=np.uint8)
    nan = iou_from_counts(iou_counts(empty, empty, [1]))
    assert np.isnan(nan[0])
    assert iou_from_counts(iou_counts(empty, empty, [1]), "paper")[0] == pytest.approx(1.0)
    false_positive = empty.copy()
    false_positive[0, 0] = 1
    assert iou_from_counts(iou_counts(false_positive, empty, [1]))[0] == 0.0
    assert iou_from_counts(iou_counts(false_positive, empty, [1]), "paper")[0] == pytest.approx(1e-5 / (1 + 1e-5))
    with pytest.raises(ValueError, match="unknown IoU convention"):
        iou_from_counts(np.zeros((1, 2)), "eps")


def test_mean_over_items_then_classes():
    mean, per_class = mean_iou([np.array([0.5, np.nan]), np.array([1.0, 0.2])])
    assert per_class.tolist() == pytest.approx([0.75, 0.2])
    assert mean == pytest.approx(0.475)
    mean, per_class = mean_iou([np.array([np.nan]), np.array([np.nan])])
    assert np.isnan(mean)


def test_perez_rule_drops_components_without_labelled_instance():
    truth = np.zeros((8, 8), dtype=np.uint8)
    truth[1:3, 1:3] = 1
    pred = np.zeros_like(truth)
    pred[2:4, 2:4] = 1  # overlaps the labelled instance: kept
    pred[6:8, 6:8] = 1  # an unlabelled instance: ignored
    kept = perez_filter(pred, truth)
    assert kept[2:4, 2:4].all() and not kept[6:8, 6:8].any()
    counts = iou_counts(kept, truth, [1])
    assert iou_from_counts(counts)[0] == pytest.approx(1 / 7)
