"""Overlay PNG for eyeballing a segmentation: image | ground truth | prediction, side by side."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# class 1.. colours (class 0 = background, not drawn)
PALETTE = np.array(
    [[0, 0, 0], [255, 64, 64], [64, 200, 255], [255, 210, 0], [120, 255, 120], [255, 100, 255], [255, 150, 40], [160, 120, 255]],
    dtype=np.float32,
)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8: gray `image` with every nonzero class of `labels` tinted in its palette colour."""
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=-1)
    colours = PALETTE[np.minimum(labels, len(PALETTE) - 1)]
    tinted = labels > 0
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * colours[tinted]
    return rgb.round().astype(np.uint8)


def save_overlay(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, path: str | Path, gap: int = 8) -> Path:
    """Write image / image+truth / image+prediction as one PNG (truth panel omitted when unlabelled)."""
    panels = [np.repeat(image[..., None], 3, axis=-1)]
    if truth is not None:
        panels.append(overlay(image, truth))
    panels.append(overlay(image, prediction))
    spacer = np.full((image.shape[0], gap, 3), 255, dtype=np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, spacer)][:-1], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(path)
    return path
