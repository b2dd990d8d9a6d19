"""Export: real EM ingested by `cem ingest`'s run_ingest, written to .beton, read back with ffcv."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cem_pipeline.core.catalog import read_catalog, read_table, write_stage_part
from cem_pipeline.core.config import parse_config
from cem_pipeline.core.patches import open_volume, read_patch
from cem_pipeline.export.blocks import fit_patch
from cem_pipeline.export.select import ExportError, fraction_cap, select_patches
from cem_pipeline.export.writer import run_export

pytestmark = pytest.mark.shared_data


def _config(workdir: Path, **export) -> object:
    return parse_config({"workdir": str(workdir), "seed": 3, "export": {"num_workers": 2, **export}})


@pytest.fixture(scope="module")
def ingested(shared_em: Path, tmp_path_factory) -> Path:
    """isbi2012 (30 ssTEM slices, 512^2) and the FEI SEM image (1094x1536, edge patches) through
    the real ingest."""
    from cem_pipeline.core.cluster import open_client
    from cem_pipeline.ingest.graph import run_ingest

    workdir = tmp_path_factory.mktemp("export") / "ingested"
    config = parse_config({
        "workdir": str(workdir), "cluster": {"n_workers": 1, "threads_per_worker": 2},
        "ingest": {"sources": [
            {"name": "isbi", "path": str(shared_em / "isbi2012_drosophila_l1_vnc_sstem/train/image") + "/*.png",
             "format": "slices"},
            {"name": "fei", "path": str(shared_em / "fei_sem_rbc_imageio/fei-sem-rbc.tif")},
        ]},
    })
    with open_client(config.cluster, workdir / "logs") as client:
        summary = run_ingest(config, client, progress=False)
    assert summary.patches > 100 and not summary.errors
    return workdir


@pytest.fixture(scope="module")
def staged(ingested: Path) -> Path:
    """The ingested workdir plus dedup and score tables as those stages write them."""
    workdir = ingested.parent / "staged"
    shutil.copytree(ingested, workdir)
    base = read_table(workdir, ["patch_id", "mean"])
    write_stage_part(workdir, "dedup", "all", pd.DataFrame({
        "patch_id": base.patch_id, "cluster_id": base.patch_id, "is_exemplar": base.patch_id % 3 != 0,
        "distance_to_leader": np.zeros(len(base), np.int16)}))
    write_stage_part(workdir, "score", "all", pd.DataFrame({
        "patch_id": base.patch_id, "score": base["mean"] / 255.0, "informative": base["mean"] > 60}))
    return workdir


@pytest.fixture(scope="module")
def exported(staged: Path):
    return run_export(_config(staged))


def test_default_selection_without_stages_says_so(ingested: Path) -> None:
    selection = select_patches(ingested, _config(ingested).export, seed=0)
    assert len(selection.rows) == len(read_table(ingested))
    assert any("'dedup' missing" in n for n in selection.notes)
    assert any("'score' missing" in n for n in selection.notes)


def test_every_row_read_by_plain_ffcv_loader_is_the_catalog_patch(staged: Path, exported) -> None:
    from ffcv.loader import Loader, OrderOption

    catalog = read_catalog(staged)
    expected = catalog[catalog.is_exemplar & catalog.informative]
    assert exported.rows == len(expected) > 50
    manifest = pd.read_parquet(exported.files[0].with_name("patches.manifest.parquet"))
    assert set(manifest.patch_id) == set(expected.patch_id)
    assert (manifest.h < 224).any() and (manifest.w < 224).any()  # FEI edge patches are in

    loader = Loader(str(exported.files[0]), batch_size=32, num_workers=2, order=OrderOption.SEQUENTIAL,
                    drop_last=False)
    rows = catalog.set_index("patch_id")
    meta = json.loads(exported.meta_path.read_text())
    seen, pixels = 0, []
    for image, patch_id, dataset, h, w in loader:
        for i in range(len(patch_id)):
            row = rows.loc[int(patch_id[i, 0])]
            patch = read_patch(staged, row.to_dict() | {"patch_id": int(patch_id[i, 0])})
            assert int(patch_id[i, 0]) == manifest.patch_id[seen]
            assert meta["datasets"][int(dataset[i, 0])] == row.dataset
            assert (int(h[i, 0]), int(w[i, 0])) == patch.shape
            stored = image[i].numpy()
            np.testing.assert_array_equal(stored[: patch.shape[0], : patch.shape[1]], patch)
            np.testing.assert_array_equal(stored, fit_patch(patch, 224, "pad"))
            pixels.append(patch.ravel())
            seen += 1
    assert seen == exported.rows
    values = np.concatenate(pixels) / 255.0
    assert meta["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert meta["std"] == pytest.approx(values.std(), rel=1e-9)

    marks = read_catalog(staged)
    marked = marks[marks.exported.fillna(False).astype(bool)]
    assert set(marked.patch_id) == set(manifest.patch_id)
    assert (marked.set_index("patch_id").export_row.loc[manifest.patch_id].to_numpy() == manifest.row).all()


def test_same_catalog_and_seed_give_the_same_order(staged: Path, exported) -> None:
    first = pd.read_parquet(exported.files[0].with_name("patches.manifest.parquet"))
    again = run_export(_config(staged))
    second = pd.read_parquet(again.files[0].with_name("patches.manifest.parquet"))
    pd.testing.assert_frame_equal(first, second)
    chunks = {v: open_volume(staged / "store.zarr", v).chunks for v in first.volume.unique()}
    keys = [(v, s // chunks[v][0], y // chunks[v][1], x // chunks[v][2], s, y, x)
            for v, s, y, x in first[["volume", "slice", "y", "x"]].itertuples(index=False)]
    assert keys == sorted(keys)  # storage order: volume, zarr chunk, then position


def test_sql_selection_cap_drop_and_shards(staged: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    shutil.copytree(staged, workdir)
    config = _config(workdir, selection="dataset = 'isbi' AND slice < 20", max_per_dataset=40,
                     edge_patches="drop", shard_size_gb=0.0006, name="isbi", label_columns=["informative", "score"])
    result = run_export(config)
    assert result.rows == 40 and len(result.files) == 4
    manifests = [pd.read_parquet(f.with_name(f.name.removesuffix(".beton") + ".manifest.parquet")) for f in result.files]
    rows = pd.concat(manifests)
    assert [len(m) for m in manifests] == [11, 11, 11, 7]
    assert (rows.dataset == "isbi").all() and (rows.slice < 20).all() and (rows.h == 224).all()
    stage = read_catalog(workdir)
    stage = stage[stage.exported.fillna(False).astype(bool)]
    assert sorted(stage.export_file.unique()) == sorted(f.name for f in result.files)
    again = select_patches(workdir, config.export, seed=3).rows
    assert set(again.patch_id) == set(rows.patch_id)

    from ffcv.reader import Reader

    reader = Reader(str(result.files[0]))
    assert list(reader.handlers) == ["image", "patch_id", "dataset", "h", "w", "informative", "score"]
    labels = read_catalog(workdir).set_index("patch_id").loc[manifests[0].patch_id]
    np.testing.assert_array_equal(reader.metadata["f1"], manifests[0].patch_id)
    np.testing.assert_array_equal(reader.metadata["f5"], labels.informative.astype(int))
    np.testing.assert_allclose(reader.metadata["f6"], labels.score, rtol=1e-6)


def test_bad_selection_names_the_expression(staged: Path) -> None:
    with pytest.raises(ExportError, match="no_such_column"):
        select_patches(staged, _config(staged, selection="no_such_column > 1").export, seed=0)


def test_cli_export(staged: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cem_pipeline.cli import app

    workdir = tmp_path / "w"
    shutil.copytree(staged, workdir)
    config = tmp_path / "cem.yaml"
    config.write_text(f"workdir: {workdir}\nexport:\n  edge_patches: resize\n  num_workers: 2\n  max_dataset_fraction: 0.6\n")
    result = CliRunner().invoke(app, ["export", str(config)])
    assert result.exit_code == 0, result.output
    meta = json.loads((workdir / "export" / "patches.json").read_text())
    manifest = pd.read_parquet(workdir / "export" / "patches.manifest.parquet")
    counts = manifest.dataset.value_counts()
    assert counts.max() <= 0.6 * counts.sum() and (manifest.h == 224).all()
    assert meta["edge_patches"] == "resize" and "max_dataset_fraction" in result.output


def test_fraction_cap_and_fit_patch() -> None:
    assert fraction_cap(np.array([800, 100, 100]), 0.5) == 200
    assert fraction_cap(np.array([10, 10]), 0.5) == 10
    with pytest.raises(ExportError):
        fraction_cap(np.array([5, 5, 5]), 0.2)
    patch = np.arange(150 * 100, dtype=np.uint16).reshape(150, 100).astype(np.uint8)
    padded = fit_patch(patch, 224, "pad")
    assert padded.shape == (224, 224)
    np.testing.assert_array_equal(padded[:150, :100], patch)
    np.testing.assert_array_equal(padded[150, :100], patch[148])  # reflection, edge not repeated
    assert fit_patch(patch, 224, "resize").shape == (224, 224)


@pytest.mark.timeout(300)
def test_unreadable_chunk_is_a_clear_error_not_a_hang(staged: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    shutil.copytree(staged, workdir)
    (workdir / "store.zarr" / "isbi" / "isbi" / "c" / "0" / "0" / "0").write_bytes(b"not zstd")
    with pytest.raises(ExportError, match="isbi/isbi"):
        run_export(_config(workdir, selection="dataset = 'isbi'"))
    assert not list((workdir / "export").glob("*.beton*"))
