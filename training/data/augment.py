"""The paper's MoCoV2 augmentations for whole batches, on the CPU (fused numba kernel) or on the
GPU (batched torch ops).

The paper's code applies torchvision transforms to one PIL image at a time in DataLoader workers.
Here one call augments a whole uint8 batch (B, H, W) from the FFCV loader. Random parameters are
drawn per image from a seeded numpy generator (`sample_view_params`, identical on every device);
rotation, random resized crop and both flips are composed into one affine map per image and
resampled once (bilinear, zero fill like torchvision's rotation); then brightness, contrast,
Gaussian blur, Gaussian noise, normalisation. On CPU `augment_kernels.augment_view_batch` does
all of it in one fused parallel pass; on CUDA the same steps run as batched torch ops
(`affine_grid`/`grid_sample`, depthwise conv).

Paper parameters (paper-code-notes.md, "MoCoV2 pre-training"): rotation p=0.5 uniform in
[-180, 180) deg; RandomResizedCrop to 224, scale (0.2, 1), ratio (3/4, 4/3); ColorJitter
brightness 0.4, contrast 0.4 (saturation and hue do nothing to gray images); blur p=0.5,
sigma U(0.1, 2); H and V flips p=0.5; noise p=0.5, variance log-uniform in [1e-5, 1e-4] on [0, 1]
pixels, clamped; Normalize(mean, std). Brightness always precedes contrast (torchvision draws
their order at random; on gray images the two orders differ only in where clamping happens).

`valid_hw` lets edge patches, stored padded to 224, be cropped from their real pixels only: the
crop and rotation are drawn inside the (h, w) region and pixels outside it read as zero.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MocoAugmentParams:
    """Augmentation strengths; the defaults are the paper's."""

    out_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5
    noise_p: float = 0.5
    noise_var: tuple[float, float] = (1e-5, 1e-4)


@dataclass(frozen=True)
class ViewParams:
    """Per-image random draws for one view. `matrix` maps output pixel centres to input pixel
    coordinates; sigma 0 means no blur, noise_std 0 no noise."""

    height: np.ndarray
    width: np.ndarray
    matrix: np.ndarray
    bright: np.ndarray
    contrast: np.ndarray
    sigma: np.ndarray
    noise_std: np.ndarray
    noise_seed: np.ndarray


def random_resized_crop_boxes(height: np.ndarray, width: np.ndarray, scale: tuple[float, float],
                              ratio: tuple[float, float], rng: np.random.Generator, attempts: int = 10) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params for a batch: (B, 4) boxes (top, left, h, w).

    Per image: up to `attempts` draws of area and log-ratio, the first that fits wins; if none
    fits, the largest centred crop with its aspect ratio clamped into `ratio`.
    """
    batch = height.shape[0]
    area = (height * width)[:, None]
    target = area * rng.uniform(scale[0], scale[1], (batch, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, attempts)))
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= width[:, None]) & (h <= height[:, None])
    first = np.argmax(fits, axis=1)
    any_fit = fits.any(axis=1)
    rows = np.arange(batch)
    in_ratio = width / height
    fb_w = np.where(in_ratio > ratio[1], np.round(height * ratio[1]), width)
    fb_h = np.where(in_ratio < ratio[0], np.round(width / ratio[0]), height)
    box_h = np.where(any_fit, h[rows, first], fb_h)
    box_w = np.where(any_fit, w[rows, first], fb_w)
    u = rng.random((batch, 2))
    top = np.where(any_fit, np.floor(u[:, 0] * (height - box_h + 1)), np.round((height - box_h) / 2))
    left = np.where(any_fit, np.floor(u[:, 1] * (width - box_w + 1)), np.round((width - box_w) / 2))
    return np.stack([top, left, box_h, box_w], axis=1)


def view_matrices(boxes: np.ndarray, angle_deg: np.ndarray, flip_h: np.ndarray, flip_v: np.ndarray,
                  height: np.ndarray, width: np.ndarray, out_size: int) -> np.ndarray:
    """(B, 2, 3) pixel-space maps: output pixel -> flip -> crop box -> inverse rotation about the
    valid region's centre -> input pixel (continuous coordinates, pixel centres at i + 0.5)."""
    batch = boxes.shape[0]
    flip = np.tile(np.eye(3), (batch, 1, 1))
    flip[:, 0, 0] = np.where(flip_h, -1.0, 1.0)
    flip[:, 0, 2] = np.where(flip_h, out_size, 0.0)
    flip[:, 1, 1] = np.where(flip_v, -1.0, 1.0)
    flip[:, 1, 2] = np.where(flip_v, out_size, 0.0)
    top, left, box_h, box_w = boxes.T
    crop = np.tile(np.eye(3), (batch, 1, 1))
    crop[:, 0, 0] = box_w / out_size
    crop[:, 0, 2] = left
    crop[:, 1, 1] = box_h / out_size
    crop[:, 1, 2] = top
    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = width / 2, height / 2
    rotate = np.tile(np.eye(3), (batch, 1, 1))
    rotate[:, 0, 0], rotate[:, 0, 1], rotate[:, 0, 2] = cos, -sin, cx - cos * cx + sin * cy
    rotate[:, 1, 0], rotate[:, 1, 1], rotate[:, 1, 2] = sin, cos, cy - sin * cx - cos * cy
    return (rotate @ crop @ flip)[:, :2, :]


