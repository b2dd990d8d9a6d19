"""MoCo two-view pipeline (ffcv Loader + TwoViewAugment) and the segmentation dataset, on real EM."""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from cem_pipeline.bench.arrays import write_patch_beton
from cem_pipeline.export.sidecar import read_manifest
from training.data.augment import (
    MocoAugment,
    MocoAugmentParams,
    TwoViewAugment,
    augment_view_torch,
    sample_view_params,
)
from training.data.moco_pipeline import make_moco_loader
from training.data.seg_pipeline import (
    SegAugmentParams,
    SegmentationDataset,
    seg_augment,
)

pytestmark = pytest.mark.shared_data

IDENTITY = MocoAugmentParams(scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate_p=0.0, brightness=0.0, contrast=0.0,
                             blur_p=0.0, flip_p=0.0, noise_p=0.0)


@pytest.fixture(scope="module")
def tiles(cdeep3m_volume: np.ndarray) -> np.ndarray:
    """64 real SBEM tiles, 224^2, from 4 slices."""
    vol = cdeep3m_volume[:4, :896, :896]
    return np.ascontiguousarray(vol.reshape(4, 4, 224, 4, 224).transpose(0, 1, 3, 2, 4).reshape(64, 224, 224))


@pytest.fixture(scope="module")
def beton(tiles: np.ndarray, tmp_path_factory) -> Path:
    return write_patch_beton(tiles, tmp_path_factory.mktemp("loader") / "tiles.beton", num_workers=2)


@pytest.fixture(scope="module")
def first_batch(beton: Path):
    torch.set_num_threads(2)
    loader = make_moco_loader(beton, batch_size=16, num_workers=2, order="random", seed=0)
    batch = next(iter(loader))
    return batch.images.clone(), batch.valid_hw.clone(), batch.patch_id.clone()


def test_loader_batches_are_the_exported_tiles(first_batch, tiles: np.ndarray, beton: Path) -> None:
    images, valid_hw, patch_id = first_batch
    assert images.dtype == torch.uint8 and images.shape == (16, 224, 224)
    assert (valid_hw == 224).all() and len(set(patch_id.tolist())) == 16
    for image, pid in zip(images, patch_id):
        np.testing.assert_array_equal(image.numpy(), tiles[int(pid)])
    manifest = read_manifest(beton)
    assert manifest.mean == pytest.approx(tiles.mean() / 255) and manifest.std == pytest.approx(tiles.std() / 255)


def test_identity_view_is_the_normalised_image(first_batch) -> None:
    images, valid_hw, _ = first_batch
    view = MocoAugment(0.58, 0.1, "cpu", seed=0, params=IDENTITY)(images, valid_hw)
    expected = (images.float() / 255 - 0.58) / 0.1
    assert view.shape == (16, 1, 224, 224) and view.dtype == torch.float32
    torch.testing.assert_close(view[:, 0], expected, atol=1e-4, rtol=0)


def test_two_views_differ_and_both_come_from_the_same_image(first_batch) -> None:
    images, valid_hw, _ = first_batch
    mean, std = images.float().mean().item() / 255, images.float().std().item() / 255
    q, k = TwoViewAugment(mean, std, "cpu", seed=1)(images, valid_hw)
    assert q.shape == k.shape == (16, 1, 224, 224) and torch.isfinite(q).all()
    assert (q - k).abs().mean(dim=(1, 2, 3)).min() > 0.05
    lo, hi = (0 - mean) / std, (1 - mean) / std
    assert q.min() >= lo - 1e-4 and q.max() <= hi + 1e-4
    assert abs(q.mean().item()) < 1.0 and 0.3 < q.std().item() < 3.0

    flips_and_noise = dataclasses.replace(IDENTITY, flip_p=0.5, noise_p=1.0)
    q, k = TwoViewAugment(mean, std, "cpu", seed=2, params=flips_and_noise)(images, valid_hw)
    source = (images.float() / 255 - mean) / std
    for view in (q, k):
        for i in range(len(images)):
            candidates = [source[i], source[i].flip(-1), source[i].flip(-2), source[i].flip(-1).flip(-2)]
            errors = [(view[i, 0] - c).abs().mean().item() for c in candidates]
            assert min(errors) < 0.01 / std < sorted(errors)[1]  # one flip of its own image, plus noise


