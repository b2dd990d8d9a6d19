"""The sidecar files `cem export` writes next to each .beton: `<stem>.manifest.parquet` (row ->
patch_id, dataset, provenance) and one `<name>.json` per export (file list, normalisation mean/std
of [0, 1]-scaled pixels, dataset names, fields). Trainers read mean/std for normalisation and the
rows to map loader rows back to catalog patches.

This module is the contract between `cem export` (which writes these files) and the trainers
(which read them): the .beton field schema, the JSON version and the manifest reader live here
and nowhere else."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

META_VERSION = 1
CORE_FIELDS = ("image", "patch_id", "dataset", "h", "w")


def beton_fields(size: int, label_kinds: dict[str, str]) -> dict:
    from ffcv.fields import FloatField, IntField, NDArrayField

    fields = {"image": NDArrayField(np.dtype("uint8"), (size, size)), "patch_id": IntField(), "dataset": IntField(),
              "h": IntField(), "w": IntField()}
    for name, kind in label_kinds.items():
        fields[name] = IntField() if kind == "int" else FloatField()
    return fields


@dataclass(frozen=True)
class ExportManifest:
    meta_path: Path
    mean: float
    std: float
    patch_size: int
    edge_patches: str
    datasets: list[str]
    files: list[str]
    fields: list[str]
    rows: pd.DataFrame  # row, patch_id, dataset, dataset_index, volume, axis, slice, y, x, h, w (+ file)
    raw: dict


def _beton_name(path: Path) -> str | None:
    if path.name.endswith(".manifest.parquet"):
        return path.name.removesuffix(".manifest.parquet") + ".beton"
    if path.suffix == ".beton":
        return path.name
    return None


def _find_meta(directory: Path, beton: str) -> Path:
    for candidate in sorted(directory.glob("*.json")):
        try:
            meta = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and beton in meta.get("files", []):
            return candidate
    raise FileNotFoundError(f"{directory / beton}: no export JSON in {directory} lists it (was it written by `cem export`?)")


def _rows(directory: Path, beton: str) -> pd.DataFrame:
    path = directory / (beton.removesuffix(".beton") + ".manifest.parquet")
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest of {beton} not found")
    return pd.read_parquet(path).assign(file=beton)


def read_manifest(path: str | Path) -> ExportManifest:
    """Sidecar of an export, from a .beton, its .manifest.parquet, or the export .json: `rows` is
    that one file's rows, or every file's rows when given the JSON."""
    path = Path(path)
    beton = _beton_name(path)
    meta_path = path if beton is None else _find_meta(path.parent, beton)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path}: not a readable export JSON ({exc})") from None
    try:
        files = list(meta["files"])
        rows = pd.concat([_rows(meta_path.parent, f) for f in ([beton] if beton else files)], ignore_index=True)
        return ExportManifest(meta_path, float(meta["mean"]), float(meta["std"]), int(meta["patch_size"]),
                              str(meta["edge_patches"]), list(meta["datasets"]), files, list(meta["fields"]), rows, meta)
    except KeyError as exc:
        raise ValueError(f"{meta_path}: export JSON lacks key {exc}") from None
