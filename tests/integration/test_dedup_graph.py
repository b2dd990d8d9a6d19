"""Dedup over a catalog through Dask: per-group results equal the reference, incremental state is correct,
and `cem dedup CONFIG --show N` prints the table and writes the montage. Catalog and store are built here
from real EM slices (../shared) following catalog.CATALOG_SCHEMA and the store.py layout."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cem_pipeline.core import catalog
from cem_pipeline.core.cluster import open_client
from cem_pipeline.core.config import ClusterConfig, parse_config
from cem_pipeline.core.store import create_volume, write_region
from cem_pipeline.dedup import graph
from cem_pipeline.dedup.graph import (
    Group,
    check_memory,
    dedup_group,
    list_groups,
    run_dedup,
)
from cem_pipeline.dedup.kernel import group_rng, max_distance
from cem_pipeline.dedup.reference import reference_clusters

P = 224


def _slices(shared_em: Path) -> dict[str, dict[str, np.ndarray]]:
    """dataset -> volume -> (Z, Y, X) uint8 stack of real consecutive slices."""
    from PIL import Image

    def stack(files):
        return np.stack([np.asarray(Image.open(f).convert("L")) for f in files])

    root = shared_em
    return {
        "cdeep3m": {
            "training": stack(sorted((root / "cdeep3m_mito_sbem" / "training" / "images").glob("images.*.png"))[:12]),
            "validation": stack(sorted((root / "cdeep3m_mito_sbem" / "validation" / "images").glob("*.png"))[:6]),
        },
        "isbi": {"train": stack(sorted((root / "isbi2012_drosophila_l1_vnc_sstem" / "train" / "image").glob("*.png"))[:20])},
        "snemi": {"stack": stack(sorted((root / "snemi3d_kasthuri2015_atum_sem" / "stack_clahe").glob("*.png"))[:8])},
    }


def _add_dataset(workdir: Path, dataset: str, volumes: dict[str, np.ndarray]) -> pd.DataFrame:
    """Write the volumes into store.zarr and their full 224-px xy tiles (stride 112: overlapping tiles are
    near-duplicates too) into the catalog, hashed with the project's dHash."""
    from cem_pipeline.ingest.hashing import dhash_patches

    store = workdir / "store.zarr"
    rows = []
    for volume, data in volumes.items():
        path = f"{dataset}/{volume}"
        create_volume(store, path, data.shape, (8, P, P), {"source_file": volume})
        write_region(store, path, (slice(None), slice(None), slice(None)), data)
        for z in range(data.shape[0]):
            for y in range(0, data.shape[1] - P + 1, P // 2):
                for x in range(0, data.shape[2] - P + 1, P // 2):
                    rows.append((path, z, y, x, data[z, y:y + P, x:x + P]))
    frame = pd.DataFrame({
        "patch_id": [catalog.patch_id(dataset, r[0], "xy", r[1], r[2], r[3]) for r in rows],
        "volume": [r[0] for r in rows], "source_file": "real", "axis": "xy",
        "slice": np.array([r[1] for r in rows], np.int32), "y": np.array([r[2] for r in rows], np.int32),
        "x": np.array([r[3] for r in rows], np.int32), "h": np.int32(P), "w": np.int32(P),
        "dhash": dhash_patches(np.stack([r[4] for r in rows])),
        "mean": np.float32(0), "std": np.float32(0),
    })
    directory = catalog.catalog_dir(workdir) / f"dataset={dataset}"
    directory.mkdir(parents=True, exist_ok=True)
    schema = catalog.CATALOG_SCHEMA.remove(catalog.CATALOG_SCHEMA.get_field_index("dataset"))
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), directory / "part.parquet")
    return frame


@pytest.fixture(scope="module")
def real_slices(shared_em):
    return _slices(shared_em)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    config = ClusterConfig(n_workers=1, threads_per_worker=2, memory_limit="2GiB")
    with open_client(config, tmp_path_factory.mktemp("logs")) as c:
        yield c


