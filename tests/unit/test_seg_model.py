"""Encoder initialisation: strict loading of the paper's released MoCoV2 layout, clear errors, freezing."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from training.seg.model import (
    EncoderLoadError,
    build_unet,
    freeze_encoder,
    load_encoder,
    set_train_mode,
)

torch.set_num_threads(2)


def moco_resnet() -> nn.Module:
    """torchvision ResNet50 with a 1-channel stem and MoCoV2's MLP head 2048 -> 2048 -> 128 (fc.0, fc.2)."""
    net = resnet50(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(inplace=True), nn.Linear(2048, 128))
    return net


def released_checkpoint(query: nn.Module, key: nn.Module) -> dict:
    """The authors' layout: {epoch, arch, state_dict: module.encoder_q.*, module.encoder_k.*, module.queue, optimizer, norms}."""
    state = {f"module.encoder_q.{k}": v for k, v in query.state_dict().items()}
    state.update({f"module.encoder_k.{k}": v for k, v in key.state_dict().items()})
    state["module.queue"] = torch.nn.functional.normalize(torch.randn(128, 1024), dim=0)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {}, "norms": [0.58331613, 0.09966064]}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    torch.manual_seed(0)
    query = moco_resnet()  # the key encoder starts as a copy of the query encoder, as in MoCo
    path = tmp_path_factory.mktemp("ckpt") / "cem500k_mocov2_resnet50_200ep.pth.tar"
    checkpoint = released_checkpoint(query, query)
    torch.save(checkpoint, path)
    return path, checkpoint


