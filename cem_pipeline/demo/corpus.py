"""A small procedurally generated EM-like corpus, with ground truth, for demos and end-to-end tests.

The real EM in ../shared cannot ship with the project and has no "informative" labels, so the
demo needs its own data. `generate_demo_corpus(root, seed)` writes one dataset per container
format the ingest reads (PNG, 16-bit TIFF, 3D TIFF, MRC, numbered PNG slices, NIfTI, HDF5, a
CloudVolume `file://` precomputed volume) plus deliberately broken files, and returns the
source manifest (YAML, a list of SourceSpec dicts, paths relative to it).

Content is synthetic (nothing is copied from real data): smooth random fields whose level sets
become cell membranes, mitochondria as ellipsoids with cristae stripes and a dark envelope,
vesicles with dark rims, granular cytoplasm, blur and noise. Every cell of the 224-px grid in
(y, x) is either cellular or deliberately uninformative (bright or dark empty resin, a
uniform nucleus, low-contrast haze), about 60/40 by patch. The generator keeps the 3D mask of
cellular content of every volume (`masks.npz`) and writes the per-tile truth of the xy grid
(`labels.parquet`); `demo_labels_for_catalog` turns catalog rows of any plane into labels
from those masks, so the informative-patch filter can be trained and checked with no person.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import ndimage

GRID = 224
MIN_EDGE = 112
INFORMATIVE_FRACTION = 0.2
CELLULAR_PROBABILITY = 0.6
MANIFEST = "manifest.yaml"
LABELS = "labels.parquet"
MASKS = "masks.npz"
VOLUMES = "volumes.json"
UNINFORMATIVE_KINDS = ("resin_bright", "resin_dark", "nucleus", "low_contrast")


@dataclass(frozen=True)
class _Volume:
    """One generated volume: where it lives, its (z, y, x) voxel size in nm and its content mask."""

    dataset: str
    source: str
    voxel_nm: tuple[float, float, float]
    mask: np.ndarray


# ---- synthetic EM content ----------------------------------------------------------------------

def _upsample_linear(low: np.ndarray, factors: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """Separable linear interpolation of `low` onto a grid `factors` times finer, cropped to `shape`."""
    out = low
    for axis, (f, n) in enumerate(zip(factors, shape)):
        if f == 1:
            out = np.take(out, np.arange(1, n + 1), axis=axis)
            continue
        q = (np.arange(n) + f) / f
        i0 = np.floor(q).astype(np.intp)
        t = (q - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, i0, axis=axis) * (1 - t) + np.take(out, i0 + 1, axis=axis) * t
    return out


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], sigma_px: tuple[float, ...]) -> np.ndarray:
    """Unit-variance Gaussian random field with per-axis correlation lengths (px).

    Filtered on a grid coarsened by ~sigma/4 and linearly upsampled, so large correlation
    lengths cost no more than small ones.
    """
    factors = [max(1, int(s // 4)) for s in sigma_px]
    low_shape = [-(-n // f) + 3 for n, f in zip(shape, factors)]
    low = ndimage.gaussian_filter(rng.standard_normal(low_shape).astype(np.float32), [s / f for s, f in zip(sigma_px, factors)],
                                  mode="wrap")
    up = _upsample_linear(low, factors, shape)
    return (up - up.mean()) / (up.std() + 1e-6)


def _ellipsoid_stamp(
    image: np.ndarray, rng: np.random.Generator, center: np.ndarray, radii: np.ndarray, scale: np.ndarray, kind: str
) -> None:
    """Paint one mitochondrion (kind 'mito') or vesicle (kind 'vesicle') into `image`, in place."""
    reach = np.array([radii[0], radii[1:].max(), radii[1:].max()]) / scale  # the in-plane axes rotate
    lo = np.maximum(np.floor(center - reach - 1).astype(int), 0)
    hi = np.minimum(np.ceil(center + reach + 2).astype(int), image.shape)
    if np.any(hi <= lo):
        return
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, center, scale)], indexing="ij")
    angle = rng.uniform(0, np.pi)
    u = grids[2] * np.cos(angle) + grids[1] * np.sin(angle)
    v = -grids[2] * np.sin(angle) + grids[1] * np.cos(angle)
    r = np.sqrt((u / radii[2]) ** 2 + (v / radii[1]) ** 2 + (grids[0] / radii[0]) ** 2)
    region = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if kind == "mito":
        period = rng.uniform(5.0, 8.0)
        cristae = 0.5 + 0.5 * np.cos(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        inside = np.where(cristae > 0.7, 0.30, 0.45)
        region[:] = np.where(r < 0.85, inside, np.where(r < 1.0, 0.18, region))
    else:
        region[:] = np.where(r < 0.7, 0.85, np.where(r < 1.0, 0.28, region))


def _cellular(rng: np.random.Generator, shape: tuple[int, int, int], voxel_nm: tuple[float, float, float]) -> np.ndarray:
    """EM-like cellular texture in [0, 1] (bright cytoplasm, dark membranes and organelles)."""
    scale = np.asarray(voxel_nm, dtype=np.float64) / 10.0  # in units of 10 nm
    z, y, x = shape
    sigma_cells = tuple(max(0.5, 20.0 / s) if n > 1 else 0.5 for s, n in zip(scale, shape))
    image = 0.72 + 0.06 * _smooth_field(rng, shape, tuple(max(0.5, 1.2 / s) if n > 1 else 0.5 for s, n in zip(scale, shape)))
    width = 1.6 / 20.0
    for offset in (0.0, 0.9):
        field = _smooth_field(rng, shape, sigma_cells) + offset
        image -= 0.5 * np.exp(-((field / width) ** 2))
    extent = np.asarray(shape, dtype=np.float64) * scale * 10.0  # nm
    area_um2 = extent[1] * extent[2] / 1e6
    depth = max(extent[0], 200.0)
    for _ in range(int(round(area_um2 * depth / 200.0 * 1.2)) + 1):
        center = rng.uniform(0, 1, 3) * np.asarray(shape)
        radii = np.array([rng.uniform(15, 30), rng.uniform(12, 25), rng.uniform(25, 60)])
        _ellipsoid_stamp(image, rng, center, radii, scale, "mito")
    for _ in range(int(round(area_um2 * depth / 200.0 * 12)) + 1):
        center = rng.uniform(0, 1, 3) * np.asarray(shape)
        radius = rng.uniform(2.5, 5.0)
        _ellipsoid_stamp(image, rng, center, np.array([radius] * 3), scale, "vesicle")
    sigma = [0.9 / max(s, 1.0) if n > 1 else 0.0 for s, n in zip(scale, shape)]
    image = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    return image + rng.normal(0.0, 0.035, shape).astype(np.float32)


def _uninformative(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    noise = rng.normal(0.0, 0.015, shape).astype(np.float32)
    if kind == "resin_bright":
        return 0.93 + noise
    if kind == "resin_dark":
        return 0.07 + noise
    if kind == "nucleus":
        return 0.55 + 0.02 * ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0) * 4 + noise
    return 0.6 + 0.01 * ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0) * 6 + noise


def _grid_classes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Per 224-px grid cell: '' for cellular, else one of UNINFORMATIVE_KINDS.

    Exactly round(CELLULAR_PROBABILITY * cells) cells are cellular (at least one), so small
    images keep the corpus near its 60/40 balance instead of drifting with the draw.
    """
    ny, nx = -(-height // GRID), -(-width // GRID)
    n_cellular = max(1, int(round(CELLULAR_PROBABILITY * ny * nx)))
    cellular = (rng.permutation(ny * nx) < n_cellular).reshape(ny, nx)
    kinds = rng.choice(np.array(UNINFORMATIVE_KINDS), size=(ny, nx))
    return np.where(cellular, "", kinds)


def _synth_volume(
    rng: np.random.Generator, shape: tuple[int, int, int], voxel_nm: tuple[float, float, float],
    classes: np.ndarray | None = None, resin_corner: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """(float image in [0, 1], bool content mask), both (z, y, x).

    `classes` fixes the per-grid-cell content (default: random, CELLULAR_PROBABILITY cellular);
    `resin_corner` (z, y, x) makes every voxel with z < z0 or y < y0 or x < x0 empty resin, the
    way a block face meets the embedding at the edge of a FIB-SEM stack.
    """
    image = _cellular(rng, shape, voxel_nm)
    mask = np.ones(shape, dtype=bool)
    z, h, w = shape
    if classes is None:
        classes = _grid_classes(rng, h, w)
    for gy in range(classes.shape[0]):
        for gx in range(classes.shape[1]):
            if classes[gy, gx]:
                ys, xs = slice(gy * GRID, (gy + 1) * GRID), slice(gx * GRID, (gx + 1) * GRID)
                block = image[:, ys, xs]
                image[:, ys, xs] = _uninformative(rng, block.shape, str(classes[gy, gx]))
                mask[:, ys, xs] = False
    if any(resin_corner):
        zz, yy, xx = np.ogrid[:z, :h, :w]
        resin = (zz < resin_corner[0]) | (yy < resin_corner[1]) | (xx < resin_corner[2])
        image = np.where(resin, _uninformative(rng, image.shape, "resin_bright"), image)
        mask &= ~resin
    return np.clip(image, 0.0, 1.0), mask


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255).astype(np.uint8)


# ---- writers -----------------------------------------------------------------------------------

def _write_png(path: Path, plane: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(plane).save(path, optimize=False)


def _write_cloudvolume(path: Path, data_zyx: np.ndarray, voxel_nm: tuple[float, float, float]) -> None:
    from cloudvolume import CloudVolume

    z, y, x = data_zyx.shape
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
        resolution=[voxel_nm[2], voxel_nm[1], voxel_nm[0]], voxel_offset=[0, 0, 0],
        chunk_size=[128, 128, 16], volume_size=[x, y, z],
    )
    volume = CloudVolume(f"file://{path}", info=info, compress="gzip", progress=False, parallel=1)
    volume.commit_info()
    volume[:, :, :] = np.ascontiguousarray(data_zyx.transpose(2, 1, 0))[..., None]


def _write_bad_files(bad: Path, rng: np.random.Generator) -> list[dict]:
    """Files ingest must reject, one dataset each, with the reason it should give."""
    import tifffile

    bad.mkdir(parents=True, exist_ok=True)
    good = _to_uint8(rng.random((256, 256)))
    tifffile.imwrite(bad / "truncated.tif", np.stack([good, good]))
    raw = (bad / "truncated.tif").read_bytes()
    (bad / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    (bad / "not_an_image.png").write_text("this is a text file named .png, not an image\n" * 20)
    tifffile.imwrite(bad / "all_nan.tif", np.full((256, 256), np.nan, dtype=np.float32))
    tifffile.imwrite(bad / "four_d.tif", rng.integers(0, 256, (2, 5, 96, 96), dtype=np.uint8))
    return [
        {"name": "bad_truncated_tiff", "path": "bad/truncated.tif", "format": "tiff"},
        {"name": "bad_text_png", "path": "bad/not_an_image.png", "format": "image2d"},
        {"name": "bad_nan_tiff", "path": "bad/all_nan.tif", "format": "tiff"},
        {"name": "bad_4d_tiff", "path": "bad/four_d.tif", "format": "tiff"},
    ]


def generate_demo_corpus(root: Path, seed: int = 0) -> Path:
    """Write the demo corpus under `root` (deterministic for `seed`); return its manifest path.

    Small enough to generate on every demo run. Next to the manifest: labels.parquet (xy-grid
    tile truth), masks.npz + volumes.json (per-volume content masks, used by demo_labels_for_catalog).
    """
    import h5py
    import mrcfile
    import nibabel as nib
    import tifffile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources: list[dict] = []
    volumes: list[_Volume] = []

    def add(spec: dict, source: str, voxel: tuple[float, float, float], mask: np.ndarray) -> None:
        sources.append(spec)
        volumes.append(_Volume(spec["name"], source, voxel, mask))

    (root / "png").mkdir(exist_ok=True)
    for index, shape in enumerate([(600, 700), (480, 520)]):
        image, mask = _synth_volume(rng, (1, *shape), (30.0, 4.0, 4.0))
        _write_png(root / "png" / f"tem_{index}.png", _to_uint8(image[0]))
        volumes.append(_Volume("demo_png", f"png/tem_{index}.png", (30.0, 4.0, 4.0), mask))
    sources.append({"name": "demo_png", "path": "png/*.png", "format": "image2d", "imaging": "TEM",
                    "organism": "synthetic", "tissue": "demo"})

    (root / "tiff16").mkdir(exist_ok=True)
    for index, shape in enumerate([(500, 600), (448, 448)]):
        image, mask = _synth_volume(rng, (1, *shape), (30.0, 5.0, 5.0))
        tifffile.imwrite(root / "tiff16" / f"sem_{index}.tif", np.round(image[0] * 4095).astype(np.uint16))
        volumes.append(_Volume("demo_tiff16", f"tiff16/sem_{index}.tif", (30.0, 5.0, 5.0), mask))
    sources.append({"name": "demo_tiff16", "path": "tiff16/*.tif", "format": "tiff", "imaging": "SEM (12-bit in uint16)",
                    "organism": "synthetic", "tissue": "demo"})

    image, mask = _synth_volume(rng, (112, 240, 240), (10.0, 10.0, 10.0), classes=np.array([["", ""], ["", ""]]), resin_corner=(24, 96, 96))
    tifffile.imwrite(root / "fibsem_iso.tif", _to_uint8(image), imagej=True, resolution=(0.1, 0.1),
                     metadata={"spacing": 10.0, "unit": "nm", "axes": "ZYX"})
    add({"name": "demo_fibsem_iso", "path": "fibsem_iso.tif", "format": "tiff", "voxel_size": [10.0, 10.0, 10.0],
         "imaging": "FIB-SEM", "organism": "synthetic", "tissue": "demo"}, "fibsem_iso.tif", (10.0, 10.0, 10.0), mask)

    image, mask = _synth_volume(rng, (10, 460, 460), (50.0, 8.0, 8.0))
    signed = np.round((1.0 - image) * 4000 - 2000).astype(np.int16)  # stored inverted (BSE-like); invert: true restores
    with mrcfile.new(root / "sbem_aniso.mrc", overwrite=True) as mrc:
        mrc.set_data(signed)
        mrc.set_volume()
        mrc.voxel_size = (80.0, 80.0, 500.0)  # x, y, z in Angstrom
        mrc.header.label[0] = f"cem demo corpus, seed {seed}".encode()  # replaces mrcfile's timestamp
        mrc.header.nlabl = 1
    add({"name": "demo_sbem_mrc", "path": "sbem_aniso.mrc", "format": "mrc", "invert": True, "imaging": "SBF-SEM",
         "organism": "synthetic", "tissue": "demo"}, "sbem_aniso.mrc", (50.0, 8.0, 8.0), mask)

    image, mask = _synth_volume(rng, (12, 500, 500), (50.0, 4.0, 4.0))
    (root / "sstem_slices").mkdir(exist_ok=True)
    for z in range(image.shape[0]):
        _write_png(root / "sstem_slices" / f"sec_{z}.png", _to_uint8(image[z]))
    add({"name": "demo_sstem_slices", "path": "sstem_slices", "format": "slices", "voxel_size": [50.0, 4.0, 4.0],
         "imaging": "ssTEM", "organism": "synthetic", "tissue": "demo"}, "sstem_slices", (50.0, 4.0, 4.0), mask)

    image, mask = _synth_volume(rng, (20, 300, 300), (30.0, 6.0, 6.0))
    nifti = nib.Nifti1Image(_to_uint8(image).transpose(2, 1, 0), np.diag([0.006, 0.006, 0.03, 1.0]))  # (x, y, z), um
    nifti.header.set_xyzt_units("micron")
    (root / "tem_tomo.nii.gz").write_bytes(gzip.compress(nifti.to_bytes(), compresslevel=6, mtime=0))
    add({"name": "demo_nifti", "path": "tem_tomo.nii.gz", "format": "nifti", "imaging": "TEM serial sections",
         "organism": "synthetic", "tissue": "demo"}, "tem_tomo.nii.gz", (30.0, 6.0, 6.0), mask)

    image, mask = _synth_volume(rng, (12, 400, 400), (40.0, 5.0, 5.0))
    with h5py.File(root / "cremi_like.h5", "w", track_order=True) as handle:
        dataset = handle.create_dataset("volumes/raw", data=np.round(image * 60000).astype(np.uint16), chunks=(4, 200, 200),
                                        compression="gzip", track_times=False)
        dataset.attrs["resolution"] = np.array([40.0, 5.0, 5.0])
    add({"name": "demo_hdf5", "path": "cremi_like.h5", "format": "hdf5", "dataset_path": "volumes/raw",
         "imaging": "ssTEM", "organism": "synthetic", "tissue": "demo"}, "cremi_like.h5", (40.0, 5.0, 5.0), mask)

    image, mask = _synth_volume(rng, (24, 448, 448), (40.0, 8.0, 8.0), classes=np.array([["", ""], ["", ""]]))
    _write_cloudvolume(root / "precomputed", _to_uint8(image), (40.0, 8.0, 8.0))
    add({"name": "demo_cloudvolume", "path": f"file://{(root / 'precomputed').resolve()}", "format": "cloudvolume",
         "samples": 20, "imaging": "ATUM-SEM", "organism": "synthetic", "tissue": "demo"}, "precomputed", (40.0, 8.0, 8.0), mask)

    sources += _write_bad_files(root / "bad", rng)

    np.savez_compressed(root / MASKS, **{f"v{i}": v.mask for i, v in enumerate(volumes)})
    (root / VOLUMES).write_text(json.dumps(
        [{"mask": f"v{i}", "dataset": v.dataset, "source": v.source, "voxel_size": list(v.voxel_nm)} for i, v in enumerate(volumes)],
        indent=1,
    ))
    _xy_tile_labels(volumes).to_parquet(root / LABELS, index=False)
    manifest = root / MANIFEST
    manifest.write_text(yaml.safe_dump(sources, sort_keys=False))
    return manifest


# ---- labels ------------------------------------------------------------------------------------

def informative_from_mask(mask: np.ndarray) -> bool:
    """A patch is informative when cellular content covers more than INFORMATIVE_FRACTION of it."""
    return bool(mask.size) and float(mask.mean()) > INFORMATIVE_FRACTION


def _xy_tile_labels(volumes: list[_Volume]) -> pd.DataFrame:
    """Truth for every xy tile ingest cuts with its defaults (224-px tiles, edge tiles >= 112 px)."""
    from cem_pipeline.ingest.tiling import tile_starts

    rows = []
    for volume in volumes:
        z, h, w = volume.mask.shape
        for s in range(z):
            for y, th in tile_starts(h, GRID, MIN_EDGE):
                for x, tw in tile_starts(w, GRID, MIN_EDGE):
                    region = volume.mask[s, y:y + th, x:x + tw]
                    rows.append((volume.dataset, volume.source, "xy", s, y, x, th, tw, float(region.mean()), informative_from_mask(region)))
    return pd.DataFrame(rows, columns=["dataset", "volume_file", "axis", "slice", "y", "x", "h", "w", "content_fraction", "informative"])


def load_masks(corpus_root: Path) -> dict[tuple[str, str], np.ndarray]:
    """{(dataset, source path relative to the corpus): (z, y, x) bool content mask}."""
    corpus_root = Path(corpus_root)
    entries = json.loads((corpus_root / VOLUMES).read_text())
    with np.load(corpus_root / MASKS) as masks:
        return {(e["dataset"], e["source"]): masks[e["mask"]] for e in entries}


def _relative_source(source_file: str, corpus_root: Path) -> str:
    path = source_file[len("file://"):] if source_file.startswith("file://") else source_file
    return os.path.relpath(os.path.realpath(path), os.path.realpath(corpus_root))


def demo_labels_for_catalog(corpus_root: Path, catalog_frame: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth (patch_id, label) for every catalog row of a demo-corpus volume.

    Uses the catalog's dataset, source_file, axis, slice, y, x, h, w: the patch's region of the
    volume's content mask decides the label (1 informative, 0 not), on any plane. CloudVolume
    samples (their position is not in the catalog) come from a volume that is cellular
    throughout, so its mask decides them too. Rows of other datasets are left out.
    """
    from cem_pipeline.core.geometry import patch_region

    masks = load_masks(corpus_root)
    out_ids, out_labels = [], []
    for row in catalog_frame.itertuples(index=False):
        key = (str(row.dataset), _relative_source(str(row.source_file), corpus_root))
        mask = masks.get(key)
        if mask is None:
            continue
        if str(row.source_file).startswith("file://"):
            region = mask
        else:
            region = mask[patch_region(str(row.axis), int(row.slice), int(row.y), int(row.x), int(row.h), int(row.w))]
        out_ids.append(int(row.patch_id))
        out_labels.append(int(informative_from_mask(region)))
    return pd.DataFrame({"patch_id": np.asarray(out_ids, dtype=np.int64), "label": np.asarray(out_labels, dtype=np.int8)})
