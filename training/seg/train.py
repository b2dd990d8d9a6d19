"""Fine-tuning loop of the paper's benchmarks: AdamW + OneCycle, fixed iterations, BCE or weighted CE.

Recipe (paper + cellemnet code): AdamW(lr 0.003, weight decay 0.1), OneCycleLR(max_lr 0.003,
total_steps = iterations, PyTorch defaults: 30 % warm-up, cosine, div 25, final div 1e4), batch 16,
seed 42 fixed before the U-Net is built so random decoder (and encoder) weights are the same in every
experiment. Binary tasks use BCE-with-logits on one output channel; multi-class tasks use
cross-entropy weighted by class prevalence (background 0.1, classes < 10 % of training pixels 3,
others 1) unless weights are given.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cem_pipeline.core.atomic import atomic_path, write_text_atomic
from training.data.seg_pipeline import SegAugmentParams, SegmentationDataset
from training.seg.config import SegConfig, resolve_path
from training.seg.datasets import load_benchmark
from training.seg.infer import select_device
from training.seg.model import DEFAULT_ENCODER, build_transfer_unet, build_unet, freeze_encoder, set_train_mode, unet_encoder

RARE_FRACTION = 0.10
NOISE_VAR = (400.0, 1200.0)  # Guay / All-Mito GaussNoise variance on 0-255 pixels
BLUR_LIMIT = 7


def augment_params(config: SegConfig) -> SegAugmentParams:
    """The paper's segmentation augmentations, with this config's crop scale, noise, blur and non-empty crops."""
    train = config.train
    return SegAugmentParams(
        scale=tuple(train.scale),
        noise_var=NOISE_VAR if train.noise else None,
        blur_limit=BLUR_LIMIT if train.blur else None,
        nonempty_p=train.crop_nonempty_p,
    )


def batches(dataset, batch_size: int, iterations: int, generator: torch.Generator):
    """`iterations` batches drawn epoch by epoch (a fresh permutation, and `set_epoch`, per pass),
    so every draw of an image gets its own augmentation; deterministic for a given generator."""
    epoch, order = 0, []
    for _ in range(iterations):
        items = []
        for _ in range(batch_size):
            if not order:
                dataset.set_epoch(epoch)
                epoch += 1
                order = torch.randperm(len(dataset), generator=generator).tolist()
            items.append(dataset[order.pop()])
        yield torch.utils.data.default_collate(items)


def prevalence_weights(masks: list[np.ndarray], num_classes: int, background: list[int]) -> list[float]:
    """The paper's rule: background classes 0.1; classes < 10 % of all pixels 3; the rest 1."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        counts += np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    fractions = counts / max(int(counts.sum()), 1)
    return [0.1 if c in background else (3.0 if fractions[c] < RARE_FRACTION else 1.0) for c in range(num_classes)]


def dataset_norms(images: list[np.ndarray]) -> tuple[float, float]:
    """Mean and std of [0,1] pixels over the training images (used when no checkpoint norms exist)."""
    total = sum(float(im.sum(dtype=np.float64)) for im in images)
    squares = sum(float(np.square(im, dtype=np.float64).sum()) for im in images)
    count = sum(im.size for im in images)
    mean = total / count
    std = max((squares / count - mean * mean) ** 0.5, 1e-6)
    return mean / 255.0, std / 255.0


def check_masks(masks: list[np.ndarray], num_classes: int) -> None:
    highest = max(int(m.max()) for m in masks)
    limit = max(num_classes, 2)
    if highest >= limit:
        raise ValueError(f"training masks hold class {highest} but model.num_classes allows 0-{limit - 1}")


