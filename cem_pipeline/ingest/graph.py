"""`cem ingest`: one Dask graph over every source volume — read, standardise, store, tile, hash, catalog.

Per volume the graph is: probe (open lazily, plan shape / planes / chunks / downsampling)
-> for non-uint8 sources, per-block min/max/NaN counts, then per-block histograms -> the volume's
intensity mapping -> per-block tasks that standardise a chunk-aligned block, write it to
store.zarr, and hash every patch of every plane that starts in it where it lies in the block
(dhash.hash_tiles: xy/xz patches are views, yz ones come from one transpose of the block (tiling.yz_planes),
edge patches are enlarged inside the kernel; only patches over 224 px are copied out for dhash_patches)
-> a finalize task that writes the volume's catalog part atomically. Arrays and parts are built in a
staging area (WORKDIR/ingest/staging.zarr, WORKDIR/ingest/staging/) and moved into store.zarr and
catalog/ by renames only when the whole volume is done; then the client writes a done-marker
(WORKDIR/ingest/done/<dataset>/<key>.json) holding the volume's fingerprint (ingest.fingerprint).

Incremental re-runs: a volume is skipped only when its marker is trusted — same fingerprint, catalog
part present with the marker's row count, array complete; every other volume is recomputed and
replaces its old array and part. A killed run leaves at most unmarked volumes, which the next run
redoes: the result equals an uninterrupted run. Arrays, parts and markers of volumes no longer in the
manifest are removed and listed in the summary. Every output is a pure function of the inputs,
config and seed, so re-runs are identical.

Any exception for a volume (its reader, its stats, any block) becomes one row of the errors
table (dataset, file, reason, time); its partial array and catalog part are removed and every
other volume completes. `ingest.fail_on_error` turns a non-empty errors table into a failure.

Catalog rows (catalog.CATALOG_SCHEMA): patch_id = catalog.patch_id(dataset, volume, axis,
slice, y, x) with volume = the array path "<dataset>/<key>"; axis/slice/y/x/h/w as in
tiling.block_patches; dhash = dhash_patches (imagehash 4.3.2's 8x8 bool array flattened
row-major, first element the most significant bit); mean/std (population) of the uint8 patch.
Parts: catalog/dataset=<name>/<key>.parquet, rows sorted by (axis, slice, y, x).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cem_pipeline.core.atomic import atomic_path, write_text_atomic
from cem_pipeline.core.catalog import CATALOG_SCHEMA, catalog_dir, patch_id, read_table
from cem_pipeline.core.config import CemConfig, IngestConfig
from cem_pipeline.core.freshness import StageState
from cem_pipeline.core.store import (
    array_paths,
    create_volume,
    delete_volume,
    install_volume,
    update_attrs,
    volume_complete,
    write_region,
)
from cem_pipeline.core.workdir import Workdir
from cem_pipeline.ingest import standardize, tiling
from cem_pipeline.ingest.fingerprint import volume_fingerprint
from cem_pipeline.ingest.hashing.stats import moments_from_sums, patch_moments
from cem_pipeline.sources.items import SourceError, VolumeItem
from cem_pipeline.sources.manifest import expand_all, specs_of
from cem_pipeline.sources.readers import ReaderError, open_volume

ERRORS_SCHEMA = pa.schema([("dataset", pa.string()), ("file", pa.string()), ("reason", pa.string()),
                           ("time", pa.timestamp("us", tz="UTC"))])


@dataclass(frozen=True)
class Plan:
    """Everything a block task needs about its volume; small and picklable."""

    item: VolumeItem
    store: str  # the staging store the block tasks write into
    source_shape: tuple[int, int, int]
    dtype: str
    channels: bool
    kind: str
    voxel_size: tuple | None
    voxel_source: str | None
    factor: int
    shape: tuple[int, int, int]
    axes: tuple[str, ...]
    chunks: tuple[int, int, int]
    settings: IngestConfig

    @property
    def identity(self) -> bool:
        return np.dtype(self.dtype) == np.uint8

    def raw_region(self, region) -> tuple[slice, slice, slice]:
        f = self.factor
        z, y, x = region
        return (z, slice(y.start * f, y.stop * f), slice(x.start * f, x.stop * f))

    def attrs(self) -> dict:
        voxel = None if self.voxel_size is None else [None if v is None else float(v) for v in self.voxel_size]
        return {
            "source_file": self.item.files[0] if len(self.item.files) == 1 else self.item.source,
            "source_shape": list(self.source_shape), "source_dtype": self.dtype, "kind": self.kind,
            "voxel_size": voxel, "voxel_size_source": self.voxel_source if voxel else None,
            "invert": self.item.invert, "downsample": self.factor, "planes": list(self.axes),
            **({"n_files": len(self.item.files)} if self.item.format == "slices" else {}),
            **self.item.metadata,
        }


def done_marker(workdir: Workdir, array_path: str) -> Path:
    return workdir.root / "ingest" / "done" / f"{array_path}.json"


def part_path(workdir: Workdir, array_path: str) -> Path:
    dataset, key = array_path.split("/")
    return catalog_dir(workdir.root) / f"dataset={dataset}" / f"{key}.parquet"


def staging_store(workdir: Workdir) -> Path:
    return workdir.root / "ingest" / "staging.zarr"


def staging_parts(workdir: Workdir) -> Path:
    return workdir.root / "ingest" / "staging"


def staged_part(workdir: Workdir, array_path: str) -> Path:
    return staging_parts(workdir) / f"{array_path}.parquet"


def trusted(workdir: Workdir, array_path: str, fingerprint: str) -> bool:
    """A done-marker counts only when it has this fingerprint and its part and array are whole."""
    try:
        marker = json.loads(done_marker(workdir, array_path).read_text())
        rows = pq.read_metadata(part_path(workdir, array_path)).num_rows
    except (OSError, ValueError, pa.ArrowException):
        return False
    return (marker.get("fingerprint") == fingerprint and marker.get("rows") == rows
            and volume_complete(workdir.store, array_path, marker.get("shape", ())))


def ingested_arrays(workdir: Workdir) -> set[str]:
    """Every "<dataset>/<key>" with a marker, a catalog part or a stored array."""
    markers = {str(p.relative_to(workdir.root / "ingest" / "done").with_suffix("")).replace(os.sep, "/")
               for p in (workdir.root / "ingest" / "done").glob("*/*.json")}
    parts = {f"{p.parent.name.removeprefix('dataset=')}/{p.stem}" for p in catalog_dir(workdir.root).glob("dataset=*/*.parquet")}
    return markers | parts | set(array_paths(workdir.store))


def remove_volume(workdir: Workdir, array_path: str) -> None:
    """Marker first: a crash part-way leaves an unmarked volume, never a trusted marker without data."""
    done_marker(workdir, array_path).unlink(missing_ok=True)
    part_path(workdir, array_path).unlink(missing_ok=True)
    if workdir.store.exists():
        delete_volume(workdir.store, array_path)


def _write_atomic_table(table: pa.Table, path: Path) -> None:
    """Through core.atomic: readers of the directory (the catalog dataset) never see a partial part."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def downsample_factor(shape: tuple[int, int, int], max_volume_gb: float) -> int:
    """Smallest in-plane integer factor that brings the uint8 volume under the size limit."""
    z, y, x = shape
    factor = 1
    while z * (y // factor) * (x // factor) > max_volume_gb * 1e9 and min(y, x) // (factor + 1) >= 2:
        factor += 1
    return factor


# ---- tasks (top-level functions: they run in worker processes) -------------------------------

def probe(item: VolumeItem, settings: IngestConfig, store: str) -> Plan:
    volume = open_volume(item)
    source_shape = volume.shape
    factor = downsample_factor(source_shape, settings.max_volume_gb)
    z, y, x = source_shape
    shape = (z, y // factor, x // factor)
    voxel = volume.voxel_size
    if voxel is not None and factor > 1:
        voxel = (voxel[0], voxel[1] * factor, voxel[2] * factor)
    axes = tiling.plane_axes(volume.kind if z > 1 else "image", voxel, settings.anisotropy_threshold, settings.unknown_spacing)
    axes = tiling.productive_axes(axes, shape, settings.patch_size, settings.min_edge)
    chunks = tiling.chunk_shape(shape, axes, settings.patch_size)
    return Plan(
        item=item, store=store, source_shape=source_shape, dtype=str(volume.data.dtype), channels=volume.channels,
        kind=volume.kind, voxel_size=voxel, voxel_source=volume.meta.get("voxel_size_from", "file"), factor=factor,
        shape=shape, axes=axes, chunks=chunks, settings=settings,
    )


def _read_raw(plan: Plan, region) -> np.ndarray:
    data = open_volume(plan.item).data[plan.raw_region(region)]
    return standardize.to_gray(np.asarray(data.compute(scheduler="synchronous")), plan.channels)


def range_task(plan: Plan, region) -> tuple[float, float, int]:
    return standardize.block_range(_read_raw(plan, region))


def merge_ranges(plan: Plan, ranges: list) -> tuple[float, float]:
    path = plan.attrs()["source_file"]
    bad = sum(r[2] for r in ranges)
    if bad:
        raise ReaderError(path, f"{bad} NaN/inf values in a {plan.dtype} volume; NaN/inf sources are rejected")
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if lo == hi:
        raise ReaderError(path, f"constant image (every pixel is {lo:g}); nothing to curate")
    return lo, hi


def histogram_task(plan: Plan, region, bounds: tuple[float, float]) -> np.ndarray:
    spec = standardize.histogram_spec(np.dtype(plan.dtype), *bounds)
    return standardize.block_histogram(_read_raw(plan, region), spec)


def mapping_task(plan: Plan, bounds: tuple[float, float], histograms: list) -> standardize.Mapping:
    spec = standardize.histogram_spec(np.dtype(plan.dtype), *bounds)
    return standardize.percentile_mapping(np.sum(histograms, axis=0), spec, plan.settings.percentiles, *bounds)


def block_task(plan: Plan, region, mapping: standardize.Mapping) -> tuple[pd.DataFrame, int, int]:
    """Standardise one block, store it, and catalog every patch that starts in it."""
    settings = plan.settings
    data = standardize.apply(_read_raw(plan, region), mapping, plan.item.invert, plan.factor)
    write_region(Path(plan.store), plan.item.array_path, region, data)
    groups = tiling.block_patches(data, region, plan.shape, plan.axes, settings.patch_size, settings.min_edge)
    frame = catalog_frame(plan.item, plan.attrs()["source_file"], groups, settings.hash_size)
    return frame, int(data.min()), int(data.max())


def catalog_frame(item: VolumeItem, source_file: str, groups: list, hash_size: int) -> pd.DataFrame:
    """One catalog row per patch of the groups; one DataFrame per block (pandas' fixed cost per
    frame would otherwise be paid for every plane axis and tile size)."""
    volume = item.array_path
    parts = [(group, *hash_and_moments(group, hash_size)) for group in groups if len(group.slices)]
    if not parts:
        return CATALOG_SCHEMA.empty_table().to_pandas()
    n = sum(len(group.slices) for group, *_ in parts)
    axes = np.concatenate([np.full(len(group.slices), group.axis, dtype=object) for group, *_ in parts])
    slices = np.concatenate([group.slices for group, *_ in parts]).astype(np.int32)
    ys = np.concatenate([group.ys for group, *_ in parts]).astype(np.int32)
    xs = np.concatenate([group.xs for group, *_ in parts]).astype(np.int32)
    return pd.DataFrame({
        "patch_id": np.fromiter((patch_id(item.dataset, volume, a, int(s), int(y), int(x))
                                 for a, s, y, x in zip(axes, slices, ys, xs)), dtype=np.int64, count=n),
        "dataset": np.full(n, item.dataset, dtype=object),
        "volume": np.full(n, volume, dtype=object),
        "source_file": np.full(n, source_file, dtype=object),
        "axis": axes,
        "slice": slices,
        "y": ys,
        "x": xs,
        "h": np.concatenate([np.full(len(group.slices), group.h, dtype=np.int32) for group, *_ in parts]),
        "w": np.concatenate([np.full(len(group.slices), group.w, dtype=np.int32) for group, *_ in parts]),
        "dhash": np.concatenate([hashes for _, hashes, _, _ in parts]),
        "mean": np.concatenate([mean for _, _, mean, _ in parts]).astype(np.float32),
        "std": np.concatenate([std for _, _, _, std in parts]).astype(np.float32),
    })


def hash_and_moments(group: tiling.PatchGroup, hash_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches are hashed where they lie in the block (strided views; sums from the same pass);
    only patches larger than 224 px, which the paper's call shrinks first, are copied out."""
    from cem_pipeline.ingest.hashing import dhash_patches, hash_tiles
    from cem_pipeline.ingest.hashing.pillow import PATCH_SIZE

    if group.h <= PATCH_SIZE and group.w <= PATCH_SIZE:
        hashes, totals, squares = hash_tiles(group.tiles, hash_size)
        return (hashes, *moments_from_sums(totals, squares, group.h * group.w))
    stack = group.stack()
    return (dhash_patches(stack, hash_size), *patch_moments(stack))


def load_kernels() -> None:
    """Load (or compile) every compiled kernel a block task uses, on a tiny block, so that cost of a fresh
    worker process (`kernel_load_seconds` in `cem bench ingest`) does not land on its first block."""
    for shape in ((2, 3, 5), (2, 9, 8)):  # both yz transposes: byte copy, and SWAR with a y tail
        block = np.zeros(shape, np.uint8)
        region = tuple(slice(0, n) for n in shape)
        for group in tiling.block_patches(block, region, shape, tiling.AXES, 2, 1):
            hash_and_moments(group, 8)
    tile = np.zeros((1, 224, 232), np.uint8)[:, :, :224].reshape(1, 1, 224, 1, 224)  # strided, like a block's views
    hash_and_moments(tiling.PatchGroup("xy", np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.int32),
                                       224, 224, tile), 8)


def finalize_task(plan: Plan, mapping: standardize.Mapping, results: list, catalog_part: str) -> int:
    """Write the volume's catalog part (atomically) and its intensity attrs; returns the row count."""
    lo = min(r[1] for r in results)
    hi = max(r[2] for r in results)
    if lo == hi and plan.identity:
        raise ReaderError(plan.attrs()["source_file"], f"constant image (every pixel is {lo}); nothing to curate")
    frame = pd.concat([r[0] for r in results], ignore_index=True)
    frame = frame.sort_values(["axis", "slice", "y", "x"], kind="stable").reset_index(drop=True)
    update_attrs(Path(plan.store), plan.item.array_path, {"intensity": mapping.as_attrs()})
    _write_atomic_table(pa.Table.from_pandas(frame, schema=CATALOG_SCHEMA, preserve_index=False), Path(catalog_part))
    return len(frame)


def cloudvolume_task(item: VolumeItem, settings: IngestConfig, store: str, seed: int, catalog_part: str) -> int:
    """Sample, standardise (one mapping over all samples), store and catalog a CloudVolume dataset."""
    from cem_pipeline.sources.readers.cloudvolume_reader import sample

    n = item.samples or settings.cloudvolume_samples
    raw, coords, info = sample(item.source, item.dataset, n, settings.patch_size, seed)
    if raw.dtype == np.uint8:
        mapping = standardize.Mapping("identity", 0.0, 255.0)
    else:
        lo, hi = float(raw.min()), float(raw.max())
        spec = standardize.histogram_spec(raw.dtype, lo, hi)
        mapping = standardize.percentile_mapping(standardize.block_histogram(raw, spec), spec, settings.percentiles, lo, hi)
    data = standardize.apply(raw, mapping, item.invert)
    shape = data.shape
    voxel = info["resolution_xyz_nm"][::-1]
    create_volume(Path(store), item.array_path, shape, (min(16, shape[0]), shape[1], shape[2]), {
        "source_file": item.source, "kind": "samples", "coords_xyz": coords.tolist(), "voxel_size": voxel,
        "voxel_size_source": "file", "invert": item.invert, "downsample": 1, "planes": ["xy"],
        "intensity": mapping.as_attrs(), "sampling": {**info, "seed": seed}, **item.metadata,
    })
    write_region(Path(store), item.array_path, (slice(0, shape[0]), slice(None), slice(None)), data)
    group = tiling.PatchGroup("xy", np.arange(shape[0], dtype=np.int32), np.zeros(shape[0], np.int32),
                              np.zeros(shape[0], np.int32), shape[1], shape[2], data.reshape(shape[0], 1, shape[1], 1, shape[2]))
    frame = catalog_frame(item, item.source, [group], settings.hash_size)
    _write_atomic_table(pa.Table.from_pandas(frame, schema=CATALOG_SCHEMA, preserve_index=False), Path(catalog_part))
    return len(frame)


# ---- graph assembly and bookkeeping (client side) --------------------------------------------

@dataclass
class IngestSummary:
    datasets: int = 0
    volumes: int = 0
    skipped: int = 0
    ingested: int = 0
    patches: int = 0
    errors: list[SourceError] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"datasets: {self.datasets}   volumes: {self.volumes}   already done: {self.skipped}   "
            f"ingested now: {self.ingested}   removed: {len(self.removed)}   errors: {len(self.errors)}",
            f"patches written: {self.patches}   time: {self.seconds:.1f} s",
        ]
        out += [f"  REMOVED {path} (no longer in the manifest)" for path in self.removed]
        out += [f"  ERROR [{e.dataset}] {e.file}: {e.reason}" for e in self.errors]
        return out


def write_errors(workdir: Workdir, errors: list[SourceError]) -> None:
    now = pd.Timestamp.now(tz="UTC")
    table = pa.table({
        "dataset": [e.dataset for e in errors], "file": [e.file for e in errors], "reason": [e.reason for e in errors],
        "time": pa.array([now] * len(errors), type=pa.timestamp("us", tz="UTC")),
    }, schema=ERRORS_SCHEMA)
    _write_atomic_table(table, workdir.errors)


def _install(workdir: Workdir, item: VolumeItem, rows: int, fingerprint: str) -> None:
    """Move the finished volume's staged array and part into place, then mark it done."""
    import zarr

    staging = staging_store(workdir)
    shape = list(zarr.open_array(staging / item.array_path, mode="r", zarr_format=3).shape)
    install_volume(staging, workdir.store, item.array_path)
    part = part_path(workdir, item.array_path)
    part.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged_part(workdir, item.array_path), part)
    write_text_atomic(done_marker(workdir, item.array_path), json.dumps({
        "array": item.array_path, "rows": rows, "shape": shape, "files": list(item.files), "fingerprint": fingerprint}))