def test_released_layout_loads_strictly_with_norms(released):
    path, checkpoint = released
    model = build_unet(1)
    norms = load_encoder(model, path)
    assert norms == pytest.approx((0.58331613, 0.09966064))
    encoder = model.encoder.state_dict()
    expected = {k[len("module.encoder_q."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("module.encoder_q.")}
    assert set(expected) - set(encoder) == {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"}
    for name, tensor in encoder.items():
        assert torch.equal(tensor, expected[name]), name
    assert model.encoder.conv1.weight.shape == (64, 1, 7, 7)


def test_wrong_keys_are_listed(released, tmp_path):
    _, checkpoint = released
    state = dict(checkpoint["state_dict"])
    del state["module.encoder_q.layer4.2.conv3.weight"]
    state["module.encoder_q.layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pth.tar"
    torch.save({**checkpoint, "state_dict": state}, path)
    with pytest.raises(EncoderLoadError) as error:
        load_encoder(build_unet(1), path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys: layer4.2.conv3.weight" in message
    assert "unexpected keys: module.encoder_q.layer5.0.conv1.weight" in message


def test_plain_resnet_and_rgb_stem_and_garbage_are_errors(released, tmp_path):
    _, checkpoint = released
    plain = tmp_path / "plain.pth"  # a torchvision-style state dict without the MoCo prefixes
    encoder_q = {k.split(".", 2)[2]: v for k, v in checkpoint["state_dict"].items() if k.startswith("module.encoder_q.")}
    torch.save({"state_dict": encoder_q}, plain)
    with pytest.raises(EncoderLoadError, match=r"no 'module\.encoder_q\.\*' keys.*conv1\.weight"):
        load_encoder(build_unet(1), plain)

    rgb = tmp_path / "rgb.pth.tar"  # an ImageNet-style 3-channel stem
    state = {**checkpoint["state_dict"], "module.encoder_q.conv1.weight": torch.zeros(64, 3, 7, 7)}
    torch.save({**checkpoint, "state_dict": state}, rgb)
    with pytest.raises(EncoderLoadError, match=r"conv1\.weight: checkpoint \(64, 3, 7, 7\) vs model \(64, 1, 7, 7\)"):
        load_encoder(build_unet(1), rgb)

    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(EncoderLoadError, match="notes.txt: not a loadable checkpoint"):
        load_encoder(build_unet(1), garbage)


def test_freezing_and_batchnorm_statistics():
    model = build_unet(1)
    frozen = freeze_encoder(model, "layer3")
    assert frozen == ["conv1", "bn1", "layer1", "layer2"]
    assert not any(p.requires_grad for p in model.encoder.layer2.parameters())
    assert all(p.requires_grad for p in model.encoder.layer3.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())

    model = build_unet(1)
    frozen = freeze_encoder(model, "none")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    x = torch.rand(2, 1, 64, 64)
    before = model.encoder.bn1.running_mean.clone()
    set_train_mode(model, frozen, freeze_bn_stats=False)  # paper: frozen BN still tracks statistics
    model(x)
    assert not torch.equal(before, model.encoder.bn1.running_mean)
    before = model.encoder.bn1.running_mean.clone()
    set_train_mode(model, frozen, freeze_bn_stats=True)
    model(x)
    assert torch.equal(before, model.encoder.bn1.running_mean)
    assert model.decoder.training


# --- backbones: checkpoints of the MoCo trainer for each model.arch ---------------------------------------

def trainer_checkpoint(path, arch: str, head_bn: bool = False, with_arch: bool = True):
    """What training/moco/train.py saves (epoch, arch, released state_dict, norms), for a MoCo of `arch`."""
    from training.moco.checkpoint import released_state_dict
    from training.moco.model import MoCo

    torch.manual_seed(1)
    moco = MoCo(dim=16, mlp_hidden=32, queue_size=8, arch=arch, head_bn=head_bn)
    payload = {"epoch": 1, "state_dict": released_state_dict(moco), "norms": [0.5, 0.25]}
    if with_arch:
        payload["arch"] = arch
    torch.save(payload, path)
    return moco


@pytest.mark.parametrize("arch, head_bn", [("resnet18", False), ("resnet34", True), ("resnet50", False)])
def test_each_trainer_arch_loads_strictly_into_its_unet_encoder(tmp_path, arch, head_bn):
    from training.seg.model import build_transfer_unet, unet_encoder

    path = tmp_path / f"{arch}.pth.tar"
    moco = trainer_checkpoint(path, arch, head_bn=head_bn)
    model, norms = build_transfer_unet(1, path)  # the encoder follows the checkpoint's arch
    assert unet_encoder(model) == arch and norms == (0.5, 0.25)
    query = moco.encoder_q.state_dict()
    encoder = model.encoder.state_dict()
    assert {k for k in query if not k.startswith("fc.")} == set(encoder)
    for name, tensor in encoder.items():
        assert torch.equal(tensor, query[name]), name
    same, _ = build_transfer_unet(1, path, encoder=arch)  # an agreeing model.encoder is fine
    assert unet_encoder(same) == arch
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)  # decoder widths fit every encoder


def test_encoder_setting_must_agree_with_checkpoint_arch(tmp_path):
    from training.seg.model import build_transfer_unet

    path = tmp_path / "r18.pth.tar"
    trainer_checkpoint(path, "resnet18")
    with pytest.raises(EncoderLoadError, match=r"model\.encoder is resnet50 but the checkpoint was trained with arch resnet18") as error:
        build_transfer_unet(1, path, encoder="resnet50")
    assert str(path) in str(error.value)
    # loading it into a U-Net of another encoder directly: the strict check lists what does not fit
    with pytest.raises(EncoderLoadError) as error:
        load_encoder(build_unet(1, "resnet34"), path)
    message = str(error.value)
    assert "encoder does not match U-Net resnet34 (1 channel) (checkpoint arch resnet18)" in message
    assert "missing keys: layer1.2.bn1.bias" in message


def test_arch_that_lies_about_keys_and_unknown_arch_are_errors(tmp_path):
    from training.seg.model import build_transfer_unet

    path = tmp_path / "lying.pth.tar"
    trainer_checkpoint(path, "resnet18")
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "arch": "resnet50"}, path)
    with pytest.raises(EncoderLoadError, match="shape mismatches: .*conv1.weight: checkpoint"):
        build_transfer_unet(1, path)
    torch.save({**checkpoint, "arch": "resnet101"}, path)
    with pytest.raises(EncoderLoadError, match="checkpoint arch 'resnet101' has no U-Net encoder"):
        build_transfer_unet(1, path)


def test_checkpoint_without_arch_is_read_off_its_keys(tmp_path):
    from training.seg.model import build_transfer_unet, unet_encoder

    path = tmp_path / "noarch.pth.tar"
    trainer_checkpoint(path, "resnet34", with_arch=False)
    model, _ = build_transfer_unet(1, path)
    assert unet_encoder(model) == "resnet34"


def test_seg_config_encoder_and_saved_model_round_trip(tmp_path):
    from training.seg.config import parse_seg_config
    from training.seg.train import load_trained, prepare_model

    path = tmp_path / "r18.pth.tar"
    trainer_checkpoint(path, "resnet18")
    base = {"name": "t", "output_dir": str(tmp_path / "out"), "data": {"layout": "folders2d", "root": ".", "train": {"images": "x"}},
            "train": {"iterations": 1, "crop_size": 64}}
    config = parse_seg_config({**base, "model": {"init": "checkpoint", "checkpoint": str(path)}})
    model, norms, frozen = prepare_model(config)
    assert norms == (0.5, 0.25) and frozen == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    random_config = parse_seg_config({**base, "model": {"encoder": "resnet34"}})
    from training.seg.model import unet_encoder

    assert unet_encoder(prepare_model(random_config)[0]) == "resnet34"
    assert unet_encoder(prepare_model(parse_seg_config(base))[0]) == "resnet50"
    wrong = parse_seg_config({**base, "model": {"init": "checkpoint", "checkpoint": str(path), "encoder": "resnet50"}})
    with pytest.raises(EncoderLoadError, match="model.encoder is resnet50 .* arch resnet18"):
        prepare_model(wrong)
    saved = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "num_classes": 1, "encoder": unet_encoder(model), "norms": [0.5, 0.25]}, saved)
    loaded, _ = load_trained(saved)
    assert unet_encoder(loaded) == "resnet18"
