"""MoCoV2 model pieces: queue wrap-around, momentum update, released checkpoint layout, config, lr schedule."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cem_pipeline.core.config import ConfigError
from training.moco.checkpoint import (
    CheckpointError,
    encoder_state_dict,
    load_checkpoint,
    load_released_state_dict,
    released_state_dict,
    save_checkpoint,
)
from training.moco.config import parse_moco_config
from training.moco.model import MoCo, resnet50_1ch
from training.moco.train import launch, learning_rate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_moco() -> MoCo:
    torch.manual_seed(0)
    return MoCo(dim=8, mlp_hidden=16, queue_size=10, momentum=0.9, temperature=0.2)


def test_queue_wraps_around_when_not_a_multiple_of_the_batch(small_moco: MoCo) -> None:
    model = small_moco
    model.queue_ptr.zero_()
    batches = [F.normalize(torch.randn(4, 8), dim=1) for _ in range(3)]
    for keys in batches:
        model.enqueue(keys)
    assert int(model.queue_ptr) == 2  # 12 keys into 10 slots
    # FIFO: slots 8, 9, 0, 1 hold the third batch; slots 2..7 still hold batches 2 (4..7) and 1 (2, 3)
    torch.testing.assert_close(model.queue[:, [8, 9, 0, 1]], batches[2].T)
    torch.testing.assert_close(model.queue[:, 4:8], batches[1].T)
    torch.testing.assert_close(model.queue[:, 2:4], batches[0][2:].T)
    with pytest.raises(ValueError, match="exceeds the queue size"):
        model.enqueue(torch.randn(11, 8))


def test_momentum_update_is_an_ema_without_gradients(small_moco: MoCo) -> None:
    model = small_moco
    q = [p.detach().clone() for p in model.encoder_q.parameters()]
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.5)
    k_before = [p.detach().clone() for p in model.encoder_k.parameters()]
    model.momentum_update()
    for before, q_old, k in zip(k_before, q, model.encoder_k.parameters()):
        torch.testing.assert_close(k, 0.9 * before + 0.1 * (q_old + 0.5))
        assert not k.requires_grad
    with torch.no_grad():
        for p, original in zip(model.encoder_q.parameters(), q):
            p.copy_(original)


def test_forward_single_process_logits_and_gradient_flow(small_moco: MoCo) -> None:
    model = small_moco.train()
    x = torch.randn(3, 1, 32, 32)
    logits, labels = model(x, x.flip(-1))
    assert logits.shape == (3, 1 + 10) and logits.dtype == torch.float32
    assert torch.equal(labels, torch.zeros(3, dtype=torch.long))
    assert logits.abs().max() <= 1 / 0.2 + 1e-4  # cosine similarities / T
    F.cross_entropy(logits, labels).backward()
    assert model.encoder_q.conv1.weight.grad is not None
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_released_layout_loads_into_plain_torchvision_resnet50(tmp_path) -> None:
    torch.manual_seed(1)
    model = MoCo(queue_size=16)
    payload = {"epoch": 3, "arch": "resnet50", "state_dict": released_state_dict(model),
               "optimizer": {"state": {}, "param_groups": []}, "norms": [0.58, 0.1]}
    path = save_checkpoint(tmp_path / "checkpoint_0003.pth.tar", payload)
    checkpoint = load_checkpoint(path)  # weights_only=True
    keys = checkpoint["state_dict"].keys()
    assert {"module.queue", "module.queue_ptr"} <= set(keys)
    assert all(k.startswith(("module.encoder_q.", "module.encoder_k.", "module.queue")) for k in keys)
    assert checkpoint["state_dict"]["module.encoder_q.conv1.weight"].shape == (64, 1, 7, 7)
    assert checkpoint["state_dict"]["module.queue"].shape == (128, 16)
    assert checkpoint["state_dict"]["module.encoder_q.fc.0.weight"].shape == (2048, 2048)
    assert checkpoint["state_dict"]["module.encoder_q.fc.2.weight"].shape == (128, 2048)

    net = resnet50_1ch()
    result = net.load_state_dict(encoder_state_dict(checkpoint), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    torch.testing.assert_close(net.layer4[2].conv3.weight, model.encoder_q.layer4[2].conv3.weight)

    other = MoCo(queue_size=32)
    with pytest.raises(RuntimeError, match="queue"):
        load_released_state_dict(other, checkpoint["state_dict"])
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth.tar"):
        load_checkpoint(tmp_path / "junk.pth.tar")


def test_config_errors_name_the_key_and_lr_scales_linearly() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lr'; allowed keys here: .*base_lr"):
        parse_moco_config({"data": {"beton": "x.beton"}, "optim": {"lr": 0.1}}, origin="run.yaml")
    with pytest.raises(ConfigError, match="data: required key is missing"):
        parse_moco_config({}, origin="run.yaml")
    with pytest.raises(ConfigError, match=r"batch_size \(256\) must not exceed model.queue_size \(128\)"):
        parse_moco_config({"data": {"beton": "x"}, "optim": {"batch_size": 256}, "model": {"queue_size": 128}})
    config = parse_moco_config({"data": {"beton": "x"}, "optim": {"batch_size": 512}})
    assert config.lr == pytest.approx(0.06)
    assert config.data.beton.is_absolute()
    with pytest.raises(ConfigError, match=r"data.beton: .*x does not exist"):
        launch(config)


def test_learning_rate_schedules() -> None:
    step = parse_moco_config({"data": {"beton": "x"}})
    assert [learning_rate(step, e) for e in (0, 119, 120, 159, 160, 199)] == pytest.approx(
        [0.015, 0.015, 0.0015, 0.0015, 0.00015, 0.00015]
    )
    cosine = parse_moco_config({"data": {"beton": "x"}, "optim": {"schedule": "cosine", "epochs": 10}})
    assert learning_rate(cosine, 0) == pytest.approx(0.015)
    assert learning_rate(cosine, 5) == pytest.approx(0.015 * 0.5 * (1 + math.cos(math.pi / 2)))
