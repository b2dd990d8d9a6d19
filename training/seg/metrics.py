"""IoU as the paper evaluates it, with the empty-class convention made explicit.

Counts (intersection, union) per class are accumulated first, so a 3D volume can be scored chunk by
chunk and the ratio taken once. Conventions:
- "nan" (default): IoU = I / U; a class absent from both prediction and truth (U = 0) is NaN and
  left out of every mean. This is the paper's 3D rule.
- "paper": the paper's 2D rule, IoU = (I + 1e-5) / (U + 1e-5), so a class absent from both scores 1.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

PAPER_EPS = 1e-5


def iou_counts(pred: np.ndarray, truth: np.ndarray, classes: list[int]) -> np.ndarray:
    """(len(classes), 2) array of [intersection, union] pixel counts of label maps `pred` and `truth`."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {truth.shape}")
    counts = np.zeros((len(classes), 2), dtype=np.int64)
    for i, c in enumerate(classes):
        p, t = pred == c, truth == c
        counts[i] = (np.count_nonzero(p & t), np.count_nonzero(p | t))
    return counts


def iou_from_counts(counts: np.ndarray, convention: str = "nan") -> np.ndarray:
    """Per-class IoU from `iou_counts` output under `convention` ("nan" or "paper")."""
    inter, union = counts[:, 0].astype(np.float64), counts[:, 1].astype(np.float64)
    if convention == "paper":
        return (inter + PAPER_EPS) / (union + PAPER_EPS)
    if convention != "nan":
        raise ValueError(f"unknown IoU convention {convention!r} (use 'nan' or 'paper')")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def mean_iou(per_item: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Paper's averaging: per class over items (images or volumes), then over classes; NaNs skipped."""
    table = np.asarray(per_item, dtype=np.float64)
    if table.size == 0:
        return float("nan"), np.array([])
    with np.errstate(invalid="ignore"):
        per_class = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in table.T])
    finite = per_class[np.isfinite(per_class)]
    return (float(finite.mean()) if finite.size else float("nan")), per_class


def perez_filter(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Zero predicted components (per class, face connectivity) that touch no pixel of that class in the truth.

    Perez et al. label only some instances per image, so predictions on unlabelled instances are not
    counted as false positives.
    """
    out = pred.copy()
    for c in np.unique(pred):
        if c == 0:
            continue
        components, n = ndimage.label(pred == c)
        if n == 0:
            continue
        touching = np.unique(components[(truth == c) & (components > 0)])
        keep = np.zeros(n + 1, dtype=bool)
        keep[touching] = True
        out[(components > 0) & ~keep[components]] = 0
    return out
