"""Shared fixtures: the real EM data and a running SLURM.

The real EM is looked up exactly as `cem bench` does (cem_pipeline.bench.em_data.require_em_data:
$CEM_EM_DATA, else $CEM_SHARED_EM, else ../shared/data/em beside the checkout). Both skip when
absent, except when CI sets REQUIRE_SHARED_DATA=1 / REQUIRE_SLURM=1: then a missing resource fails
the test instead of hiding it behind a skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _missing(what: str, variable: str) -> None:
    if os.environ.get(variable) == "1":
        pytest.fail(f"{what} is required ({variable}=1) but not available")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def shared_em() -> Path:
    """Root of the real EM data (by default ../shared/data/em)."""
    from cem_pipeline.bench.em_data import require_em_data
    from cem_pipeline.bench.errors import EmDataNotFound

    try:
        return require_em_data()
    except EmDataNotFound as exc:
        _missing(str(exc), "REQUIRE_SHARED_DATA")


@pytest.fixture(scope="session")
def cdeep3m_volume(shared_em: Path) -> np.ndarray:
    """The 20 consecutive cdeep3m SBEM training slices as a (20, 1024, 1024) uint8 volume."""
    from cem_pipeline.bench.em_data import cdeep3m_stack

    return cdeep3m_stack(shared_em)


@pytest.fixture(scope="session")
def slurm() -> None:
    """A SLURM controller that answers (start one with deploy/slurm/start-local-slurm.sh)."""
    if shutil.which("sinfo") is None:
        _missing("SLURM (sinfo not on PATH)", "REQUIRE_SLURM")
    result = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in result.stdout:
        _missing("a running slurmctld", "REQUIRE_SLURM")
