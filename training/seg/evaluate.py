"""`cem infer` / `cem evaluate`: run a fine-tuned model over a benchmark's evaluation items and score them.

2D items are predicted whole (padded to x32, cropped back) and scored per image; 3D items are
written to zarr and segmented slab by slab (`infer.mode` stack or orthoplane) and scored per volume.
Means follow the paper: per class over items, then over classes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from training.seg.config import SegConfig, resolve_path
from training.seg.datasets import EvalItem, load_benchmark
from training.seg.infer import (
    Predictor,
    encode_probs,
    infer_volume,
    predict_images,
    select_device,
    to_labels,
)
from training.seg.metrics import iou_counts, iou_from_counts, mean_iou, perez_filter
from training.seg.report import save_overlay
from training.seg.train import load_trained


def make_predictor(config: SegConfig) -> Predictor:
    import torch

    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    model, norms = load_trained(config.output_path / "model.pt")
    return Predictor(model, norms, select_device(config.infer.device), config.infer.batch_size)


def _write_2d(out: Path, probs: np.ndarray, labels: np.ndarray, prob_dtype: str) -> None:
    import zarr

    group = zarr.open_group(str(out), mode="w")
    group.create_array("probabilities", data=encode_probs(probs, prob_dtype))
    group.create_array("labels", data=labels)
    group.attrs["mode"] = "2d"


def predict_items(predictor: Predictor, items: list[EvalItem], config: SegConfig, out_dir: Path) -> list[np.ndarray]:
    """Label maps of `items`; probabilities and labels also saved to OUT/predictions/<name>.zarr."""
    import zarr

    out_dir.mkdir(parents=True, exist_ok=True)
    flat = [i for i in items if i.image.ndim == 2]
    results: dict[str, np.ndarray] = {}
    for item, probs in zip(flat, predict_images(predictor, [i.image for i in flat])):
        results[item.name] = to_labels(probs[None])[0]
        _write_2d(out_dir / f"{item.name}.zarr", probs, results[item.name], config.infer.prob_dtype)
    for item in (i for i in items if i.image.ndim == 3):
        if config.infer.mode == "2d":
            raise ValueError(f"{config.name}: {item.name} is a 3D volume; set infer.mode to stack or orthoplane")
        source = zarr.open_array(str(out_dir / f"{item.name}-image.zarr"), mode="w", shape=item.image.shape,
                                 chunks=tuple(min(s, 64) for s in item.image.shape), dtype="uint8")
        source[...] = item.image
        group = infer_volume(predictor, source, out_dir / f"{item.name}.zarr", config.infer.mode, config.infer.slab,
                             config.infer.prob_dtype)
        results[item.name] = group["labels"][...]
    return [results[i.name] for i in items]


def run_inference(config: SegConfig, log: Callable[[str], None] = print) -> list[Path]:
    """`cem infer`: segment `infer.input` (a zarr array) or else the benchmark's evaluation items."""
    import zarr

    predictor = make_predictor(config)
    out_dir = config.output_path / "predictions"
    if config.infer.input:
        source_path = resolve_path(config.infer.input)
        try:
            source = zarr.open_array(str(source_path), mode="r")
        except Exception as exc:  # zarr raises several types for a missing/non-array path
            raise ValueError(f"{source_path}: not a zarr array ({exc})") from None
        mode = "stack" if config.infer.mode == "2d" else config.infer.mode
        out = out_dir / f"{source_path.name.removesuffix('.zarr')}.zarr"
        out_dir.mkdir(parents=True, exist_ok=True)
        infer_volume(predictor, source, out, mode, config.infer.slab, config.infer.prob_dtype)
        log(f"wrote {out}")
        return [out]
    items = load_benchmark(config.data, train=False).eval_items
    predict_items(predictor, items, config, out_dir)
    paths = [out_dir / f"{item.name}.zarr" for item in items]
    log(f"wrote {len(paths)} predictions under {out_dir}")
    return paths


def score_item(pred: np.ndarray, truth: np.ndarray, config: SegConfig) -> np.ndarray:
    if config.eval.perez_rule:
        pred = perez_filter(pred, truth)
    convention = config.eval.convention if pred.ndim == 2 else "nan"
    return iou_from_counts(iou_counts(pred, truth, config.scored_classes), convention)


def run_evaluation(config: SegConfig, log: Callable[[str], None] = print) -> dict:
    """`cem evaluate`: predict, score IoU, write OUT/metrics.json and overlay PNGs; return the metrics."""
    items = [i for i in load_benchmark(config.data, train=False).eval_items if i.mask is not None]
    if not items:
        raise ValueError(f"{config.name}: no labelled evaluation items")
    predictor = make_predictor(config)
    out = config.output_path
    predictions = predict_items(predictor, items, config, out / "predictions")
    per_item = [score_item(p, i.mask, config) for p, i in zip(predictions, items)]
    mean, per_class = mean_iou(per_item)
    for item, pred in zip(items[: config.eval.overlays], predictions):
        middle = item.image.shape[0] // 2
        if item.image.ndim == 2:
            image, truth, shown = item.image, item.mask, pred
        else:
            image, truth, shown = item.image[middle], item.mask[middle], pred[middle]
        save_overlay(image, truth, shown, out / "overlays" / f"{item.name}.png")
    metrics = {
        "name": config.name,
        "mode": config.infer.mode,
        "convention": config.eval.convention,
        "perez_rule": config.eval.perez_rule,
        "classes": config.scored_classes,
        "mean_iou": None if np.isnan(mean) else mean,
        "per_class_iou": [None if np.isnan(v) else float(v) for v in per_class],
        "per_item": [{"name": i.name, "iou": [None if np.isnan(v) else float(v) for v in row]} for i, row in zip(items, per_item)],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"{config.name}: mean IoU {metrics['mean_iou']} over {len(items)} items (classes {config.scored_classes})")
    return metrics
