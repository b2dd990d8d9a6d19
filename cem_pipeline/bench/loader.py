"""`cem bench loader`: the MoCo input pipeline against the paper's way, in the same run.

Paper's way (cellemnet): one TIFF per patch on disk, opened with PIL in torch DataLoader workers,
torchvision transforms per image (Grayscale(3), RandomApply(RandomRotation(180)), RandomResizedCrop
(224, (0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1), RandomApply(GaussianBlur sigma 0.1-2),
Grayscale(1), H/V flips, ToTensor, GaussNoise, Normalize), twice per image for MoCo's two views.
Ours: the .beton through ffcv's Loader and TwoViewAugment, with the same number of workers.
Both read the same real EM patches (the shared sources of em_data, ingested).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from cem_pipeline.bench.em_data import bench_workdir, ingested_config


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

    from cem_pipeline.core.patches import read_patches

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


def run(workdir: Path | None, num_workers: int, batch_size: int = 64, batches: int = 40, rounds: int = 4,
        em_root: Path | None = None, sources: str | None = None) -> dict:
    """Pairs/s of both pipelines on the shared EM ingested into `workdir` (kept; None: a temporary one)."""
    with bench_workdir(workdir, "loader") as root:
        return _measure(root, num_workers, batch_size, batches, rounds, em_root, sources)


def _measure(workdir: Path, num_workers: int, batch_size: int, batches: int, rounds: int,
             em_root: Path | None, sources: str | None) -> dict:
    import numba
    import torch
    from torch.utils.data import DataLoader

    from cem_pipeline.export.sidecar import read_manifest
    from cem_pipeline.export.writer import run_export
    from training.data.augment import TwoViewAugment
    from training.data.moco_pipeline import make_moco_loader

    config = ingested_config(workdir, num_workers, em_root, sources)
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
