"""Fingerprinted incremental ingest: a re-run recomputes exactly the volumes whose source or pixel-affecting
settings changed, and its catalog and store equal a fresh run with the new settings; removed sources vanish."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from PIL import Image

from cem_pipeline.core.catalog import read_table
from cem_pipeline.core.config import ClusterConfig, parse_config
from cem_pipeline.core.workdir import Workdir
from cem_pipeline.ingest.graph import done_marker, part_path, run_ingest


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from cem_pipeline.core.cluster import open_client

    with open_client(ClusterConfig(n_workers=1, memory_limit="2GiB"), tmp_path_factory.mktemp("logs")) as c:
        yield c


def _textured(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Noise on a gradient, so that percentiles, invert and hashes all matter."""
    gradient = np.linspace(0, 1, shape[-1])[None, None, :] * np.linspace(0.5, 1, shape[-2])[None, :, None]
    values = 2000 * gradient + rng.normal(0, 300, shape) + 1000
    return np.clip(values, 0, np.iinfo(dtype).max).astype(dtype).reshape(shape)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(5)
    tifffile.imwrite(root / "vol_a.tif", _textured(rng, (120, 230, 240), np.uint16))
    tifffile.imwrite(root / "vol_c.tif", _textured(rng, (3, 240, 230), np.uint16))
    Image.fromarray(_textured(rng, (1, 300, 250), np.uint8)[0]).save(root / "img_b.png")
    return {
        "a": {"name": "a", "path": str(root / "vol_a.tif"), "voxel_size": [40, 6, 6]},
        "b": {"name": "b", "path": str(root / "img_b.png")},
        "c": {"name": "c", "path": str(root / "vol_c.tif"), "voxel_size": [30, 5, 5]},
    }


def _config(workdir, specs: list[dict], **ingest):
    return parse_config({"workdir": str(workdir), "seed": 2, "ingest": {"sources": specs, "block_mb": 4, **ingest}})


def _state(workdir) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    catalog = read_table(workdir).sort_values("patch_id").reset_index(drop=True)
    group = zarr.open_group(Workdir(workdir).store, mode="r")
    arrays = {f"{d}/{k}": group[d][k][:] for d in sorted(group.group_keys()) for k in sorted(group[d].array_keys())}
    return catalog, arrays


def _assert_same(got_workdir, want_workdir) -> None:
    got_catalog, got_arrays = _state(got_workdir)
    want_catalog, want_arrays = _state(want_workdir)
    pd.testing.assert_frame_equal(got_catalog, want_catalog)
    assert got_arrays.keys() == want_arrays.keys()
    for key, array in want_arrays.items():
        assert np.array_equal(got_arrays[key], array), key


@pytest.fixture(scope="module")
def base(tmp_path_factory, client, sources):
    """A finished ingest of a, b, c with the default settings; tests copy it and change one thing."""
    workdir = tmp_path_factory.mktemp("base") / "work"
    summary = run_ingest(_config(workdir, list(sources.values())), client, progress=False)
    assert (summary.ingested, summary.skipped, summary.errors) == (3, 0, [])
    return workdir


def _rerun(base, tmp_path, client, specs: list[dict], **ingest):
    """Re-run on a copy of the base workdir and fresh in an empty one; returns the re-run's summary."""
    shutil.copytree(base, tmp_path / "rerun")
    summary = run_ingest(_config(tmp_path / "rerun", specs, **ingest), client, progress=False)
    fresh = run_ingest(_config(tmp_path / "fresh", specs, **ingest), client, progress=False)
    assert not summary.errors and not fresh.errors
    _assert_same(tmp_path / "rerun", tmp_path / "fresh")
    return summary


def test_unchanged_rerun_skips_everything(base, tmp_path, client, sources):
    shutil.copytree(base, tmp_path / "rerun")
    summary = run_ingest(_config(tmp_path / "rerun", list(sources.values())), client, progress=False)
    assert (summary.skipped, summary.ingested, summary.removed) == (3, 0, [])
    _assert_same(tmp_path / "rerun", base)


@pytest.mark.parametrize("change", [{"invert": True}, {"voxel_size": [6, 6, 6]}], ids=["invert", "voxel_size"])
def test_changed_manifest_entry_recomputes_exactly_that_volume(base, tmp_path, client, sources, change):
    specs = [sources["a"] | change, sources["b"], sources["c"]]
    summary = _rerun(base, tmp_path, client, specs)
    assert (summary.ingested, summary.skipped) == (1, 2)
    if "voxel_size" in change:  # isotropic now: xz/yz planes appear
        assert set(read_table(tmp_path / "rerun").query("dataset == 'a'")["axis"]) == {"xy", "xz", "yz"}


@pytest.mark.parametrize("setting", [{"intensity": "dtype_max"}, {"patch_size": 112, "min_edge": 56}],
                         ids=["intensity", "patch_size"])
def test_changed_ingest_setting_recomputes_every_volume(base, tmp_path, client, sources, setting):
    summary = _rerun(base, tmp_path, client, list(sources.values()), **setting)
    assert (summary.ingested, summary.skipped) == (3, 0)


def test_new_file_content_recomputes_that_volume(base, tmp_path, client, sources, tmp_path_factory):
    changed = tmp_path_factory.mktemp("changed") / "vol_c.tif"
    tifffile.imwrite(changed, _textured(np.random.default_rng(99), (3, 240, 230), np.uint16))
    shutil.copytree(base, tmp_path / "rerun")
    original = shutil.copy2(sources["c"]["path"], tmp_path / "original.tif")
    try:
        shutil.copy(changed, sources["c"]["path"])  # same path, new content and mtime
        summary = run_ingest(_config(tmp_path / "rerun", list(sources.values())), client, progress=False)
        fresh = run_ingest(_config(tmp_path / "fresh", list(sources.values())), client, progress=False)
    finally:
        shutil.copy2(original, sources["c"]["path"])  # content and mtime as before, for the other tests
    assert (summary.ingested, summary.skipped) == (1, 2)
    assert not fresh.errors
    _assert_same(tmp_path / "rerun", tmp_path / "fresh")


def test_removed_source_loses_rows_arrays_and_marker(base, tmp_path, client, sources):
    summary = _rerun(base, tmp_path, client, [sources["a"], sources["c"]])
    assert (summary.ingested, summary.skipped, summary.removed) == (0, 2, ["b/img_b"])
    assert any("REMOVED b/img_b" in line for line in summary.lines())
    workdir = Workdir(tmp_path / "rerun")
    assert "b" not in set(read_table(workdir.root)["dataset"])
    assert not done_marker(workdir, "b/img_b").exists() and not part_path(workdir, "b/img_b").exists()
    assert "img_b" not in zarr.open_group(workdir.store, mode="r")["b"]


@pytest.mark.parametrize("damage", ["catalog_part", "chunk"])
def test_marker_of_damaged_volume_is_not_trusted(base, tmp_path, client, sources, damage):
    shutil.copytree(base, tmp_path / "rerun")
    workdir = Workdir(tmp_path / "rerun")
    if damage == "catalog_part":
        part_path(workdir, "c/vol_c").unlink()
    else:
        next(p for p in (workdir.store / "a" / "vol_a" / "c").rglob("*") if p.is_file()).unlink()
    summary = run_ingest(_config(workdir.root, list(sources.values())), client, progress=False)
    assert (summary.ingested, summary.skipped) == (1, 2)
    _assert_same(workdir.root, base)
