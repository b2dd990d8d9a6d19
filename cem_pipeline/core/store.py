"""store.zarr: the standardised uint8 pixels every later stage reads.

Layout (zarr v3, `Workdir.store`):

* One group per dataset; one uint8 array per source volume or image at "<dataset>/<volume_key>",
  shape (Z, Y, X) — a 2D image has Z = 1 — already standardised: uint8, `invert` applied,
  downsampled in-plane when the volume would exceed `ingest.max_volume_gb`. This path is the
  catalog's `volume` column.
* CloudVolume datasets: one array "<dataset>/samples" of shape (N, P, P); sample i is catalog row
  (axis "xy", slice i, y = 0, x = 0); attrs["coords_xyz"][i] is its origin in the source volume
  (mip-0 voxels, x, y, z) and attrs["source_file"] the URL.
* Attributes of every array: source_file, source_shape, source_dtype, kind (image / volume /
  video / samples), voxel_size ([z, y, x] nm of the stored grid, z null for 2D, or null),
  voxel_size_source (file / manifest / null), intensity {method, lo, hi}, invert,
  downsample (in-plane factor), planes (axes cut), plus imaging/organism/tissue when given.

Chunks follow how the pixels are read later:

* volumes cut along xy, xz, yz: (P, P, P) chunks (P = patch_size, 224). A patch of any plane
  lies inside one chunk, so ingest hashes all three planes from one read of each chunk, and
  re-extraction / export read one chunk per group of patches that share it.
* xy-only volumes, video: (16, P, P) — 16 consecutive slices of one tile column, ~0.8 MB.
* 2D images: (1, P, P). CloudVolume samples: (16, P, P).
* Chunks are compressed with zstd level -3 (a "fast" level). Noisy EM barely compresses with
  any fast codec, so codec speed decides: the fast level writes and reads fastest while higher
  levels gain almost no compression (measurements: BENCHMARKS.md). Flat and zero-padded areas still
  shrink. Arrays are written whole-chunk by one Dask task per block, so tasks never write the same
  chunk.
* `write_empty_chunks` is on: zarr's default first checks whether every chunk equals the fill
  value, an extra pass over every block written that makes ingest's writes much slower
  (measurements: BENCHMARKS.md); an all-zero chunk then costs a few bytes of zstd instead of nothing.

Later stages' access patterns:

* dedup / filter read the catalog only (hash, mean, std); the filter's classifier, the dedup
  montage and the label page read pixels through `patches.read_patches`, which groups rows by
  array and by chunk, so each chunk is decompressed once per call.
* export reads the same blocks (`patches.plan_reads` / `read_block`, split by plane axis too) in
  storage order, one block at a time per DatasetWriter worker, so reads are sequential and each
  chunk is decompressed once.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import zarr
from zarr.codecs import ZstdCodec

from cem_pipeline.core.workdir import Workdir


def store_path(where) -> Path:
    """store.zarr from a Workdir, a workdir root, or the store path itself."""
    if isinstance(where, Workdir):
        return where.store
    path = Path(where)
    return path if path.name.endswith(".zarr") else Workdir(path).store


def open_store(where, mode: str = "r") -> zarr.Group:
    if isinstance(where, zarr.Group):
        return where
    return zarr.open_group(store_path(where), mode=mode, zarr_format=3)


def create_volume(store: Path, array_path: str, shape, chunks, attrs: dict[str, Any]) -> None:
    """(Re)create an empty uint8 array; a re-run of an unfinished volume starts it from scratch."""
    root = zarr.open_group(store, mode="a", zarr_format=3)
    dataset = array_path.split("/")[0]
    if dataset not in root:
        root.create_group(dataset)
    array = root.create_array(
        array_path, shape=tuple(shape), chunks=tuple(chunks), dtype="uint8", fill_value=0, overwrite=True,
        compressors=ZstdCodec(level=-3),
    )
    array.attrs.update(attrs)


def write_region(store: Path, array_path: str, region, data) -> None:
    array = zarr.open_array(Path(store) / array_path, mode="r+", zarr_format=3)
    array.with_config({"write_empty_chunks": True})[tuple(region)] = data  # a runtime setting, not stored


def update_attrs(store: Path, array_path: str, attrs: dict[str, Any]) -> None:
    zarr.open_array(Path(store) / array_path, mode="r+", zarr_format=3).attrs.update(attrs)


def delete_volume(store: Path, array_path: str) -> None:
    """Drop the partial array of a volume that failed, so the store holds only usable volumes."""
    root = zarr.open_group(store, mode="a", zarr_format=3)
    if array_path in root:
        del root[array_path]


def install_volume(staging: Path, store: Path, array_path: str) -> None:
    """Move a fully written array from the staging store into `store`, replacing the array there.

    Arrays are built in a staging store and moved in by renames (same filesystem, the workdir), so
    `store` only ever holds an old complete array, a new complete one, or, after a crash between the
    two renames, none; never a mix of old and new chunks."""
    root = zarr.open_group(store, mode="a", zarr_format=3)
    dataset = array_path.split("/")[0]
    if dataset not in root:
        root.create_group(dataset)
    target = Path(store) / array_path
    replaced = target.with_name(f".{target.name}.replaced.{os.getpid()}")
    if target.exists():
        os.replace(target, replaced)
    os.replace(Path(staging) / array_path, target)
    shutil.rmtree(replaced, ignore_errors=True)


def volume_complete(store: Path, array_path: str, shape) -> bool:
    """The array exists with this shape and every chunk was written (ingest writes even empty chunks)."""
    try:
        array = zarr.open_array(Path(store) / array_path, mode="r", zarr_format=3)
    except FileNotFoundError:
        return False
    return tuple(array.shape) == tuple(shape) and array.nchunks_initialized == array.nchunks


def array_paths(store: Path) -> list[str]:
    """Every "<dataset>/<key>" array of the store."""
    if not Path(store).exists():
        return []
    root = zarr.open_group(store, mode="r", zarr_format=3)
    return sorted(f"{d}/{k}" for d in root.group_keys() for k in root[d].array_keys())
