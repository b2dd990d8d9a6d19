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


def test_split_batchnorm_is_bn_per_sub_batch_with_the_same_state_dict() -> None:
    """SplitBatchNorm2d over S splits = the plain encoder run on each sub-batch s, s + S, ... alone."""
    import copy

    from training.moco.model import moco_encoder, split_batchnorm

    torch.manual_seed(2)
    plain = moco_encoder(8, 16, "resnet18", head_bn=True)
    split = split_batchnorm(copy.deepcopy(plain), 4)
    whole = copy.deepcopy(plain)
    x = torch.randn(8, 1, 32, 32)
    per_subset = torch.cat([plain(x[s::4]) for s in range(4)])  # (8, 8), sub-batch order
    order = torch.cat([torch.arange(s, 8, 4) for s in range(4)])
    torch.testing.assert_close(split(x)[order], per_subset, rtol=0, atol=1e-5)
    assert split.state_dict().keys() == plain.state_dict().keys()
    assert type(split.fc[1]).__name__ == "SplitBatchNorm1d"
    whole(x)  # mean of the 4 sub-batch updates of running_mean = one update with the whole batch's mean
    torch.testing.assert_close(split.bn1.running_mean, whole.bn1.running_mean, rtol=0, atol=1e-6)
    plain.load_state_dict(split.state_dict())
    split.eval(), plain.eval()  # eval: plain BN on the running statistics
    torch.testing.assert_close(split(x), plain(x), rtol=0, atol=1e-6)


def test_single_process_shuffle_permutes_keys_only_when_bn_is_split() -> None:
    torch.manual_seed(3)
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    one_group = MoCo(dim=8, mlp_hidden=16, queue_size=16, arch="resnet18", bn_splits=1)
    same, none = one_group._shuffle(x)
    assert same is x and none is None
    split = MoCo(dim=8, mlp_hidden=16, queue_size=16, arch="resnet18", bn_splits=4)
    split.shuffle_generator.manual_seed(0)
    shuffled, unshuffle = split._shuffle(x)
    assert not torch.equal(shuffled, x) and torch.equal(split._unshuffle(shuffled, unshuffle), x)


