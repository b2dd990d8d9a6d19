"""`cem demo`, the README's main command, end to end: generated corpus -> ingest -> dedup -> label ->
train-filter -> filter -> export, on a LocalCluster, with every stage's output checked."""
import json

import pandas as pd
from typer.testing import CliRunner

from cem_pipeline.cli import app
from cem_pipeline.core.catalog import read_catalog


def test_demo_runs_every_stage(tmp_path):
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert "demo finished" in result.output

    patches = read_catalog(workdir)
    assert len(patches) > 500 and set(patches["axis"]) == {"xy", "xz", "yz"}
    errors = pd.read_parquet(workdir / "errors.parquet")
    assert len(errors) == 4 and errors["reason"].str.len().min() > 10  # the four deliberately bad files

    exemplars = patches[patches["is_exemplar"].fillna(False).astype(bool)]
    assert 0 < len(exemplars) < len(patches)
    assert exemplars["score"].notna().all()
    exported = patches[patches["exported"].fillna(False).astype(bool)]
    kept = exemplars[exemplars["informative"].astype(bool)]
    assert set(exported["patch_id"]) == set(kept["patch_id"]) and len(exported) > 0

    meta = json.loads((workdir / "export" / "demo.json").read_text())
    assert 0 < meta["mean"] < 1 and meta["std"] > 0
    training = json.loads((workdir / "reports" / "filter_train_resnet34.json").read_text())
    assert training["auroc"] > 0.8
    for report in ("dedup_montage.png", "filter_roc_resnet34.png", "filter_kept_dropped.png"):
        assert (workdir / "reports" / report).stat().st_size > 10_000
