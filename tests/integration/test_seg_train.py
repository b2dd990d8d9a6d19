"""Fine-tuning on real EM through the CLI: `cem train seg` improves IoU over the untrained U-Net,
`cem evaluate` writes metrics and overlays, `cem infer` segments a zarr volume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from PIL import Image
from typer.testing import CliRunner

from cem_pipeline.cli import app
from training.seg.config import load_seg_config
from training.seg.datasets import load_benchmark
from training.seg.infer import Predictor, predict_images, to_labels
from training.seg.metrics import iou_counts, iou_from_counts, mean_iou
from training.seg.train import dataset_norms, prepare_model, prevalence_weights

CROP = 160


def best_window(mask: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left of the side x side window (stride 64) whose mitochondria fraction is closest to 20 %."""
    starts = range(0, mask.shape[0] - side + 1, 64)
    return min(((y, x) for y in starts for x in starts), key=lambda p: abs(mask[p[0]:p[0] + side, p[1]:p[1] + side].mean() - 0.2))


@pytest.fixture(scope="module")
def cdeep3m_crops(shared_em, tmp_path_factory):
    """Real cdeep3m slices (4 train, 2 validation) cropped to 160^2 around mitochondria, in the published layout."""
    source = shared_em / "cdeep3m_mito_sbem"
    root = tmp_path_factory.mktemp("cdeep3m")
    for split, numbers in (("training", range(10, 14)), ("validation", range(50, 52))):
        first = np.asarray(Image.open(source / split / "labels" / f"mitos_3D.{numbers[0]:03d}.png"))
        y, x = best_window(first, CROP)
        for n in numbers:
            for kind, name in (("images", f"images.{n:03d}.png"), ("labels", f"mitos_3D.{n:03d}.png")):
                (root / split / kind).mkdir(parents=True, exist_ok=True)
                array = np.asarray(Image.open(source / split / kind / name))[y:y + CROP, x:x + CROP]
                Image.fromarray(array).save(root / split / kind / name)
    return root


def write_config(path: Path, data_root: Path, output: Path, **infer) -> Path:
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "training/seg/configs/cdeep3m_mito_random.yaml").read_text())
    config["data"]["root"] = str(data_root)
    config["output_dir"] = str(output)
    config["train"].update(iterations=16, batch_size=4, crop_size=96, scale=[0.2, 0.6], threads=2, log_every=4)
    config["infer"].update(batch_size=2, **infer)
    path.write_text(yaml.safe_dump(config))
    return path


def test_finetune_improves_iou_on_real_em(cdeep3m_crops, tmp_path):
    runner = CliRunner()
    config_path = write_config(tmp_path / "seg.yaml", cdeep3m_crops, tmp_path / "out")
    config = load_seg_config(config_path)
    torch.set_num_threads(2)

    bench = load_benchmark(config.data)
    model, _, _ = prepare_model(config)  # the same seeded initial weights the CLI starts from
    untrained = Predictor(model, dataset_norms(bench.train_images), torch.device("cpu"), 2)
    scores = [iou_from_counts(iou_counts(to_labels(p[None])[0], item.mask, [1]))
              for p, item in zip(predict_images(untrained, [i.image for i in bench.eval_items]), bench.eval_items)]
    before = mean_iou(scores)[0]
    before = 0.0 if np.isnan(before) else before

    result = runner.invoke(app, ["train", "seg", str(config_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.pt").is_file()
    losses = json.loads((tmp_path / "out" / "train_log.json").read_text())["losses"]
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4])

    result = runner.invoke(app, ["evaluate", str(config_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["mean_iou"] > before + 0.15, (before, metrics)
    assert [item["name"] for item in metrics["per_item"]] == ["images.050", "images.051"]
    overlay = Image.open(tmp_path / "out" / "overlays" / "images.050.png")
    assert overlay.size == (3 * CROP + 2 * 8, CROP)
    probs = zarr.open_group(str(tmp_path / "out" / "predictions" / "images.050.zarr"), mode="r")["probabilities"]
    assert probs.shape == (1, CROP, CROP) and probs.dtype == np.uint8

    volume = zarr.open_array(tmp_path / "volume.zarr", mode="w", shape=(3, 40, 40), chunks=(2, 32, 32), dtype="uint8")
    slices = [np.asarray(Image.open(cdeep3m_crops / "validation/images" / f"images.{n:03d}.png")) for n in (50, 51, 51)]
    volume[...] = np.stack([s[:40, :40] for s in slices])
    infer_path = write_config(tmp_path / "infer.yaml", cdeep3m_crops, tmp_path / "out", input=str(tmp_path / "volume.zarr"), mode="stack")
    result = runner.invoke(app, ["infer", str(infer_path)])
    assert result.exit_code == 0, result.output
    labels = zarr.open_group(str(tmp_path / "out" / "predictions" / "volume.zarr"), mode="r")["labels"]
    assert labels.shape == (3, 40, 40) and labels.dtype == np.uint8


def test_missing_checkpoint_is_a_clear_cli_error(cdeep3m_crops, tmp_path):
    config = yaml.safe_load(write_config(tmp_path / "c.yaml", cdeep3m_crops, tmp_path / "out").read_text())
    config["model"].update(init="checkpoint", checkpoint=str(tmp_path / "missing.pth.tar"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "seg", str(tmp_path / "c.yaml")])
    assert result.exit_code == 1 and "missing.pth.tar: checkpoint not found" in result.output


def test_prevalence_weights_rule():
    masks = [np.array([[0] * 80 + [1] * 15 + [2] * 5])]
    assert prevalence_weights(masks, 3, background=[0]) == [0.1, 1.0, 3.0]