def _submit_volume(client, plan: Plan, workdir: Workdir):
    """The per-volume subgraph; returns (all futures, the finalize future)."""
    settings = plan.settings
    regions = tiling.blocks(plan.shape, plan.chunks, settings.block_mb * 1e6)
    futures = []
    if plan.identity:
        mapping = standardize.Mapping("identity", 0.0, 255.0)
    elif settings.intensity == "dtype_max":
        ranges = [client.submit(range_task, plan, r, pure=False) for r in regions]
        bounds = client.submit(merge_ranges, plan, ranges, pure=False)  # NaN/inf and constant checks
        mapping = client.submit(dtype_max_task, plan, bounds, pure=False)
        futures += ranges + [bounds, mapping]
    else:
        ranges = [client.submit(range_task, plan, r, pure=False) for r in regions]
        bounds = client.submit(merge_ranges, plan, ranges, pure=False)
        hists = [client.submit(histogram_task, plan, r, bounds, pure=False) for r in regions]
        mapping = client.submit(mapping_task, plan, bounds, hists, pure=False)
        futures += ranges + [bounds] + hists + [mapping]
    block_futures = [client.submit(block_task, plan, r, mapping, pure=False) for r in regions]
    final = client.submit(finalize_task, plan, mapping, block_futures, str(staged_part(workdir, plan.item.array_path)), pure=False)
    return futures + block_futures + [final], final


