"""Typed MoCoV2 pre-training config, loaded from YAML.

Every section forbids unknown keys (a typo in a cluster job must fail at start, naming the key,
not silently train with a default for three days). Defaults are the paper's configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from cem_pipeline.core.config import (
    ConfigError,
    Section,
    describe_errors,
    read_yaml_mapping,
)

PAPER_BATCH = 128  # the batch size at which the paper's lr 0.015 was set (linear scaling reference)


class DataConfig(Section):
    beton: Path = Field(..., description="the .beton written by `cem export`")
    manifest: Path | None = Field(None, description="`cem export` JSON sidecar with mean/std; default: the one listing the .beton")
    crop_size: int = Field(224, ge=32, description="side of the augmented views fed to the network")
    num_workers: int = Field(4, ge=1)
    order: Literal["random", "quasi_random", "sequential"] = "random"


class ModelConfig(Section):
    arch: Literal["resnet50"] = "resnet50"
    dim: int = Field(128, ge=1, description="embedding dimension of the projection head")
    mlp_hidden: int = Field(2048, ge=1, description="hidden width of MoCoV2's 2-layer MLP head")
    queue_size: int = Field(65536, ge=1, description="K: negatives kept in the queue")
    momentum: float = Field(0.999, ge=0, lt=1, description="m: key-encoder EMA momentum")
    temperature: float = Field(0.2, gt=0)
    shuffle_bn: bool = Field(True, description="shuffle the key batch across processes so BN cannot cheat")


class OptimConfig(Section):
    batch_size: int = Field(128, ge=1, description="GLOBAL batch over all processes")
    base_lr: float = Field(0.015, gt=0, description="lr at batch 128; scaled linearly to batch_size")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    epochs: int = Field(200, ge=1)
    schedule: Literal["step", "cosine"] = "step"
    milestones: list[int] = Field(default_factory=lambda: [120, 160], description="step: epochs where lr is x0.1")


class RuntimeConfig(Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    channels_last: bool | None = Field(None, description="default: on for GPU, off for CPU")
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="threads per process for torch ops and the numba CPU augmentation (default: all)")
    nproc: int = Field(1, ge=1, description="processes to spawn on this node when not launched by torchrun")


class OutputConfig(Section):
    dir: Path = Path("mocov2-run")
    save_every: int = Field(10, ge=1, description="checkpoint every N epochs (and always after the last)")
    log_every: int = Field(10, ge=1, description="write a metrics row every N steps")
    progress: bool = True
    resume: Path | Literal["auto"] | None = Field(
        None, description="checkpoint to resume from; 'auto': the latest in dir if any"
    )


class MocoConfig(Section):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _queue_fits_batch(self) -> "MocoConfig":
        # The queue wraps around when K is not a multiple of the batch, but a batch larger than
        # the queue would overwrite its own keys in one enqueue.
        if self.optim.batch_size > self.model.queue_size:
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must not exceed model.queue_size ({self.model.queue_size})"
            )
        return self

    @property
    def lr(self) -> float:
        """Linear scaling rule: the paper's 0.015 at batch 128."""
        return self.optim.base_lr * self.optim.batch_size / PAPER_BATCH


def parse_moco_config(data: dict[str, Any], origin: str = "<config>", base: Path | None = None) -> MocoConfig:
    """Validate a mapping; relative paths resolve against `base` (the YAML file's folder)."""
    try:
        config = MocoConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, MocoConfig, origin)) from None
    base = base or Path.cwd()
    resolve = lambda p: (p if p.expanduser().is_absolute() else base / p).expanduser().resolve()  # noqa: E731
    config.data.beton = resolve(config.data.beton)
    if config.data.manifest is not None:
        config.data.manifest = resolve(config.data.manifest)
    config.output.dir = resolve(config.output.dir)
    if isinstance(config.output.resume, Path):
        config.output.resume = resolve(config.output.resume)
    return config


def load_moco_config(path: str | Path) -> MocoConfig:
    path = Path(path)
    return parse_moco_config(read_yaml_mapping(path), origin=str(path), base=path.resolve().parent)


def dump_moco_config(config: MocoConfig) -> dict[str, Any]:
    """Plain JSON-compatible dict (stored in checkpoints, which load with weights_only=True)."""
    return config.model_dump(mode="json")
