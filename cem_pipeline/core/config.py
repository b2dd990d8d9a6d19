"""Typed run configuration, loaded from YAML.

Every section forbids unknown keys so that a typo is an error that names the key and the
keys that are allowed, instead of a setting silently ignored on a cluster hours later.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, key and allowed values."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AdaptiveConfig(Section):
    minimum: int = Field(0, ge=0)
    maximum: int = Field(4, ge=1)


class ClusterConfig(Section):
    """Where Dask workers run: a LocalCluster on this machine, or batch jobs through dask-jobqueue."""

    kind: Literal["local", "slurm", "pbs", "sge", "lsf", "htcondor"] = "local"
    n_workers: int = Field(2, ge=1, description="local: worker processes; batch: worker jobs to start")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = Field("4GiB", description="local: memory per worker")
    dashboard_address: str = "127.0.0.1:0"
    cores: int = Field(1, ge=1, description="batch: cores per job")
    processes: int = Field(1, ge=1, description="batch: Dask worker processes per job")
    memory: str = Field("4GiB", description="batch: memory per job")
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    job_extra_directives: list[str] = Field(default_factory=list)
    job_script_prologue: list[str] = Field(default_factory=list)
    interface: str | None = None
    log_directory: str | None = Field(None, description="batch: job logs; default WORKDIR/logs/jobs")
    gpus_per_worker: int = Field(0, ge=0, description="batch: GPUs per job; adds the scheduler's GPU directive and Dask resource GPU")
    worker_resources: dict[str, float] = Field(default_factory=dict)
    adaptive: AdaptiveConfig | None = None
    wait_timeout_s: float = Field(300.0, gt=0)


class SourceSpec(Section):
    """One dataset in the source manifest."""

    name: str
    path: str
    format: Literal[
        "auto", "image2d", "tiff", "slices", "mrc", "nifti", "nrrd", "hdf5", "zarr", "video", "cloudvolume"
    ] = "auto"
    dataset_path: str | None = Field(None, description="HDF5 dataset / zarr array inside the container")
    imaging: str | None = None
    organism: str | None = None
    tissue: str | None = None
    voxel_size: tuple[float, float, float] | None = Field(None, description="(z, y, x) in nm; overrides file metadata")
    invert: bool = False
    samples: int | None = Field(None, ge=1, description="cloudvolume: random patches to sample (default ingest.cloudvolume_samples)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("dataset names use letters, digits, '_', '.', '-' (they name zarr groups and Parquet partitions)")
        return value

    @field_validator("voxel_size")
    @classmethod
    def _positive_voxels(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        """A negative or NaN spacing would pass the anisotropy test and cut xz/yz planes of an anisotropic volume."""
        if value is not None and not all(math.isfinite(v) and v > 0 for v in value):
            raise ValueError("every voxel size (z, y, x nm) must be a finite number > 0")
        return value


class IngestConfig(Section):
    sources: list[SourceSpec] | str = Field(default_factory=list, description="inline list or path to a YAML/CSV manifest")
    patch_size: int = Field(224, ge=8)
    min_edge: int = Field(112, ge=1, description="remainder strips narrower than this are discarded")
    anisotropy_threshold: float = Field(0.2, ge=0)
    intensity: Literal["percentile", "dtype_max"] = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    max_volume_gb: float = Field(5.0, gt=0)
    hash_size: int = Field(8, ge=2, le=8)
    cloudvolume_samples: int = Field(1000, ge=1)
    fail_on_error: bool = False
    unknown_spacing: Literal["xy", "isotropic"] = Field(
        "xy", description="3D sources without a voxel size: xy only (default) or all three planes (paper code)"
    )
    block_mb: float = Field(32.0, gt=0, description="uint8 megabytes one Dask task standardises, stores and hashes; "
                            "small enough that a volume splits into many tasks and no worker idles at the end")

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError("need 0 <= low < high <= 100")
        return value


class DedupConfig(Section):
    distance: int = Field(12, ge=0, le=64)
    rule: Literal["le", "lt"] = Field("le", description="le: distance <= d (paper code, default); lt: < d (paper text)")
    group_by: list[str] | Literal["global"] = Field(
        default_factory=lambda: ["dataset"],
        description='catalog columns; ["dataset", "volume"] is the paper\'s per-volume grouping; "global": across datasets',
    )
    montage_members: int = Field(7, ge=1, description="`cem dedup --show`: members drawn per cluster besides its leader")

    @field_validator("group_by")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError('give at least one catalog column, or "global"')
        return value


class FilterConfig(Section):
    """Uninformative-patch filter: labelling, classifier training (paper: resnet34 or random forest) and scoring."""

    weights: str | None = Field(None, description="resnet34 state_dict to score with (e.g. the authors' release); default WORKDIR/models")
    threshold: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(128, ge=1, description="scoring batch")
    cpu_bf16: bool = Field(True, description="bf16 autocast on CPU workers whose CPU has native bf16 (GPU workers always use it)")
    model: Literal["resnet34", "random_forest"] = "resnet34"
    init_weights: str | None = Field(
        None, description="local torchvision resnet34 state_dict (e.g. ImageNet) to fine-tune from; default random init")
    input_size: int = Field(224, ge=32, description="patches are resized to this square size for the network")
    epochs: int = Field(20, ge=1)
    train_batch_size: int = Field(64, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    holdout_fraction: float = Field(0.15, gt=0, lt=1)
    seed: int = 1227
    part_size: int = Field(2048, ge=1, description="patches per Dask scoring task")
    label_target: int = Field(1000, ge=1, description="patches to label (paper: 14,000)")
    label_port: int = Field(8765, ge=0, le=65535, description="labelling page port on 127.0.0.1; 0 picks a free one")
    montage_per_class: int = Field(16, ge=1)


class ExportConfig(Section):
    selection: str | None = Field(None, description="one boolean DuckDB SQL expression over the `patches` view (a WHERE clause, "
                                  "no ';' or subquery); default: informative exemplars")
    max_per_dataset: int | None = Field(None, ge=1)
    max_dataset_fraction: float | None = Field(None, gt=0, le=1, description="cap every dataset's share of the export")
    edge_patches: Literal["pad", "resize", "drop"] = Field(
        "pad", description="patches smaller than patch_size: pad (reflect; h/w stored for cropping) | resize (bilinear) | drop"
    )
    patch_size: int = Field(224, ge=8)
    label_columns: list[str] = Field(default_factory=list, description="extra `patches` columns stored as int/float fields")
    shard_size_gb: float | None = Field(None, gt=0)
    num_workers: int | None = Field(None, ge=1, description="DatasetWriter processes; default: all cores")
    name: str = Field("patches", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="output file stem in WORKDIR/export")

    @field_validator("selection")
    @classmethod
    def _one_expression(cls, value: str | None) -> str | None:
        from cem_pipeline.core.selection import check_selection

        return None if value is None else check_selection(value)


class CemConfig(Section):
    workdir: Path = Path("cem-work")
    seed: int = 0
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part not in model.model_fields:
            return []
        nested = _models_in(model.model_fields[part].annotation)
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch tags (e.g. 'list[SourceSpec]', 'str') so paths read as config keys."""
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in _UNION_TAGS))


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "tuple", "function-after", "literal", "none"}
_TYPE_MISMATCH = {"string_type", "list_type", "dict_type", "model_type", "int_type", "float_type", "literal_error",
                  "none_required", "tuple_type"}


