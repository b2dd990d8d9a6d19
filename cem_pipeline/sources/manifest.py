"""The source manifest: which datasets to ingest, and how each expands into volumes.

A manifest is YAML (a list of entries, or a mapping with key `sources`) or CSV (one row per
entry, columns named like the SourceSpec fields; `voxel_size` as "z y x" or "z,y,x" in nm).
Relative paths resolve against the manifest's directory. Each entry's `path` is one of:

* a file — one volume (2D images are volumes with one z slice);
* a glob (`*`, `?`, `[`) — one volume per matching file, or, with `format: slices`, all matches
  as the z slices of one volume (natural order: 2 < 10);
* a directory — a zarr / OME-Zarr store when it looks like one, else a directory of numbered 2D
  slices forming one volume (when every supported file in it is a 2D image format), else one
  volume per supported file;
* a CloudVolume URL (precomputed://, gs://, s3://, http(s)://, file://) — random samples.

Each volume gets a key that is unique inside its dataset and names its zarr array
"<dataset>/<key>" and its catalog part file; keys come from file names, so they are stable
across runs and machines.
"""
from __future__ import annotations

import csv
import glob
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cem_pipeline.core.config import ConfigError, IngestConfig, SourceSpec, describe_errors
from cem_pipeline.sources.items import SourceError, VolumeItem
from cem_pipeline.sources.readers import (
    CLOUD_PREFIXES,
    EXTENSIONS,
    ReaderError,
    detect_format,
    extension,
)
from cem_pipeline.sources.readers.slices import natural_key

SLICE_FORMATS = {"image2d", "tiff"}


def _csv_value(name: str, value: str) -> Any:
    value = value.strip()
    if value == "":
        return None
    if name == "voxel_size":
        return [float(v) for v in re.split(r"[,;\s]+", value) if v]
    if name == "invert":
        return value.lower() in ("1", "true", "yes", "y")
    return value


def load_manifest(path: str | Path) -> list[SourceSpec]:
    """Parse a YAML or CSV manifest into SourceSpecs; relative paths become absolute."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read source manifest ({exc.strerror})") from None
    if path.suffix.lower() == ".csv":
        rows = [{k.strip(): _csv_value(k.strip(), v or "") for k, v in row.items() if k} for row in csv.DictReader(text.splitlines())]
        entries = [{k: v for k, v in row.items() if v is not None} for row in rows]
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        entries = data.get("sources") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: expected a list of sources (or a mapping with key 'sources')")
    specs = []
    for index, entry in enumerate(entries):
        try:
            spec = SourceSpec.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, SourceSpec, f"{path}: source {index + 1}")) from None
        specs.append(spec.model_copy(update={"path": _absolute(spec.path, path.parent)}))
    return specs


def _absolute(value: str, base: Path) -> str:
    if value.startswith(CLOUD_PREFIXES) or os.path.isabs(os.path.expanduser(value)):
        return os.path.expanduser(value)
    return str((base / value).resolve())


def specs_of(config: IngestConfig) -> list[SourceSpec]:
    if isinstance(config.sources, str):
        return load_manifest(config.sources)
    return [s.model_copy(update={"path": _absolute(s.path, Path.cwd())}) for s in config.sources]


def safe_key(text: str) -> str:
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "volume"
    return key if not key.startswith("__") else "v" + key


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    ext = extension(name)
    return name[: -len(ext)] if ext and name.lower().endswith(ext) else name


def _supported(directory: str) -> list[str]:
    names = [n for n in os.listdir(directory) if not n.startswith(".")]
    files = [os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))]
    return sorted((f for f in files if extension(f) in EXTENSIONS), key=lambda f: natural_key(os.path.basename(f)))


def _item(spec: SourceSpec, key: str, fmt: str, files: list[str]) -> VolumeItem:
    meta = {k: getattr(spec, k) for k in ("imaging", "organism", "tissue") if getattr(spec, k) is not None}
    return VolumeItem(
        dataset=spec.name, key=key, format=fmt, files=tuple(files), source=spec.path, dataset_path=spec.dataset_path,
        voxel_size=spec.voxel_size, invert=spec.invert, samples=spec.samples, metadata=meta,
    )


def _per_file(spec: SourceSpec, files: list[str], root: str) -> list[VolumeItem]:
    items, used = [], set()
    for f in files:
        rel = os.path.relpath(f, root) if root else os.path.basename(f)
        base = safe_key(_stem(rel).replace(os.sep, "_"))
        key, n = base, 2
        while key in used:
            key, n = f"{base}-{n}", n + 1
        used.add(key)
        items.append(_item(spec, key, spec.format, [f]))
    return items


def expand(spec: SourceSpec) -> list[VolumeItem]:
    """The volumes one manifest entry stands for; raises ReaderError when it stands for none."""
    path = spec.path
    if spec.format == "cloudvolume" or path.startswith(CLOUD_PREFIXES):
        return [_item(spec, "samples", "cloudvolume", [path])]
    if glob.has_magic(path):
        files = sorted((f for f in glob.glob(path) if os.path.isfile(f) or f.lower().endswith(".zarr")),
                       key=lambda f: natural_key(f))
        if not files:
            raise ReaderError(path, "the glob matches no files")
        if spec.format == "slices":
            return [_item(spec, safe_key(spec.name), "slices", files)]
        root = os.path.dirname(path.split("*")[0].split("?")[0].split("[")[0])
        return _per_file(spec, files, root)
    if not os.path.exists(path):
        raise ReaderError(path, "file not found")
    if os.path.isdir(path):
        fmt = spec.format if spec.format != "auto" else detect_format(path)
        if fmt == "zarr":
            return [_item(spec, safe_key(_stem(path)), "zarr", [path])]
        files = _supported(path)
        if not files:
            raise ReaderError(path, "directory holds no files of a supported format")
        if fmt == "slices" and (spec.format == "slices" or all(EXTENSIONS[extension(f)] in SLICE_FORMATS for f in files)):
            return [_item(spec, safe_key(_stem(path)), "slices", files)]
        return _per_file(spec, files, path)
    fmt = spec.format if spec.format != "auto" else detect_format(path)
    return [_item(spec, safe_key(_stem(path)), fmt, [path])]


def expand_all(specs: list[SourceSpec]) -> tuple[list[VolumeItem], list[SourceError]]:
    """Every volume of every entry, and an error per entry that expands to nothing usable."""
    items: list[VolumeItem] = []
    errors: list[SourceError] = []
    names = [s.name for s in specs]
    for spec in specs:
        if names.count(spec.name) > 1:
            reason = f"dataset name '{spec.name}' is used by {names.count(spec.name)} manifest entries"
            errors.append(SourceError(spec.name, spec.path, reason))
            continue
        try:
            items.extend(expand(spec))
        except ReaderError as exc:
            errors.append(SourceError(spec.name, exc.path, exc.reason))
    return items, errors
