"""The demo corpus: deterministic, readable by the plain libraries, bad files really bad, labels balanced."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cem_pipeline.core.catalog import patch_id
from cem_pipeline.core.config import SourceSpec
from cem_pipeline.demo.corpus import (
    GRID,
    MIN_EDGE,
    demo_labels_for_catalog,
    generate_demo_corpus,
    load_masks,
)
from cem_pipeline.ingest.tiling import plane_axes, tile_starts

GOOD = {"demo_png", "demo_tiff16", "demo_fibsem_iso", "demo_sbem_mrc", "demo_sstem_slices", "demo_nifti", "demo_hdf5", "demo_cloudvolume"}
BAD = {"bad_truncated_tiff", "bad_text_png", "bad_nan_tiff", "bad_4d_tiff"}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    manifest = generate_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", seed=3)
    return manifest.parent


def _manifest(root: Path) -> list[dict]:
    return yaml.safe_load((root / "manifest.yaml").read_text())


def _decoded(root: Path) -> dict[str, np.ndarray]:
    """Every good volume as an array, read with the format's own library."""
    import h5py
    import mrcfile
    import nibabel as nib
    import tifffile
    from cloudvolume import CloudVolume
    from PIL import Image

    out = {f"png/{p.name}": np.asarray(Image.open(p)) for p in sorted((root / "png").glob("*.png"))}
    out.update({f"tiff16/{p.name}": tifffile.imread(p) for p in sorted((root / "tiff16").glob("*.tif"))})
    out["fibsem_iso.tif"] = tifffile.imread(root / "fibsem_iso.tif")
    with mrcfile.open(root / "sbem_aniso.mrc", permissive=False) as mrc:
        out["sbem_aniso.mrc"] = mrc.data.copy()
    out["sstem_slices"] = np.stack([np.asarray(Image.open(root / "sstem_slices" / f"sec_{i}.png")) for i in range(12)])
    out["tem_tomo.nii.gz"] = np.asarray(nib.load(root / "tem_tomo.nii.gz").dataobj).transpose(2, 1, 0)
    with h5py.File(root / "cremi_like.h5", "r") as handle:
        out["cremi_like.h5"] = handle["volumes/raw"][...]
    volume = CloudVolume(f"file://{root / 'precomputed'}", progress=False)
    out["precomputed"] = np.asarray(volume[:, :, :])[..., 0].transpose(2, 1, 0)
    return out


def test_every_format_reads_with_its_library_and_matches_the_masks(corpus: Path) -> None:
    import h5py
    import mrcfile
    import nibabel as nib
    import tifffile
    from cloudvolume import CloudVolume

    decoded = _decoded(corpus)
    masks = {source: mask for (_, source), mask in load_masks(corpus).items()}
    assert set(decoded) == set(masks)
    for source, data in decoded.items():
        mask = masks[source]
        assert data.reshape(mask.shape).shape == mask.shape, source
        assert np.unique(data).size > 50, f"{source} has too little contrast"
    assert decoded["tiff16/sem_0.tif"].dtype == np.uint16 and decoded["tiff16/sem_0.tif"].max() <= 4095
    assert decoded["fibsem_iso.tif"].shape == (112, 240, 240)
    assert tifffile.TiffFile(corpus / "fibsem_iso.tif").imagej_metadata["spacing"] == 10.0
    with mrcfile.open(corpus / "sbem_aniso.mrc") as mrc:
        assert mrc.data.dtype == np.int16 and mrc.data.min() < 0
        assert np.allclose([mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z], [80.0, 80.0, 500.0])
        assert mrc.header.ispg == 1  # a volume, not an image stack
    zooms = nib.load(corpus / "tem_tomo.nii.gz").header.get_zooms()
    assert np.allclose(zooms, (0.006, 0.006, 0.03))
    with h5py.File(corpus / "cremi_like.h5", "r") as handle:
        assert list(handle["volumes/raw"].attrs["resolution"]) == [40.0, 5.0, 5.0]
    volume = CloudVolume(f"file://{corpus / 'precomputed'}", progress=False)
    assert volume.dtype == "uint8" and list(volume.resolution) == [8, 8, 40] and tuple(volume.shape[:3]) == (448, 448, 24)
    assert sum(f.stat().st_size for f in corpus.rglob("*") if f.is_file()) < 30e6


def test_cellular_regions_have_texture_and_uninformative_ones_do_not(corpus: Path) -> None:
    from PIL import Image

    masks = {source: mask for (_, source), mask in load_masks(corpus).items()}
    image = np.asarray(Image.open(corpus / "png" / "tem_0.png")).astype(np.float64)
    mask = masks["png/tem_0.png"][0]
    for y, h in tile_starts(image.shape[0], GRID, MIN_EDGE):
        for x, w in tile_starts(image.shape[1], GRID, MIN_EDGE):
            tile, cells = image[y:y + h, x:x + w], mask[y:y + h, x:x + w]
            if cells.all():
                assert tile.std() > 20, (y, x)
            elif not cells.any():
                assert tile.std() < 8, (y, x)