def sample_view_params(rng: np.random.Generator, height: np.ndarray, width: np.ndarray,
                       params: MocoAugmentParams) -> ViewParams:
    batch = height.shape[0]
    p = params
    boxes = random_resized_crop_boxes(height, width, p.scale, p.ratio, rng)
    angle = np.where(rng.random(batch) < p.rotate_p, rng.uniform(-180.0, 180.0, batch), 0.0)
    flip_h = rng.random(batch) < p.flip_p
    flip_v = rng.random(batch) < p.flip_p
    bright = rng.uniform(max(0.0, 1 - p.brightness), 1 + p.brightness, batch)
    contrast = rng.uniform(max(0.0, 1 - p.contrast), 1 + p.contrast, batch)
    sigma = np.where(rng.random(batch) < p.blur_p, rng.uniform(*p.blur_sigma, batch), 0.0)
    log_var = rng.uniform(math.log(p.noise_var[0]), math.log(p.noise_var[1]), batch)
    noise_std = np.where(rng.random(batch) < p.noise_p, np.exp(0.5 * log_var), 0.0)
    return ViewParams(
        height=height.astype(np.int64), width=width.astype(np.int64),
        matrix=view_matrices(boxes, angle, flip_h, flip_v, height, width, p.out_size),
        bright=bright.astype(np.float32), contrast=contrast.astype(np.float32),
        sigma=sigma.astype(np.float32), noise_std=noise_std.astype(np.float32),
        noise_seed=rng.integers(0, 2**63 - 1, batch, dtype=np.int64).astype(np.uint64),
    )


