"""2D and 3D inference: batched over slices, reading and writing zarr so volumes larger than RAM work.

3D modes (Conrad et al. 2020, as in the paper): "stack" predicts xy slices only; "orthoplane" predicts
xy, xz and yz slices and averages the three confidences. The volume is processed in slabs of
`slab` slices along each axis; a slab along axis a holds slab x (product of the other two sides)
voxels, so peak memory is about slab x largest-plane-area x (1 + 8 x C) bytes (uint8 input, float32
prediction and float32 accumulator read back, C output channels) plus the network's activations
for `batch_size` slices. Orthoplane sums go to a float32 zarr accumulator on disk beside the output.

Slices are reflection-padded at the bottom/right to a multiple of 32 (the U-Net's stride) and the
prediction cropped back. On CUDA the forward pass runs channels_last under bf16 autocast; outputs
are converted back to float32 before any averaging.
"""
from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

MULTIPLE = 32


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def pad_to_multiple(slices: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    """Reflect-pad (N, H, W) at the bottom/right so H and W are multiples of `multiple`."""
    height, width = slices.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return slices
    mode = "reflect" if min(height, width) > 1 else "edge"
    return np.pad(slices, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)


class Predictor:
    """Softmax/sigmoid confidences of a trained U-Net for batches of uint8 slices.

    Binary models (1 output) give one channel, P(foreground); multi-class models give C channels.
    """

    def __init__(self, model: nn.Module, norms: tuple[float, float], device: torch.device, batch_size: int = 8):
        self.device = device
        self.batch_size = batch_size
        self.mean, self.std = norms
        self.model = model.to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels = self.model.segmentation_head[0].out_channels

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).unsqueeze(1).float()
        x = (x / 255.0 - self.mean) / self.std
        cuda = self.device.type == "cuda"
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        with torch.inference_mode(), autocast:
            logits = self.model(x).float()
        probs = torch.sigmoid(logits) if self.channels == 1 else torch.softmax(logits, dim=1)
        return probs.cpu().numpy()

    def predict(self, slices: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 -> (N, C, H, W) float32 confidences, `batch_size` slices per forward pass."""
        height, width = slices.shape[-2:]
        padded = pad_to_multiple(slices)
        out = np.empty((len(slices), self.channels, height, width), dtype=np.float32)
        for start in range(0, len(slices), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self._forward(padded[start:stop])[..., :height, :width]
        return out


def to_labels(probs: np.ndarray, axis: int = 1) -> np.ndarray:
    """Binary: P > 0.5 -> 1; multi-class: argmax. `probs` holds channels on `axis`."""
    if probs.shape[axis] == 1:
        return (np.take(probs, 0, axis=axis) > 0.5).astype(np.uint8)
    return np.argmax(probs, axis=axis).astype(np.uint8)


def predict_images(predictor: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """2D inference for images of any sizes; same-shape images share batches. Returns (C, H, W) per image."""
    out: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        probs = predictor.predict(np.stack([images[i] for i in indices]))
        for i, p in zip(indices, probs):
            out[i] = p
    return out  # type: ignore[return-value]


def encode_probs(probs: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return probs.astype(np.float16)
    return np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)


def decode_probs(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / 255.0 if stored.dtype == np.uint8 else stored.astype(np.float32)


def _slab_index(axis: int, start: int, stop: int, channels: bool) -> tuple:
    index = [slice(None)] * 3
    index[axis] = slice(start, stop)
    return (slice(None), *index) if channels else tuple(index)


def infer_volume(
    predictor: Predictor, source, output: str | Path, mode: str = "orthoplane", slab: int = 32, prob_dtype: str = "uint8"
):
    """Segment a (Z, Y, X) uint8 zarr array (or array-like) into zarr group `output`.

    Writes `probabilities` (C, Z, Y, X; uint8 = round(255 p) or float16) and `labels` (Z, Y, X uint8).
    Returns the group.
    """
    import zarr

    axes = {"stack": (0,), "orthoplane": (0, 1, 2)}[mode]
    shape = tuple(source.shape)
    if len(shape) != 3:
        raise ValueError(f"3D inference needs a (Z, Y, X) volume, got shape {shape}")
    channels = predictor.channels
    chunk = tuple(min(s, 64) for s in shape)
    group = zarr.open_group(str(output), mode="w")
    probs = group.create_array("probabilities", shape=(channels, *shape), chunks=(1, *chunk), dtype=prob_dtype)
    labels = group.create_array("labels", shape=shape, chunks=chunk, dtype="uint8")
    group.attrs.update({"mode": mode, "axes": list(axes)})
    with tempfile.TemporaryDirectory(dir=Path(output).parent, prefix=".orthoplane-") as tmp:
        total = None
        if len(axes) > 1:
            total = zarr.open_array(Path(tmp) / "sum.zarr", mode="w", shape=(channels, *shape), chunks=(1, *chunk), dtype="float32")
        for axis in axes:
            for start in range(0, shape[axis], slab):
                stop = min(start + slab, shape[axis])
                block = np.moveaxis(np.asarray(source[_slab_index(axis, start, stop, False)]), axis, 0)
                pred = np.moveaxis(predictor.predict(block), 0, axis + 1)  # (C, slab along axis ...)
                if total is None:
                    region = _slab_index(axis, start, stop, False)
                    probs[_slab_index(axis, start, stop, True)] = encode_probs(pred, prob_dtype)
                    labels[region] = to_labels(pred, axis=0)
                else:
                    region = _slab_index(axis, start, stop, True)
                    total[region] = pred if axis == axes[0] else total[region] + pred
        if total is not None:
            for start in range(0, shape[0], slab):
                stop = min(start + slab, shape[0])
                mean = total[:, start:stop] / len(axes)
                probs[:, start:stop] = encode_probs(mean, prob_dtype)
                labels[start:stop] = to_labels(mean, axis=0)
    return group


def slice_loop_probabilities(predictor: Predictor, volume: np.ndarray, mode: str = "orthoplane") -> np.ndarray:
    """The paper's inference3d way: one slice at a time (batch 1), whole volume in RAM; float32 average.

    The benchmark baseline and the test reference for `infer_volume`.
    """
    axes = {"stack": (0,), "orthoplane": (0, 1, 2)}[mode]
    total = np.zeros((predictor.channels, *volume.shape), dtype=np.float32)
    for axis in axes:
        moved = np.moveaxis(total, axis + 1, 1)  # view: (C, n, ...)
        planes = np.moveaxis(volume, axis, 0)
        for i in range(planes.shape[0]):
            moved[:, i] += predictor._forward(pad_to_multiple(planes[i : i + 1]))[0, :, : planes.shape[1], : planes.shape[2]]
    return total / len(axes)
