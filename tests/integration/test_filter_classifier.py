"""The resnet34 patch classifier: released-layout weights, strict loading, fine-tune freezing, preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet34

from cem_pipeline.filter.classifier import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsError,
    augment,
    build_model,
    freeze_for_finetune,
    load_backbone,
    load_classifier,
    normalize,
    to_input,
)
from cem_pipeline.filter.scoring import prepare_model, score_images

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiles(cdeep3m_volume: np.ndarray) -> list[np.ndarray]:
    """Real SBEM patches: three 224 x 224 tiles and one 152 x 224 edge patch."""
    plane = cdeep3m_volume[0]
    return [plane[224 : 448, x : x + 224] for x in (0, 224, 448)] + [plane[800:952, 0:224]]


def released_layout(path, seed: int = 3) -> dict[str, torch.Tensor]:
    """What the authors published: torchvision resnet34 state_dict with fc = Linear(512, 1)."""
    torch.manual_seed(seed)
    model = resnet34(weights=None)
    model.fc = nn.Linear(512, 1)
    with torch.no_grad():  # untrained BatchNorm statistics give huge logits; keep scores off 0 / 1
        model.fc.weight.mul_(1e-3)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_released_layout_loads_and_scores_like_the_reference_pipeline(tmp_path, tiles):
    path = tmp_path / "patch_quality_classifier_nn.pth"
    state = released_layout(path)
    model = load_classifier(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    scores = score_images(prepare_model(model, torch.device("cpu")), tiles, 224, 4, torch.device("cpu"), bf16=False)
    assert scores.shape == (len(tiles),) and np.all((scores > 0.01) & (scores < 0.99)) and scores.std() > 0

    # the paper's preprocessing, per patch: gray -> 3 channels, resize to 224, ImageNet mean/std
    from PIL import Image
    from torchvision import transforms

    reference = transforms.Compose(
        [transforms.Resize((224, 224)), transforms.Grayscale(3), transforms.ToTensor(),
         transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    plain = resnet34(weights=None)
    plain.fc = nn.Linear(512, 1)
    plain.load_state_dict(state)
    with torch.no_grad():
        expected = torch.sigmoid(plain.eval()(torch.stack([reference(Image.fromarray(t)) for t in tiles[:3]]))).squeeze(1)
    np.testing.assert_allclose(scores[:3], expected.numpy(), atol=1e-4)


def test_bf16_autocast_scores_track_fp32(tiles):
    torch.manual_seed(0)
    model = prepare_model(build_model(), torch.device("cpu"))
    with torch.no_grad():  # a realistic logit range instead of random-init saturation
        model.fc.weight.mul_(1e-3)
    fp32 = score_images(model, tiles, 96, 8, torch.device("cpu"), bf16=False)
    bf16 = score_images(model, tiles, 96, 8, torch.device("cpu"), bf16=True)
    assert np.abs(fp32 - bf16).max() < 0.05
    assert fp32.std() > 0


def test_mismatched_files_are_clear_errors_naming_keys(tmp_path):
    imagenet_layout = tmp_path / "imagenet.pth"
    torch.save(resnet34(weights=None).state_dict(), imagenet_layout)
    with pytest.raises(WeightsError, match=r"imagenet\.pth.*shape mismatch: .*fc\.weight \(1000, 512\) != \(1, 512\)"):
        load_classifier(imagenet_layout)

    state = released_layout(tmp_path / "ok.pth")
    del state["layer4.2.conv2.weight"]
    state["head.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(WeightsError, match=r"missing keys: layer4\.2\.conv2\.weight; unexpected keys: head\.weight"):
        load_classifier(broken)

    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": state}, checkpoint)
    with pytest.raises(WeightsError, match="checkpoint.pth: expected a state_dict"):
        load_classifier(checkpoint)

    garbage = tmp_path / "notes.pth"
    garbage.write_text("not weights")
    with pytest.raises(WeightsError, match="notes.pth: not a PyTorch state_dict"):
        load_classifier(garbage)
    with pytest.raises(WeightsError, match="missing.pth: no such weights file"):
        load_classifier(tmp_path / "missing.pth")


def test_dataparallel_prefix_is_accepted(tmp_path):
    state = released_layout(tmp_path / "plain.pth")
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    assert torch.equal(load_classifier(path).fc.weight, state["fc.weight"])


def test_backbone_init_keeps_our_head_and_freezing_leaves_layer4_and_fc(tmp_path):
    torch.manual_seed(5)
    imagenet = resnet34(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "resnet34-imagenet.pth")
    model = load_backbone(build_model(), tmp_path / "resnet34-imagenet.pth")
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert model.fc.out_features == 1
    trainable = freeze_for_finetune(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("layer4.", "fc.")) for n in names)
    assert "fc.weight" in names and "layer4.0.conv1.weight" in names and "layer3.0.conv1.weight" not in names
    assert len(trainable) == len(names)


def test_preprocessing_resizes_edge_patches_and_normalises(tiles):
    batch = to_input(tiles, 64)
    assert batch.shape == (len(tiles), 1, 64, 64) and batch.dtype == torch.float32
    assert 0 <= float(batch.min()) and float(batch.max()) <= 1
    normalised = normalize(batch)
    assert normalised.shape == (len(tiles), 3, 64, 64)
    expected = (batch[:, 0] - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    torch.testing.assert_close(normalised[:, 2], expected)


def test_augmentations_are_seeded_in_range_and_change_patches(tiles):
    batch = to_input(tiles, 64)
    first = augment(batch.clone(), torch.Generator().manual_seed(1))
    again = augment(batch.clone(), torch.Generator().manual_seed(1))
    other = augment(batch.clone(), torch.Generator().manual_seed(2))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert first.shape == batch.shape and 0 <= float(first.min()) and float(first.max()) <= 1
    assert (first - batch).abs().flatten(1).amax(1).gt(0).sum() >= 3