@pytest.mark.parametrize("arch, features", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_archs_have_a_one_channel_stem_and_the_mlp_head(arch: str, features: int) -> None:
    from training.moco.model import resnet_1ch

    model = MoCo(dim=16, mlp_hidden=32, queue_size=8, arch=arch)
    assert model.encoder_q.conv1.weight.shape == (64, 1, 7, 7)
    assert model.encoder_q.fc[0].in_features == features
    net = resnet_1ch(arch)
    result = net.load_state_dict(encoder_state_dict({"state_dict": released_state_dict(model)}), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_bn_splits_auto_depends_on_the_world_size() -> None:
    config = parse_moco_config({"data": {"beton": "x"}, "optim": {"batch_size": 32}})
    assert config.bn_splits(1) == 4 and config.bn_splits(4) == 1
    assert parse_moco_config({"data": {"beton": "x"}, "model": {"shuffle_bn": False}}).bn_splits(1) == 1
    with pytest.raises(ConfigError, match="does not divide the per-process batch 6"):
        parse_moco_config({"data": {"beton": "x"}, "optim": {"batch_size": 6}, "model": {"bn_splits": 4}}).bn_splits(1)
    with pytest.raises(ConfigError, match="bn_splits"):
        parse_moco_config({"data": {"beton": "x"}, "model": {"bn_splits": 0}})


def test_queue_plus_batch_negatives_append_the_other_keys_after_the_queue() -> None:
    """Columns: positive, the K queue keys, then the batch's other keys (never a query's own key)."""
    torch.manual_seed(4)
    queue_only = MoCo(dim=8, mlp_hidden=16, queue_size=10, arch="resnet18", bn_splits=1)
    both = MoCo(dim=8, mlp_hidden=16, queue_size=10, arch="resnet18", bn_splits=1, negatives="queue+batch")
    both.load_state_dict(queue_only.state_dict())
    x = torch.randn(4, 1, 32, 32)
    reference, _ = queue_only(x, x.flip(-1))
    logits, labels, q, k = both(x, x.flip(-1), embeddings=True)
    assert logits.shape == (4, 1 + 10 + 3) and torch.equal(labels, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(logits[:, :11], reference)
    in_batch = q @ k.T / 0.2  # (4, 4), positives on the diagonal
    off_diagonal = in_batch[~torch.eye(4, dtype=torch.bool)].view(4, 3)
    torch.testing.assert_close(logits[:, 11:], off_diagonal)
    F.cross_entropy(logits, labels).backward()
    assert both.encoder_q.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="negatives"):
        MoCo(dim=8, mlp_hidden=16, queue_size=10, negatives="batch")


def test_health_keeps_batch_negatives_out_of_the_queue_statistics() -> None:
    from training.moco.probe import embedding_health

    q = F.normalize(torch.randn(4, 8), dim=1)
    queue_logits = torch.full((4, 1 + 6), 0.5)
    queue_logits[:, 0] = 1.0
    with_batch = torch.cat([queue_logits, torch.full((4, 3), -5.0)], dim=1)
    expected = embedding_health(q, q, queue_logits, 1.0)
    assert embedding_health(q, q, with_batch, 1.0, queue_size=6) == expected
    assert expected["logit_gap"] == pytest.approx(0.5)


@pytest.mark.parametrize("stem, kernel, stride", [("imagenet", 7, 32), ("small", 3, 8)])
def test_stems_keep_the_released_keys_and_set_the_downsampling(stem: str, kernel: int, stride: int) -> None:
    """small (3x3 stride-1 conv1, no maxpool) leaves a 64-px view 8x8 at layer4 instead of 2x2."""
    from training.moco.model import resnet_1ch

    model = MoCo(dim=8, mlp_hidden=16, queue_size=8, arch="resnet18", stem=stem)
    paper = MoCo(dim=8, mlp_hidden=16, queue_size=8, arch="resnet18")
    assert model.encoder_q.conv1.weight.shape == (64, 1, kernel, kernel)
    assert released_state_dict(model).keys() == released_state_dict(paper).keys()
    net = resnet_1ch("resnet18", stem=stem).eval()
    body = torch.nn.Sequential(*(m for name, m in net.named_children() if name not in ("avgpool", "fc")))
    assert body(torch.zeros(1, 1, 64, 64)).shape[-1] == 64 // stride
    result = net.load_state_dict(encoder_state_dict({"state_dict": released_state_dict(model)}), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    config = parse_moco_config({"data": {"beton": "x"}, "model": {"stem": stem, "negatives": "queue+batch"}})
    assert config.model.stem == stem
    with pytest.raises(ConfigError, match="model.stem"):
        parse_moco_config({"data": {"beton": "x"}, "model": {"stem": "cifar"}})


def test_shipped_recipes_parse_and_resolve_against_their_folder() -> None:
    from pathlib import Path

    from training.moco.config import load_moco_config

    folder = Path(__file__).resolve().parents[2] / "training" / "moco" / "configs"
    recipes = sorted(folder.glob("*.yaml"))
    assert recipes
    for path in recipes:
        config = load_moco_config(path)
        assert config.data.beton.is_relative_to(folder.parents[2])
        assert config.bn_splits(1) >= 1


def test_crop_scale_reaches_the_augmentation_and_must_be_an_area_fraction() -> None:
    from training.moco.train import augment_params

    config = parse_moco_config({"data": {"beton": "x.beton", "crop_size": 64, "crop_scale": [0.05, 0.2]}})
    params = augment_params(config)
    assert params.scale == (0.05, 0.2) and params.out_size == 64
    assert augment_params(parse_moco_config({"data": {"beton": "x.beton"}})).scale == (0.2, 1.0)  # the paper's
    for bad in ([0.0, 0.5], [0.5, 0.2], [0.2, 1.5]):
        with pytest.raises(ConfigError, match="crop_scale"):
            parse_moco_config({"data": {"beton": "x.beton", "crop_scale": bad}})
