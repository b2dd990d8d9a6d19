"""U-Net/ResNet50 of the paper's benchmarks, and strict encoder initialisation from MoCoV2 checkpoints.

The paper's transfer code loads `module.encoder_q.*` with strict=False and never checks the result,
so a wrong file silently leaves a random encoder. Here the released layout is parsed exactly: the
query encoder minus its MLP head (`fc.0`, `fc.2`) must match the U-Net encoder key for key and shape,
otherwise the error lists the missing and unexpected keys. Our MoCoV2 trainer
(training/checkpoint.py) writes the same layout, so one loader serves both kinds of checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

DECODER_CHANNELS = (256, 128, 64, 32, 16)
ENCODER_PREFIX = "module.encoder_q."
HEAD_KEYS = frozenset({"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"})
ENCODER_PARTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


class EncoderLoadError(ValueError):
    """A checkpoint whose encoder does not match the U-Net encoder; the message names file and keys."""


def build_unet(num_classes: int) -> nn.Module:
    """smp Unet('resnet50', in_channels=1) with the paper's decoder widths; no pre-trained weights."""
    import segmentation_models_pytorch as smp

    return smp.Unet(
        "resnet50", encoder_weights=None, in_channels=1, classes=num_classes, decoder_channels=DECODER_CHANNELS
    )


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def released_encoder_state(checkpoint: dict[str, Any], expected: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """The `module.encoder_q.*` weights minus the MLP head, checked key for key and shape against `expected`."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise EncoderLoadError(f"{origin}: not a MoCoV2 checkpoint (no 'state_dict' mapping)")
    query = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not query:
        raise EncoderLoadError(
            f"{origin}: no '{ENCODER_PREFIX}*' keys (released layout expected); found keys: {_preview(sorted(state))}"
        )
    weights = {k: v for k, v in query.items() if k not in HEAD_KEYS}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    missing_head = sorted(HEAD_KEYS - set(query))
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview([ENCODER_PREFIX + k for k in unexpected])}")
    if missing_head:
        problems.append(f"missing MoCoV2 MLP-head keys: {_preview([ENCODER_PREFIX + k for k in missing_head])}")
    shapes = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(weights) & set(expected))
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        problems.append(f"shape mismatches: {_preview(shapes)}")
    if problems:
        raise EncoderLoadError(f"{origin}: encoder does not match U-Net ResNet50 (1 channel):\n  " + "\n  ".join(problems))
    return weights


def checkpoint_norms(checkpoint: dict[str, Any], origin: str) -> tuple[float, float] | None:
    """The checkpoint's (mean, std) of [0,1] pixels, if it carries `norms`."""
    norms = checkpoint.get("norms")
    if norms is None:
        return None
    values = [float(v) for v in (norms.tolist() if isinstance(norms, torch.Tensor) else norms)]
    if len(values) != 2 or not values[1] > 0:
        raise EncoderLoadError(f"{origin}: 'norms' must be [mean, std>0], got {values}")
    return values[0], values[1]


def load_encoder(model: nn.Module, path: str | Path) -> tuple[float, float] | None:
    """Strictly load a released-layout checkpoint's query encoder into `model.encoder`; return its norms."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EncoderLoadError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # pickle/zip/unsafe-global errors all mean the same thing to the user
        raise EncoderLoadError(f"{path}: not a loadable checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict):
        raise EncoderLoadError(f"{path}: not a MoCoV2 checkpoint (top level is {type(checkpoint).__name__})")
    weights = released_encoder_state(checkpoint, model.encoder.state_dict(), str(path))
    model.encoder.load_state_dict(weights, strict=True)
    return checkpoint_norms(checkpoint, str(path))


def freeze_encoder(model: nn.Module, trainable_from: str) -> list[str]:
    """Freeze encoder parts before `trainable_from` ('all': none, 'none': all); return the frozen part names.

    Frozen parameters get no gradient; their BatchNorm running statistics still update in train mode,
    as in the paper, unless `set_train_mode(..., freeze_bn_stats=True)` is used.
    """
    if trainable_from == "all":
        frozen: tuple[str, ...] = ()
    elif trainable_from == "none":
        frozen = ENCODER_PARTS
    else:
        frozen = ENCODER_PARTS[: ENCODER_PARTS.index(trainable_from)]
    for name in frozen:
        for param in getattr(model.encoder, name).parameters():
            param.requires_grad_(False)
    return list(frozen)


def set_train_mode(model: nn.Module, frozen_parts: list[str], freeze_bn_stats: bool) -> None:
    """Train mode; with `freeze_bn_stats`, BatchNorm layers of frozen parts keep their running statistics."""
    model.train()
    if freeze_bn_stats:
        for name in frozen_parts:
            for module in getattr(model.encoder, name).modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