def make_loss(num_classes: int, weights: list[float] | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if num_classes == 1:
        return lambda logits, target: F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    weight = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    return lambda logits, target: F.cross_entropy(logits, target.long(), weight=None if weight is None else weight.to(logits.device))


def prepare_model(config: SegConfig) -> tuple[nn.Module, tuple[float, float] | None, list[str]]:
    """Seeded U-Net, encoder initialised per config, frozen per config; returns (model, checkpoint norms, frozen parts)."""
    torch.manual_seed(config.seed)
    checkpoint = resolve_path(config.model.checkpoint) if config.model.init == "checkpoint" else None
    model, norms = build_transfer_unet(config.model.num_classes, checkpoint, config.model.encoder)
    frozen = freeze_encoder(model, config.model.trainable_from)
    return model, norms, frozen


def fine_tune(
    model: nn.Module,
    dataset: SegmentationDataset,
    config: SegConfig,
    norms: tuple[float, float],
    frozen: list[str],
    class_weights: list[float] | None = None,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Run `config.train.iterations` optimiser steps; return the loss of every step."""
    train = config.train
    device = select_device(train.device)
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.max_lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train.max_lr, total_steps=train.iterations)
    loss_fn = make_loss(config.model.num_classes, class_weights)
    mean, std = norms
    set_train_mode(model, frozen, config.model.freeze_bn_stats)
    losses: list[float] = []
    started = time.perf_counter()
    for step, (images, masks) in enumerate(batches(dataset, train.batch_size, train.iterations, generator), start=1):
        logits = model((images.to(device) - mean) / std)  # images: (B, 1, crop, crop) in [0, 1]
        loss = loss_fn(logits, masks.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % train.log_every == 0 or step == train.iterations:
            log(f"step {step}/{train.iterations} loss {np.mean(losses[-train.log_every:]):.4f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} {time.perf_counter() - started:.0f}s")
    return losses


def run_training(config: SegConfig, log: Callable[[str], None] = print) -> Path:
    """`cem train seg`: load the benchmark, fine-tune, save OUTPUT/model.pt (model, num_classes, encoder,
    norms, config; + train_log.json)."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    bench = load_benchmark(config.data, train=True, evaluate=False)
    if not bench.train_images:
        raise ValueError(f"{config.name}: no training images (data.train / data.train_volumes)")
    check_masks(bench.train_masks, config.model.num_classes)
    model, checkpoint_norms, frozen = prepare_model(config)
    norms = tuple(config.model.norms or checkpoint_norms or dataset_norms(bench.train_images))
    weights = None
    if config.model.num_classes > 1:
        cw = config.train.class_weights
        if cw in (None, "auto"):
            weights = prevalence_weights(bench.train_masks, config.model.num_classes, config.train.background_classes)
        else:
            weights = list(cw)
        if len(weights) != config.model.num_classes:
            raise ValueError(f"{config.name}: {len(weights)} class weights for {config.model.num_classes} classes")
    dataset = SegmentationDataset(bench.train_images, bench.train_masks, config.train.crop_size, augment=True,
                                  seed=config.seed, params=augment_params(config))
    log(f"{config.name}: {len(bench.train_images)} training images, init {config.model.init}, "
        f"encoder {unet_encoder(model)}, "
        f"frozen {frozen or 'nothing'}, norms {norms[0]:.4f}/{norms[1]:.4f}, weights {weights}")
    losses = fine_tune(model, dataset, config, norms, frozen, weights, log)
    out = config.output_path
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.pt"
    with atomic_path(path) as tmp:  # a killed run never leaves a truncated model.pt that load_trained would trust
        torch.save(
            {"model": model.cpu().state_dict(), "num_classes": config.model.num_classes, "encoder": unet_encoder(model),
             "norms": list(norms),
             "config": config.model_dump(mode="json")},
            tmp,
        )
    write_text_atomic(out / "train_log.json", json.dumps({"losses": losses, "class_weights": weights, "frozen": frozen}))
    return path


def load_trained(path: str | Path) -> tuple[nn.Module, tuple[float, float]]:
    """A fine-tuned U-Net written by `run_training`, and the normalisation it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model (run `cem train seg` first)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_unet(int(saved["num_classes"]), str(saved.get("encoder", DEFAULT_ENCODER)))  # older files: resnet50
    model.load_state_dict(saved["model"], strict=True)
    mean, std = saved["norms"]
    return model, (float(mean), float(std))
