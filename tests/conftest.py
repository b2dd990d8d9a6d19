"""Shared fixtures: the real EM data in ../shared/data/em and a running SLURM.

Both skip when absent, except when CI sets REQUIRE_SHARED_DATA=1 / REQUIRE_SLURM=1: then a
missing resource fails the test instead of hiding it behind a skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_EM = Path(os.environ.get("CEM_SHARED_EM", REPO.parent / "shared" / "data" / "em"))


def _missing(what: str, variable: str) -> None:
    if os.environ.get(variable) == "1":
        pytest.fail(f"{what} is required ({variable}=1) but not available")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def shared_em() -> Path:
    """Root of the real EM data (../shared/data/em)."""
    if not (SHARED_EM / "README.md").exists():
        _missing(f"real EM data at {SHARED_EM}", "REQUIRE_SHARED_DATA")
    return SHARED_EM


@pytest.fixture(scope="session")
def cdeep3m_volume(shared_em: Path) -> np.ndarray:
    """The 20 consecutive cdeep3m SBEM training slices as a (20, 1024, 1024) uint8 volume."""
    from PIL import Image

    files = sorted((shared_em / "cdeep3m_mito_sbem" / "training" / "images").glob("images.*.png"))
    return np.stack([np.asarray(Image.open(f)) for f in files])


@pytest.fixture(scope="session")
def slurm() -> None:
    """A SLURM controller that answers (start one with deploy/slurm/start-local-slurm.sh)."""
    if shutil.which("sinfo") is None:
        _missing("SLURM (sinfo not on PATH)", "REQUIRE_SLURM")
    result = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in result.stdout:
        _missing("a running slurmctld", "REQUIRE_SLURM")
