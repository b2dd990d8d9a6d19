"""The one place the filter reads patch pixels: ingest's re-extraction (`patches.read_patches`)."""
from __future__ import annotations

from ..patches import read_patches

__all__ = ["read_patches"]
