"""Segmentation input: image/mask pairs with the paper's segmentation augmentations.

The paper (cellemnet evaluation configs, albumentations) uses PadIfNeeded(crop) ->
RandomResizedCrop(crop, scale 0.08-1, ratio 0.5-1.5) -> Rotate(180, p=0.5) ->
RandomBrightnessContrast(0.3, 0.3, p=0.5) -> H/V flips (p=0.5 each), plus GaussNoise and
GaussianBlur for some benchmarks and CropNonEmptyMaskIfExists (p=0.8) for Kasthuri++/CREMI.
Here padding, crop, resize, rotation and flips are one cv2.warpAffine per sample (bilinear for
the image, nearest for the mask, BORDER_REFLECT_101 like albumentations); because the rotation is
applied to the source rather than to the already-cropped tile, rotated corners show real
neighbouring pixels where albumentations shows a reflection of the tile.

The benchmark sets are small (a few hundred MB at most), so a plain torch Dataset over in-memory
arrays, with DataLoader workers, is the pipeline: a sample's cv2 warps cost milliseconds on one
core, so a batch of 16 needs a few DataLoader workers to keep up with a GPU step. FFCV would add a write step and
a numba compile while the per-sample work (cv2 warps) stays the same, so it is not used here.
Randomness is keyed on (seed, epoch, index) so results do not depend on worker scheduling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class SegAugmentParams:
    """Defaults are the paper's common augmentations; noise and blur are off unless set
    (Guay / All-Mito: noise_var=(400, 1200), blur_limit=7)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.5, 1.5)
    rotate_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    brightness_contrast_p: float = 0.5
    flip_p: float = 0.5
    noise_var: tuple[float, float] | None = None
    noise_p: float = 0.5
    blur_limit: int | None = None
    blur_p: float = 0.5
    nonempty_p: float = 0.0