def test_manifest_is_valid_and_expands_through_the_ingest_readers(corpus: Path) -> None:
    from cem_pipeline.sources.manifest import expand_all, load_manifest
    from cem_pipeline.sources.readers import ReaderError, open_volume

    entries = _manifest(corpus)
    assert {e["name"] for e in entries} == GOOD | BAD
    for entry in entries:
        SourceSpec.model_validate(entry)
    items, errors = expand_all(load_manifest(corpus / "manifest.yaml"))
    assert errors == []
    opened, failed = set(), {}
    for item in items:
        if item.format == "cloudvolume":
            opened.add(item.dataset)
            continue
        try:
            open_volume(item)
            opened.add(item.dataset)
        except ReaderError as exc:
            failed[item.dataset] = str(exc)
    assert opened == GOOD | {"bad_nan_tiff"}  # opening is lazy; the ingest's stats pass finds the NaNs
    assert set(failed) == BAD - {"bad_nan_tiff"}
    assert "4D" in failed["bad_4d_tiff"]


def test_bad_files_are_really_bad(corpus: Path) -> None:
    import tifffile
    from PIL import Image, UnidentifiedImageError

    with pytest.raises(ValueError):
        tifffile.imread(corpus / "bad" / "truncated.tif")
    with pytest.raises(UnidentifiedImageError):
        Image.open(corpus / "bad" / "not_an_image.png")
    assert np.isnan(tifffile.imread(corpus / "bad" / "all_nan.tif")).all()
    assert tifffile.imread(corpus / "bad" / "four_d.tif").ndim == 4


def _expected_catalog(root: Path) -> pd.DataFrame:
    """The rows ingest cuts with its defaults (xy everywhere, xz/yz for isotropic volumes, 20 CloudVolume samples)."""
    rows = []
    for entry in json.loads((root / "volumes.json").read_text()):
        dataset, source = entry["dataset"], entry["source"]
        mask = load_masks(root)[(dataset, source)]
        if dataset == "demo_cloudvolume":
            url = f"file://{(root / source).resolve()}"
            rows += [(patch_id(dataset, "s", "xy", i, 0, 0), dataset, url, "xy", i, 0, 0, GRID, GRID) for i in range(20)]
            continue
        z, h, w = mask.shape
        axes = plane_axes("volume" if z > 1 else "image", tuple(entry["voxel_size"]), 0.2, "xy")
        for axis in axes:
            n, (height, width) = {"xy": (z, (h, w)), "xz": (h, (z, w)), "yz": (w, (z, h))}[axis]
            for s in range(n):
                for y, th in tile_starts(height, GRID, MIN_EDGE):
                    for x, tw in tile_starts(width, GRID, MIN_EDGE):
                        path = str((root / source).resolve())
                        rows.append((patch_id(dataset, source, axis, s, y, x), dataset, path, axis, s, y, x, th, tw))
    return pd.DataFrame(rows, columns=["patch_id", "dataset", "source_file", "axis", "slice", "y", "x", "h", "w"])


def test_labels_cover_every_plane_and_are_balanced(corpus: Path) -> None:
    catalog = _expected_catalog(corpus)
    assert set(catalog.loc[catalog.axis != "xy", "dataset"]) == {"demo_fibsem_iso"}
    labels = demo_labels_for_catalog(corpus, catalog)
    assert len(labels) == len(catalog) and labels.patch_id.is_unique
    fraction = labels.label.mean()
    assert 0.55 <= fraction <= 0.70, fraction
    merged = catalog.merge(labels, on="patch_id")
    iso = merged[merged.dataset == "demo_fibsem_iso"]
    for axis in ("xy", "xz", "yz"):
        assert 0 < iso.loc[iso.axis == axis, "label"].mean() < 1, axis
    tiles = pd.read_parquet(corpus / "labels.parquet")
    xy = merged[(merged.axis == "xy") & (merged.dataset != "demo_cloudvolume")]
    truth = tiles.merge(xy.assign(volume_file=[str(Path(p).relative_to(corpus.resolve())) for p in xy.source_file]),
                        on=["dataset", "volume_file", "axis", "slice", "y", "x"])
    assert len(truth) == len(xy) == len(tiles[tiles.dataset != "demo_cloudvolume"])
    assert (truth.informative.astype(int) == truth.label).all()
    assert ((tiles.content_fraction > 0.3) | (tiles.content_fraction < 0.05)).all(), "tiles must be clearly one or the other"
    unknown = catalog.head(3).assign(dataset="elsewhere")
    assert demo_labels_for_catalog(corpus, unknown).empty


def test_same_seed_gives_the_same_corpus(corpus: Path, tmp_path: Path) -> None:
    again = generate_demo_corpus(tmp_path / "again", seed=3).parent
    first, second = _decoded(corpus), _decoded(again)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    for name in ("png/tem_0.png", "tiff16/sem_1.tif", "fibsem_iso.tif", "sbem_aniso.mrc", "tem_tomo.nii.gz", "labels.parquet"):
        assert (corpus / name).read_bytes() == (again / name).read_bytes(), name
    assert (corpus / "manifest.yaml").read_text().replace(str(corpus.resolve()), "ROOT") == (
        again / "manifest.yaml").read_text().replace(str(again.resolve()), "ROOT")
