"""Benchmarks for export and the MoCo input pipeline, each against the paper's way in the same run.

Paper's way (cellemnet): one TIFF per patch on disk, opened with PIL in torch DataLoader workers,
torchvision transforms per image (Grayscale(3), RandomApply(RandomRotation(180)), RandomResizedCrop
(224, (0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1), RandomApply(GaussianBlur sigma 0.1-2),
Grayscale(1), H/V flips, ToTensor, GaussNoise, Normalize), twice per image for MoCo's two views.
Ours: the .beton through ffcv's Loader and TwoViewAugment, with the same number of workers.
Both read the same real EM patches (ingested from ../shared/data/em).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from .em_data import shared_em_root

SHARED_SOURCES = (
    ("cdeep3m_train", "cdeep3m_mito_sbem/training/images/*.png"),
    ("cdeep3m_val", "cdeep3m_mito_sbem/validation/images/*.png"),
    ("cdeep3m_test", "cdeep3m_mito_sbem/testset/*.png"),
    ("isbi_train", "isbi2012_drosophila_l1_vnc_sstem/train/image/*.png"),
    ("isbi_test", "isbi2012_drosophila_l1_vnc_sstem/test/image/*.png"),
    ("snemi3d", "snemi3d_kasthuri2015_atum_sem/stack_clahe/*.png"),
    ("fei", "fei_sem_rbc_imageio/fei-sem-rbc.tif"),
)


def existing_em_root() -> Path:
    root = shared_em_root()
    if not (root / "README.md").exists():
        raise FileNotFoundError(f"{root}: real EM data not found (set CEM_SHARED_EM)")
    return root


def bench_config(workdir: Path, n_workers: int):
    """A config that ingests the shared EM sources (as stacks of slices) into `workdir`."""
    from .config import parse_config

    root = existing_em_root()
    sources = [{"name": name, "path": str(root / pattern), "format": "slices" if "*" in pattern else "auto"}
               for name, pattern in SHARED_SOURCES]
    return parse_config({"workdir": str(workdir), "cluster": {"n_workers": 1, "threads_per_worker": n_workers},
                         "ingest": {"sources": sources}, "export": {"num_workers": n_workers}})


def ingest_shared(config) -> int:
    from .cluster import open_client
    from .ingest import run_ingest

    with open_client(config.cluster, config.workdir / "logs" / "jobs") as client:
        summary = run_ingest(config, client, progress=False)
    return summary.patches


class PaperGaussianBlur:
    """MoCo v2's blur: PIL GaussianBlur with radius drawn from [0.1, 2]."""

    def __call__(self, image):
        from PIL import ImageFilter

        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class PaperGaussNoise:
    """cellemnet's GaussNoise on tensors: p=0.5, variance log-uniform in [1e-5, 1e-4], clamped."""

    def __call__(self, tensor):
        import torch

        if random.random() < 0.5:
            std = (10 ** random.uniform(-5, -4)) ** 0.5
            tensor = (tensor + torch.randn_like(tensor) * std).clamp(0, 1)
        return tensor


def paper_transform(mean: float, std: float):
    import torchvision.transforms as T

    return T.Compose([
        T.Grayscale(3), T.RandomApply([T.RandomRotation(180)], p=0.5), T.RandomResizedCrop(224, scale=(0.2, 1.0)),
        T.ColorJitter(0.4, 0.4, 0.4, 0.1), T.RandomApply([PaperGaussianBlur()], p=0.5), T.Grayscale(1),
        T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ToTensor(), PaperGaussNoise(), T.Normalize([mean], [std]),
    ])


class TiffPairs:
    """The paper's dataset: one TIFF per patch, two independently transformed views."""

    def __init__(self, files: list[Path], transform):
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image = image.convert("L")
            return self.transform(image), self.transform(image)


