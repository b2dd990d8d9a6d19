"""Benchmark loaders on small data written in each published layout, and on the real sets in ../shared."""
from __future__ import annotations

from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image

from cem_pipeline.core.config import ConfigError
from training.seg.config import DataConfig, load_seg_config, parse_seg_config
from training.seg.datasets import DatasetError, load_benchmark

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "seg" / "configs").glob("*.yaml"))
RNG = np.random.default_rng(7)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_lucchi_layout_masks_divided_by_255(tmp_path):
    for split in ("Train", "Test"):
        for i in range(3):
            write_png(tmp_path / f"{split}_In" / f"{i}.png", RNG.integers(0, 256, (40, 48), dtype=np.uint8))
            write_png(tmp_path / f"{split}_Out" / f"{i}.png", (RNG.random((40, 48)) > 0.7).astype(np.uint8) * 255)
    config = DataConfig(layout="folders2d", root=str(tmp_path), train={"images": "Train_In", "masks": "Train_Out"},
                        eval={"images": "Test_In", "masks": "Test_Out"}, mask_encoding="divide255")
    bench = load_benchmark(config)
    assert len(bench.train_images) == 3 and len(bench.eval_items) == 3
    truth = np.asarray(Image.open(tmp_path / "Train_Out" / "1.png")) // 255
    assert np.array_equal(bench.train_masks[1], truth) and set(np.unique(truth)) == {0, 1}

    write_png(tmp_path / "Train_Out" / "2.png", np.full((40, 48), 128, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"Train_Out/2\.png: divide255 masks must hold only 0 and 255.*mask_encoding: threshold"):
        load_benchmark(config)


def test_anti_aliased_masks_are_thresholded(tmp_path):
    """Annotation tools export 0/255 masks with a few intermediate values on every edge: divide255 rejects
    them, `threshold` maps value > mask_threshold to foreground."""
    binary = np.zeros((40, 48), dtype=np.uint8)
    binary[10:30, 12:36] = 255
    aliased = binary.copy()
    aliased[10, 12:36], aliased[29, 12:36], aliased[9, 12:36] = 200, 140, 60  # edge rows: two inside, one outside
    for split in ("Train", "Test"):
        write_png(tmp_path / f"{split}_In" / "0.png", RNG.integers(0, 256, (40, 48), dtype=np.uint8))
        write_png(tmp_path / f"{split}_Out" / "0.png", aliased)
    split_folders = dict(train={"images": "Train_In", "masks": "Train_Out"}, eval={"images": "Test_In", "masks": "Test_Out"})
    with pytest.raises(DatasetError, match="divide255"):
        load_benchmark(DataConfig(layout="folders2d", root=str(tmp_path), mask_encoding="divide255", **split_folders))
    bench = load_benchmark(DataConfig(layout="folders2d", root=str(tmp_path), mask_encoding="threshold", **split_folders))
    assert np.array_equal(bench.train_masks[0], binary // 255)
    strict = load_benchmark(DataConfig(layout="folders2d", root=str(tmp_path), mask_encoding="threshold", mask_threshold=150,
                                       **split_folders))
    assert strict.train_masks[0][29].sum() == 0 and strict.train_masks[0][10].sum() == 24


def test_perez_layout(tmp_path):
    for folder in ("training_images", "test_images"):
        for name in ("a.tif", "b.tif"):
            (tmp_path / folder / "nuclei").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tmp_path / folder / "nuclei" / name, RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    for folder in ("training_labels", "ground_truth"):
        for name in ("a.png", "b.png"):
            write_png(tmp_path / folder / "nuclei" / name, (RNG.random((64, 64)) > 0.5).astype(np.uint8) * 255)
    config = load_seg_config(CONFIGS[0].parent / "perez_nuclei.yaml").data.model_copy(update={"root": str(tmp_path)})
    bench = load_benchmark(config)
    assert [i.name for i in bench.eval_items] == ["a", "b"]
    assert bench.train_masks[0].max() == 1


def test_guay_layout_min_max_and_axis2_slices(tmp_path):
    image = RNG.integers(100, 4000, (5, 24, 32), dtype=np.uint16)
    labels = RNG.integers(0, 7, (5, 24, 32), dtype=np.uint8)
    for split in ("train", "test"):
        tifffile.imwrite(tmp_path / f"{split}-images.tif", image)
        tifffile.imwrite(tmp_path / f"{split}-labels.tif", labels)
    config = load_seg_config(CONFIGS[0].parent / "guay.yaml").data.model_copy(update={"root": str(tmp_path)})
    bench = load_benchmark(config)
    assert len(bench.train_images) == 32 and bench.train_images[0].shape == (5, 24)  # slices along axis 2
    volume = bench.eval_items[0].image
    assert volume.dtype == np.uint8 and volume.min() == 0 and volume.max() == 255
    assert np.array_equal(bench.eval_items[0].mask, labels)


def test_urocell_layout_label_and_y_crop(tmp_path):
    zyx = (6, 20, 16)
    image = RNG.integers(0, 256, zyx, dtype=np.uint8)
    lyso = np.zeros(zyx, dtype=np.uint8)
    lyso[1, 15, 3] = 1
    mito = np.zeros(zyx, dtype=np.uint8)
    mito[2, 16:, 4:6] = 7  # instance ids count as mito
    for folder, array in (("data", image), ("lyso", lyso), ("mito", mito)):
        (tmp_path / folder).mkdir()
        nibabel.save(nibabel.Nifti1Image(array.T, np.eye(4)), tmp_path / folder / "fib1-0-0-0.nii.gz")  # NIfTI is (x, y, z)
    config = DataConfig(layout="urocell", root=str(tmp_path), eval_volumes=["fib1-0-0-0"], y_crop={"fib1-0-0-0": 12})
    item = load_benchmark(config).eval_items[0]
    assert item.image.shape == (6, 8, 16)
    assert np.array_equal(item.image, image[:, 12:])
    assert item.mask[1, 3, 3] == 1 and (item.mask[2, 4:, 4:6] == 2).all()
    assert int((item.mask > 0).sum()) == 1 + 8


def test_cremi_layout_clefts(tmp_path):
    raw = RNG.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    clefts = np.full(raw.shape, 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    clefts[1, 5:8, 5:9] = 42
    clefts[2, 0, 0] = 0  # id 0 is a cleft, not background
    for name in ("sample_A_20160501.hdf", "sample_C_20160501.hdf"):
        with h5py.File(tmp_path / name, "w") as f:
            f["volumes/raw"] = raw
            f["volumes/labels/clefts"] = clefts
    config = DataConfig(layout="cremi", root=str(tmp_path), train_volumes=["sample_A_20160501.hdf"], eval_volumes=["sample_C_20160501.hdf"])
    bench = load_benchmark(config)
    assert len(bench.train_images) == 3
    assert int(bench.eval_items[0].mask.sum()) == 12 + 1
    with h5py.File(tmp_path / "bad.hdf", "w") as f:
        f["volumes/raw"] = raw
    with pytest.raises(DatasetError, match="bad.hdf: missing dataset"):
        load_benchmark(config.model_copy(update={"eval_volumes": ["bad.hdf"]}), train=False)


def test_all_mito_patches(tmp_path):
    for split in ("train", "test"):
        for i in range(2):
            write_png(tmp_path / split / "images" / f"p{i}.png", RNG.integers(0, 256, (256, 256), dtype=np.uint8))
            write_png(tmp_path / split / "masks" / f"p{i}.png", (RNG.random((256, 256)) > 0.8).astype(np.uint8))
    config = load_seg_config(CONFIGS[0].parent / "all_mito.yaml").data.model_copy(update={"root": str(tmp_path)})
    bench = load_benchmark(config)
    assert bench.train_images[0].shape == (256, 256) and bench.train_masks[0].max() == 1


def test_real_cdeep3m_and_isbi_layouts(shared_em):
    cdeep3m = load_seg_config(CONFIGS[0].parent / "cdeep3m_mito_random.yaml").data
    bench = load_benchmark(cdeep3m.model_copy(update={"root": str(shared_em / "cdeep3m_mito_sbem")}))
    assert len(bench.train_images) == 20 and [i.name for i in bench.eval_items][0] == "images.050"
    fraction = np.mean([m.mean() for m in bench.train_masks])
    assert 0.03 < fraction < 0.3 and set(np.unique(bench.train_masks[0])) == {0, 1}

    isbi = load_seg_config(CONFIGS[0].parent / "isbi2012_membranes.yaml").data
    bench = load_benchmark(isbi.model_copy(update={"root": str(shared_em / "isbi2012_drosophila_l1_vnc_sstem")}))
    assert len(bench.train_images) == 25
    assert [i.name for i in bench.eval_items] == ["25", "26", "27", "28", "29"]  # natural sort, not 3 < 25
    label = np.asarray(Image.open(shared_em / "isbi2012_drosophila_l1_vnc_sstem" / "train" / "label" / "25.png"))
    assert np.array_equal(bench.eval_items[0].mask, (label == 0).astype(np.uint8))
    assert 0.1 < bench.eval_items[0].mask.mean() < 0.35  # ~22 % membrane


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_configs_parse(path):
    config = load_seg_config(path)
    assert config.train.crop_size % 32 == 0 and config.seed == 42


def test_unknown_key_names_origin():
    with pytest.raises(ConfigError, match=r"x\.yaml: unknown key 'train\.lr'"):
        parse_seg_config({"name": "n", "output_dir": "o", "data": {"layout": "cremi", "root": "r", "eval_volumes": ["c"]},
                          "train": {"iterations": 1, "crop_size": 64, "lr": 1}}, origin="x.yaml")
    with pytest.raises(ConfigError, match="needs model.checkpoint"):
        parse_seg_config({"name": "n", "output_dir": "o", "data": {"layout": "cremi", "root": "r", "eval_volumes": ["c"]},
                          "model": {"init": "checkpoint"}, "train": {"iterations": 1, "crop_size": 64}})