def _crop_box(height: int, width: int, params: SegAugmentParams, rng: np.random.Generator,
              mask: np.ndarray) -> tuple[float, float, float, float]:
    """RandomResizedCrop's box (top, left, h, w); with probability nonempty_p it must contain a
    labelled pixel (when the mask has one)."""
    box = None
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*params.scale)
        aspect = math.exp(rng.uniform(math.log(params.ratio[0]), math.log(params.ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (h, w)
            break
    if box is None:
        h, w = height, width
    else:
        h, w = box
    if params.nonempty_p and rng.random() < params.nonempty_p:
        ys, xs = np.nonzero(mask)
        if ys.size:
            pick = rng.integers(ys.size)
            top = rng.integers(max(0, ys[pick] - h + 1), min(ys[pick], height - h) + 1)
            left = rng.integers(max(0, xs[pick] - w + 1), min(xs[pick], width - w) + 1)
            return float(top), float(left), float(h), float(w)
    return float(rng.integers(0, height - h + 1)), float(rng.integers(0, width - w + 1)), float(h), float(w)


def seg_augment(image: np.ndarray, mask: np.ndarray, crop_size: int, rng: np.random.Generator,
                params: SegAugmentParams = SegAugmentParams()) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (crop_size, crop_size) sample: float32 image in [0, 1], int64 mask."""
    if image.shape != mask.shape or image.ndim != 2:
        raise ValueError(f"need 2D image and mask of one shape, got {image.shape} and {mask.shape}")
    pad_h, pad_w = max(0, crop_size - image.shape[0]), max(0, crop_size - image.shape[1])
    if pad_h or pad_w:  # PadIfNeeded: centred, reflect-101
        border = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
        image = cv2.copyMakeBorder(image, *border, cv2.BORDER_REFLECT_101)
        mask = cv2.copyMakeBorder(mask, *border, cv2.BORDER_REFLECT_101)
    height, width = image.shape
    top, left, box_h, box_w = _crop_box(height, width, params, rng, mask)
    angle = rng.uniform(-180, 180) if rng.random() < params.rotate_p else 0.0
    flip_h, flip_v = rng.random() < params.flip_p, rng.random() < params.flip_p
    # output pixel -> flip -> rotation about the tile centre -> crop box -> source pixel
    c = crop_size / 2
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    centre = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
    uncentre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])
    flip = np.array([[-1 if flip_h else 1, 0, crop_size if flip_h else 0],
                     [0, -1 if flip_v else 1, crop_size if flip_v else 0], [0, 0, 1.0]])
    crop = np.array([[box_w / crop_size, 0, left], [0, box_h / crop_size, top], [0, 0, 1.0]])
    # pixel-centre convention: cv2 maps integer indices, so shift by half a pixel on both sides
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    unhalf = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
    matrix = (unhalf @ crop @ centre @ rot @ uncentre @ flip @ half)[:2]
    flags = cv2.WARP_INVERSE_MAP
    size = (crop_size, crop_size)
    out = cv2.warpAffine(image, matrix, size, flags=flags | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out_mask = cv2.warpAffine(mask, matrix, size, flags=flags | cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    out = out.astype(np.float32) / 255.0
    if rng.random() < params.brightness_contrast_p:  # albumentations, brightness_by_max
        alpha = 1.0 + rng.uniform(-params.contrast, params.contrast)
        beta = rng.uniform(-params.brightness, params.brightness)
        out = np.clip(out * alpha + beta, 0.0, 1.0)
    if params.blur_limit and rng.random() < params.blur_p:
        ksize = int(rng.choice(np.arange(3, params.blur_limit + 1, 2)))
        out = cv2.GaussianBlur(out, (ksize, ksize), 0)
    if params.noise_var and rng.random() < params.noise_p:
        std = math.sqrt(rng.uniform(*params.noise_var)) / 255.0
        out = np.clip(out + np.float32(std) * rng.standard_normal(out.shape, dtype=np.float32), 0.0, 1.0)
    return out.astype(np.float32), out_mask.astype(np.int64)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    """cv2 warps up to 4-byte integer types; labels are small class ids."""
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if mask.dtype.itemsize > 4 or mask.dtype == np.uint32:
        if mask.min() < np.iinfo(np.int32).min or mask.max() > np.iinfo(np.int32).max:
            raise ValueError("mask values do not fit int32")
        return mask.astype(np.int32)
    return mask


class SegmentationDataset(torch.utils.data.Dataset):
    """(image (1, crop, crop) float32, mask (crop, crop) int64) samples from 2D images or the
    axis-0 slices of 3D volumes (pass other axes as transposed copies). Images must be uint8.

    augment=False returns a centre crop (padded as needed) — the deterministic view for validation.
    `normalize=(mean, std)` standardises the image after augmentation. Call set_epoch(e) each
    epoch for fresh draws; sample i of epoch e always gets the same augmentation."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], crop_size: int, augment: bool = True,
                 seed: int = 0, params: SegAugmentParams = SegAugmentParams(),
                 normalize: tuple[float, float] | None = None):
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.slices: list[tuple[np.ndarray, np.ndarray]] = []
        for k, (image, mask) in enumerate(zip(images, masks)):
            image, mask = np.asarray(image), np.asarray(mask)
            if image.dtype != np.uint8:
                raise ValueError(f"image {k}: expected uint8, got {image.dtype}")
            if image.shape != mask.shape or image.ndim not in (2, 3):
                raise ValueError(f"image {k} {image.shape} and mask {mask.shape}: need equal 2D or 3D shapes")
            mask = _as_mask(mask)
            stack = [(image, mask)] if image.ndim == 2 else list(zip(image, mask))
            self.slices.extend(stack)
        self.crop_size = crop_size
        self.augment = augment
        self.seed = seed
        self.params = params
        self.normalize = normalize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.slices)

    def _centre(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = self.crop_size
        pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
        if pad_h or pad_w:
            border = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
            image = cv2.copyMakeBorder(image, *border, cv2.BORDER_REFLECT_101)
            mask = cv2.copyMakeBorder(mask, *border, cv2.BORDER_REFLECT_101)
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crop = (slice(top, top + size), slice(left, left + size))
        return image[crop].astype(np.float32) / 255.0, mask[crop].astype(np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.slices[index]
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, mask = seg_augment(image, mask, self.crop_size, rng, self.params)
        else:
            image, mask = self._centre(image, mask)
        if self.normalize is not None:
            image = (image - self.normalize[0]) / self.normalize[1]
        return torch.from_numpy(np.ascontiguousarray(image))[None], torch.from_numpy(np.ascontiguousarray(mask))
