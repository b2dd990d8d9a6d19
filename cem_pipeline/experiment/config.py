"""The transfer experiment's config, and every config it points at, validated before any work starts.

Paths in the experiment YAML resolve against the YAML file's folder (`${VAR}` and `~` expanded). The
configs it points at keep their own rules: a cem pipeline config resolves `workdir` against the
current directory and its source manifest against its own folder; a MoCo config resolves its paths
against its own folder; a seg config resolves `data.root` against the current directory. So the
shipped configs are meant to be run from the repository root, like `cem ingest` and `cem train seg`.
Loading resolves each of them once, so the units' configs hold only absolute paths.
"""
from __future__ import annotations

import copy
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cem_pipeline.core.config import (
    CemConfig,
    ConfigError,
    Section,
    describe_errors,
    load_config,
    read_yaml_mapping,
)
from cem_pipeline.sources.manifest import expand_all, specs_of
from training.moco.config import MocoConfig, parse_moco_config
from training.seg.config import SegConfig, parse_seg_config, resolve_path
from training.seg.datasets import IMAGE_SUFFIXES, DatasetError, load_benchmark, natural_key

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
CORPORA = ("curated", "raw")
CONDITIONS = ("random", "curated", "raw")
RECOMMENDED_SEEDS = 3
# keys the experiment sets per run; an override of one of them would be silently replaced, so it is an error
MOCO_PER_RUN = (("data", "beton"), ("data", "manifest"), ("output", "dir"), ("output", "resume"), ("output", "save_initial"),
                ("runtime", "seed"))
SEG_PER_RUN = (("seed",), ("output_dir",), ("model", "init"), ("model", "checkpoint"), ("model", "encoder"),
               ("model", "finetune_from"))


class CorpusConfig(Section):
    pipeline: Path = Field(..., description="cem pipeline config; its workdir holds both exports")
    curated_export: str | None = Field(None, pattern=SAFE_NAME, description="export name of the pipeline's own selection "
                                       "(default: its export.name)")
    raw_export: str | None = Field(None, pattern=SAFE_NAME, description="export name of every ingested patch "
                                   "(export.selection TRUE); default: '<curated_export>-raw'")


class ProbeConfig(Section):
    """Labelled EM the pre-training never sees, cut into the k-NN probe set (training.moco.probe.build_probe_set)."""

    images: Path = Field(..., description="a folder of images or a glob")
    masks: Path = Field(..., description="the masks, same layout; paired with images by natural-sort position")
    patch: int = Field(224, ge=8)
    stride: int = Field(96, ge=1)
    threshold: float = Field(0.05, ge=0, le=1)
    per_class: int = Field(64, ge=1)
    seed: int = 0


class PretrainConfig(Section):
    config: Path = Field(..., description="base MoCo config; data.beton, data.manifest, output.dir, output.resume, runtime.seed "
                         "(and monitor.probe when `probe` is set) are set per run")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the base config")
    equal_steps: bool = Field(True, description="scale the raw corpus' epochs so both corpora get about the same optimizer steps")
    probe: ProbeConfig | None = Field(None, description="build the k-NN probe once and monitor every run with it; "
                                      "null: the base config's monitor.probe (if any)")


class TaskConfig(Section):
    name: str = Field(..., pattern=SAFE_NAME)
    config: Path = Field(..., description="seg config; seed, output_dir and model.init/checkpoint/encoder/finetune_from are set per run")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the seg config")


class ExperimentConfig(Section):
    name: str = Field(..., pattern=SAFE_NAME)
    output_dir: Path
    seeds: list[int] = Field(..., min_length=1, description=f"seeds of pre-training and fine-tuning; at least {RECOMMENDED_SEEDS} "
                             "for a spread worth the name (one seed runs, its table shows no spread)")
    corpus: CorpusConfig
    pretrain: PretrainConfig
    tasks: list[TaskConfig] = Field(..., min_length=1)
    random_encoder: Literal["initial", "independent"] = Field(
        "initial", description="initial: the seeded weights the pre-training of the same seed starts from (checkpoint_0000; "
        "the same for both corpora), so curated - random measures pre-training and not the luck of two random draws; "
        "independent: the segmentation model's own random init (seeded by the seed), the paper's Figure 2c baseline")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @model_validator(mode="after")
    def _distinct_names(self) -> "ExperimentConfig":
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be distinct, got {names}")
        return self


@dataclass(frozen=True)
class Task:
    """One segmentation task: its settings as merged (per-run keys still unset) and the file they came from."""

    name: str
    source: Path
    settings: dict[str, Any]
    eval_items: int


