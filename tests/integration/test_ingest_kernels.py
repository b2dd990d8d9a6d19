"""The pure kernels of ingest: tiling rules, plane choice, intensity mapping, colour, downsampling."""
from __future__ import annotations

import numpy as np
from PIL import Image

from cem_pipeline.core.geometry import patch_region
from cem_pipeline.ingest import standardize, tiling
from cem_pipeline.ingest.graph import downsample_factor


def test_remainder_rule_follows_paper_text():
    assert tiling.tile_starts(600, 224, 112) == [(0, 224), (224, 224), (448, 152)]
    assert tiling.tile_starts(500, 224, 112) == [(0, 224), (224, 224)]  # 52-px strip dropped
    assert tiling.tile_starts(448, 224, 112) == [(0, 224), (224, 224)]
    assert tiling.tile_starts(336, 224, 112) == [(0, 224), (224, 112)]  # exactly min_edge is kept
    assert tiling.tile_starts(150, 224, 112) == [(0, 150)]  # smaller than a patch: one native-size tile
    assert tiling.tile_starts(100, 224, 112) == []


def test_plane_choice():
    assert tiling.plane_axes("volume", (40.0, 5.9, 5.9), 0.2, "xy") == ("xy",)
    assert tiling.plane_axes("volume", (5.0, 5.0, 5.0), 0.2, "xy") == ("xy", "xz", "yz")
    assert tiling.plane_axes("volume", (5.9, 5.0, 5.0), 0.2, "xy") == ("xy", "xz", "yz")  # 18 % < 20 %
    assert tiling.plane_axes("volume", (6.0, 5.0, 5.0), 0.2, "xy") == ("xy",)  # 20 % is not < 20 %
    assert tiling.plane_axes("volume", None, 0.2, "xy") == ("xy",)
    assert tiling.plane_axes("volume", None, 0.2, "isotropic") == ("xy", "xz", "yz")
    assert tiling.plane_axes("video", None, 0.2, "isotropic") == ("xy",)
    assert tiling.plane_axes("image", (None, 5.0, 5.0), 0.2, "isotropic") == ("xy",)
    # a 20-slice stack yields no xz / yz tiles even when isotropic
    assert tiling.productive_axes(tiling.AXES, (20, 600, 600), 224, 112) == ("xy",)
    assert tiling.productive_axes(tiling.AXES, (130, 600, 500), 224, 112) == tiling.AXES


def test_blocks_are_chunk_aligned_and_cover_the_volume():
    shape, chunks = (300, 600, 500), (224, 224, 224)
    regions = tiling.blocks(shape, chunks, 224 * 224 * 448)
    covered = np.zeros(shape, dtype=np.uint8)
    for z, y, x in regions:
        assert z.start % 224 == 0 and y.start % 224 == 0 and x.start % 224 == 0
        covered[z, y, x] += 1
    assert (covered == 1).all()


def test_block_patches_match_plane_definitions(cdeep3m_volume):
    volume = np.ascontiguousarray(cdeep3m_volume[:, :600, :500])
    volume = np.concatenate([volume] * 6)[:115]  # 115 slices: one 115-px xz/yz row
    shape = volume.shape
    seen = set()
    for region in tiling.blocks(shape, (115, 224, 224), 115 * 224 * 448):
        for group in tiling.block_patches(volume[region], region, shape, tiling.AXES, 224, 112):
            stack = group.stack()
            assert stack.shape == (len(group.slices), group.h, group.w) and stack.flags.c_contiguous
            # xy and xz patches are views of the block; yz ones of its one transposed copy
            assert np.shares_memory(group.tiles, volume) == (group.axis != "yz")
            for s, y, x, patch in zip(group.slices, group.ys, group.xs, stack):
                assert np.array_equal(patch, volume[patch_region(group.axis, s, y, x, group.h, group.w)])
                seen.add((group.axis, int(s), int(y), int(x), group.h, group.w))
    counts = {a: sum(1 for f in seen if f[0] == a) for a in tiling.AXES}
    # y 600 -> 224, 224, 152; x 500 -> 224, 224 (52 dropped); z 115 -> one 115-px tile
    assert counts == {"xy": 115 * 3 * 2, "xz": 600 * 2, "yz": 500 * 3}
    assert {(h, w) for a, *_, h, w in seen if a == "xy"} == {(224, 224), (152, 224)}
    assert {(h, w) for a, *_, h, w in seen if a == "yz"} == {(115, 224), (115, 152)}