def _gaussian_blur_torch(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W), one sigma per image, reflect borders."""
    n, _, h, w = images.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    x = F.pad(images.reshape(1, n, h, w), (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel[:, None, None, :], groups=n)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel[:, None, :, None], groups=n)
    return x.reshape(n, 1, h, w)


def augment_view_torch(images: torch.Tensor, view: ViewParams, mean: float, std: float, out_size: int,
                       generator: torch.Generator) -> torch.Tensor:
    """Batched torch version of the fused CPU kernel, for GPUs: uint8 (B, H, W) -> (B, 1, S, S)."""
    dev = images.device
    batch, in_h, in_w = images.shape
    x = images.unsqueeze(1).float().mul_(1 / 255)
    height = torch.as_tensor(view.height, device=dev)
    width = torch.as_tensor(view.width, device=dev)
    if bool((view.height < in_h).any() or (view.width < in_w).any()):
        rows = torch.arange(in_h, device=dev)[None, :, None] < height[:, None, None]
        cols = torch.arange(in_w, device=dev)[None, None, :] < width[:, None, None]
        x = x * (rows & cols).unsqueeze(1)
    # pixel map -> normalised map (align_corners=False): in = A_in @ M @ A_out^-1
    to_out = np.array([[out_size / 2, 0, out_size / 2], [0, out_size / 2, out_size / 2], [0, 0, 1.0]])
    to_norm = np.array([[2 / in_w, 0, -1], [0, 2 / in_h, -1], [0, 0, 1.0]])
    full = np.concatenate([view.matrix, np.tile([[[0, 0, 1.0]]], (batch, 1, 1))], axis=1)
    theta = torch.as_tensor((to_norm @ full @ to_out)[:, :2, :], dtype=torch.float32, device=dev)
    grid = F.affine_grid(theta, [batch, 1, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x.mul_(torch.as_tensor(view.bright, device=dev)[:, None, None, None]).clamp_(0, 1)
    c = torch.as_tensor(view.contrast, device=dev)[:, None, None, None]
    x = x.mul(c).add_((1 - c) * x.mean(dim=(1, 2, 3), keepdim=True)).clamp_(0, 1)
    blurred = np.flatnonzero(view.sigma > 0)
    if blurred.size:
        idx = torch.as_tensor(blurred, device=dev)
        x[idx] = _gaussian_blur_torch(x[idx], torch.as_tensor(view.sigma[blurred], device=dev))
    noisy = np.flatnonzero(view.noise_std > 0)
    if noisy.size:
        idx = torch.as_tensor(noisy, device=dev)
        noise = torch.randn((noisy.size, 1, out_size, out_size), generator=generator, device=dev)
        scale = torch.as_tensor(view.noise_std[noisy], device=dev)[:, None, None, None]
        x[idx] = (x[idx] + noise * scale).clamp_(0, 1)
    return x.sub_(mean).div_(std)


def _concat(views: list[ViewParams]) -> ViewParams:
    return ViewParams(*(np.concatenate([getattr(v, f.name) for v in views]) for f in dataclasses.fields(ViewParams)))


class OutputBuffers:
    """The CPU kernel's output arrays, each reused once no tensor refers to it any more. A fresh
    array per batch (25 MB for two views of 64) has its pages faulted in and zeroed again by the
    kernel's first writes: measured through the loader on two cores, 5.0-5.9k view pairs/s with
    fresh arrays against 9.2-9.9k with reuse."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.arrays: list[np.ndarray] = []

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        self.arrays = [array for array in self.arrays if array.shape == shape]
        for array in self.arrays:
            if sys.getrefcount(array) == 3:  # held by the list, `array` and this call only: no tensor left
                return array
        array = np.empty(shape, np.float32)
        if len(self.arrays) < self.keep:
            self.arrays.append(array)
        return array


def augment_views_cpu(images: torch.Tensor, views: list[ViewParams], mean: float, std: float,
                      out_size: int, buffers: OutputBuffers | None = None) -> list[torch.Tensor]:
    """Every view in `views` of the uint8 batch, in one call of the fused parallel CPU kernel (into
    an array from `buffers` when given)."""
    import numba

    from training.data.kernels import NORMAL_TABLE, augment_view_batch

    batch = images.shape[0]
    params = _concat(views)
    shape = (len(views) * batch, out_size, out_size)
    out = buffers.get(shape) if buffers is not None else np.empty(shape, np.float32)
    augment_view_batch(images.cpu().numpy(), params.height, params.width, params.matrix, params.bright,
                       params.contrast, params.sigma, params.noise_std, params.noise_seed, np.float32(mean),
                       np.float32(std), NORMAL_TABLE, numba.get_num_threads(), out)
    return list(torch.from_numpy(out).unsqueeze(1).split(batch))