def dtype_max_task(plan: Plan, bounds: tuple[float, float]) -> standardize.Mapping:
    """The paper's fixed mapping; `bounds` is only a dependency that rejects NaN/inf and constant sources."""
    return standardize.dtype_max_mapping(np.dtype(plan.dtype))


def _reason(exc: BaseException) -> tuple[str | None, str]:
    if isinstance(exc, ReaderError):
        return exc.path, exc.reason
    return None, f"{type(exc).__name__}: {exc}"


@dataclass
class IngestPlan:
    """What `cem ingest` has to do now: the manifest's volumes, those to (re)compute, those to remove."""

    datasets: int  # the manifest's sources
    items: list[VolumeItem]
    errors: list[SourceError]  # sources the manifest names but that cannot be expanded
    fingerprints: dict[str, str]  # array_path -> volume fingerprint
    pending: list[VolumeItem]  # no trusted marker: new, changed, incomplete or failed last time
    removed: list[str]  # array paths in the workdir that the manifest no longer names
    present: bool  # the workdir holds any ingested volume


def plan_ingest(config: CemConfig, workdir: Workdir) -> IngestPlan:
    """The one decision both `cem ingest` (which acts on it) and `cem status` (which reports it) take."""
    specs = specs_of(config.ingest)
    items, errors = expand_all(specs)
    fingerprints = {i.array_path: volume_fingerprint(i, config.ingest, config.seed) for i in items}
    pending = [i for i in items if not trusted(workdir, i.array_path, fingerprints[i.array_path])]
    present = ingested_arrays(workdir)
    removed = sorted(present - {i.array_path for i in items})
    return IngestPlan(len(specs), items, list(errors), fingerprints, pending, removed, bool(present))


