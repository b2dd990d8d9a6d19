"""Representation health: the k-NN probe, the collapse indicators, and a short real-EM MoCo run
that must stay healthy (it fails when the single-process BN leak is back)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.moco.probe import (
    build_probe_set,
    cdeep3m_validation_probe,
    collapse_reasons,
    embedding_health,
    knn_accuracy,
    load_probe_set,
)


def test_knn_accuracy_separable_and_constant_features() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    bank = centres[labels] + 0.05 * torch.randn(40, 3, generator=g)
    query = centres[labels] + 0.05 * torch.randn(40, 3, generator=g)
    assert knn_accuracy(bank, labels, query, labels, k=5) == 100.0
    constant = torch.ones(40, 3)
    assert knn_accuracy(constant, labels, constant, labels, k=5) == pytest.approx(50.0)  # all tie: one class


def test_health_of_spread_and_collapsed_embeddings() -> None:
    g = torch.Generator().manual_seed(1)
    d, n = 128, 256
    spread = F.normalize(torch.randn(n, d, generator=g), dim=1)
    keys = F.normalize(spread + 0.02 * torch.randn(n, d, generator=g), dim=1)
    logits = torch.cat([(spread * keys).sum(1, keepdim=True), spread @ F.normalize(torch.randn(d, 64, generator=g), dim=0)], 1) / 0.2
    healthy = embedding_health(spread, keys, logits, 0.2)
    assert healthy["emb_std"] == pytest.approx(1.0, abs=0.05)  # per-dimension std ~ 1/sqrt(d)
    assert healthy["logit_gap"] > 0.9 and healthy["batch_acc1"] == 100.0 and healthy["uniform"] < -3
    point = F.normalize(torch.ones(n, d) + 1e-3 * torch.randn(n, d, generator=g), dim=1)
    collapsed = embedding_health(point, point, torch.full((n, 65), 5.0), 0.2)
    assert collapsed["emb_std"] < 0.05 and collapsed["uniform"] == pytest.approx(0.0, abs=1e-3)
    assert collapse_reasons(collapsed, 0.15, 0.0, 0.03) and not collapse_reasons(healthy, 0.15, 0.0, 0.03)


@pytest.mark.shared_data
def test_probe_set_from_unseen_labelled_slices(shared_em: Path, tmp_path: Path) -> None:
    """cdeep3m validation slices: balanced classes per split, bank and query never overlap."""
    import pyarrow.parquet as pq

    path = cdeep3m_validation_probe(shared_em, tmp_path / "probe.parquet", per_class=16)
    table = pq.read_table(path).to_pydict()
    for split in ("bank", "query"):
        labels = [label for label, s in zip(table["label"], table["split"]) if s == split]
        assert labels.count(0) == labels.count(1) == 16
    bottom_of_bank = max(y + 224 for y, s in zip(table["y"], table["split"]) if s == "bank")
    assert bottom_of_bank <= min(y for y, s in zip(table["y"], table["split"]) if s == "query")
    assert all((f > 0.05) == bool(label) for f, label in zip(table["fraction"], table["label"]))
    probe = load_probe_set(path, 64, 0.5, 0.2)
    assert probe.bank.shape == (32, 1, 64, 64) and probe.query.shape == (32, 1, 64, 64) and probe.chance == 50.0
    with pytest.raises(ValueError, match="matching"):
        build_probe_set([], [], tmp_path / "x.parquet")


def _train_in_process(config: dict) -> dict:
    """train() sets this process's torch/numba thread counts (runtime.threads); restore them after."""
    import numba

    from training.moco.config import parse_moco_config
    from training.moco.train import train

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        return train(parse_moco_config(config))
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _tiny_config(beton: Path, out: Path, probe: Path | None = None, **model) -> dict:
    return {
        "data": {"beton": str(beton), "crop_size": 64, "num_workers": 1},
        "model": {"arch": "resnet18", "queue_size": 64, "momentum": 0.99, **model},
        "optim": {"batch_size": 16, "epochs": 2},
        "runtime": {"threads": 2, "seed": 5, "device": "cpu"},
        "output": {"dir": str(out), "save_every": 2, "log_every": 1, "progress": False},
        "monitor": {"probe": str(probe) if probe else None},
    }


