"""`cem bench mocov2`: images/s of the MoCoV2 training step, the paper's way vs ours, in one run.

Baseline (the paper's code path): one TIFF per patch decoded by PIL, per-image torchvision
transforms in DataLoader workers (cem_pipeline.bench.loader.paper_transform: the paper's chain at
224 px), fp32, default memory format.
Ours: the same patches streamed from a .beton by the ffcv loader, batched augmentation on the
training device, and the precision/memory format `train` picks for that device (bf16 and
channels_last on GPU; fp32 on CPU, where the data path is the difference).
Both sides run the identical MoCo model and SGD step on real EM patches (cdeep3m SBEM tiles).
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from cem_pipeline.bench.em_data import CDEEP3M_SLICES, cdeep3m_slices, real_em_patches
from cem_pipeline.bench.errors import BenchError
from training.moco.config import parse_moco_config
from training.moco.model import MoCo
from training.moco.train import Runtime, resolve_runtime, train_step


def em_patches(em_root: Path, count: int, size: int = 224) -> np.ndarray:
    """`count` non-overlapping (size, size) uint8 tiles from the real cdeep3m SBEM slices."""
    patches = real_em_patches(em_root, count, size, stride=size, files=cdeep3m_slices(em_root))
    if len(patches) < count:
        raise BenchError(f"{Path(em_root) / CDEEP3M_SLICES}: only {len(patches)} patches of {size} px, need {count}")
    return patches


def _forever(make_epoch: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make_epoch()


class _Side:
    """One contender: its model, optimizer, runtime and endless batch iterator; accumulates step time."""

    def __init__(self, model: MoCo, rt: Runtime, batches: Iterator):
        self.model, self.rt, self.batches = model, rt, batches
        self.optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.015,
                                         momentum=0.9, weight_decay=1e-4)
        self.seconds, self.steps = 0.0, 0

    def run(self, steps: int, timed: bool) -> None:
        """`steps` full training steps, data wait included."""
        start = time.perf_counter()
        for _ in range(steps):
            view_q, view_k = next(self.batches)
            train_step(self.model, self.optimizer, view_q.to(self.rt.device, non_blocking=True),
                       view_k.to(self.rt.device, non_blocking=True), self.rt)
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            self.seconds += time.perf_counter() - start
            self.steps += steps


def _race(baseline: _Side, ours: _Side, steps: int, warmup: int, block: int) -> None:
    """Alternate blocks of `block` timed steps, baseline then ours, so that load from other
    processes on a shared machine hits both sides alike."""
    baseline.run(warmup, timed=False)
    ours.run(warmup, timed=False)
    done = 0
    while done < steps:
        n = min(block, steps - done)
        baseline.run(n, timed=True)
        ours.run(n, timed=True)
        done += n


def run(em_root: Path, batch_size: int | None = None, steps: int | None = None, threads: int | None = None,
        workers: int | None = None) -> dict[str, Any]:
    import tifffile

    from cem_pipeline.bench.arrays import write_patch_beton
    from cem_pipeline.bench.loader import TiffPairs, paper_transform
    from cem_pipeline.export.sidecar import read_manifest
    from training.data.augment import TwoViewAugment
    from training.data.moco_pipeline import make_moco_loader

    cuda = torch.cuda.is_available()
    batch = batch_size or (128 if cuda else 8)
    steps = steps or (30 if cuda else 3)
    warmup = 3 if cuda else 1
    workers = workers or min(8, os.cpu_count() or 1)
    if threads:
        torch.set_num_threads(threads)
    patches = em_patches(em_root, max(2 * batch, 32))

    with tempfile.TemporaryDirectory(prefix="cem-bench-mocov2-") as tmp:
        files = []
        for i, patch in enumerate(patches):
            files.append(Path(tmp) / f"patch_{i:05d}.tif")
            tifffile.imwrite(files[-1], patch)
        beton = write_patch_beton(patches, Path(tmp) / "bench.beton")
        manifest = read_manifest(beton)
        mean, std = manifest.mean, manifest.std
        config = parse_moco_config({"data": {"beton": str(beton)}, "optim": {"batch_size": batch}})

        ours_rt = resolve_runtime(config, 0, 1, 0)
        paper_rt = Runtime(0, 1, ours_rt.device, None, False)

        random.seed(0)
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(
            TiffPairs(files, paper_transform(mean, std)), batch_size=batch, shuffle=True,
            num_workers=workers, drop_last=True, persistent_workers=True, pin_memory=cuda,
        )
        paper = _Side(MoCo().to(paper_rt.device), paper_rt, _forever(lambda: iter(loader)))

        torch.manual_seed(0)
        ffcv_loader = make_moco_loader(beton, batch_size=batch, num_workers=workers, order="random",
                                       distributed=False, seed=0, drop_last=True)
        augment = TwoViewAugment(mean, std, ours_rt.device, seed=0)
        model = MoCo().to(ours_rt.device)
        if ours_rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        ours = _Side(model, ours_rt, _forever(lambda: (augment(*b) for b in ffcv_loader)))
        # a GPU machine is not shared: long blocks keep each side's prefetching from hiding in the other's steps
        _race(paper, ours, steps, warmup, block=steps if cuda else 1)
        baseline = paper.steps * batch / paper.seconds
        ours_per_s = ours.steps * batch / ours.seconds

    return {
        "benchmark": "mocov2 training step (images/s)",
        "command": f"cem bench mocov2 --json --batch-size {batch} --steps {steps}",
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "gpu_available": cuda,
        "batch_size": batch,
        "crop": 224,
        "steps": steps,
        "baseline": "paper: PIL files + per-image torchvision transforms in DataLoader workers, fp32",
        "ours": f"ffcv .beton + batched augmentation on {ours_rt.device.type}, "
                f"{'bf16' if ours_rt.autocast_dtype else 'fp32'}{', channels_last' if ours_rt.channels_last else ''}",
        "timing": "warm-up steps untimed; then alternating blocks of timed steps, paper then ours",
        "baseline_per_s": round(baseline, 3),
        "ours_per_s": round(ours_per_s, 3),
        "ratio": round(ours_per_s / baseline, 3),
    }