def ingest_state(config: CemConfig) -> StageState:
    """Fresh when every manifest volume has a trusted marker and nothing removed from the manifest is left;
    what `cem ingest` would do now, without doing it."""
    workdir = Workdir(config.workdir)
    plan = plan_ingest(config, workdir)
    if not plan.present:
        return StageState("ingest", "missing", {"volumes": len(plan.items)})
    failed = failed_since_changed(workdir, plan.pending)
    changed = len(plan.pending) - len(failed)
    reasons = ([f"{changed} volumes new or changed"] if changed else []) + \
        ([f"{len(plan.removed)} volumes no longer in the manifest"] if plan.removed else [])
    counts = {"volumes": len(plan.items), "up to date": len(plan.items) - len(plan.pending),
              "patches": len(read_table(workdir.root, ["patch_id"])), "failed (errors.parquet)": len(failed),
              "source errors": len(plan.errors)}
    return StageState("ingest", "stale" if reasons else "fresh", counts, tuple(reasons))


def failed_since_changed(workdir: Workdir, items: list[VolumeItem]) -> list[VolumeItem]:
    """Items whose last ingest failed (a row of errors.parquet) and whose files are unchanged since: a re-run
    retries them but they are not news, so `cem status` reports them as failed rather than stale."""
    if not workdir.errors.exists():
        return []
    table = pq.read_table(workdir.errors, columns=["dataset", "file", "time"]).to_pylist()
    failed_at = {(row["dataset"], row["file"]): row["time"].timestamp() for row in table}
    out = []
    for item in items:
        times = [failed_at[item.dataset, f] for f in (*item.files, item.source) if (item.dataset, f) in failed_at]
        newest = max((os.stat(f).st_mtime for f in item.files if os.path.exists(f)), default=0.0)
        if times and max(times) >= newest:
            out.append(item)
    return out