@pytest.fixture
def workdir(tmp_path, real_slices) -> Path:
    for name in ("cdeep3m", "isbi"):
        _add_dataset(tmp_path, name, real_slices[name])
    return tmp_path


def _expected(workdir: Path, group: Group, t: int, seed: int) -> pd.DataFrame:
    """The reference loop on the group's patches in the documented order (sorted ids, group_rng shuffle)."""
    table = catalog.read_table(workdir, ["patch_id", "dhash"], filter=group.filter()).sort_values("patch_id")
    ids = table["patch_id"].to_numpy()
    order = group_rng(seed, group.key).permutation(ids.size)
    clusters = reference_clusters(table["dhash"].to_numpy(np.uint64)[order], t)
    return pd.DataFrame({"patch_id": ids[order], "cluster_id": ids[order][clusters.leader],
                         "distance_to_leader": clusters.distance}).set_index("patch_id").sort_index()


def _result(workdir: Path) -> pd.DataFrame:
    return catalog.read_stage(workdir, "dedup").set_index("patch_id").sort_index()


@pytest.mark.shared_data
@pytest.mark.parametrize("rule", ["le", "lt"])
def test_groups_equal_reference(client, workdir, rule):
    summary = run_dedup(client, workdir, 12, rule, ["dataset"], seed=3)
    assert sorted(summary["group"]) == ['[["dataset", "cdeep3m"]]', '[["dataset", "isbi"]]']
    assert summary["computed"].all()
    result = _result(workdir)
    assert result.index.is_unique and len(result) == len(catalog.read_table(workdir, ["patch_id"]))
    assert result["cluster_id"].dtype == np.int64 and result["is_exemplar"].dtype == bool
    for group in list_groups(workdir, ["dataset"]):
        expected = _expected(workdir, group, max_distance(12, rule), 3)
        got = result.loc[expected.index]
        np.testing.assert_array_equal(got["cluster_id"], expected["cluster_id"])
        np.testing.assert_array_equal(got["distance_to_leader"], expected["distance_to_leader"])
        np.testing.assert_array_equal(got["is_exemplar"], expected.index == expected["cluster_id"])
    # Real adjacent slices and overlapping tiles do collapse, and exemplars lead their own clusters.
    assert result["is_exemplar"].sum() < 0.9 * len(result)
    exemplars = result[result["is_exemplar"]]
    assert (exemplars.index == exemplars["cluster_id"]).all()


@pytest.mark.shared_data
def test_incremental_recomputes_only_what_changed(client, workdir, real_slices):
    first = run_dedup(client, workdir, 12, "le", ["dataset"], seed=0).set_index("group")
    assert first["computed"].all()
    before = _result(workdir)
    again = run_dedup(client, workdir, 12, "le", ["dataset"], seed=0)
    assert not again["computed"].any()

    _add_dataset(workdir, "snemi", real_slices["snemi"])
    added = run_dedup(client, workdir, 12, "le", ["dataset"], seed=0).set_index("group")
    assert added["computed"].to_dict() == {'[["dataset", "cdeep3m"]]': False, '[["dataset", "isbi"]]': False,
                                           '[["dataset", "snemi"]]': True}
    pd.testing.assert_frame_equal(_result(workdir).loc[before.index], before)

    # A re-ingested dataset with different content (fewer slices) is recomputed; the others are not.
    shutil.rmtree(catalog.catalog_dir(workdir) / "dataset=isbi")
    _add_dataset(workdir, "isbi", {"train": real_slices["isbi"]["train"][:10]})
    changed = run_dedup(client, workdir, 12, "le", ["dataset"], seed=0).set_index("group")
    assert changed["computed"].to_dict() == {'[["dataset", "cdeep3m"]]': False, '[["dataset", "isbi"]]': True,
                                             '[["dataset", "snemi"]]': False}

    for distance, rule, seed in ((10, "le", 0), (10, "lt", 0), (10, "lt", 1)):
        assert run_dedup(client, workdir, distance, rule, ["dataset"], seed)["computed"].all()
    assert not run_dedup(client, workdir, 10, "lt", ["dataset"], 1)["computed"].any()
    for group in list_groups(workdir, ["dataset"]):
        expected = _expected(workdir, group, max_distance(10, "lt"), 1)
        np.testing.assert_array_equal(_result(workdir).loc[expected.index, "cluster_id"], expected["cluster_id"])


