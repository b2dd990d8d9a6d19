"""End to end on real EM: labels -> `cem train-filter` (resnet34, random forest) -> `cem filter` through Dask."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from filter_helpers import build_workdir, label_all
from PIL import Image
from torch import nn
from torchvision.models import resnet34
from typer.testing import CliRunner

from cem_pipeline.cli import app
from cem_pipeline.core.catalog import read_catalog
from cem_pipeline.filter.classifier import load_classifier
from cem_pipeline.filter.selection import filter_candidates

pytestmark = pytest.mark.shared_data
torch.set_num_threads(2)


def cem(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, cdeep3m_volume):
    root = tmp_path_factory.mktemp("filter")
    workdir, truth = build_workdir(root / "work", cdeep3m_volume)
    label_all(workdir, truth)
    config = root / "cem.yaml"
    config.write_text(yaml.safe_dump({
        "workdir": str(workdir.root),
        "cluster": {"n_workers": 1, "threads_per_worker": 2, "memory_limit": "3GiB"},
        "filter": {"input_size": 64, "epochs": 3, "train_batch_size": 32, "batch_size": 32, "part_size": 48,
                   "montage_per_class": 8},
    }))
    return workdir, truth, config


@pytest.fixture(scope="module")
def trained(labelled):
    workdir, _, config = labelled
    summaries = {}
    for kind in ("resnet34", "random_forest"):
        result = cem("train-filter", config, "--model", kind)
        assert result.exit_code == 0, result.output
        summaries[kind] = json.loads((workdir.reports / f"filter_train_{kind}.json").read_text())
    return summaries


def _png_is_a_picture(path) -> None:
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 10


@pytest.mark.parametrize("kind", ["resnet34", "random_forest"])
def test_classifiers_beat_chance_on_held_out_real_em(trained, kind):
    summary = trained[kind]
    assert summary["auroc"] > 0.8, summary
    assert summary["n_holdout"] == 34 and summary["holdout_informative"] == 19  # stratified 15 % of 128 + 96
    _png_is_a_picture(summary["roc_png"])


def test_trained_weights_are_in_the_released_layout(trained):
    model = load_classifier(trained["resnet34"]["model_path"])
    assert model.fc.out_features == 1


def test_random_forest_file_loads_without_pickle_and_foreign_files_are_refused(labelled, trained, tmp_path):
    """skops, not joblib: the saved forest round-trips, and a pickle or a skops file of other types is a WeightsError."""
    import pickle

    import skops.io

    from cem_pipeline.core.config import FilterConfig
    from cem_pipeline.core.patches import read_patches
    from cem_pipeline.filter.classifier import WeightsError
    from cem_pipeline.filter.models import ForestClassifier

    workdir, _, _ = labelled
    path = trained["random_forest"]["model_path"]
    assert path.endswith(".skops")
    forest = ForestClassifier(FilterConfig()).load(path)
    images = read_patches(workdir.store, filter_candidates(workdir.root)[0].head(6))
    scores = forest.score(images, batch_size=4)
    assert scores.shape == (6,) and scores.dtype == np.float32 and np.all((scores >= 0) & (scores <= 1))

    pickled = tmp_path / "forest.pkl"
    pickled.write_bytes(pickle.dumps(forest.forest))
    with pytest.raises(WeightsError, match="forest.pkl: not a skops random-forest patch classifier"):
        ForestClassifier(FilterConfig()).load(pickled)
    other = tmp_path / "other.skops"
    skops.io.dump({"model": pd.Timedelta(1)}, other)
    with pytest.raises(WeightsError, match="other.skops: not a skops random-forest patch classifier"):
        ForestClassifier(FilterConfig()).load(other)


def test_filter_scores_exemplars_through_dask_and_fills_the_catalog(labelled, trained):
    workdir, truth, config = labelled
    result = cem("filter", config)
    assert result.exit_code == 0, result.output
    assert "dedup exemplars" in result.output and "resin" in result.output and "cdeep3m" in result.output
    catalog = read_catalog(workdir.root).merge(truth, on="patch_id")
    exemplars = catalog[catalog["is_exemplar"]]
    assert exemplars["score"].notna().all() and catalog.loc[~catalog["is_exemplar"], "score"].isna().all()
    assert (exemplars["informative"] == (exemplars["score"] > 0.5)).all()
    accuracy = (exemplars["informative"] == (exemplars["label"] == "informative")).mean()
    assert accuracy > 0.8
    resin = exemplars[exemplars["dataset"] == "resin"]
    kept = int(resin["informative"].sum())
    assert f"{'resin':<32}{32:>10}{len(resin):>10}{kept:>10}{1 - kept / len(resin):>10.1%}" in result.output
    _png_is_a_picture(workdir.reports / "filter_kept_dropped.png")


def test_filter_accepts_the_authors_released_classifier_and_rejects_other_files(labelled, tmp_path):
    workdir, _, config = labelled
    released = resnet34(weights=None)
    released.fc = nn.Linear(512, 1)
    torch.save(released.state_dict(), tmp_path / "patch_quality_classifier_nn.pth")
    result = cem("filter", config, "--weights", tmp_path / "patch_quality_classifier_nn.pth")
    assert result.exit_code == 0, result.output
    catalog = read_catalog(workdir.root)
    assert catalog.loc[catalog["is_exemplar"], "score"].between(0, 1).all()

    imagenet = resnet34(weights=None).state_dict()
    del imagenet["layer4.1.bn2.running_var"]
    torch.save(imagenet, tmp_path / "resnet34-imagenet.pth")
    result = cem("filter", config, "--weights", tmp_path / "resnet34-imagenet.pth")
    assert result.exit_code == 2
    assert "resnet34-imagenet.pth" in result.output and "missing keys: layer4.1.bn2.running_var" in result.output
    assert "fc.weight (1000, 512) != (1, 512)" in result.output


def test_without_dedup_every_patch_is_a_candidate(tmp_path, cdeep3m_volume):
    workdir, truth = build_workdir(tmp_path / "work", cdeep3m_volume, non_exemplar_every=None)
    candidates, note = filter_candidates(workdir.root)
    assert len(candidates) == len(truth) and note.startswith("no dedup table")


def test_gpu_workers_get_gpu_tasks(labelled):
    """A worker advertising GPU=1 takes the CUDA path; on a machine without CUDA that is a clear error."""
    from distributed import Client, LocalCluster

    from cem_pipeline.core.config import FilterConfig
    from cem_pipeline.filter.classifier import build_model
    from cem_pipeline.filter.models import Resnet34Classifier
    from cem_pipeline.filter.scoring import score_catalog

    workdir, _, _ = labelled
    candidates, _ = filter_candidates(workdir.root)
    candidates = candidates.head(8)
    classifier = Resnet34Classifier(FilterConfig(input_size=64, cpu_bf16=False), build_model())
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as cluster, Client(cluster) as client:  # in-process: nothing listens
        call = lambda: score_catalog(client, workdir.root, workdir.store, candidates, classifier,  # noqa: E731
                                     8, 4, 0.5, gpu=True)
        if torch.cuda.is_available():
            assert len(call()) == 8
        else:
            with pytest.raises(RuntimeError, match="advertises GPU=1 but torch sees no CUDA device"):
                call()


def test_label_import_and_demo_truth_formats(labelled, tmp_path):
    from cem_pipeline.filter.labels import LabelsError, import_labels, read_labels

    workdir, truth, _ = labelled
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"patch_id": truth["patch_id"].head(3), "label": [1, 0, 1]}).to_csv(csv, index=False)
    merged = import_labels(tmp_path / "labels.parquet", csv)
    assert list(merged["label"]) == ["informative", "uninformative", "informative"]
    bad = tmp_path / "bad.csv"
    bad.write_text("patch_id,label\n1,maybe\n")
    with pytest.raises(LabelsError, match="bad.csv: unknown labels \\['maybe'\\]"):
        import_labels(tmp_path / "labels.parquet", bad)
    assert len(read_labels(tmp_path / "labels.parquet")) == 3


def test_training_is_seeded_and_reproducible(labelled):
    from cem_pipeline.core.config import FilterConfig
    from cem_pipeline.core.patches import read_patches
    from cem_pipeline.filter.classifier import train_classifier
    from cem_pipeline.filter.features import train_random_forest

    workdir, truth, _ = labelled
    sample = read_catalog(workdir.root).merge(truth, on="patch_id").iloc[::5]
    images = read_patches(workdir.store, sample)
    y = (sample["label"] == "informative").to_numpy(np.int64)
    config = FilterConfig(input_size=32, epochs=1, train_batch_size=16, holdout_fraction=0.3)
    for train in (train_classifier, train_random_forest):
        first, second = train(images, y, config), train(images, y, config)
        np.testing.assert_array_equal(first.y_score, second.y_score)
        np.testing.assert_array_equal(first.y_true, second.y_true)
