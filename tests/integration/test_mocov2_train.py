"""MoCoV2 training on a real .beton (cdeep3m SBEM patches from ../shared): over-fitting a tiny set
lowers the loss, a resumed run reproduces the uninterrupted one exactly, and a 2-process gloo DDP
run (shuffled BN across processes, queue filled with the global batch) trains and checkpoints."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.moco.checkpoint import encoder_state_dict, load_checkpoint
from training.moco.config import parse_moco_config
from training.moco.model import resnet50_1ch
from training.moco.train import launch, train

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="session")
def em_beton(tmp_path_factory, cdeep3m_volume: np.ndarray) -> Path:
    """16 real 224-px SBEM patches (4 slices x 4 tiles) in `cem export`'s .beton format."""
    from cem_pipeline.bench.arrays import write_patch_beton

    patches = np.stack([s[y:y + 224, x:x + 224] for s in cdeep3m_volume[::5] for y in (0, 400) for x in (0, 600)])
    return write_patch_beton(patches, tmp_path_factory.mktemp("beton") / "em.beton")


def _config(beton: Path, out: Path, **overrides) -> dict:
    config = {
        "data": {"beton": str(beton), "crop_size": 64, "num_workers": 1},
        "model": {"queue_size": 8, "momentum": 0.99},
        "optim": {"batch_size": 8, "base_lr": 1.0, "epochs": 6},
        "runtime": {"threads": 1, "seed": 3},
        "output": {"dir": str(out), "save_every": 5, "log_every": 1, "progress": False, "save_initial": True},
    }
    for section, values in overrides.items():
        config[section] = {**config[section], **values}
    return config


def _metrics(directory: Path) -> list[dict[str, float]]:
    with open(directory / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _train_in_process(config: dict) -> None:
    """train() sets this process's torch/numba thread counts (runtime.threads); restore them after."""
    import numba

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        train(parse_moco_config(config))
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


@pytest.fixture(scope="session")
def overfit_run(em_beton: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("overfit")
    _train_in_process(_config(em_beton, out))
    return out


def test_loss_decreases_when_overfitting_a_tiny_set(overfit_run: Path) -> None:
    rows = _metrics(overfit_run)
    assert [r["step"] for r in rows] == list(range(1, 13))  # 16 patches / batch 8 x 6 epochs
    losses = [r["loss"] for r in rows]
    # the first step's negatives are the random initial queue; from step 2 on they are real keys
    early, late = np.mean(losses[1:4]), np.mean(losses[-4:])
    assert late < early - 0.1, losses
    assert all(r["lr"] == pytest.approx(1.0 * 8 / 128) for r in rows)
    assert all(r["images_per_s"] > 0 for r in rows)
    assert (overfit_run / "tensorboard").is_dir()


def test_resume_reproduces_the_uninterrupted_run(overfit_run: Path, em_beton: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(overfit_run / "checkpoint_0005.pth.tar", resumed)
    shutil.copy(overfit_run / "metrics.csv", resumed)  # rows past the checkpoint's step are dropped on resume
    _train_in_process(_config(em_beton, resumed, output={"resume": "auto"}))
    full, again = _metrics(overfit_run), _metrics(resumed)
    assert [r["step"] for r in again] == [r["step"] for r in full]
    for a, b in zip(full[-2:], again[-2:]):  # epoch 6 = steps 11, 12, run after the resume
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["acc1"] == pytest.approx(a["acc1"], abs=1e-6)
    final, final_again = load_checkpoint(overfit_run / "checkpoint_0006.pth.tar"), load_checkpoint(resumed / "checkpoint_0006.pth.tar")
    for key in ("module.queue", "module.queue_ptr", "module.encoder_q.layer4.2.conv3.weight", "module.encoder_k.fc.2.bias"):
        torch.testing.assert_close(final_again["state_dict"][key], final["state_dict"][key], rtol=0, atol=1e-6)


def test_checkpoint_is_the_released_layout(overfit_run: Path) -> None:
    checkpoint = load_checkpoint(overfit_run / "checkpoint_0006.pth.tar")
    assert checkpoint["epoch"] == 6 and checkpoint["arch"] == "resnet50" and checkpoint["step"] == 12
    assert {"optimizer", "scheduler", "rng", "loader", "config"} <= set(checkpoint)
    mean, std = checkpoint["norms"]
    assert 0 < mean < 1 and 0 < std < 1
    net = resnet50_1ch()
    result = net.load_state_dict(encoder_state_dict(checkpoint), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert net.conv1.weight.shape == (64, 1, 7, 7)


def test_initial_checkpoint_holds_the_seeded_start(overfit_run: Path) -> None:
    """checkpoint_0000 is the encoder pre-training started from: the transfer experiment's paired random baseline."""
    from training.moco.train import build_model, resolve_runtime

    config = parse_moco_config(_config(overfit_run, overfit_run))
    initial = load_checkpoint(overfit_run / "checkpoint_0000.pth.tar")
    assert initial["epoch"] == 0 and initial["step"] == 0 and initial["arch"] == "resnet50"
    seeded = build_model(config, resolve_runtime(config, 0, 1, 0)).encoder_q.state_dict()
    start = encoder_state_dict(initial, head=True)
    assert set(start) == set(seeded)
    for key, value in seeded.items():
        torch.testing.assert_close(start[key], value, rtol=0, atol=0)
    trained = encoder_state_dict(load_checkpoint(overfit_run / "checkpoint_0006.pth.tar"), head=True)
    assert not torch.equal(trained["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])


def test_two_process_gloo_ddp(em_beton: Path, tmp_path: Path) -> None:
    """Spawned 2-process run: the global batch of 8 is split 4 + 4, keys of both ranks enter the queue."""
    out = tmp_path / "ddp"
    config = parse_moco_config(_config(
        em_beton, out,
        model={"queue_size": 12},
        optim={"epochs": 1},
        runtime={"nproc": 2},
        output={"save_every": 1},
    ))
    launch(config)
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]  # 16 patches, 2 ranks x 4 per step
    assert all(np.isfinite(r["loss"]) for r in rows)
    checkpoint = load_checkpoint(out / "checkpoint_0001.pth.tar")
    assert len(checkpoint["rng"]) == 2
    assert not torch.equal(checkpoint["rng"][0]["augment_q_noise"], checkpoint["rng"][1]["augment_q_noise"])
    assert int(checkpoint["state_dict"]["module.queue_ptr"]) == (2 * 8) % 12  # global batches enqueued
    assert not list(out.glob(".rendezvous-*"))