def _relevant(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For a value allowed several shapes, report the shape the user wrote, not every alternative."""
    paths = [_field_path(tuple(e["loc"])) for e in errors]
    kept = []
    for error, path in zip(errors, paths):
        shadowed = error["type"] in _TYPE_MISMATCH and any(
            other != path and other[: len(path)] == path for other in paths
        )
        if not shadowed:
            kept.append(error)
    return kept


def _describe(error: dict[str, Any], model: type[BaseModel], origin: str) -> str:
    loc = _field_path(tuple(error["loc"]))
    key = ".".join(str(p) for p in loc) or "<root>"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        return f"{origin}: unknown key '{key}'; allowed keys here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"{origin}: {key}: required key is missing"
    return f"{origin}: {key}: {error['msg']} (got {error.get('input')!r})"


def describe_errors(exc: ValidationError, model: type[BaseModel], origin: str) -> str:
    """One line per problem, naming the file, the dotted key and the allowed keys or values."""
    return "\n".join(_describe(e, model, origin) for e in _relevant(exc.errors()))


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} for an empty file), or a ConfigError naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_config(data: dict[str, Any] | None, origin: str = "<config>") -> CemConfig:
    try:
        config = CemConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, CemConfig, origin)) from None
    config.workdir = Path(os.path.expandvars(str(config.workdir))).expanduser().resolve()
    return config


def load_config(path: str | Path | None) -> CemConfig:
    """Load a YAML config; None gives the defaults. Relative workdirs resolve against the current directory."""
    if path is None:
        return parse_config({})
    path = Path(path)
    config = parse_config(read_yaml_mapping(path), origin=str(path))
    if isinstance(config.ingest.sources, str):
        manifest = Path(config.ingest.sources).expanduser()
        config.ingest.sources = str(manifest if manifest.is_absolute() else (path.parent / manifest).resolve())
    return config


def dump_config(config: CemConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
