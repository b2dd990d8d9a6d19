"""The paper's patch-quality classifier: torchvision resnet34 with a one-logit head, layer4 + fc fine-tuned.

The saved file is a plain state_dict in exactly the layout of the authors' released
`patch_quality_classifier_nn.pth`, so our weights and theirs are interchangeable in `cem filter`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cem_pipeline.core.config import FilterConfig
from cem_pipeline.filter.holdout import HoldoutResult, stratified_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAINABLE = ("layer4.", "fc.")


class WeightsError(ValueError):
    """A weights file that is not a resnet34 patch classifier; the message names the file and the offending keys."""


def build_model() -> nn.Module:
    """Random-init resnet34 with fc = Linear(512, 1) (ImageNet weights cannot be downloaded here)."""
    from torchvision.models import resnet34

    model = resnet34(weights=None)
    model.fc = nn.Linear(512, 1)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from disk with weights_only=True (no code runs); DataParallel 'module.' prefixes are dropped."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except Exception as exc:  # torch raises pickle, zip and UnpicklingError variants for foreign files
        raise WeightsError(f"{path}: not a PyTorch state_dict ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path}: expected a state_dict (mapping of parameter name to tensor), got {type(data).__name__}")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data)


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> str:
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(ignore)}
    given = {k: v.shape for k, v in state.items() if not k.startswith(ignore)}
    problems = []
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if shapes:
        problems.append("shape mismatch: " + ", ".join(f"{k} {tuple(given[k])} != {tuple(expected[k])}" for k in shapes))
    return "; ".join(problems)


def load_classifier(path: Path) -> nn.Module:
    """The released layout, loaded strictly: any missing, unexpected or mis-shaped key is an error naming it."""
    return classifier_from_state(read_state_dict(path), origin=str(path))


def classifier_from_state(state: Mapping[str, torch.Tensor], origin: str = "<state_dict>") -> nn.Module:
    model = build_model()
    problems = _mismatch(model, state)
    if problems:
        raise WeightsError(f"{origin}: not a resnet34 patch classifier with fc = Linear(512, 1); {problems}")
    model.load_state_dict(state, strict=True)
    return model


def load_backbone(model: nn.Module, path: Path) -> nn.Module:
    """Start from a local torchvision resnet34 state_dict (e.g. ImageNet); its 1000-way fc is not used."""
    state = read_state_dict(path)
    problems = _mismatch(model, state, ignore=("fc.",))
    if problems:
        raise WeightsError(f"{path}: not a torchvision resnet34 state_dict; {problems}")
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    return model


def freeze_for_finetune(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but layer4 and fc, as the paper does; returns the parameters left to train."""
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(TRAINABLE)
        if parameter.requires_grad:
            trainable.append(parameter)
    return trainable


