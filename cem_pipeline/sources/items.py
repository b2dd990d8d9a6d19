"""What a manifest expands to: one `VolumeItem` per volume to read, one `SourceError` per source that cannot be.

A module of its own so that the readers and the manifest both use it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VolumeItem:
    """One volume to ingest: everything a worker needs to open it, and nothing unpicklable."""

    dataset: str
    key: str
    format: str
    files: tuple[str, ...]
    source: str
    dataset_path: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    invert: bool = False
    samples: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def array_path(self) -> str:
        return f"{self.dataset}/{self.key}"


@dataclass(frozen=True)
class SourceError:
    dataset: str
    file: str
    reason: str
