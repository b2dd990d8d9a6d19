"""`deploy/gpu-check.sh` (`python -m cem_pipeline.bench.gpu`): every CUDA path of the project checked against its
CPU result, and the MoCoV2 ResNet50 224² training throughput.

One function per check, each returning a dict with `check`, `passed`, the measured differences and the
tolerance they were held to. With a GPU (mode `gpu`) every check runs its CUDA path and compares it with
the CPU computation of the same inputs; without one (mode `cpu`) the same functions run their CPU
fallbacks at tiny sizes (the path that takes the GPU's place on CPU: the torch augmentation on CPU, CPU
bf16 autocast, gloo DDP), so the plumbing is tested anywhere, and the result says the GPU checks were
skipped. Nothing is downloaded: inputs are tiles of the real EM (cem_pipeline.bench.em_data) when it
is present, else seeded synthetic EM-like images.

Checks and tolerances (bf16 keeps 8 significant bits, relative rounding 2^-8 = 0.4 %):
- augment: training.data.augment's torch path on the device vs the fused numba CPU kernel, same drawn
  parameters, noise off (the two draw noise from different generators by design): max |diff| <= 0.02
  in normalised units (std = 1 ~ 50 grey levels, so 0.02 is 1 grey level), mean <= 1e-3; then the
  device's noise alone: its std / the drawn std within 0.85-1.15.
- filter_scoring: `score_images` on the device under bf16 + channels_last (as `cem filter` runs) and in
  fp32 vs fp32 on CPU; BatchNorm statistics calibrated on the patches first so scores are not
  saturated: bf16 max |P diff| <= 0.03, fp32 <= 1e-3; informative (P > 0.5) decisions agree wherever the
  CPU score is farther than the tolerance from 0.5.
- moco_step: one MoCoV2 SGD step (training.moco.train.train_step) on the device in bf16 autocast +
  channels_last vs fp32 on CPU from the same weights and views: |loss diff| <= 2 % of the loss, cosine of
  the concatenated encoder_q gradients >= 0.9, of each enqueued key >= 0.99 (BF16_STEP says why); fp32 on
  the device (TF32 off): loss 1e-4 relative, cosines >= 0.9999.
- compile: the same step with `encoder_q.compile()` and `encoder_k.compile()` (what runtime.compile
  does), bf16 on the device, vs fp32 CPU eager, bf16 tolerances; on CPU (mode cpu) with the aot_eager
  backend (dynamo + AOTAutograd without code generation) in fp32: 1e-4 relative.
- ddp: the trainer's DDP step under torchrun (NCCL, one rank per GPU) vs the same world size with gloo on
  CPU, fp32 and TF32 off: every rank's weights and queue bit-identical, per-step loss and weights within
  1e-3 relative of the CPU run. NCCL refuses two ranks on one GPU, so one GPU runs one NCCL rank (DDP
  wrapper and communicator, trivial collectives) and the two-rank cross-process logic (key gather,
  shuffled BN across ranks) is checked by the gloo run alone.
- infer: orthoplane inference (training.seg.infer.infer_volume: zarr slabs, batched, bf16 + channels_last
  on CUDA) vs the same on CPU (fp32), BatchNorm calibrated: max |P diff| <= 0.05, mean <= 0.005, labels
  agree on >= 99 % of voxels.
- throughput: MoCoV2 training steps/s of the trainer's own model (ResNet50, K = 65,536, shuffled BN over
  4 BN groups, bf16, channels_last) at 224² with the GPU augmentation of uint8 batches held in pinned
  host memory (the ffcv loader's place), eager and compiled; goal >= 3,000 images/s on one H100/H200.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

GOAL_IMAGES_PER_S = 3000.0
# one bf16 step vs fp32: (loss relative difference, cosine of all encoder_q gradients, cosine of each enqueued key).
# Measured with CPU bf16 autocast (the same rounding of conv/matmul inputs as CUDA's): loss 1e-4-1e-3, keys > 0.999,
# gradients 0.94-0.97 overall (0.88-0.92 for single BN/early-conv tensors: BatchNorm backward over sub-batches
# of 2-4 images amplifies rounding); a wrong layout, unshuffle or dtype path gives cosines near 0.
BF16_STEP = (0.01, 0.9, 0.99)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode: `gpu` sizes the checks for an H100/H200 (all in < 5 min), `cpu` for tests."""

    augment_batch: int
    augment_size: int
    score_patches: int
    score_batch: int
    score_size: int  # classifier input side (`cem filter` uses 224)
    moco_arch: str
    moco_size: int
    moco_batch: int
    compile_arch: str
    compile_size: int
    ddp_size: int
    ddp_batch: int  # per rank
    ddp_steps: int
    infer_shape: tuple[int, int, int]
    infer_encoder: str
    throughput_arch: str
    throughput_size: int
    throughput_batch: int
    throughput_steps: int