def to_input(images: Sequence[np.ndarray], size: int, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """uint8 (h, w) patches -> float (N, 1, size, size) in [0, 1] on `device`.

    uint8 travels to the device (4x less than float) and is resized there; edge patches of other
    sizes are resized one by one, full-size patches as one batch.
    """
    non_blocking = device.type == "cuda"

    def moved(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if non_blocking:
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=non_blocking).float().div_(255.0)

    def resized(batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[-2:] == (size, size):
            return batch
        return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    if not images:
        return torch.empty((0, 1, size, size), device=device)
    if len({image.shape for image in images}) == 1:
        return resized(moved(np.stack(images))[:, None])
    return torch.cat([resized(moved(image)[None, None]) for image in images])


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """Gray (N, 1, H, W) in [0, 1] -> 3 identical channels with ImageNet mean/std, as the network expects."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch.expand(-1, 3, -1, -1) - mean) / std


def _gaussian_kernel(size: int, device: torch.device) -> torch.Tensor:
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a given aperture, as albumentations' blur used
    grid = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's training augmentations as torch ops on (N, 1, H, W) in [0, 1], each applied per sample:
    brightness/contrast +-0.2 (p 0.5), Gaussian noise var 40-100 on the 0-255 scale (p 0.5),
    Gaussian blur aperture 3 or 5 (p 0.5), horizontal and vertical flips (p 0.5 each)."""
    n, device = batch.shape[0], batch.device

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(device)

    def chosen() -> torch.Tensor:
        return (draw(n) < 0.5).view(n, 1, 1, 1)

    x = batch
    alpha = 1 + (draw(n) * 0.4 - 0.2).view(n, 1, 1, 1)
    beta = (draw(n) * 0.4 - 0.2).view(n, 1, 1, 1)
    x = torch.where(chosen(), x * alpha + beta, x)
    std = torch.sqrt(40 + draw(n) * 60).view(n, 1, 1, 1) / 255.0
    noise = torch.randn(x.shape, generator=generator).to(device) * std
    x = torch.where(chosen(), x + noise, x)
    blur = chosen()
    aperture = 3 + 2 * (draw(n) < 0.5).long()
    blurred = x
    for size in (3, 5):
        kernel = _gaussian_kernel(size, device)
        padded = F.pad(x, (size // 2,) * 4, mode="reflect")
        smooth = F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, size)), kernel.view(1, 1, size, 1))
        blurred = torch.where((aperture == size).view(n, 1, 1, 1), smooth, blurred)
    x = torch.where(blur, blurred, x)
    x = torch.where(chosen(), x.flip(-1), x)
    x = torch.where(chosen(), x.flip(-2), x)
    return x.clamp_(0.0, 1.0)


def resized_uint8(images: Sequence[np.ndarray], size: int, chunk: int = 512) -> torch.Tensor:
    """All training patches resized once and kept as uint8 (N, 1, S, S): 14,000 patches at 224 px are 0.7 GB, not 2.8."""
    parts = [to_input(images[start : start + chunk], size).mul_(255).round_().to(torch.uint8)
             for start in range(0, len(images), chunk)]
    return torch.cat(parts) if parts else torch.empty((0, 1, size, size), dtype=torch.uint8)


def as_float(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    return batch.to(device).float().div_(255.0)


def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Sigmoid scores for resized uint8 (N, 1, S, S) inputs (evaluation on the hold-out set)."""
    model.eval()
    scores = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = normalize(as_float(inputs[start : start + batch_size], device))
            scores.append(torch.sigmoid(model(batch)).squeeze(1).float().cpu())
    return torch.cat(scores).numpy() if scores else np.empty(0, np.float32)


def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Recompute every BatchNorm's running statistics as the exact average over the (un-augmented) training set.

    From random init, the few momentum-0.1 updates of a short fine-tune leave the running
    statistics far from the data's, so eval-mode scores fall to chance while train-mode scores
    are perfect; one pass fixes that (as torch.optim.swa_utils.update_bn does). From ImageNet
    weights it adapts the frozen layers' statistics to EM. Weights are untouched.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            model(normalize(as_float(inputs[start : start + batch_size], device)))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.eval()


def train_classifier(images: Sequence[np.ndarray], labels: np.ndarray, config: FilterConfig) -> HoldoutResult:
    """Fine-tune layer4 + fc with Adam and BCE-with-logits on the 85 % split, recalibrate BatchNorm
    statistics on it, and score the 15 % hold-out.

    Seeded throughout (split, init, batch order, augmentations) inside a forked RNG, so a re-run
    reproduces the same model on the same machine and the caller's RNG state is untouched.
    """
    labels = np.asarray(labels, dtype=np.int64)
    train_index, test_index = stratified_split(labels, config.holdout_fraction, config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inputs = resized_uint8(list(images), config.input_size)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_model()
        if config.init_weights:
            load_backbone(model, Path(config.init_weights))
        model.to(device)
        optimizer = torch.optim.Adam(freeze_for_finetune(model), lr=config.learning_rate)
        loss_fn = nn.BCEWithLogitsLoss()
        generator = torch.Generator().manual_seed(config.seed)
        targets = torch.tensor(labels, dtype=torch.float32)
        steps_per_epoch = math.ceil(len(train_index) / config.train_batch_size)
        losses = []
        for _ in range(config.epochs):
            model.train()
            order = torch.from_numpy(train_index)[torch.randperm(len(train_index), generator=generator)]
            epoch_loss = 0.0
            for step in range(steps_per_epoch):
                batch_index = order[step * config.train_batch_size : (step + 1) * config.train_batch_size]
                if len(batch_index) < 2:  # BatchNorm cannot train on a single sample
                    continue
                x = normalize(augment(as_float(inputs[batch_index], device), generator))
                loss = loss_fn(model(x).squeeze(1), targets[batch_index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_loss += float(loss.detach()) * len(batch_index)
            losses.append(epoch_loss / len(train_index))
        recalibrate_batchnorm(model, inputs[torch.from_numpy(train_index)], config.batch_size, device)
        scores = predict(model, inputs[torch.from_numpy(test_index)], config.batch_size, device)
    model.cpu().eval()
    return HoldoutResult(
        model=model,
        kind="resnet34",
        y_true=labels[test_index],
        y_score=scores,
        n_train=len(train_index),
        extra={"epochs": config.epochs, "input_size": config.input_size, "train_loss": losses},
    )