@pytest.fixture(scope="module")
def cdeep3m_beton(tmp_path_factory, cdeep3m_volume: np.ndarray) -> Path:
    """180 real 224-px SBEM patches: 9 tiles of each of the 20 cdeep3m training slices."""
    from cem_pipeline.bench.arrays import write_patch_beton

    tiles = (0, 400, 800)
    patches = np.stack([s[y:y + 224, x:x + 224] for s in cdeep3m_volume for y in tiles for x in tiles])
    return write_patch_beton(patches, tmp_path_factory.mktemp("health") / "cdeep3m.beton")


@pytest.mark.shared_data
def test_two_cpu_runs_with_the_same_seed_are_identical(cdeep3m_beton: Path, tmp_path: Path) -> None:
    """Same seed, same thread count: the same metrics (all but the timing) and bit-identical checkpoints."""
    from training.moco.checkpoint import load_checkpoint

    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        _train_in_process(_tiny_config(cdeep3m_beton, run, bn_splits=4))
    first, second = (_rows(r) for r in runs)
    assert len(first) == 22  # 180 patches // 16 = 11 steps x 2 epochs
    for a, b in zip(first, second):
        assert {k: v for k, v in a.items() if k != "images_per_s"} == {k: v for k, v in b.items() if k != "images_per_s"}
    ca, cb = (load_checkpoint(r / "checkpoint_0002.pth.tar") for r in runs)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key, value in ca["state_dict"].items():
        assert torch.equal(value, cb["state_dict"][key]), key
    for a, b in zip(ca["rng"][0].values(), cb["rng"][0].values()):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b)


@pytest.fixture(scope="module")
def probe_path(shared_em: Path, tmp_path_factory) -> Path:
    return cdeep3m_validation_probe(shared_em, tmp_path_factory.mktemp("probe") / "probe.parquet", per_class=32)


def _health_failures(result: dict, run: Path) -> list[str]:
    """What makes a run unhealthy: a flagged collapse, embeddings bunched up at the end, or a k-NN probe
    (cdeep3m validation mitochondria, chance 50 %) not well above chance."""
    rows = [r for r in _rows(run) if r["emb_std"]]
    last_epoch = [float(r["emb_std"]) for r in rows if r["epoch"] == rows[-1]["epoch"]]
    failures = []
    if result["collapsed_at"] is not None:
        failures.append(f"collapse flagged at epoch {result['collapsed_at']}")
    if np.mean(last_epoch) < 0.15:
        failures.append(f"final embedding std {np.mean(last_epoch):.3f} x 1/sqrt(d) < 0.15")
    if result["knn_acc"] < 60:
        failures.append(f"k-NN {result['knn_acc']:.1f} % not well above chance (50 %)")
    return failures


@pytest.mark.shared_data
@pytest.mark.parametrize("recipe, healthy", [
    ({"model": {"momentum": 0.999}, "optim": {"base_lr": 0.015, "epochs": 4}}, True),
    # the same with 8x the lr and the short-run key momentum 0.99: the head turns all embeddings together
    ({"model": {"momentum": 0.99}, "optim": {"base_lr": 0.12, "epochs": 3}}, False),
], ids=["paper-momentum", "collapsing"])
def test_short_real_em_run_stays_healthy(recipe: dict, healthy: bool, cdeep3m_beton: Path, probe_path: Path,
                                         tmp_path: Path) -> None:
    """~20 steps of batch 32 on real SBEM patches, probed on the unseen cdeep3m validation slices. The
    collapsing recipe is the check that this test can fail."""
    config = _tiny_config(cdeep3m_beton, tmp_path / "run", probe_path)
    config["model"] = {**config["model"], "queue_size": 128, **recipe["model"]}
    config["optim"] = {**config["optim"], "batch_size": 32, "schedule": "cosine", **recipe["optim"]}
    config["monitor"] = {**config["monitor"], "every": 2}
    config["output"] = {**config["output"], "save_every": 100}
    result = _train_in_process(config)
    failures = _health_failures(result, tmp_path / "run")
    assert (not failures) == healthy, failures
