"""`cem train probe-set` on the real cdeep3m validation slices: a balanced probe Parquet, the same one the
trainer's default (training.moco.probe.cdeep3m_validation_probe) writes, and clear errors for bad inputs."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from cem_pipeline.cli import app
from training.moco.probe import PROBE_COLUMNS, cdeep3m_validation_probe, load_probe_set


def test_probe_set_from_folders_is_balanced_and_matches_the_default(shared_em, tmp_path):
    validation = shared_em / "cdeep3m_mito_sbem" / "validation"
    out = tmp_path / "probe.parquet"
    result = CliRunner().invoke(app, ["train", "probe-set", "--images", str(validation / "images"),
                                      "--masks", str(validation / "labels" / "mitos_3D.*.png"), "--out", str(out),
                                      "--per-class", "32", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "bank: label 0: 32, label 1: 32" in result.output and "query: label 0: 32, label 1: 32" in result.output
    table = pq.read_table(out).to_pydict()
    assert list(table) == PROBE_COLUMNS
    counts = Counter(zip(table["split"], table["label"]))
    assert counts == {("bank", 0): 32, ("bank", 1): 32, ("query", 0): 32, ("query", 1): 32}
    fraction, label = np.array(table["fraction"]), np.array(table["label"])
    assert (label == (fraction > 0.05)).all()
    assert set(table["slice"]) <= set(range(10)) and len(set(table["slice"])) > 1  # all ten slices paired in order
    assert all(len(b) == 224 * 224 for b in table["image"])
    reference = pq.read_table(cdeep3m_validation_probe(shared_em, tmp_path / "ref.parquet", per_class=32, seed=3))
    assert pq.read_table(out).equals(reference)
    probe = load_probe_set(out, 64, 0.5, 0.2)  # what the trainer's monitor reads
    assert probe.bank.shape == (64, 1, 64, 64) and probe.chance == 50.0


def test_probe_set_options_and_errors(shared_em, tmp_path):
    validation = shared_em / "cdeep3m_mito_sbem" / "validation"
    runner = CliRunner()
    out = tmp_path / "small.parquet"
    images = str(validation / "images" / "images.05[0-3].png")
    result = runner.invoke(app, ["train", "probe-set", "--images", images, "--masks", str(validation / "labels" / "mitos_3D.05[0-3].png"),
                                 "--out", str(out), "--patch", "128", "--stride", "128", "--threshold", "0.1", "--per-class", "8"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pydict()
    assert set(table["size"]) == {128} and set(table["slice"]) <= {0, 1, 2, 3}
    assert Counter(zip(table["split"], table["label"])) == {("bank", 0): 8, ("bank", 1): 8, ("query", 0): 8, ("query", 1): 8}

    result = runner.invoke(app, ["train", "probe-set", "--images", images, "--masks", str(validation / "labels"),
                                 "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "--images matched 4 files but --masks 10" in result.output
    result = runner.invoke(app, ["train", "probe-set", "--images", str(tmp_path / "nothing-*.png"), "--masks", images,
                                 "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "no image files" in result.output
    # the images as their own masks at threshold 1: no patch exceeds it, so only label 0 exists -- a warning
    result = runner.invoke(app, ["train", "probe-set", "--images", images, "--masks", images, "--out", str(tmp_path / "x.parquet"),
                                 "--threshold", "1.0"])
    assert result.exit_code == 0 and "warning: bank is not balanced" in result.output
    assert set(pq.read_table(tmp_path / "x.parquet").to_pydict()["label"]) == {0}
