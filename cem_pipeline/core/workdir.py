"""The one directory that holds everything a run produces, so a run is moved, resumed or deleted as a unit."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def store(self) -> Path:
        """Chunked zarr v3 store of standardised uint8 volumes and images."""
        return self.root / "store.zarr"

    @property
    def catalog(self) -> Path:
        """Parquet dataset, one row per patch, partitioned by dataset."""
        return self.root / "catalog"

    @property
    def errors(self) -> Path:
        return self.root / "errors.parquet"

    @property
    def labels(self) -> Path:
        return self.root / "labels.parquet"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self) -> "Workdir":
        for path in (self.root, self.reports, self.models, self.export, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        return self