def test_yz_planes_equal_the_transposed_block_for_any_shape(cdeep3m_volume):
    # widths divisible by 8 take the SWAR path (with a scalar tail when y is not), others the byte copy
    for z, y, x in [(3, 17, 24), (5, 8, 8), (2, 9, 40), (4, 13, 13), (7, 31, 1), (20, 224, 448), (6, 230, 100)]:
        block = np.ascontiguousarray(cdeep3m_volume[:z, 100:100 + y, 50:50 + x])
        planes = tiling.yz_planes(block)
        assert planes.strides[-1] == 1 and np.array_equal(planes, block.transpose(2, 0, 1)), (z, y, x)


def test_percentiles_do_not_crush_12_bit_data(cdeep3m_volume):
    raw = cdeep3m_volume[0, :256, :256].astype(np.uint16) * 16  # 12-bit content in uint16
    lo, hi, bad = standardize.block_range(raw)
    spec = standardize.histogram_spec(raw.dtype, lo, hi)
    assert spec[3]  # exact integer bins
    mapping = standardize.percentile_mapping(standardize.block_histogram(raw, spec), spec, (0.5, 99.5), lo, hi)
    out = standardize.apply(raw[None], mapping, invert=False)
    assert out.max() == 255 and out.min() == 0 and len(np.unique(out)) > 150
    paper = standardize.apply(raw[None], standardize.dtype_max_mapping(raw.dtype), invert=False)
    assert paper.max() <= 63 and len(np.unique(paper)) <= 64  # the paper's divide-by-dtype-max squeezes 12-bit data into the dark end
    assert np.array_equal(paper, (raw[None].astype(np.float32) / 65535 * 255).astype(np.uint8))


def test_signed_and_float_mapping(cdeep3m_volume):
    raw = cdeep3m_volume[0, :128, :128].astype(np.float32) / 255 * 0.6 - 0.3  # signed float like a tomogram
    lo, hi, bad = standardize.block_range(raw)
    assert bad == 0
    spec = standardize.histogram_spec(raw.dtype, lo, hi)
    mapping = standardize.percentile_mapping(standardize.block_histogram(raw, spec), spec, (0.0, 100.0), lo, hi)
    out = standardize.apply(raw[None], mapping, invert=False)[0]
    # the 0/100 percentiles are min and max: an affine copy of uint8 content maps back to a min-max stretch of it
    source = cdeep3m_volume[0, :128, :128].astype(np.float64)
    expected = (source - source.min()) / (source.max() - source.min()) * 255
    assert np.abs(out - expected).max() <= 1.0
    nan = raw.copy()
    nan[3, 4] = np.nan
    nan[5, 6] = np.inf
    assert standardize.block_range(nan)[2] == 2
    signed = (cdeep3m_volume[0, :64, :64].astype(np.int16) - 128).astype(np.int8)
    paper = standardize.apply(signed[None], standardize.dtype_max_mapping(signed.dtype), invert=False)
    assert np.array_equal(paper[0], cdeep3m_volume[0, :64, :64])  # (x - min) / range maps int8 back exactly


def test_invert_and_identity(cdeep3m_volume):
    block = cdeep3m_volume[:2, :64, :64]
    identity = standardize.Mapping("identity", 0.0, 255.0)
    assert np.array_equal(standardize.apply(block, identity, invert=False), block)
    assert np.array_equal(standardize.apply(block, identity, invert=True), 255 - block)


def test_downsampling_averages_in_plane(cdeep3m_volume):
    block = cdeep3m_volume[:2, :64, :64]
    out = standardize.apply(block, standardize.Mapping("identity", 0.0, 255.0), invert=False, factor=2)
    expected = np.rint(block.reshape(2, 32, 2, 32, 2).astype(np.float64).mean(axis=(2, 4))).astype(np.uint8)
    assert out.shape == (2, 32, 32)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert downsample_factor((100, 1000, 1000), 0.1) == 1
    assert downsample_factor((100, 1000, 1000), 0.05) == 2  # 100 x 500 x 500 = 25 MB <= 50 MB


def test_rgb_to_gray(shared_em):
    rgb = np.asarray(Image.open(next((shared_em / "snemi3d_kasthuri2015_atum_sem" / "stack_clahe").glob("*.png"))).convert("RGB"))
    assert np.array_equal(standardize.to_gray(rgb[None], True)[0], rgb[..., 0])  # identical channels
    tinted = rgb.copy()
    tinted[..., 2] = tinted[..., 2] // 2
    ours = standardize.to_gray(tinted[None], True)[0]
    pil = np.asarray(Image.fromarray(tinted).convert("L"))
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1
    rgba = np.concatenate([tinted, np.full(tinted.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    assert np.array_equal(standardize.to_gray(rgba[None], True)[0], ours)  # alpha ignored
