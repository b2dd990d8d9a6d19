"""Benchmark loaders, each written against its data set's published file layout.

- folders2d: parallel image/mask folders paired in natural-sort order. Lucchi++ / Kasthuri++ as
  published by Casser et al. (Train_In, Train_Out, Test_In, Test_Out; masks 0/255 -> divide255),
  Perez et al. CHM supplemental data (training_images/<organelle>, training_labels/<organelle>,
  test_images/<organelle>, ground_truth/<organelle>), All-Mito 256^2 patches, the cdeep3m demo
  (training/images, training/labels; 0/1) and ISBI 2012 (train/image, train/label; 255 cell,
  0 membrane -> zero_is_foreground).
- guay: platelet_data/{train,eval,test}-images.tif and -labels.tif, 3D, 7 classes; images min-max to uint8.
- urocell: data/<name>.nii.gz with lyso/<name>.nii.gz and mito/<name>.nii.gz; label = lyso + 2*mito
  (a voxel in both counts as mito); optional y crops; NIfTI (x, y, z) is transposed to (z, y, x).
- cremi: <file>.hdf with volumes/raw and volumes/labels/clefts; 0xFFFFFFFFFFFFFFFF is background.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.seg.config import DataConfig, Split2D, resolve_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
CREMI_BACKGROUND = np.uint64(0xFFFFFFFFFFFFFFFF)


class DatasetError(ValueError):
    """Benchmark files missing or malformed; the message names the file and the reason."""


@dataclass
class EvalItem:
    name: str
    image: np.ndarray  # uint8, (H, W) or (Z, Y, X)
    mask: np.ndarray | None  # class indices, same shape


@dataclass
class Benchmark:
    train_images: list[np.ndarray] = field(default_factory=list)  # uint8 (H, W)
    train_masks: list[np.ndarray] = field(default_factory=list)  # uint8 class indices (H, W)
    eval_items: list[EvalItem] = field(default_factory=list)


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def parse_select(spec: str, count: int, origin: str) -> list[int]:
    """'0-24,27' -> [0..24, 27] (inclusive ranges of sorted-file positions)."""
    chosen: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise DatasetError(f"{origin}: bad select '{spec}' (use e.g. '0-24,27')")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) else start
        if stop < start or stop >= count:
            raise DatasetError(f"{origin}: select '{part.strip()}' outside 0-{count - 1}")
        chosen.extend(range(start, stop + 1))
    return chosen


def to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 unchanged; anything else min-max scaled to 0-255 (the paper's rule for Guay)."""
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((array - low) * scale).round().astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """A 2D image; RGB -> channel 0 (the paper's choice for gray stored as RGB)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as exc:  # decoder errors differ per format; all mean "unreadable"
        raise DatasetError(f"{path}: cannot read image ({exc})") from None
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetError(f"{path}: expected a 2D image, got shape {array.shape}")
    return array


def encode_mask(mask: np.ndarray, encoding: str, origin: str, threshold: int = 127) -> np.ndarray:
    """Class indices from stored mask pixels. `threshold` (value > threshold is foreground) is for masks
    exported with anti-aliased edges, which divide255 rejects rather than guess."""
    if encoding == "identity":
        if mask.min() < 0 or mask.max() > 255:
            raise DatasetError(f"{origin}: class indices must be 0-255, got {mask.min()}-{mask.max()}")
        return mask.astype(np.uint8)
    if encoding == "nonzero":
        return (mask > 0).astype(np.uint8)
    if encoding == "zero_is_foreground":
        return (mask == 0).astype(np.uint8)
    if encoding == "threshold":
        return (mask > threshold).astype(np.uint8)
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 255}:
        raise DatasetError(f"{origin}: divide255 masks must hold only 0 and 255, found {values[:10].tolist()} "
                           f"({len(values)} distinct values); for anti-aliased edges use mask_encoding: threshold "
                           f"(foreground = value > mask_threshold, default 127)")
    return (mask // 255).astype(np.uint8)


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if not files:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_split2d(root: Path, split: Split2D, encoding: str, threshold: int = 127) -> list[EvalItem]:
    images = _list_images(root / split.images)
    masks = _list_images(root / split.masks) if split.masks else None
    if masks is not None and len(masks) != len(images):
        raise DatasetError(f"{root / split.masks}: {len(masks)} masks for {len(images)} images in {root / split.images}")
    keep = parse_select(split.select, len(images), str(root / split.images)) if split.select else range(len(images))
    items = []
    for i in keep:
        image = to_uint8(read_image(images[i]))
        mask = None
        if masks is not None:
            mask = encode_mask(read_image(masks[i]), encoding, str(masks[i]), threshold)
            if mask.shape != image.shape:
                raise DatasetError(f"{masks[i]}: mask shape {mask.shape} != image shape {image.shape} ({images[i].name})")
        items.append(EvalItem(images[i].stem, image, mask))
    return items


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    return path


def load_guay(root: Path, split: str) -> EvalItem:
    import tifffile

    image = to_uint8(tifffile.imread(_require(root / f"{split}-images.tif")))
    labels = tifffile.imread(_require(root / f"{split}-labels.tif"))
    if labels.shape != image.shape:
        raise DatasetError(f"{root / f'{split}-labels.tif'}: shape {labels.shape} != images {image.shape}")
    return EvalItem(split, image, encode_mask(labels, "identity", str(root / f"{split}-labels.tif")))


def load_urocell(root: Path, name: str, config: DataConfig) -> EvalItem:
    import nibabel

    def read(path: Path) -> np.ndarray:
        try:
            return np.asarray(nibabel.load(_require(path)).dataobj).T  # NIfTI (x, y, z) -> (z, y, x)
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"{path}: cannot read NIfTI ({exc})") from None

    image = to_uint8(read(root / "data" / f"{name}.nii.gz"))
    lyso = read(root / config.lyso_dir / f"{name}.nii.gz") > 0
    mito = read(root / config.mito_dir / f"{name}.nii.gz") > 0
    for part, array in (("lyso", lyso), ("mito", mito)):
        if array.shape != image.shape:
            raise DatasetError(f"{root / name}: {part} mask shape {array.shape} != image {image.shape}")
    label = np.where(mito, 2, lyso.astype(np.uint8)).astype(np.uint8)
    crop = config.y_crop.get(name, 0)
    return EvalItem(name, np.ascontiguousarray(image[:, crop:]), np.ascontiguousarray(label[:, crop:]))


def load_cremi(root: Path, name: str) -> EvalItem:
    import h5py

    path = _require(root / name)
    try:
        with h5py.File(path, "r") as f:
            raw = f["volumes/raw"][...]
            clefts = f["volumes/labels/clefts"][...]
    except KeyError as exc:
        raise DatasetError(f"{path}: missing dataset ({exc}); expected volumes/raw and volumes/labels/clefts") from None
    if clefts.shape != raw.shape:
        raise DatasetError(f"{path}: clefts shape {clefts.shape} != raw {raw.shape}")
    return EvalItem(Path(name).stem, to_uint8(raw), (clefts.astype(np.uint64) != CREMI_BACKGROUND).astype(np.uint8))


def volume_slices(item: EvalItem, axes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """2D training images of a labelled volume: every slice along each of `axes`."""
    images, masks = [], []
    for axis in axes:
        image, mask = np.moveaxis(item.image, axis, 0), np.moveaxis(item.mask, axis, 0)
        images.extend(np.ascontiguousarray(s) for s in image)
        masks.extend(np.ascontiguousarray(s) for s in mask)
    return images, masks


def load_benchmark(config: DataConfig, train: bool = True, evaluate: bool = True) -> Benchmark:
    """Training images/masks (2D) and evaluation items (2D images or 3D volumes) of a benchmark."""
    root = resolve_path(config.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: benchmark root not found (layout {config.layout})")
    bench = Benchmark()
    if config.layout == "folders2d":
        if train and config.train is not None:
            items = load_split2d(root, config.train, config.mask_encoding, config.mask_threshold)
            if any(item.mask is None for item in items):
                raise DatasetError(f"{root / config.train.images}: training split needs masks")
            bench.train_images = [item.image for item in items]
            bench.train_masks = [item.mask for item in items]
        if evaluate and config.eval is not None:
            bench.eval_items = load_split2d(root, config.eval, config.mask_encoding, config.mask_threshold)
        return bench

    def load(name: str) -> EvalItem:
        if config.layout == "guay":
            return load_guay(root, name)
        if config.layout == "urocell":
            return load_urocell(root, name, config)
        return load_cremi(root, name)

    if train:
        for name in config.train_volumes:
            images, masks = volume_slices(load(name), config.train_slice_axes)
            bench.train_images += images
            bench.train_masks += masks
    if evaluate:
        bench.eval_items = [load(name) for name in config.eval_volumes]
    return bench