@pytest.mark.shared_data
def test_regrouping_replaces_parts(client, workdir):
    run_dedup(client, workdir, 12, "le", ["dataset"], seed=0)
    per_volume = run_dedup(client, workdir, 12, "le", ["dataset", "volume"], seed=0)
    assert len(per_volume) == 3  # cdeep3m training + validation, isbi train
    joined = catalog.read_catalog(workdir)
    assert joined["patch_id"].is_unique and joined["cluster_id"].notna().all()
    volume_of = joined.set_index("patch_id")["volume"]
    assert (volume_of.loc[joined["cluster_id"]].to_numpy() == joined["volume"].to_numpy()).all()

    run_dedup(client, workdir, 12, "le", "global", seed=0)
    parts = sorted(p.stem for p in catalog.stage_dir(workdir, "dedup").glob("*.parquet"))
    assert parts == ["global"]
    (group,) = list_groups(workdir, "global")
    expected = _expected(workdir, group, 12, 0)
    np.testing.assert_array_equal(_result(workdir).loc[expected.index, "cluster_id"], expected["cluster_id"])


@pytest.mark.shared_data
def test_crash_between_part_and_state_never_serves_a_stale_part(workdir, monkeypatch):
    """d=12 done; a d=10 run dies after writing its part, before its state; asking for d=12 again must
    recompute (the paper's "output exists" check would serve the d=10 part)."""
    group = list_groups(workdir, ["dataset"])[0]
    assert dedup_group(str(workdir), group, 12, "le", 0)["computed"]

    write_part = catalog.write_stage_part

    def write_then_die(*args, **kwargs):
        write_part(*args, **kwargs)
        raise RuntimeError("worker died")

    with monkeypatch.context() as patch:
        patch.setattr(graph.catalog, "write_stage_part", write_then_die)
        with pytest.raises(RuntimeError, match="worker died"):
            dedup_group(str(workdir), group, 10, "le", 0)
    assert dedup_group(str(workdir), group, 12, "le", 0)["computed"]
    expected = _expected(workdir, group, 12, 0)
    np.testing.assert_array_equal(_result(workdir).loc[expected.index, "cluster_id"], expected["cluster_id"])
    assert not dedup_group(str(workdir), group, 12, "le", 0)["computed"]


def test_group_too_big_for_a_worker_fails_before_submitting(client):
    check_memory([Group((("dataset", "fits"),), 1_000_000)], client)
    with pytest.raises(ValueError, match="needs ~2.4 GiB.*memory_limit"):
        check_memory([Group((("dataset", "huge"),), 20_000_000)], client)


def test_unknown_group_column_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown catalog column"):
        list_groups(tmp_path, ["dataset", "organism"])
    with pytest.raises(Exception, match="group_by"):
        parse_config({"dedup": {"group_by": []}})


@pytest.mark.shared_data
def test_cli_table_and_montage(workdir):
    from PIL import Image
    from typer.testing import CliRunner

    from cem_pipeline.cli import app

    config = workdir / "cem.yaml"
    config.write_text(yaml.safe_dump({
        "workdir": str(workdir), "seed": 0,
        "cluster": {"n_workers": 1, "threads_per_worker": 1, "memory_limit": "2GiB"},
        "dedup": {"distance": 12, "rule": "le", "montage_members": 4},
    }))
    result = CliRunner().invoke(app, ["dedup", str(config), "--show", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "2 recomputed" in lines[0]
    assert [line.split()[0] for line in lines[2:5]] == ["cdeep3m", "isbi", "TOTAL"]
    raw = int(lines[4].split()[1].replace(",", ""))
    assert raw == len(catalog.read_table(workdir, ["patch_id"]))
    montage = Image.open(workdir / "reports" / "dedup_montage.png")
    assert montage.size[1] > 3 * 112 and np.asarray(montage).std() > 10
    assert "montage:" in lines[-1]
