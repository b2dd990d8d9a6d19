"""Typed segmentation-experiment config (one YAML per benchmark), strict like the pipeline config.

Relative paths are kept as written and resolved against the current directory when used, the same
rule as `cem` configs, so `../shared/data/em/...` works from the repository root. `${VAR}` and `~`
are expanded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cem_pipeline.core.config import (
    ConfigError,
    Section,
    describe_errors,
    read_yaml_mapping,
)

Layout = Literal["folders2d", "guay", "urocell", "cremi"]
MaskEncoding = Literal["identity", "nonzero", "divide255", "zero_is_foreground", "threshold"]


def resolve_path(value: str | Path) -> Path:
    """Expand `~` and `${VAR}`, resolve against the current directory."""
    return Path(os.path.expandvars(str(value))).expanduser().resolve()


class Split2D(Section):
    """One split of a 2D benchmark: parallel image and mask folders, paired in natural-sort order."""

    images: str = Field(..., description="folder of 2D images, relative to data.root")
    masks: str | None = Field(None, description="folder of masks (same count, same shapes); None = unlabelled")
    select: str | None = Field(None, description="keep files by sorted position, e.g. '0-24' or '0-9,20-24'")


class DataConfig(Section):
    """A benchmark in its published file layout (see datasets.py for each layout)."""

    layout: Layout
    root: str
    train: Split2D | None = Field(None, description="folders2d: training split")
    eval: Split2D | None = Field(None, description="folders2d: validation/test split")
    mask_encoding: MaskEncoding = Field("nonzero", description="folders2d: how mask pixels map to class indices "
                                        "(threshold: foreground where value > mask_threshold, for anti-aliased masks)")
    mask_threshold: int = Field(127, ge=0, le=254, description="mask_encoding threshold: the largest background value")
    train_volumes: list[str] = Field(default_factory=list, description="3D layouts: volume names used for training")
    eval_volumes: list[str] = Field(default_factory=list, description="3D layouts: volume names evaluated")
    train_slice_axes: list[Literal[0, 1, 2]] = Field(default_factory=lambda: [0], description="3D: axes sliced into 2D training images")
    y_crop: dict[str, int] = Field(default_factory=dict, description="urocell: volume name -> rows dropped from the start of y")
    lyso_dir: str = Field("lyso", description="urocell: folder of lysosome masks")
    mito_dir: str = Field("mito", description="urocell: folder of mitochondria masks")

    @model_validator(mode="after")
    def _complete(self) -> "DataConfig":
        if self.layout == "folders2d":
            if self.train is None and self.eval is None:
                raise ValueError("folders2d needs data.train and/or data.eval")
        elif not (self.train_volumes or self.eval_volumes):
            raise ValueError(f"layout {self.layout} needs data.train_volumes and/or data.eval_volumes")
        return self


class ModelConfig(Section):
    num_classes: int = Field(1, ge=1, description="1 = binary (sigmoid, BCE); >1 = softmax over classes incl. background")
    init: Literal["random", "checkpoint"] = Field(
        "random", description="checkpoint: MoCoV2 checkpoint in the paper's released layout (ours writes the same layout)"
    )
    checkpoint: str | None = None
    encoder: Literal["resnet18", "resnet34", "resnet50"] | None = Field(
        None, description="U-Net encoder (smp name). Default: the checkpoint's arch (MoCoV2 model.arch) for "
        "init checkpoint, which a value here must agree with; resnet50 (the paper's) for random")
    finetune_from: Literal["all", "layer1", "layer2", "layer3", "layer4", "none"] | None = Field(
        None,
        description="encoder parts trained: all; layerN = layerN and deeper; none = encoder frozen. "
        "Default: none for a checkpoint encoder (paper), all for random",
    )
    freeze_bn_stats: bool = Field(False, description="also stop running-stat updates of frozen BN layers (paper: they update)")
    norms: tuple[float, float] | None = Field(
        None, description="(mean, std) on [0,1] pixels; default: checkpoint norms, else training-set stats")

    @model_validator(mode="after")
    def _checkpoint_given(self) -> "ModelConfig":
        if self.init == "checkpoint" and not self.checkpoint:
            raise ValueError("model.init 'checkpoint' needs model.checkpoint")
        if self.init == "random" and self.checkpoint:
            raise ValueError("model.checkpoint is set but model.init is 'random'")
        return self

    @property
    def trainable_from(self) -> str:
        if self.finetune_from is not None:
            return self.finetune_from
        return "none" if self.init == "checkpoint" else "all"


class TrainConfig(Section):
    iterations: int = Field(..., ge=1)
    batch_size: int = Field(16, ge=1)
    crop_size: int = Field(..., ge=32, multiple_of=32)
    max_lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    class_weights: list[float] | Literal["auto"] | None = Field(
        None, description="multi-class CE weights; auto = background 0.1, classes < 10% of pixels 3, others 1"
    )
    background_classes: list[int] = Field(default_factory=lambda: [0])
    noise: bool = Field(False, description="Gaussian noise augmentation (Guay, All-Mito)")
    blur: bool = Field(False, description="Gaussian blur augmentation (Guay, All-Mito)")
    crop_nonempty_p: float = Field(0.0, ge=0, le=1, description="probability a crop must contain a labelled pixel")
    scale: tuple[float, float] = Field(
        (0.08, 1.0), description="RandomResizedCrop area fraction of the (padded) image; paper 0.08-1"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads")

    @field_validator("scale")
    @classmethod
    def _fraction_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError("need 0 < low <= high <= 1")
        return value
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, ge=1)


class InferConfig(Section):
    mode: Literal["2d", "stack", "orthoplane"] = Field("2d", description="2d per image; stack = xy only; orthoplane = xy, xz, yz averaged")
    batch_size: int = Field(8, ge=1, description="slices per forward pass")
    slab: int = Field(32, ge=1, description="slices read from zarr at once (memory bound: see docs)")
    prob_dtype: Literal["uint8", "float16"] = "uint8"
    input: str | None = Field(None, description="`cem infer`: zarr array (path[/array]) to segment instead of the eval set")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EvalConfig(Section):
    convention: Literal["nan", "paper"] = Field(
        "nan", description="nan: I/U, a class absent in both is NaN and skipped; paper: 2D eps=1e-5 (absent in both -> 1), 3D as nan"
    )
    perez_rule: bool = Field(False, description="drop predicted components touching no labelled instance")
    classes: list[int] | None = Field(None, description="classes scored; default: all foreground classes (1 for binary)")
    overlays: int = Field(1, ge=0, description="overlay PNGs written (image / truth / prediction)")


class SegConfig(Section):
    name: str
    output_dir: str = Field(..., description="where the model, predictions and metrics go")
    seed: int = 42
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig
    infer: InferConfig = Field(default_factory=InferConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @property
    def output_path(self) -> Path:
        return resolve_path(self.output_dir)

    @property
    def scored_classes(self) -> list[int]:
        return self.eval.classes or list(range(1, max(2, self.model.num_classes)))


def parse_seg_config(data: dict[str, Any], origin: str = "<seg config>") -> SegConfig:
    try:
        return SegConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, SegConfig, origin)) from None


def load_seg_config(path: str | Path) -> SegConfig:
    path = Path(path)
    return parse_seg_config(read_yaml_mapping(path), origin=str(path))