class MocoAugment:
    """One augmented view: uint8 (B, H, W) -> normalised float32 (B, 1, out, out) on `device`."""

    def __init__(self, mean: float, std: float, device: str | torch.device = "cpu", seed: int = 0,
                 params: MocoAugmentParams = MocoAugmentParams()):
        if not std > 0:
            raise ValueError(f"normalisation std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)
        self.device = torch.device(device)
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.buffers = OutputBuffers()

    def state_dict(self) -> dict[str, Any]:
        """The state of both random streams (view parameters, noise), as plain data that loads with
        torch.load(weights_only=True)."""
        return {"rng": self.rng.bit_generator.state, "noise": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["noise"])

    def draw(self, images: torch.Tensor, valid_hw: torch.Tensor | None) -> ViewParams:
        """This view's random parameters for the batch (advances the generator)."""
        if images.ndim != 3 or images.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 (B, H, W) batch, got {tuple(images.shape)} {images.dtype}")
        batch, in_h, in_w = images.shape
        if valid_hw is None:
            height, width = np.full(batch, float(in_h)), np.full(batch, float(in_w))
        else:
            hw = valid_hw.detach().cpu().numpy().reshape(batch, 2).astype(np.float64)
            height, width = np.minimum(hw[:, 0], in_h), np.minimum(hw[:, 1], in_w)
        return sample_view_params(self.rng, height, width, self.params)

    def apply(self, images: torch.Tensor, view: ViewParams) -> torch.Tensor:
        size = self.params.out_size
        if self.device.type == "cpu":
            return augment_views_cpu(images, [view], self.mean, self.std, size, self.buffers)[0]
        return augment_view_torch(images.to(self.device, non_blocking=True), view, self.mean, self.std, size,
                                  self.generator)

    def __call__(self, images: torch.Tensor, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        return self.apply(images, self.draw(images, valid_hw))


class TwoViewAugment:
    """MoCo's two independently augmented views of one batch: `augment(images, valid_hw)` ->
    (view_q, view_k), each normalised float32 (B, 1, 224, 224) on `device`. `images` is the uint8
    (B, H, W) batch from `make_moco_loader` (it may be FFCV's reused buffer: the views are new
    tensors); `valid_hw` (B, 2) are the real (h, w) of padded edge patches, or None. A MocoBatch
    can be passed unpacked, `augment(*batch)`: its patch_id does not influence the views.
    On CPU both views are computed in one parallel kernel call, into memory that earlier views
    used only once no tensor on it is left (OutputBuffers)."""

    def __init__(self, mean: float, std: float, device: str | torch.device = "cpu", seed: int = 0,
                 params: MocoAugmentParams = MocoAugmentParams()):
        self.query = MocoAugment(mean, std, device, 2 * seed, params)
        self.key = MocoAugment(mean, std, device, 2 * seed + 1, params)

    def state_dict(self) -> dict[str, Any]:
        """Both views' random streams under flat names (`augment_q`, `augment_q_noise`, `augment_k`,
        `augment_k_noise`), the names a MoCo checkpoint's per-rank `rng` entry keeps them under."""
        state = {}
        for name, view in (("augment_q", self.query), ("augment_k", self.key)):
            own = view.state_dict()
            state[name], state[f"{name}_noise"] = own["rng"], own["noise"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted({"augment_q", "augment_q_noise", "augment_k", "augment_k_noise"} - set(state))
        if missing:
            raise KeyError(f"no augmentation RNG state for {', '.join(missing)}")
        for name, view in (("augment_q", self.query), ("augment_k", self.key)):
            view.load_state_dict({"rng": state[name], "noise": state[f"{name}_noise"]})

    def __call__(self, images: torch.Tensor, valid_hw: torch.Tensor | None = None,
                 patch_id: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        views = [self.query.draw(images, valid_hw), self.key.draw(images, valid_hw)]
        if self.query.device.type == "cpu":
            view_q, view_k = augment_views_cpu(images, views, self.query.mean, self.query.std,
                                               self.query.params.out_size, self.query.buffers)
            return view_q, view_k
        images = images.to(self.query.device, non_blocking=True)  # one host-to-device copy for both views
        return self.query.apply(images, views[0]), self.key.apply(images, views[1])