def run_ingest(config: CemConfig, client, progress: bool = True) -> IngestSummary:
    """Ingest every source of the config through `client`; returns the summary (errors included)."""
    from distributed import as_completed
    from tqdm import tqdm

    started = time.perf_counter()
    workdir = Workdir(config.workdir).create()
    settings = config.ingest
    plan = plan_ingest(config, workdir)
    pending, fingerprints = plan.pending, plan.fingerprints
    summary = IngestSummary(datasets=plan.datasets, volumes=len(plan.items), errors=list(plan.errors), removed=plan.removed)
    for array_path in plan.removed:
        remove_volume(workdir, array_path)
    for item in pending:
        done_marker(workdir, item.array_path).unlink(missing_ok=True)
    summary.skipped = len(plan.items) - len(pending)
    shutil.rmtree(staging_store(workdir), ignore_errors=True)  # what a killed run left half-built
    shutil.rmtree(staging_parts(workdir), ignore_errors=True)
    store = str(staging_store(workdir))

    owner: dict[str, VolumeItem] = {}
    role: dict[str, str] = {}
    queue = as_completed()
    for item in pending:
        if item.format == "cloudvolume":
            future = client.submit(cloudvolume_task, item, settings, store, config.seed, str(staged_part(workdir, item.array_path)),
                                   pure=False)
            role[future.key] = "final"
        else:
            future = client.submit(probe, item, settings, store, pure=False)
            role[future.key] = "probe"
        owner[future.key] = item
        queue.add(future)

    failed: set[str] = set()
    outstanding: dict[str, list] = {}
    bar = tqdm(total=len(pending), desc="ingest", unit="task", disable=not progress, dynamic_ncols=True)
    for future in queue:
        bar.update(1)
        item = owner.get(future.key)
        kind = role.get(future.key, "block")
        if item is None or item.array_path in failed:
            continue
        if future.status == "error":
            if kind == "block":
                continue  # its finalize fails with the same exception and reports it
            path, reason = _reason(future.exception())
            summary.errors.append(SourceError(item.dataset, path or (item.files[0] if len(item.files) == 1 else item.source), reason))
            failed.add(item.array_path)
            siblings = [f for f in outstanding.pop(item.array_path, []) if not f.done()]
            if siblings:
                client.cancel(siblings)  # they must not write into the array we drop
            delete_volume(Path(store), item.array_path)
            staged_part(workdir, item.array_path).unlink(missing_ok=True)
            remove_volume(workdir, item.array_path)  # its old pixels and rows are stale, not a fallback
            continue
        if kind == "probe":
            plan: Plan = future.result()
            create_volume(Path(store), item.array_path, plan.shape, plan.chunks, plan.attrs())
            futures, final = _submit_volume(client, plan, workdir)
            outstanding[item.array_path] = futures
            for f in futures:
                owner[f.key] = item
                role.setdefault(f.key, "block")
            role[final.key] = "final"
            bar.total += len(futures)
            bar.refresh()
            for f in futures:
                queue.add(f)
        elif kind == "final":
            rows = int(future.result())
            _install(workdir, item, rows, fingerprints[item.array_path])
            outstanding.pop(item.array_path, None)
            summary.ingested += 1
            summary.patches += rows
    bar.close()
    write_errors(workdir, summary.errors)
    summary.seconds = time.perf_counter() - started
    return summary