def test_edge_patches_use_only_their_real_pixels(first_batch) -> None:
    images, _, _ = first_batch
    padded = images.clone()
    padded[:, 100:, :] = 255
    padded[:, :, 150:] = 255
    valid = torch.tensor([[100, 150]] * len(images))
    real = images[:, :100, :150]
    keep = real.float().amax(dim=(1, 2)) < 250
    view = MocoAugment(0.0, 1.0, "cpu", seed=0, params=dataclasses.replace(IDENTITY, scale=(0.2, 1.0)))(padded, valid)
    assert (view[keep].amax(dim=(1, 2, 3)) <= real[keep].float().amax(dim=(1, 2)) / 255 + 1e-4).all()


def test_gpu_path_matches_cpu_kernel(first_batch) -> None:
    """The torch ops used on CUDA compute the same views as the fused CPU kernel (checked on CPU tensors)."""
    images, valid_hw, _ = first_batch
    params = dataclasses.replace(MocoAugmentParams(), noise_p=0.0)
    rng_state = np.random.default_rng(5)
    height = width = np.full(len(images), 224.0)
    view = sample_view_params(rng_state, height, width, params)
    cpu = MocoAugment(0.5, 0.2, "cpu", seed=5, params=params)(images, valid_hw)
    torch_ops = augment_view_torch(images, view, 0.5, 0.2, 224, torch.Generator().manual_seed(0))
    diff = (cpu - torch_ops).abs()
    assert diff.mean() < 1e-3 and diff.quantile(0.99) < 0.01


def test_cpu_views_reuse_only_released_buffers(first_batch) -> None:
    """Views still held are never overwritten; released memory is reused and fully rewritten."""
    images, valid_hw, _ = first_batch
    recycled, kept = TwoViewAugment(0.5, 0.2, "cpu", seed=4), TwoViewAugment(0.5, 0.2, "cpu", seed=4)
    held = [kept(images, valid_hw) for _ in range(3)]
    q1, k1 = recycled(images, valid_hw)
    copy = q1.clone()
    q2, k2 = recycled(images, valid_hw)
    assert q2.data_ptr() != q1.data_ptr()
    torch.testing.assert_close(q1, copy, rtol=0, atol=0)
    released = q2.data_ptr()
    del q2, k2
    q3, k3 = recycled(images, valid_hw)
    assert q3.data_ptr() == released
    torch.testing.assert_close(q3, held[2][0], rtol=0, atol=0)
    torch.testing.assert_close(k3, held[2][1], rtol=0, atol=0)


def test_cpu_kernel_blur_and_noise_match_a_plain_reference(first_batch) -> None:
    """Contrast, reflect-101 Gaussian blur, table noise and normalisation of the fused kernel against
    numpy on the kernel's own identity warp (the affine part is checked by the torch comparison)."""
    from training.data.kernels import NORMAL_TABLE, augment_view_batch

    images = first_batch[0][:4].numpy()
    n = len(images)
    eye = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
    sigma = np.array([0.3, 0.9, 1.7, 2.0], np.float32)
    noise_std = np.array([0.0, 0.01, 0.0, 0.005], np.float32)
    seed = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(977)
    bright, contrast = np.full(n, 1.1, np.float32), np.full(n, 0.8, np.float32)
    out = np.empty((n, 224, 224), np.float32)
    augment_view_batch(images, np.full(n, 224), np.full(n, 224), eye, bright, contrast, sigma, noise_std, seed,
                       np.float32(0.5), np.float32(0.2), NORMAL_TABLE, 2, out)
    for i in range(n):
        x = np.minimum(images[i] * (1.1 / 255), 1.0)
        x = np.clip(x * 0.8 + 0.2 * x.mean(), 0, 1)
        radius = max(1, int(np.ceil(3 * sigma[i])))
        taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2.0 * sigma[i] ** 2))
        taps /= taps.sum()
        padded = np.pad(x, ((0, 0), (radius, radius)), mode="reflect")
        x = sum(w * padded[:, k:k + 224] for k, w in enumerate(taps))
        padded = np.pad(x, ((radius, radius), (0, 0)), mode="reflect")
        x = sum(w * padded[k:k + 224] for k, w in enumerate(taps))
        if noise_std[i] > 0:
            z = NORMAL_TABLE[_splitmix_codes(int(seed[i]), 224 * 224)].reshape(224, 224)
            x = np.clip(x + noise_std[i] * z, 0, 1)
        np.testing.assert_allclose(out[i], (x - 0.5) / 0.2, atol=2e-4, rtol=0)