def write_tiffs(workdir: Path, directory: Path, rows) -> list[Path]:
    """One TIFF per patch, the paper's on-disk layout."""
    import tifffile

    from .patches import read_patches

    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, patch in enumerate(read_patches(workdir, rows)):
        path = directory / f"{i:07d}.tiff"
        tifffile.imwrite(path, np.ascontiguousarray(patch))
        files.append(path)
    return files


def _timed(iterator, batches: int) -> float:
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - started


def _cycle(make_iterable):
    while True:
        yield from make_iterable()


def interleaved_rates(make_baseline, ours, batches: int, batch_size: int, rounds: int) -> tuple[float, float]:
    """Pairs/s of the two pipelines, timed in alternating rounds so that load from other users of a
    shared machine hits both alike. Each baseline round gets a fresh DataLoader iterator, shut down
    after the round, so its workers do not keep prefetching while ours is timed; start-up (worker
    spawn, first batch, numba compile) is excluded from both."""
    next(ours)
    per_round = max(1, batches // rounds)
    spent = [0.0, 0.0]
    for _ in range(rounds):
        baseline = make_baseline()
        next(baseline)
        spent[0] += _timed(baseline, per_round)
        del baseline
        spent[1] += _timed(ours, per_round)
    done = per_round * rounds * batch_size
    return done / spent[0], done / spent[1]


def bench_loader(workdir: Path, num_workers: int, batch_size: int = 64, batches: int = 40, rounds: int = 4) -> dict:
    import numba
    import torch
    from torch.utils.data import DataLoader

    from training.data.augment import TwoViewAugment
    from training.data.manifest import read_manifest
    from training.data.moco_pipeline import make_moco_loader

    from .export import run_export

    config = bench_config(workdir, num_workers)
    if not (config.workdir / "catalog").exists():
        ingest_shared(config)
    result = run_export(config, num_workers=num_workers)
    beton = result.files[0]
    meta = read_manifest(beton)
    files = write_tiffs(config.workdir, config.workdir / "tiffs", meta.rows)

    torch.set_num_threads(1)
    baseline = DataLoader(TiffPairs(files, paper_transform(meta.mean, meta.std)), batch_size=batch_size,
                          shuffle=True, num_workers=num_workers, drop_last=True,
                          generator=torch.Generator().manual_seed(0))
    numba.set_num_threads(num_workers)
    loader = make_moco_loader(beton, batch_size, num_workers, order="random", seed=0)
    augment = TwoViewAugment(meta.mean, meta.std, device="cpu", seed=0)
    baseline_rate, ours_rate = interleaved_rates(
        lambda: iter(baseline), (augment(*batch) for batch in _cycle(lambda: loader)),
        batches, batch_size, rounds)
    return {"benchmark": "loader", "unit": "augmented view pairs/s", "patches": len(files), "workers": num_workers,
            "batch_size": batch_size, "batches": batches, "rounds": rounds, "baseline_per_s": baseline_rate,
            "ours_per_s": ours_rate, "ratio": ours_rate / baseline_rate}


def bench_export(workdir: Path, num_workers: int) -> dict:
    """Ours: `run_export` (.beton, block reads, DatasetWriter workers). Baseline: the paper's
    crop-to-TIFF step — every patch read on its own and written as one TIFF file."""
    import tifffile

    from .export import run_export
    from .export_select import select_patches
    from .patches import read_patch

    config = bench_config(workdir, num_workers)
    if not (config.workdir / "catalog").exists():
        ingest_shared(config)
    rows = select_patches(config.workdir, config.export, config.seed).rows
    out = config.workdir / "paper_tiffs"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, row in enumerate(rows.itertuples(index=False)):
        tifffile.imwrite(out / f"{i:07d}.tiff", read_patch(config.workdir, row._asdict()))
    baseline_rate = len(rows) / (time.perf_counter() - started)
    result = run_export(config, num_workers=num_workers)
    ours_rate = result.rows / result.seconds
    return {"benchmark": "export", "unit": "patches written/s", "patches": result.rows, "workers": num_workers,
            "baseline_per_s": baseline_rate, "ours_per_s": ours_rate, "ratio": ours_rate / baseline_rate}
