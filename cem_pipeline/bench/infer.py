"""`cem bench infer`: orthoplane inference voxels/s, ours (zarr slabs, batched slices) vs the paper's
batch-1 slice loop, same model, same device, same real EM volume, measured in one run."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from cem_pipeline.bench.em_data import cdeep3m_stack


def bench_volume(shape: tuple[int, int, int], em_root: Path) -> np.ndarray:
    """A (Z, Y, X) crop of the real cdeep3m SBEM training slices."""
    return np.ascontiguousarray(cdeep3m_stack(em_root, shape[0])[:, : shape[1], : shape[2]])


def run(em_root: Path, shape: tuple[int, int, int] = (16, 96, 96), batch_size: int = 16, device_name: str = "auto",
        threads: int | None = None, seed: int = 42) -> dict:
    import torch
    import zarr

    from training.seg.infer import (
        Predictor,
        decode_probs,
        infer_volume,
        select_device,
        slice_loop_probabilities,
    )
    from training.seg.model import build_unet

    if threads:
        torch.set_num_threads(threads)
    device = select_device(device_name)
    volume = bench_volume(shape, em_root)
    torch.manual_seed(seed)
    predictor = Predictor(build_unet(1), (0.5, 0.2), device, batch_size)
    predictor.predict(volume[:1])  # warm-up: allocator, kernels
    start = time.perf_counter()
    reference = slice_loop_probabilities(predictor, volume, "orthoplane")
    baseline_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="cem-bench-infer-") as tmp:
        source = zarr.open_array(Path(tmp) / "image.zarr", mode="w", shape=volume.shape, chunks=(64, 64, 64), dtype="uint8")
        source[...] = volume
        start = time.perf_counter()
        group = infer_volume(predictor, source, Path(tmp) / "pred.zarr", "orthoplane", slab=32, prob_dtype="float16")
        ours_s = time.perf_counter() - start
        diff = float(np.abs(decode_probs(group["probabilities"][...]) - reference).max())
    voxels = int(np.prod(shape))
    return {
        "benchmark": "orthoplane inference (U-Net ResNet50, 1 class)",
        "device": str(device),
        "volume": list(shape),
        "batch_size": batch_size,
        "baseline": "paper inference3d: one slice per forward, volume in RAM",
        "ours": "zarr slabs of 32 slices, batched forward, float16 probabilities on disk",
        "baseline_per_s": voxels / baseline_s,
        "ours_per_s": voxels / ours_s,
        "ratio": baseline_s / ours_s,
        "max_abs_prob_diff": diff,
        "torch_threads": torch.get_num_threads(),
    }