def _splitmix_codes(seed: int, count: int) -> np.ndarray:
    """The 16-bit table indices of the kernel's noise: splitmix64 outputs 1, 2, ... from `seed`, four per output."""
    mask = (1 << 64) - 1
    codes = []
    for g in range((count + 3) // 4):
        z = (seed + (g + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        codes.extend((z >> (16 * j)) & 0xFFFF for j in range(4))
    return np.array(codes[:count])


def _ddp_rank(rank: int, world: int, port: int, beton: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loader = make_moco_loader(beton, batch_size=8, num_workers=1, order="random", distributed=True, seed=0)
        ids = [batch.patch_id.clone() for batch in loader]
        np.save(Path(out) / f"rank{rank}.npy", torch.cat(ids).numpy())
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_see_disjoint_samples(beton: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(2, port, str(beton), str(tmp_path)), nprocs=2, join=True)
    ranks = [set(np.load(tmp_path / f"rank{r}.npy").tolist()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 32
    assert not ranks[0] & ranks[1] and len(ranks[0] | ranks[1]) == 64


def test_quasi_random_refused_under_ddp(beton: Path) -> None:
    with pytest.raises(ValueError, match="QUASI_RANDOM"):
        make_moco_loader(beton, batch_size=8, num_workers=1, order="quasi_random", distributed=True)


def test_segmentation_dataset_on_real_labels(shared_em: Path) -> None:
    from PIL import Image

    root = shared_em / "cdeep3m_mito_sbem" / "training"
    images = np.stack([np.asarray(Image.open(f)) for f in sorted((root / "images").glob("*.png"))[:2]])
    masks = np.stack([np.asarray(Image.open(f)) for f in sorted((root / "labels").glob("*.png"))[:2]])
    dataset = SegmentationDataset([images], [masks], crop_size=256, seed=3,
                                  params=SegAugmentParams(noise_var=(400, 1200), blur_limit=7, nonempty_p=0.8))
    assert len(dataset) == 2
    image, mask = dataset[0]
    assert image.shape == (1, 256, 256) and image.dtype == torch.float32 and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1} and 0 <= image.min() and image.max() <= 1
    again, mask_again = dataset[0]
    assert torch.equal(image, again) and torch.equal(mask, mask_again)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], image)

    # without photometric changes the mask stays aligned with the image it was warped with
    geometric = SegAugmentParams(brightness_contrast_p=0.0)
    labels = (images[0] > 128).astype(np.uint8)
    for seed in range(5):
        out, out_mask = seg_augment(images[0], labels, 256, np.random.default_rng(seed), geometric)
        agree = ((out > 128 / 255) == (out_mask == 1)).mean()
        assert agree > 0.97

    small = SegmentationDataset([images[0][:100, :120]], [masks[0][:100, :120]], crop_size=128, augment=False)
    image, mask = small[0]
    assert image.shape == (1, 128, 128) and mask.shape == (128, 128)

    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0)
    batch_images, batch_masks = next(iter(loader))
    assert batch_images.shape == (2, 1, 256, 256) and batch_masks.shape == (2, 256, 256)


def test_interior_range_stays_inside_the_output_row() -> None:
    """Regression: an affine map whose valid source run starts past the output row made the kernel write
    beyond the row (heap corruption, a segfault hundreds of MoCo steps later)."""
    from training.data.kernels import _interior

    rng = np.random.default_rng(0)
    for start, step, limit, size in zip(rng.uniform(-400, 400, 20000), rng.uniform(-2, 2, 20000),
                                        rng.uniform(1, 224, 20000), rng.integers(8, 225, 20000)):
        lo, hi = _interior(start, step, limit, int(size))
        assert 0 <= lo <= hi <= size
        for ox in (lo, hi - 1):
            if lo < hi:
                assert 0 <= start + step * ox < limit


def test_edge_patch_views_stay_in_bounds_under_numba_boundscheck(tmp_path: Path) -> None:
    """Every index of the CPU kernel checked (NUMBA_BOUNDSCHECK=1, fresh compile) on edge patches of all sizes."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from training.data.augment import TwoViewAugment\n"
        "rng = np.random.default_rng(1)\n"
        "augment = TwoViewAugment(0.5, 0.2, device='cpu', seed=3)\n"
        "for _ in range(40):\n"
        "    images = torch.from_numpy(rng.integers(0, 256, (16, 224, 224), dtype=np.uint8))\n"
        "    q, k = augment(images, torch.from_numpy(rng.integers(2, 225, (16, 2))))\n"
        "    assert torch.isfinite(q).all() and torch.isfinite(k).all()\n"
    )
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
