"""The labels table (Workdir.labels): one row per labelled patch, the latest decision wins.

Written atomically after every decision, so the labelling page can be closed at any moment and
resumed later without losing or duplicating work.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cem_pipeline.core.atomic import atomic_path

LABELS = ("informative", "uninformative", "skip")
LABELS_SCHEMA = pa.schema([("patch_id", pa.int64()), ("label", pa.string()), ("time", pa.timestamp("us", tz="UTC"))])


class LabelsError(ValueError):
    """A labels file that cannot be used; the message names the file and the reason."""


def empty_labels() -> pd.DataFrame:
    return LABELS_SCHEMA.empty_table().to_pandas()


def validate_labels(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Check columns and label values; `time` is filled with now when the source has none (imports)."""
    missing = {"patch_id", "label"} - set(frame.columns)
    if missing:
        raise LabelsError(f"{origin}: labels table lacks columns {sorted(missing)}; need patch_id, label[, time]")
    labels = frame["label"]
    if pd.api.types.is_numeric_dtype(labels):  # 1 / 0 truth, as the demo corpus gives it
        labels = labels.map({1: "informative", 0: "uninformative"}).fillna(labels.astype(str))
    labels = labels.astype(str)
    bad = sorted(set(labels) - set(LABELS))
    if bad:
        raise LabelsError(f"{origin}: unknown labels {bad}; allowed: {', '.join(LABELS)} (or 1 / 0)")
    out = pd.DataFrame(
        {
            "patch_id": frame["patch_id"].astype("int64"),
            "label": labels,
            "time": pd.to_datetime(frame["time"], utc=True) if "time" in frame else pd.Timestamp.now(tz="UTC"),
        }
    )
    return out.reset_index(drop=True)


def read_labels(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        return empty_labels()
    try:
        frame = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise LabelsError(f"{path}: not a readable Parquet labels table ({exc})") from None
    return validate_labels(frame, str(path))


def write_labels(path: Path, frame: pd.DataFrame) -> Path:
    path = Path(path)
    table = pa.Table.from_pandas(validate_labels(frame, str(path)), schema=LABELS_SCHEMA, preserve_index=False)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return path


def merge_labels(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Latest decision per patch wins (a relabel replaces, never duplicates)."""
    frames = [f for f in (old, new) if len(f)]
    if not frames:
        return empty_labels()
    both = pd.concat(frames, ignore_index=True)
    return both.drop_duplicates("patch_id", keep="last").reset_index(drop=True)


def record_labels(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    merged = merge_labels(read_labels(path), validate_labels(new, str(path)))
    write_labels(path, merged)
    return merged


def import_labels(path: Path, source: Path) -> pd.DataFrame:
    """Add labels from a Parquet or CSV file (patch_id, label[, time]), e.g. the demo corpus's known labels."""
    source = Path(source)
    try:
        frame = pd.read_csv(source) if source.suffix.lower() == ".csv" else pq.read_table(source).to_pandas()
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise LabelsError(f"{source}: cannot read labels ({exc})") from None
    return record_labels(path, validate_labels(frame, str(source)))


def training_targets(labels: pd.DataFrame) -> pd.DataFrame:
    """patch_id and target (1 informative, 0 uninformative); skipped patches are not training data."""
    kept = labels[labels["label"] != "skip"]
    return pd.DataFrame({"patch_id": kept["patch_id"].to_numpy(), "target": (kept["label"] == "informative").to_numpy(np.int64)})


def balance(labels: pd.DataFrame) -> dict[str, int]:
    counts = labels["label"].value_counts()
    return {name: int(counts.get(name, 0)) for name in LABELS}
