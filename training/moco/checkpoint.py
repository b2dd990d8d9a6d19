"""MoCoV2 checkpoints in the paper's released layout, resumable exactly, loadable with weights_only=True.

Layout: {epoch, arch, state_dict ('module.encoder_q.*', 'module.encoder_k.*', 'module.queue',
'module.queue_ptr'), optimizer, norms: [mean, std]} as released by the CEM500K authors, plus what an
exact resume needs: scheduler, global step, loader seed, per-rank RNG states (as tensors), config.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cem_pipeline.core.atomic import atomic_path

PREFIX = "module."
_NAME = re.compile(r"checkpoint_(\d{4,})\.pth\.tar$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def checkpoint_path(directory: Path, epoch: int) -> Path:
    return Path(directory) / f"checkpoint_{epoch:04d}.pth.tar"


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest epoch in `directory`, or None."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("checkpoint_*.pth.tar") if (m := _NAME.search(p.name))]
    return max(found)[1] if found else None


def released_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The MoCo module's state with DDP's 'module.' prefix, whether or not it is wrapped now."""
    return {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_released_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Strict load: a checkpoint that does not match the model is an error, never a silent partial load."""
    model.load_state_dict({k.removeprefix(PREFIX): v for k, v in state_dict.items()}, strict=True)


Generators = dict[str, torch.Generator | np.random.Generator]


def rng_state(generators: Generators) -> dict[str, Any]:
    """This process's RNG states: torch's global CPU/CUDA RNGs and each named generator (augmentation,
    shuffled-BN permutation), so a resumed run draws exactly the same numbers. torch states are uint8
    tensors, numpy states their bit generator's plain dict: both load with weights_only=True."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    for name, generator in generators.items():
        state[name] = generator.get_state() if isinstance(generator, torch.Generator) else generator.bit_generator.state
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], generators: Generators) -> None:
    missing = sorted(set(generators) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint has no RNG state for {', '.join(missing)}")
    torch.set_rng_state(state["torch"])
    for name, generator in generators.items():
        if isinstance(generator, torch.Generator):
            generator.set_state(state[name])
        else:
            generator.bit_generator.state = state[name]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a job killed mid-write never leaves a truncated 'latest'."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True (no arbitrary code from a checkpoint file)."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises pickle/zip/runtime errors for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a loadable checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a MoCo checkpoint (no 'state_dict')")
    return checkpoint


def encoder_state_dict(checkpoint: dict[str, Any] | Path, encoder: str = "encoder_q", head: bool = False) -> dict[str, torch.Tensor]:
    """The backbone weights under torchvision ResNet names, for transfer (fc head dropped unless `head`)."""
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    prefix = f"{PREFIX}{encoder}."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"checkpoint has no '{prefix}*' weights")
    return weights if head else {k: v for k, v in weights.items() if not k.startswith("fc.")}
