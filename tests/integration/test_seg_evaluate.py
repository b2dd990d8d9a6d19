"""`cem evaluate` on a 3D benchmark layout (Guay, 7 classes, orthoplane): per-volume, per-class IoU
computed from the zarr label map equals the IoU of that label map recomputed by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import zarr

from training.seg.config import parse_seg_config
from training.seg.evaluate import run_evaluation
from training.seg.model import build_unet


def test_guay_orthoplane_evaluation(cdeep3m_volume, tmp_path):
    torch.set_num_threads(1)
    volume = np.ascontiguousarray(cdeep3m_volume[:3, 500:526, 500:530])
    labels = (volume // 37).astype(np.uint8)  # 7 intensity classes 0..6 on real EM
    tifffile.imwrite(tmp_path / "test-images.tif", volume)
    tifffile.imwrite(tmp_path / "test-labels.tif", labels)
    config = parse_seg_config({
        "name": "guay-small", "output_dir": str(tmp_path / "out"),
        "data": {"layout": "guay", "root": str(tmp_path), "eval_volumes": ["test"]},
        "model": {"num_classes": 7}, "train": {"iterations": 1, "crop_size": 32},
        "infer": {"mode": "orthoplane", "batch_size": 8, "slab": 16}, "eval": {"convention": "paper"},
    })
    torch.manual_seed(0)
    (tmp_path / "out").mkdir()
    torch.save({"model": build_unet(7).state_dict(), "num_classes": 7, "norms": [0.5, 0.2]}, tmp_path / "out" / "model.pt")

    metrics = run_evaluation(config, log=lambda line: None)
    pred = zarr.open_group(str(tmp_path / "out" / "predictions" / "test.zarr"), mode="r")["labels"][...]
    assert pred.shape == volume.shape
    expected = []
    for c in range(1, 7):
        union = np.count_nonzero((pred == c) | (labels == c))
        expected.append(np.count_nonzero((pred == c) & (labels == c)) / union if union else None)  # 3D: no epsilon
    assert metrics["classes"] == [1, 2, 3, 4, 5, 6]
    assert metrics["per_class_iou"] == [None if e is None else pytest.approx(e) for e in expected]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["per_item"][0]["name"] == "test"
    assert (tmp_path / "out" / "overlays" / "test.png").is_file()