@dataclass(frozen=True)
class Experiment:
    """Everything a run needs, validated: the experiment config, both export configs, the MoCo and seg bases."""

    path: Path
    config: ExperimentConfig
    corpora: dict[str, CemConfig]      # corpus name -> pipeline config whose export writes it
    pretrain_settings: dict[str, Any]  # base MoCo mapping with the overrides merged in
    pretrain_base: Path                # folder the MoCo config's relative paths resolve against
    arch: str                          # the pre-trained encoder's arch, also the random condition's
    probe_images: list[Path]
    probe_masks: list[Path]
    tasks: list[Task]

    @property
    def output_dir(self) -> Path:
        return self.config.output_dir

    @property
    def seeds(self) -> list[int]:
        return self.config.seeds


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_key(settings: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    for part in key[:-1]:
        settings = settings.setdefault(part, {})
    settings[key[-1]] = value


def _paths(mapping: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for key, value in mapping.items():
        path = (*prefix, str(key))
        found.append(path)
        if isinstance(value, dict):
            found += _paths(value, path)
    return found


def reject_per_run_keys(overrides: dict[str, Any], reserved: tuple[tuple[str, ...], ...], origin: str) -> None:
    """An override that touches a key the experiment sets per run is an error, not a silent no-op."""
    for path in _paths(overrides):
        for key in reserved:
            if path[: len(key)] == key:
                raise ConfigError(f"{origin}: '{'.'.join(path)}' cannot be overridden: the experiment sets it per run")


def _expand(path: Path, base: Path) -> Path:
    path = Path(os.path.expandvars(str(path))).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def parse_experiment_config(data: dict[str, Any], origin: str, base: Path) -> ExperimentConfig:
    """Validate the mapping; relative paths resolve against `base` (the YAML file's folder)."""
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, ExperimentConfig, origin)) from None
    config.output_dir = _expand(config.output_dir, base)
    config.corpus.pipeline = _expand(config.corpus.pipeline, base)
    config.pretrain.config = _expand(config.pretrain.config, base)
    if config.pretrain.probe is not None:
        config.pretrain.probe.images = _expand(config.pretrain.probe.images, base)
        config.pretrain.probe.masks = _expand(config.pretrain.probe.masks, base)
    for task in config.tasks:
        task.config = _expand(task.config, base)
    return config


