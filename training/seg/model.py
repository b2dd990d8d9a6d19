"""U-Net/ResNet of the paper's benchmarks, and strict encoder initialisation from MoCoV2 checkpoints.

The paper's transfer code loads `module.encoder_q.*` with strict=False and never checks the result,
so a wrong file silently leaves a random encoder. Here the released layout is parsed exactly: the
query encoder minus its MLP head (`fc.0`, `fc.2`; with the trainer's `model.head_bn`, `fc.0`, the
BatchNorm1d `fc.1` and `fc.3`) must match the U-Net encoder key for key and shape, otherwise the
error lists the missing and unexpected keys and the shape mismatches. Our MoCoV2 trainer
(training/moco/checkpoint.py) writes the same layout, so one loader serves both kinds of checkpoint.

Backbones: the trainer's `model.arch` (resnet18, resnet34, resnet50; 1-channel stem) is recorded as
the checkpoint's `arch` and picks the smp encoder of the same name; the paper's decoder widths
(256, 128, 64, 32, 16) fit all three. A checkpoint without `arch` has it read off its keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

DECODER_CHANNELS = (256, 128, 64, 32, 16)
ENCODERS = ("resnet18", "resnet34", "resnet50")
DEFAULT_ENCODER = "resnet50"
ENCODER_PREFIX = "module.encoder_q."
HEAD_KEYS = frozenset({"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"})
HEAD_BN_KEYS = frozenset({"fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias", "fc.1.running_mean", "fc.1.running_var",
                          "fc.1.num_batches_tracked", "fc.3.weight", "fc.3.bias"})
ENCODER_PARTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
# torchvision ResNet blocks per stage; bottleneck blocks (conv3) only in resnet50
_BLOCKS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True)}


class EncoderLoadError(ValueError):
    """A checkpoint whose encoder does not match the U-Net encoder; the message names file and keys."""


def build_unet(num_classes: int, encoder: str = DEFAULT_ENCODER) -> nn.Module:
    """smp Unet(encoder, in_channels=1) with the paper's decoder widths; no pre-trained weights."""
    import segmentation_models_pytorch as smp

    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    return smp.Unet(
        encoder, encoder_weights=None, in_channels=1, classes=num_classes, decoder_channels=DECODER_CHANNELS
    )


def unet_encoder(model: nn.Module) -> str:
    """The smp encoder name of a U-Net built by `build_unet` (from its block counts)."""
    return _arch_from_keys(model.encoder.state_dict().keys()) or DEFAULT_ENCODER


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _query_state(checkpoint: Any, origin: str) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise EncoderLoadError(f"{origin}: not a MoCoV2 checkpoint (no 'state_dict' mapping)")
    query = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not query:
        raise EncoderLoadError(
            f"{origin}: no '{ENCODER_PREFIX}*' keys (released layout expected); found keys: {_preview(sorted(state))}"
        )
    return query


def _arch_from_keys(keys) -> str | None:
    """resnet18/34/50 from the block structure of torchvision ResNet keys, or None if it is none of them."""
    keys = set(keys)
    blocks = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in keys
    for name, (counts, is_bottleneck) in _BLOCKS.items():
        if blocks == counts and bottleneck == is_bottleneck:
            return name
    return None


def checkpoint_arch(checkpoint: dict[str, Any], origin: str) -> str:
    """The backbone a checkpoint was trained with: its `arch` (trainer and released layout), else read off
    its query-encoder keys, else resnet50 (the strict key check then says what does not fit)."""
    arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    if arch is not None:
        if arch not in ENCODERS:
            raise EncoderLoadError(f"{origin}: checkpoint arch {arch!r} has no U-Net encoder here (one of {', '.join(ENCODERS)})")
        return str(arch)
    return _arch_from_keys(_query_state(checkpoint, origin)) or DEFAULT_ENCODER


def resolve_encoder(checkpoint: dict[str, Any], requested: str | None, origin: str) -> str:
    """The U-Net encoder for this checkpoint: its arch; `requested` (model.encoder) must agree with it."""
    arch = checkpoint_arch(checkpoint, origin)
    if requested is not None and requested != arch:
        raise EncoderLoadError(
            f"{origin}: model.encoder is {requested} but the checkpoint was trained with arch {arch}; "
            f"set model.encoder: {arch} (or leave it out to follow the checkpoint)"
        )
    return arch


def released_encoder_state(checkpoint: dict[str, Any], expected: dict[str, torch.Tensor], origin: str,
                           encoder: str | None = None) -> dict[str, torch.Tensor]:
    """The `module.encoder_q.*` weights minus the MLP head, checked key for key and shape against `expected`."""
    query = _query_state(checkpoint, origin)
    head = HEAD_BN_KEYS if any(k.startswith("fc.1.") for k in query) else HEAD_KEYS
    weights = {k: v for k, v in query.items() if k not in head}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    missing_head = sorted(head - set(query))
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
        name = encoder or _arch_from_keys(expected) or "ResNet"
        arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
        trained = f" (checkpoint arch {arch})" if arch is not None else ""
        raise EncoderLoadError(f"{origin}: encoder does not match U-Net {name} (1 channel){trained}:\n  " + "\n  ".join(problems))
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A MoCoV2 checkpoint file, loaded with weights_only=True; any unreadable file is an EncoderLoadError."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EncoderLoadError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # pickle/zip/unsafe-global errors all mean the same thing to the user
        raise EncoderLoadError(f"{path}: not a loadable checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict):
        raise EncoderLoadError(f"{path}: not a MoCoV2 checkpoint (top level is {type(checkpoint).__name__})")
    return checkpoint


def load_encoder(model: nn.Module, path: str | Path, checkpoint: dict[str, Any] | None = None) -> tuple[float, float] | None:
    """Strictly load a released-layout checkpoint's query encoder into `model.encoder`; return its norms.

    `checkpoint`: the file's contents when already read (read_checkpoint), else `path` is read.
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(path)
    weights = released_encoder_state(checkpoint, model.encoder.state_dict(), str(path), unet_encoder(model))
    model.encoder.load_state_dict(weights, strict=True)
    return checkpoint_norms(checkpoint, str(path))


def build_transfer_unet(num_classes: int, checkpoint_path: str | Path | None,
                        encoder: str | None = None) -> tuple[nn.Module, tuple[float, float] | None]:
    """The U-Net of a seg config: random init (encoder `encoder`, default resnet50), or with the encoder of
    the checkpoint's arch (`encoder`, when given, must agree) loaded strictly. Returns (model, checkpoint norms)."""
    if checkpoint_path is None:
        return build_unet(num_classes, encoder or DEFAULT_ENCODER), None
    checkpoint = read_checkpoint(checkpoint_path)
    model = build_unet(num_classes, resolve_encoder(checkpoint, encoder, str(checkpoint_path)))
    return model, load_encoder(model, checkpoint_path, checkpoint)


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