GPU_SIZES = Sizes(augment_batch=256, augment_size=224, score_patches=256, score_batch=64, score_size=224, moco_arch="resnet50",
                  moco_size=224, moco_batch=32, compile_arch="resnet18", compile_size=224, ddp_size=64, ddp_batch=16, ddp_steps=3,
                  infer_shape=(24, 128, 128), infer_encoder="resnet50", throughput_arch="resnet50", throughput_size=224,
                  throughput_batch=256, throughput_steps=40)
CPU_SIZES = Sizes(augment_batch=8, augment_size=64, score_patches=8, score_batch=4, score_size=64, moco_arch="resnet18",
                  moco_size=64, moco_batch=8, compile_arch="resnet18", compile_size=32, ddp_size=32, ddp_batch=4, ddp_steps=2,
                  infer_shape=(4, 16, 16), infer_encoder="resnet18", throughput_arch="resnet18", throughput_size=32,
                  throughput_batch=8, throughput_steps=1)


# --------------------------------------------------------------------------------------------- inputs


def em_tiles(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """`count` uint8 (size, size) tiles of the real EM if present, else seeded smooth synthetic ones."""
    from cem_pipeline.bench.em_data import real_em_patches, require_em_data
    from cem_pipeline.bench.errors import BenchError

    try:
        tiles = real_em_patches(require_em_data(), count, size, stride=size)
        if len(tiles) == count:
            return np.ascontiguousarray(tiles), "real EM (cdeep3m/ISBI/SNEMI3D tiles)"
    except (BenchError, OSError):
        pass
    return synthetic_tiles(count, size, seed), "synthetic (seeded blurred noise; real EM not found)"


def synthetic_tiles(count: int, size: int, seed: int = 0) -> np.ndarray:
    """EM-like texture: blurred noise blobs plus fine grain, uint8."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, max(2, size // 8), max(2, size // 8), generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.15 * torch.randn(count, 1, size, size, generator=g)
    x = (x - x.amin(dim=(2, 3), keepdim=True)) / (x.amax(dim=(2, 3), keepdim=True) - x.amin(dim=(2, 3), keepdim=True))
    return (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def em_volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """A (Z, Y, X) uint8 crop of the real cdeep3m stack if present, else a synthetic volume."""
    from cem_pipeline.bench.em_data import cdeep3m_stack, require_em_data
    from cem_pipeline.bench.errors import BenchError

    z, y, x = shape
    try:
        stack = cdeep3m_stack(require_em_data(), z)
        if stack.shape[1] >= y and stack.shape[2] >= x:
            return np.ascontiguousarray(stack[:, :y, :x]), "real EM (cdeep3m SBEM stack)"
    except (BenchError, OSError):
        pass
    return synthetic_tiles(z, max(y, x))[:, :y, :x].copy(), "synthetic (real EM not found)"


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Running BN statistics = the exact averages over `batches` (train-mode forwards), then eval mode.

    A random-init network in eval mode with BN's initial (0, 1) statistics grows its activations layer by
    layer until sigmoid outputs saturate at 0 or 1, where every precision agrees and the check is void."""
    torch.optim.swa_utils.update_bn(batches, model)
    return model.eval()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tf32(enabled: bool) -> tuple[bool, bool]:
    """Set cuDNN/cuBLAS TF32 (PyTorch's default: on for convolutions, off for matmuls); returns the old flags."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return old


def _restore_tf32(old: tuple[bool, bool]) -> None:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# --------------------------------------------------------------------------------------------- checks


def check_augment(device: torch.device, sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """The torch augmentation path on `device` vs the fused CPU kernel (see the module docstring)."""
    from training.data.augment import MocoAugmentParams, augment_view_torch, augment_views_cpu, sample_view_params

    batch, out = sizes.augment_batch, sizes.augment_size
    tiles, source = em_tiles(batch, 224, seed)
    images = torch.from_numpy(tiles)
    rng = np.random.default_rng(seed)
    height = np.full(batch, 224.0)
    width = np.full(batch, 224.0)
    edge = np.arange(batch) % 4 == 3  # every 4th is an edge patch padded to 224: crop from its valid part only
    height[edge] = rng.integers(112, 224, int(edge.sum()))
    width[edge] = rng.integers(112, 224, int(edge.sum()))
    mean, std = float(tiles.mean() / 255), float(tiles.std() / 255)
    clean = dataclasses.replace(MocoAugmentParams(out_size=out), noise_p=0.0)
    view = sample_view_params(rng, height, width, clean)
    cpu = augment_views_cpu(images, [view], mean, std, out)[0]
    generator = torch.Generator(device=device).manual_seed(seed)
    on_device = augment_view_torch(images.to(device), view, mean, std, out, generator)
    _sync(device)
    diff = (on_device.float().cpu() - cpu).abs()
    noisy_view = dataclasses.replace(view, noise_std=np.full(batch, 1e-2, np.float32))
    noisy = augment_view_torch(images.to(device), noisy_view, mean, std, out, generator).float().cpu()
    # interior pixels only (clamping at 0/1 shrinks the noise there)
    pixels = cpu * std + mean
    inside = (pixels > 0.1) & (pixels < 0.9)
    noise_ratio = float(((noisy - cpu) * std)[inside].std() / 1e-2)
    max_diff, mean_diff = float(diff.max()), float(diff.mean())
    passed = max_diff <= 0.02 and mean_diff <= 1e-3 and 0.85 <= noise_ratio <= 1.15 and bool(torch.isfinite(on_device).all())
    return {"check": "augment", "device": str(device), "passed": passed, "input": source, "batch": batch, "out_size": out,
            "edge_patches": int(edge.sum()), "max_abs_diff": max_diff, "mean_abs_diff": mean_diff,
            "noise_std_ratio": round(noise_ratio, 4),
            "tolerance": "max 0.02, mean 1e-3 (normalised units, noise off); device noise std / drawn std in 0.85-1.15"}


def check_filter_scoring(device: torch.device, sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """`cem filter`'s scoring kernel on `device` (bf16 + channels_last, and fp32) vs fp32 on CPU."""
    from cem_pipeline.filter.classifier import build_model, normalize, to_input
    from cem_pipeline.filter.scoring import prepare_model, score_images, use_bf16

    tiles, source = em_tiles(sizes.score_patches, 224, seed + 1)
    patches = list(tiles)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
    side = sizes.score_size
    calibrate_batchnorm(model, [normalize(to_input(patches[i:i + 32], side)) for i in range(0, len(patches), 32)])
    cpu = torch.device("cpu")
    reference = score_images(prepare_model(copy.deepcopy(model), cpu), patches, side, sizes.score_batch, cpu, bf16=False)
    # on CUDA, bf16 as `cem filter` decides; on CPU the same autocast path is forced for the fallback
    bf16 = use_bf16(device, cpu_bf16=True) if device.type == "cuda" else True
    old = _tf32(False)
    try:
        fp32 = score_images(prepare_model(copy.deepcopy(model), device), patches, side, sizes.score_batch, device, bf16=False)
    finally:
        _restore_tf32(old)
    half = score_images(prepare_model(copy.deepcopy(model), device), patches, side, sizes.score_batch, device, bf16=bf16)
    bf16_diff = float(np.abs(half - reference).max())
    fp32_diff = float(np.abs(fp32 - reference).max())
    decided = np.abs(reference - 0.5) > 0.03
    agree = bool(((half > 0.5) == (reference > 0.5))[decided].all())
    spread = float(reference.std())
    passed = bf16_diff <= 0.03 and fp32_diff <= 1e-3 and agree and spread > 1e-3
    return {"check": "filter_scoring", "device": str(device), "passed": passed, "input": source, "patches": len(patches), "size": side,
            "bf16": bf16, "max_abs_diff_bf16": bf16_diff, "max_abs_diff_fp32": fp32_diff, "decisions_agree": agree,
            "cpu_score_std": round(spread, 4),
            "tolerance": "P diff: bf16 0.03, fp32 (TF32 off) 1e-3; P>0.5 agrees where |P_cpu - 0.5| > 0.03; scores not saturated"}


def _moco(arch: str, seed: int, queue: int = 4096, bn_splits: int = 4):
    from training.moco.model import MoCo

    torch.manual_seed(seed)
    model = MoCo(queue_size=queue, arch=arch, bn_splits=bn_splits)
    model.shuffle_generator.manual_seed(seed)
    return model


def _views(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two normalised views of real/synthetic EM tiles from the CPU augmentation (the trainer's views)."""
    from training.data.augment import MocoAugmentParams, TwoViewAugment

    tiles, _ = em_tiles(batch, 224, seed + 2)
    augment = TwoViewAugment(float(tiles.mean() / 255), float(tiles.std() / 255), "cpu", seed=seed,
                             params=MocoAugmentParams(out_size=size))
    return augment(torch.from_numpy(tiles))


def _one_step(model, view_q: torch.Tensor, view_k: torch.Tensor, rt) -> dict[str, Any]:
    """One trainer step (training.moco.train.train_step); returns loss, encoder_q gradients and enqueued keys (CPU)."""
    from training.moco.train import train_step

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9, weight_decay=1e-4)
    batch = view_q.shape[0]
    loss, logits, q, k = train_step(model, optimizer, view_q.to(rt.device), view_k.to(rt.device), rt)
    _sync(rt.device)
    grads = torch.cat([p.grad.detach().float().cpu().reshape(-1) for p in model.encoder_q.parameters() if p.grad is not None])
    return {"loss": float(loss), "grads": grads, "keys": model.queue[:, :batch].detach().float().cpu().clone(),
            "q": q.detach().float().cpu()}


def _compare_steps(reference: dict[str, Any], other: dict[str, Any], loss_rel: float, grad_cosine: float,
                   key_cosine: float) -> dict[str, Any]:
    loss_diff = abs(other["loss"] - reference["loss"]) / max(abs(reference["loss"]), 1e-12)
    grad_cos = _cosine(other["grads"], reference["grads"])
    key_cos = float(torch.nn.functional.cosine_similarity(other["keys"].T, reference["keys"].T, dim=1).min())
    ok = loss_diff <= loss_rel and grad_cos >= grad_cosine and key_cos >= key_cosine and math.isfinite(other["loss"])
    return {"loss": other["loss"], "loss_rel_diff": loss_diff, "grad_cosine": grad_cos, "min_key_cosine": key_cos, "passed": ok}


def check_moco_step(device: torch.device, sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """One MoCoV2 step in bf16 autocast + channels_last (and fp32) on `device` vs fp32 CPU."""
    from training.moco.train import Runtime

    arch, size, batch = sizes.moco_arch, sizes.moco_size, sizes.moco_batch
    view_q, view_k = _views(batch, size, seed)
    cpu = torch.device("cpu")
    reference = _one_step(_moco(arch, seed), view_q, view_k, Runtime(0, 1, cpu, None, False))
    model = _moco(arch, seed).to(device).to(memory_format=torch.channels_last)
    bf16 = _compare_steps(reference, _one_step(model, view_q, view_k, Runtime(0, 1, device, torch.bfloat16, True)), *BF16_STEP)
    result = {"check": "moco_step", "device": str(device), "arch": arch, "size": size, "batch": batch, "bn_splits": 4,
              "cpu_fp32_loss": reference["loss"], "bf16_channels_last": bf16}
    passed = bf16["passed"]
    if device.type == "cuda":
        old = _tf32(False)
        try:
            model = _moco(arch, seed).to(device).to(memory_format=torch.channels_last)
            fp32 = _compare_steps(reference, _one_step(model, view_q, view_k, Runtime(0, 1, device, None, True)), 1e-4, 0.9999, 0.9999)
        finally:
            _restore_tf32(old)
        result["fp32_channels_last"] = fp32
        passed = passed and fp32["passed"]
    result["passed"] = passed
    result["tolerance"] = "bf16: loss 1 % rel, gradient cosine >= 0.9, key cosine >= 0.99; fp32 (TF32 off): 1e-4 rel, cosines >= 0.9999"
    return result


def check_compile(device: torch.device, sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """The step with both encoders compiled as runtime.compile does, vs fp32 eager on CPU."""
    from training.moco.train import Runtime

    arch, size, batch = sizes.compile_arch, sizes.compile_size, sizes.moco_batch
    view_q, view_k = _views(batch, size, seed)
    cpu = torch.device("cpu")
    reference = _one_step(_moco(arch, seed), view_q, view_k, Runtime(0, 1, cpu, None, False))
    torch._dynamo.reset()
    started = time.perf_counter()
    if device.type == "cuda":
        model = _moco(arch, seed).to(device).to(memory_format=torch.channels_last)
        model.encoder_q.compile()
        model.encoder_k.compile()
        step = _one_step(model, view_q, view_k, Runtime(0, 1, device, torch.bfloat16, True))
        compared, backend = _compare_steps(reference, step, *BF16_STEP), "inductor"
        tolerance = "bf16: loss 1 % rel, gradient cosine >= 0.9, key cosine >= 0.99"
    else:
        model = _moco(arch, seed)
        model.encoder_q.compile(backend="aot_eager")
        model.encoder_k.compile(backend="aot_eager")
        step = _one_step(model, view_q, view_k, Runtime(0, 1, cpu, None, False))
        compared, backend = _compare_steps(reference, step, 1e-4, 0.9999, 0.9999), "aot_eager"
        tolerance = "fp32: loss 1e-4 rel, cosines >= 0.9999"
    seconds = time.perf_counter() - started
    torch._dynamo.reset()
    return {"check": "compile", "device": str(device), "backend": backend, "arch": arch, "size": size, "batch": batch,
            "compile_and_step_s": round(seconds, 1), **compared, "tolerance": tolerance}


def check_infer(device: torch.device, sizes: Sizes, seed: int = 42) -> dict[str, Any]:
    """Orthoplane inference (zarr slabs) on `device` vs on CPU, same calibrated U-Net."""
    import zarr

    from training.seg.infer import Predictor, decode_probs, infer_volume, pad_to_multiple, slice_loop_probabilities
    from training.seg.model import build_unet

    volume, source = em_volume(sizes.infer_shape)
    norms = (float(volume.mean() / 255), float(volume.std() / 255))
    torch.manual_seed(seed)
    model = build_unet(1, sizes.infer_encoder)
    slices = torch.from_numpy(pad_to_multiple(volume)[:, None].astype(np.float32) / 255)
    calibrate_batchnorm(model, [(slices - norms[0]) / norms[1]])
    with tempfile.TemporaryDirectory(prefix="cem-gpu-check-infer-") as tmp:
        image = zarr.open_array(Path(tmp) / "image.zarr", mode="w", shape=volume.shape, chunks=(16, 64, 64), dtype="uint8")
        image[...] = volume

        def orthoplane(dev: torch.device, name: str) -> tuple[np.ndarray, np.ndarray]:
            predictor = Predictor(copy.deepcopy(model), norms, dev, batch_size=8)
            group = infer_volume(predictor, image, Path(tmp) / f"{name}.zarr", "orthoplane", slab=8, prob_dtype="float16")
            return decode_probs(group["probabilities"][...]), group["labels"][...]

        p_cpu, l_cpu = orthoplane(torch.device("cpu"), "cpu")
        if device.type == "cuda":
            p_dev, l_dev = orthoplane(device, "device")
        else:  # CPU fallback: the zarr-slab inference vs the paper's in-RAM slice loop (batch 1, float32)
            p_dev = slice_loop_probabilities(Predictor(copy.deepcopy(model), norms, device, 1), volume, "orthoplane")
            l_dev = (p_dev[0] > 0.5).astype(np.uint8)
    diff = np.abs(p_dev - p_cpu)
    agree = float((l_dev == l_cpu).mean())
    spread = float(p_cpu.std())
    passed = float(diff.max()) <= 0.05 and float(diff.mean()) <= 5e-3 and agree >= 0.99 and spread > 1e-3
    return {"check": "infer", "device": str(device), "passed": passed, "input": source, "volume": list(volume.shape),
            "encoder": sizes.infer_encoder, "mode": "orthoplane", "bf16": device.type == "cuda", "max_abs_prob_diff": float(diff.max()),
            "mean_abs_prob_diff": float(diff.mean()), "label_agreement": agree, "cpu_prob_std": round(spread, 4),
            "tolerance": "P diff max 0.05 (float16 storage included), mean 5e-3; labels agree on >= 99 %"}


# --------------------------------------------------------------------------------------------- DDP


def ddp_worker(backend: str, device_kind: str, out: Path, size: int, batch: int, steps: int, seed: int = 0) -> None:
    """One torchrun rank: the trainer's DDP wrapping and step on deterministic views; writes out/rank{R}.pt."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.moco.config import parse_moco_config
    from training.moco.model import MoCo
    from training.moco.train import Runtime, train_step

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local_rank) if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        _tf32(False)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    try:
        config = parse_moco_config({"data": {"beton": "unused.beton"}, "optim": {"batch_size": batch * world},
                                    "model": {"arch": "resnet18", "queue_size": 256}})
        torch.manual_seed(seed)
        model = MoCo(queue_size=256, arch="resnet18", bn_splits=config.bn_splits(world))
        model.shuffle_generator.manual_seed(seed)
        model = model.to(device)
        ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, forward_sync_buffers=False) \
            if world > 1 or backend == "nccl" else model
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9, weight_decay=1e-4)
        rt = Runtime(rank, world, device, None, False)
        losses = []
        for step in range(steps):
            g = torch.Generator().manual_seed(seed * 1000 + step)
            views = torch.randn(2, batch * world, 1, size, size, generator=g)
            mine = views[:, rank * batch:(rank + 1) * batch]
            loss, *_ = train_step(ddp, optimizer, mine[0], mine[1], rt)
            total = loss.detach().reshape(1).clone()
            dist.all_reduce(total)
            losses.append(float(total) / world)
        params = torch.cat([p.detach().float().cpu().reshape(-1) for p in model.encoder_q.parameters()])
        key_params = torch.cat([p.detach().float().cpu().reshape(-1) for p in model.encoder_k.parameters()])
        torch.save({"rank": rank, "world": world, "backend": backend, "losses": losses, "params": params[::97].clone(),
                    "param_sum": float(params.double().sum()), "key_params": key_params[::97].clone(),
                    "queue": model.queue.detach().float().cpu().clone(), "queue_ptr": int(model.queue_ptr)},
                   out / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _torchrun(nproc: int, backend: str, device_kind: str, out: Path, sizes: Sizes, timeout: float) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
               NCCL_SOCKET_IFNAME=os.environ.get("NCCL_SOCKET_IFNAME", "lo"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "cem_pipeline.bench.gpu", "ddp-worker", "--backend", backend, "--device", device_kind,
               "--out", str(out), "--size", str(sizes.ddp_size), "--batch", str(sizes.ddp_batch), "--steps", str(sizes.ddp_steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"torchrun ({backend}, {nproc} ranks) failed with exit {done.returncode}:\n{done.stderr[-4000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def _ranks_agree(ranks: list[dict[str, Any]]) -> bool:
    first = ranks[0]
    return all(torch.equal(r["params"], first["params"]) and torch.equal(r["key_params"], first["key_params"])
               and torch.equal(r["queue"], first["queue"]) and r["queue_ptr"] == first["queue_ptr"] for r in ranks[1:])


def check_ddp(device: torch.device, sizes: Sizes, timeout: float = 240.0) -> dict[str, Any]:
    """NCCL DDP on every GPU present vs gloo on CPU at the same world size (mode cpu: gloo, two ranks, alone)."""
    with tempfile.TemporaryDirectory(prefix="cem-gpu-check-ddp-") as tmp:
        if device.type == "cuda":
            world = torch.cuda.device_count()
            nccl = _torchrun(world, "nccl", "cuda", Path(tmp) / "nccl", sizes, timeout)
            gloo = _torchrun(world, "gloo", "cpu", Path(tmp) / "gloo", sizes, timeout)
            gloo2 = gloo if world > 1 else _torchrun(2, "gloo", "cpu", Path(tmp) / "gloo2", sizes, timeout)
            loss_diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(nccl[0]["losses"], gloo[0]["losses"]))
            param_diff = float((nccl[0]["params"] - gloo[0]["params"]).abs().max() / gloo[0]["params"].abs().max())
            queue_cos = float(torch.nn.functional.cosine_similarity(nccl[0]["queue"].T, gloo[0]["queue"].T, dim=1).min())
            agree = _ranks_agree(nccl) and _ranks_agree(gloo2)
            passed = agree and loss_diff <= 1e-3 and param_diff <= 1e-3 and queue_cos >= 0.999
            note = "one GPU: NCCL runs one rank (NCCL refuses two ranks on one GPU); the two-rank logic ran on gloo/CPU" \
                if world == 1 else f"NCCL on {world} GPUs"
            return {"check": "ddp", "device": str(device), "passed": passed, "world": world, "note": note,
                    "nccl_losses": nccl[0]["losses"], "gloo_cpu_losses": gloo[0]["losses"], "max_loss_rel_diff": loss_diff,
                    "max_param_rel_diff": param_diff, "min_queue_cosine": queue_cos, "ranks_bit_identical": agree,
                    "tolerance": "fp32, TF32 off: ranks bit-identical; loss and weights 1e-3 rel of gloo/CPU, queue cosine >= 0.999"}
        gloo = _torchrun(2, "gloo", "cpu", Path(tmp) / "gloo", sizes, timeout)
        agree = _ranks_agree(gloo)
        finite = all(math.isfinite(x) for x in gloo[0]["losses"])
        return {"check": "ddp", "device": "cpu", "passed": agree and finite, "world": 2, "backend": "gloo",
                "note": "no GPU: NCCL skipped; gloo DDP with two CPU ranks", "gloo_cpu_losses": gloo[0]["losses"],
                "ranks_bit_identical": agree, "tolerance": "ranks bit-identical, losses finite"}


# --------------------------------------------------------------------------------------------- throughput


def moco_throughput(device: torch.device, sizes: Sizes, compile_model: bool = False, seed: int = 0) -> dict[str, Any]:
    """Images/s of the trainer's MoCoV2 step (model, runtime, augmentation exactly as training.moco.train builds them)."""
    from training.data.augment import TwoViewAugment
    from training.moco.config import parse_moco_config
    from training.moco.train import augment_params, build_model, resolve_runtime, train_step

    batch, size, arch = sizes.throughput_batch, sizes.throughput_size, sizes.throughput_arch
    config = parse_moco_config({"data": {"beton": "unused.beton", "crop_size": size}, "optim": {"batch_size": batch},
                                "model": {"arch": arch, "queue_size": max(batch, 65536 if device.type == "cuda" else 1024)},
                                "runtime": {"device": device.type, "compile": compile_model, "seed": seed}})
    rt = resolve_runtime(config, 0, 1, 0)
    model = build_model(config, rt)
    if compile_model:
        torch._dynamo.reset()
        model.encoder_q.compile()
        model.encoder_k.compile()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr, momentum=0.9, weight_decay=1e-4)
    tiles, source = em_tiles(batch, 224, seed + 3)
    images = torch.from_numpy(tiles)
    if device.type == "cuda":
        images = images.pin_memory()
    augment = TwoViewAugment(float(tiles.mean() / 255), float(tiles.std() / 255), rt.device, seed=seed, params=augment_params(config))
    warmup = 5 if device.type == "cuda" else 0  # CPU: a smoke figure, first-call costs included
    started = time.perf_counter()
    for _ in range(warmup):
        train_step(model, optimizer, *augment(images), rt)
    _sync(rt.device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(sizes.throughput_steps):
        loss, *_ = train_step(model, optimizer, *augment(images), rt)
    _sync(rt.device)
    seconds = time.perf_counter() - started
    per_s = sizes.throughput_steps * batch / seconds
    result = {"check": "throughput" + ("_compiled" if compile_model else ""), "device": str(device), "arch": arch, "size": size,
              "batch": batch, "queue": config.model.queue_size, "bn_splits": config.bn_splits(1),
              "precision": "bf16" if rt.autocast_dtype else "fp32", "channels_last": rt.channels_last, "compiled": compile_model,
              "input": source, "steps": sizes.throughput_steps, "warmup_s": round(warm_s, 1), "images_per_s": round(per_s, 1),
              "final_loss": float(loss), "passed": math.isfinite(float(loss))}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["goal_images_per_s"] = GOAL_IMAGES_PER_S
        result["meets_goal"] = per_s >= GOAL_IMAGES_PER_S
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    if compile_model:
        torch._dynamo.reset()
    return result


# --------------------------------------------------------------------------------------------- driver


CHECKS: dict[str, Callable[[torch.device, Sizes], dict[str, Any]]] = {
    "augment": check_augment,
    "filter_scoring": check_filter_scoring,
    "moco_step": check_moco_step,
    "infer": check_infer,
    "throughput": moco_throughput,  # the headline figure before the slow compiles
    "ddp": check_ddp,
    "compile": check_compile,
    "throughput_compiled": lambda device, sizes: moco_throughput(device, sizes, compile_model=True),
}
CPU_SKIPPED = ("throughput_compiled",)  # inductor code generation on CPU takes minutes; compile is covered by aot_eager


def _line(result: dict[str, Any]) -> str:
    status = "SKIP" if result.get("skipped") else ("PASS" if result.get("passed") else "FAIL")
    shown = {k: v for k, v in result.items() if k not in ("check", "passed", "tolerance", "skipped")}
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
                     if not isinstance(v, (list, dict)))
    for k, v in shown.items():
        if isinstance(v, dict):
            text += f", {k}: " + " ".join(f"{kk}={vv:.4g}" if isinstance(vv, float) else f"{kk}={vv}" for kk, vv in v.items())
    return f"[{status}] {result['check']}: {text}"


def run_checks(mode: str = "auto", only: list[str] | None = None, budget_s: float | None = None,
               echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the checks of `mode` ('gpu', 'cpu', 'auto': gpu when CUDA is available); print one line each.

    A check not started within `budget_s` seconds (default: 200 on GPU, so that the last one, the compiled
    throughput, ends before 5 minutes; unlimited on CPU) is skipped and reported as such."""
    cuda = torch.cuda.is_available()
    if mode == "auto":
        mode = "gpu" if cuda else "cpu"
    if mode == "gpu" and not cuda:
        raise RuntimeError("mode 'gpu' asked for but torch sees no CUDA device")
    device = torch.device("cuda", 0) if mode == "gpu" else torch.device("cpu")
    sizes = GPU_SIZES if mode == "gpu" else CPU_SIZES
    if budget_s is None:
        budget_s = 200.0 if mode == "gpu" else math.inf
    names = only or [n for n in CHECKS if not (mode == "cpu" and n in CPU_SKIPPED)]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    header = (f"gpu-check: mode {mode}, torch {torch.__version__}, "
              + (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}" if mode == "gpu"
                 else "no GPU: CUDA checks SKIPPED, running their CPU fallbacks at tiny sizes; GPU numbers are NOT measured"))
    echo(header)
    started = time.perf_counter()
    results = []
    for name in names:
        if time.perf_counter() - started > budget_s:
            result = {"check": name, "skipped": True, "passed": True, "reason": f"time budget {budget_s:.0f}s spent"}
        else:
            t0 = time.perf_counter()
            try:
                result = CHECKS[name](device, sizes)
            except Exception as exc:  # a crashed CUDA path is a failed check, and the other checks still run
                result = {"check": name, "passed": False, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
            result["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        echo(_line(result))
    passed = all(r["passed"] for r in results)
    summary = {"mode": mode, "gpu_checks_skipped": mode != "gpu", "passed": passed, "seconds": round(time.perf_counter() - started, 1),
               "results": results}
    throughput = [r for r in results if r["check"].startswith("throughput") and "images_per_s" in r]
    if throughput:
        best = max(throughput, key=lambda r: r["images_per_s"])
        summary["images_per_s"] = best["images_per_s"]
        if mode == "gpu":
            echo(f"MoCoV2 {best['arch']} {best['size']}^2 training: {best['images_per_s']:.0f} images/s "
                 f"({'compiled' if best['compiled'] else 'eager'}, batch {best['batch']}) -- goal {GOAL_IMAGES_PER_S:.0f}: "
                 f"{'met' if best['images_per_s'] >= GOAL_IMAGES_PER_S else 'NOT met'}")
        else:
            echo(f"MoCoV2 {best['arch']} {best['size']}^2 CPU smoke: {best['images_per_s']:.1f} images/s "
                 "(not the GPU figure; the ResNet50 224^2 GPU throughput was not measured)")
    echo(f"gpu-check: {'PASSED' if passed else 'FAILED'} in {summary['seconds']:.0f}s"
         + (" (GPU checks skipped: CPU fallbacks only)" if mode != "gpu" else ""))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cem_pipeline.bench.gpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="run the checks (default)")
    check.add_argument("--mode", choices=("auto", "gpu", "cpu"), default="auto")
    check.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(CHECKS)}")
    check.add_argument("--budget", type=float, default=None,
                       help="seconds after which checks not yet started are skipped (default: 200 on GPU, none on CPU)")
    check.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    worker = sub.add_parser("ddp-worker", help="one torchrun rank of the ddp check (internal)")
    worker.add_argument("--backend", required=True)
    worker.add_argument("--device", choices=("cuda", "cpu"), required=True)
    worker.add_argument("--out", type=Path, required=True)
    worker.add_argument("--size", type=int, required=True)
    worker.add_argument("--batch", type=int, required=True)
    worker.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:] or ["check"])
    if args.command == "ddp-worker":
        ddp_worker(args.backend, args.device, args.out, args.size, args.batch, args.steps)
        return 0
    try:
        summary = run_checks(args.mode, args.only.split(",") if args.only else None, args.budget)
    except (RuntimeError, ValueError) as exc:  # no CUDA for --mode gpu, unknown --only names
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