def _require_file(path: Path, key: str, origin: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{origin}: {key}: {path} does not exist")


def _image_files(spec: Path, key: str, origin: str) -> list[Path]:
    """A folder's image files, or a glob's matches, in natural-sort order (as `cem train probe-set`)."""
    if spec.is_dir():
        found = [p for p in spec.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        found = [Path(p) for p in glob.glob(str(spec)) if Path(p).is_file()]
    if not found:
        raise ConfigError(f"{origin}: {key}: {spec}: no image files (a folder of {', '.join(IMAGE_SUFFIXES)} or a glob)")
    return sorted(found, key=lambda p: (natural_key(p), str(p)))


def corpus_configs(config: CorpusConfig, origin: str) -> dict[str, CemConfig]:
    """The pipeline config twice: its own export selection under the curated name, every patch under the raw name."""
    _require_file(config.pipeline, "corpus.pipeline", origin)
    pipeline = load_config(config.pipeline)
    if pipeline.export.shard_size_gb is not None:
        raise ConfigError(f"{config.pipeline}: export.shard_size_gb splits an export into several .beton files; "
                          "MoCo pre-training reads one (remove it for the experiment)")
    # a missing manifest or source fails here: ingest would skip the source and silently shrink both corpora
    items, errors = expand_all(specs_of(pipeline.ingest))
    if errors:
        raise ConfigError("\n".join(f"{config.pipeline}: source '{e.dataset}': {e.file}: {e.reason}" for e in errors))
    if not items:
        raise ConfigError(f"{config.pipeline}: ingest.sources lists no sources")
    curated_name = config.curated_export or pipeline.export.name
    raw_name = config.raw_export or f"{curated_name}-raw"
    if raw_name == curated_name:
        raise ConfigError(f"{origin}: corpus.raw_export '{raw_name}' is the curated export's name (both live in one export folder)")
    curated = pipeline.model_copy(deep=True)
    curated.export.name = curated_name
    raw = pipeline.model_copy(deep=True)
    raw.export.name = raw_name
    raw.export.selection = "TRUE"
    return {"curated": curated, "raw": raw}


def pretrain_settings(config: PretrainConfig, origin: str) -> dict[str, Any]:
    """The base MoCo mapping with the overrides merged in, validated with placeholder per-run values."""
    _require_file(config.config, "pretrain.config", origin)
    where = f"{config.config} (with pretrain.overrides of {origin})"
    reserved = MOCO_PER_RUN + ((("monitor", "probe"),) if config.probe is not None else ())
    reject_per_run_keys(config.overrides, reserved, f"{origin}: pretrain.overrides")
    settings = deep_merge(read_yaml_mapping(config.config), config.overrides)
    moco = moco_config(settings, config.config.parent, Path("placeholder.beton"), Path("placeholder"), seed=0,
                       origin=where)
    moco.bn_splits(moco.runtime.nproc)
    if config.probe is None and moco.monitor.probe is not None:
        _require_file(moco.monitor.probe, "monitor.probe", where)
    return settings


def moco_config(settings: dict[str, Any], base: Path, beton: Path, out: Path, seed: int, origin: str,
                epochs: int | None = None, probe: Path | None = None) -> MocoConfig:
    """One pre-training run's MoCo config: the merged settings with this run's input, output and seed."""
    run = copy.deepcopy(settings)
    set_key(run, ("data", "beton"), str(beton))
    set_key(run, ("data", "manifest"), None)
    set_key(run, ("output", "dir"), str(out))
    set_key(run, ("output", "resume"), None)
    set_key(run, ("output", "save_initial"), True)
    set_key(run, ("runtime", "seed"), seed)
    if epochs is not None:
        set_key(run, ("optim", "epochs"), epochs)
    if probe is not None:
        set_key(run, ("monitor", "probe"), str(probe))
    return parse_moco_config(run, origin=origin, base=base)


def seg_config(settings: dict[str, Any], out: Path, seed: int, encoder: str, checkpoint: Path | None, origin: str) -> SegConfig:
    """One fine-tune's seg config: frozen encoder of `encoder`'s arch, random or from `checkpoint`;
    data.root resolved against the current directory (the seg configs' rule) and stored absolute."""
    run = copy.deepcopy(settings)
    run["seed"] = seed
    run["output_dir"] = str(out)
    model = run.setdefault("model", {})
    model.update({"init": "random" if checkpoint is None else "checkpoint", "encoder": encoder, "finetune_from": "none"})
    model.pop("checkpoint", None)
    if checkpoint is not None:
        model["checkpoint"] = str(checkpoint)
    config = parse_seg_config(run, origin=origin)
    config.data.root = str(resolve_path(config.data.root))
    return config


def load_task(task: TaskConfig, encoder: str, origin: str) -> Task:
    """A task's merged settings, validated for both kinds of encoder, its data read once."""
    _require_file(task.config, f"tasks[{task.name}].config", origin)
    where = f"{task.config} (with tasks[{task.name}].overrides of {origin})"
    reject_per_run_keys(task.overrides, SEG_PER_RUN, f"{origin}: tasks[{task.name}].overrides")
    settings = deep_merge(read_yaml_mapping(task.config), task.overrides)
    seg_config(settings, Path("placeholder"), 0, encoder, Path("placeholder.pth.tar"), where)
    config = seg_config(settings, Path("placeholder"), 0, encoder, None, where)
    try:
        bench = load_benchmark(config.data, train=True, evaluate=True)
    except DatasetError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not bench.train_images:
        raise ConfigError(f"{where}: no training images (data.train / data.train_volumes)")
    labelled = sum(item.mask is not None for item in bench.eval_items)
    if not labelled:
        raise ConfigError(f"{where}: no labelled evaluation items (data.eval / data.eval_volumes)")
    return Task(task.name, task.config, settings, labelled)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate the experiment and every config and input file it names; ConfigError otherwise."""
    path = Path(path).expanduser().resolve()
    origin = str(path)
    config = parse_experiment_config(read_yaml_mapping(path), origin, path.parent)
    corpora = corpus_configs(config.corpus, origin)
    settings = pretrain_settings(config.pretrain, origin)
    arch = moco_config(settings, config.pretrain.config.parent, Path("placeholder.beton"), Path("placeholder"), 0,
                       origin).model.arch
    images: list[Path] = []
    masks: list[Path] = []
    if config.pretrain.probe is not None:
        images = _image_files(config.pretrain.probe.images, "pretrain.probe.images", origin)
        masks = _image_files(config.pretrain.probe.masks, "pretrain.probe.masks", origin)
        if len(images) != len(masks):
            raise ConfigError(f"{origin}: pretrain.probe: {len(images)} images but {len(masks)} masks (paired by position)")
    tasks = [load_task(task, arch, origin) for task in config.tasks]
    return Experiment(path, config, corpora, settings, config.pretrain.config.parent, arch, images, masks, tasks)
