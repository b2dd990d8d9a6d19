"""Typed MoCoV2 pre-training config, loaded from YAML.

Every section forbids unknown keys (a typo in a cluster job must fail at start, naming the key,
not silently train with a default for three days). Defaults are the paper's configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from cem_pipeline.core.config import (
    ConfigError,
    Section,
    describe_errors,
    read_yaml_mapping,
)

PAPER_BATCH = 128  # the batch size at which the paper's lr 0.015 was set (linear scaling reference)
AUTO_SPLITS = 4  # bn_splits 'auto' with one process: the paper's 4 BN groups (4 GPUs)


class DataConfig(Section):
    beton: Path = Field(..., description="the .beton written by `cem export`")
    manifest: Path | None = Field(None, description="`cem export` JSON sidecar with mean/std; default: the one listing the .beton")
    crop_size: int = Field(224, ge=32, description="side of the augmented views fed to the network")
    num_workers: int = Field(4, ge=1)
    order: Literal["random", "quasi_random", "sequential"] = "random"
    crop_scale: tuple[float, float] = Field(
        (0.2, 1.0), description="RandomResizedCrop area fraction of the patch (paper 0.2-1). At a view smaller than 224 the "
        "paper's range shows objects 224/crop_size times smaller than the patch's own pixels; (0.2, 1) * (crop_size/224)^2 "
        "keeps views at the patch's resolution, the scale a segmentation model is later trained and applied at")
    blur_sigma_reference: int | None = Field(
        224, ge=1, description="view side at which the paper's blur sigma U(0.1, 2) px applies; sigma scales with "
        "crop_size / this, so a 64-px view is blurred as much relative to its content as a 224-px one "
        "(null: sigma in output pixels at any crop size, i.e. 3.5x the paper's relative blur at 64 px)")


    @model_validator(mode="after")
    def _scale_is_a_fraction(self) -> "DataConfig":
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"data.crop_scale {list(self.crop_scale)}: need 0 < low <= high <= 1")
        return self


class ModelConfig(Section):
    arch: Literal["resnet18", "resnet34", "resnet50"] = Field("resnet50", description="torchvision ResNet, 1-channel stem")
    dim: int = Field(128, ge=1, description="embedding dimension of the projection head")
    mlp_hidden: int = Field(2048, ge=1, description="hidden width of MoCoV2's 2-layer MLP head")
    queue_size: int = Field(65536, ge=1, description="K: negatives kept in the queue")
    momentum: float = Field(0.999, ge=0, lt=1, description="m: key-encoder EMA momentum")
    temperature: float = Field(0.2, gt=0)
    head_bn: bool = Field(
        False, description="BatchNorm1d on the projection head's hidden layer (not in the paper's MoCoV2 head); "
        "keeps short small-batch runs from turning all embeddings together faster than the key encoder follows")
    stem: Literal["imagenet", "small"] = Field(
        "imagenet", description="imagenet: the paper's 7x7 stride-2 conv1 + maxpool; small: 3x3 stride-1 conv1, no "
        "maxpool (MoCo CIFAR demo), so small views keep spatial detail to layer4 (16x the compute; the checkpoint's "
        "config records it, the state-dict keys are the same)")
    negatives: Literal["queue", "queue+batch"] = Field(
        "queue", description="queue: the paper's negatives; queue+batch: also the batch's other keys, which are as "
        "fresh as the positive, so a short run cannot find the positive by its age instead of its content")
    shuffle_bn: bool = Field(True, description="shuffle the key batch across BN groups so BN cannot cheat")
    bn_splits: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="BN sub-batches per process, each with its own statistics, that shuffled BN permutes "
        "keys across; 'auto': 1 with several processes (each is a group, as in the paper's 4 GPUs), "
        f"{AUTO_SPLITS} with one (where 1 would leave shuffled BN a no-op)")


class MonitorConfig(Section):
    probe: Path | None = Field(None, description="labelled probe Parquet (training.moco.probe.build_probe_set) for online k-NN; null: none")
    every: int = Field(1, ge=1, description="run the k-NN probe every N epochs (and after the last)")
    knn_k: int = Field(20, ge=1)
    min_emb_std: float = Field(
        0.15, ge=0, description="collapse when the epoch's per-dimension std of the normalised query embeddings, "
        "in units of 1/sqrt(dim), falls below this")
    min_logit_gap: float = Field(
        -0.01, description="collapse when the epoch's mean positive minus mean negative cosine similarity falls below "
        "this (positives farther than negatives; a run that has not learnt yet sits at 0 +- 0.005)")
    max_queue_gap: float = Field(
        0.03, description="collapse warning when the batch's other keys are this much closer (mean cosine) to the "
        "queries than the queue's keys are: the queue is stale and the positive is found by its age")
    warmup_epochs: int = Field(1, ge=0, description="epochs before collapse is judged (a random init has no gap yet)")
    stop_on_collapse: bool = Field(False, description="save a checkpoint and stop at the first collapsed epoch")


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
    save_initial: bool = Field(
        False, description="also write checkpoint_0000: the seeded weights before the first step, i.e. the random "
        "encoder this run starts from (a transfer baseline paired with the pre-trained one, free of init luck)")
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
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _queue_fits_batch(self) -> "MocoConfig":
        # The queue wraps around when K is not a multiple of the batch, but a batch larger than
        # the queue would overwrite its own keys in one enqueue.
        if self.optim.batch_size > self.model.queue_size:
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must not exceed model.queue_size ({self.model.queue_size})"
            )
        return self

    def bn_splits(self, world: int) -> int:
        """BN sub-batches per process at this world size ('auto' resolved)."""
        splits = self.model.bn_splits
        if splits == "auto":
            splits = 1 if world > 1 or not self.model.shuffle_bn else AUTO_SPLITS
        if (self.optim.batch_size // world) % splits:
            raise ConfigError(f"model.bn_splits {splits} does not divide the per-process batch {self.optim.batch_size // world}")
        return splits

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
    if config.monitor.probe is not None:
        config.monitor.probe = resolve(config.monitor.probe)
    if isinstance(config.output.resume, Path):
        config.output.resume = resolve(config.output.resume)
    return config


def load_moco_config(path: str | Path) -> MocoConfig:
    path = Path(path)
    return parse_moco_config(read_yaml_mapping(path), origin=str(path), base=path.resolve().parent)


def dump_moco_config(config: MocoConfig) -> dict[str, Any]:
    """Plain JSON-compatible dict (stored in checkpoints, which load with weights_only=True)."""
    return config.model_dump(mode="json")
