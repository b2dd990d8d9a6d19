"""Batched zarr inference (2D, stack, orthoplane) against the paper's slow one-slice-at-a-time loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from training.seg.infer import (
    Predictor,
    decode_probs,
    infer_volume,
    predict_images,
    slice_loop_probabilities,
    to_labels,
)
from training.seg.model import build_unet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def predictors():
    torch.manual_seed(42)
    binary = Predictor(build_unet(1), (0.5, 0.2), torch.device("cpu"), batch_size=8)
    torch.manual_seed(42)
    multi = Predictor(build_unet(3), (0.5, 0.2), torch.device("cpu"), batch_size=8)
    return binary, multi


@pytest.fixture(scope="module")
def volume(cdeep3m_volume):
    """Real SBEM, sides not multiples of 32 so padding and crop-back are exercised."""
    return np.ascontiguousarray(cdeep3m_volume[:5, 300:324, 400:437])


@pytest.mark.parametrize("mode", ["orthoplane", "stack"])
def test_volume_inference_matches_slice_loop(predictors, volume, mode, tmp_path):
    binary, _ = predictors
    source = zarr.open_array(tmp_path / "image.zarr", mode="w", shape=volume.shape, chunks=(2, 16, 16), dtype="uint8")
    source[...] = volume
    group = infer_volume(binary, source, tmp_path / "pred.zarr", mode, slab=2, prob_dtype="float16")
    reference = slice_loop_probabilities(binary, volume, mode)
    probs = decode_probs(group["probabilities"][...])
    assert probs.shape == (1, *volume.shape)
    assert np.abs(probs - reference).max() < 2e-3  # float16 storage
    decided = np.abs(reference[0] - 0.5) > 2e-3
    assert np.array_equal(group["labels"][...][decided], (reference[0] > 0.5)[decided])
    assert group.attrs["mode"] == mode
    assert not list(tmp_path.glob(".orthoplane-*"))  # accumulator removed


def test_multiclass_orthoplane_uint8(predictors, volume, tmp_path):
    _, multi = predictors
    small = volume[:3, :20, :22]
    group = infer_volume(multi, small, tmp_path / "pred.zarr", "orthoplane", slab=8, prob_dtype="uint8")
    reference = slice_loop_probabilities(multi, small, "orthoplane")
    stored = group["probabilities"][...]
    assert stored.dtype == np.uint8 and stored.shape == (3, *small.shape)
    assert np.abs(decode_probs(stored) - reference).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(group["labels"][...], to_labels(reference, axis=0))


def test_2d_batched_equals_one_by_one(predictors, volume):
    binary, _ = predictors
    images = [volume[0], volume[1], volume[2, :21, :30]]
    batched = predict_images(binary, images)
    assert [p.shape for p in batched] == [(1, 24, 37), (1, 24, 37), (1, 21, 30)]
    for image, probs in zip(images, batched):
        alone = binary.predict(image[None])[0]
        assert np.abs(alone - probs).max() < 1e-4
