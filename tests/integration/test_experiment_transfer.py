"""`cem experiment transfer` end to end on real EM, tiny: two cdeep3m training slices and two ISBI test
slices curated into a curated and a raw export, MoCoV2 ResNet18 (32-px views, 1 epoch) per corpus and
seed, a frozen-encoder U-Net (2 iterations) per condition and seed scored on one cdeep3m validation
slice. Then the incremental behaviour: a re-run skips every unit, a dry run runs nothing, a changed
task override redoes only that task's fine-tunes, a dropped seed removes its folders."""
from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cem_pipeline.cli import app
from cem_pipeline.core.catalog import read_catalog
from cem_pipeline.experiment.config import CONDITIONS, CORPORA, load_experiment
from cem_pipeline.experiment.runs import run_transfer

pytestmark = pytest.mark.shared_data

SEEDS = [0, 1]
CDEEP3M = "cdeep3m_mito_sbem"
ISBI = "isbi2012_drosophila_l1_vnc_sstem"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def experiment_files(root: Path, em: Path) -> Path:
    """The pipeline, MoCo and seg configs of the tiny experiment; returns the experiment YAML."""
    slices = root / "slices"  # copies, so that a test can rewrite a source file
    slices.mkdir()
    for name in ("images.010.png", "images.011.png"):
        shutil.copy(em / CDEEP3M / "training/images" / name, slices / name)
    sources = write_yaml(root / "sources.yaml", [
        {"name": "cdeep3m-train", "path": str(slices / "images.01[01].png")},
        {"name": "isbi-test", "path": str(em / ISBI / "test/image/[01].png")},
    ])
    write_yaml(root / "cem.yaml", {
        "workdir": str(root / "work"), "seed": 0,
        "cluster": {"kind": "local", "n_workers": 1, "threads_per_worker": 1, "memory_limit": "2GiB"},
        "ingest": {"sources": str(sources)}, "export": {"name": "tiny", "num_workers": 1},
    })
    write_yaml(root / "moco.yaml", {
        "data": {"beton": "set-per-run.beton", "crop_size": 32, "num_workers": 1},
        "model": {"arch": "resnet18", "queue_size": 16, "momentum": 0.99, "negatives": "queue+batch"},
        "optim": {"batch_size": 8, "epochs": 1, "schedule": "cosine"},
        "runtime": {"device": "cpu", "threads": 1},
        "output": {"dir": "set-per-run", "log_every": 1, "progress": False},
    })
    write_yaml(root / "mito.yaml", {
        "name": "tiny_mito", "output_dir": "set-per-run",
        "data": {"layout": "folders2d", "root": str(em / CDEEP3M), "mask_encoding": "nonzero",
                 "train": {"images": "training/images", "masks": "training/labels", "select": "0-1"},
                 "eval": {"images": "validation/images", "masks": "validation/labels", "select": "0"}},
        "model": {"num_classes": 1},
        "train": {"iterations": 2, "batch_size": 2, "crop_size": 64, "scale": [0.01, 0.04], "crop_nonempty_p": 0.8,
                  "threads": 1, "log_every": 1},
        "infer": {"mode": "2d", "batch_size": 1},
        "eval": {"overlays": 0},
    })
    return write_yaml(root / "experiment.yaml", experiment_settings(em))


def experiment_settings(em: Path, seeds: list[int] = SEEDS, iterations: int = 2) -> dict:
    """Relative paths on purpose: they resolve against the experiment YAML's folder."""
    return {
        "name": "tiny", "output_dir": "out", "seeds": seeds,
        "corpus": {"pipeline": "cem.yaml", "raw_export": "tiny-raw"},
        "pretrain": {"config": "moco.yaml", "overrides": {"optim": {"epochs": 1}},
                     "probe": {"images": str(em / CDEEP3M / "validation/images/images.05[01].png"),
                               "masks": str(em / CDEEP3M / "validation/labels/mitos_3D.05[01].png"), "per_class": 8}},
        "tasks": [{"name": "mito", "config": "mito.yaml", "overrides": {"train": {"iterations": iterations}}}],
    }


def unit_names(seeds: list[int]) -> dict[str, list[str]]:
    pretrain = [f"pretrain/{c}/seed{s}" for c in CORPORA for s in seeds]
    finetune = [f"finetune/mito/{c}/seed{s}" for c in CONDITIONS for s in seeds]
    return {"pretrain": pretrain, "finetune": finetune, "all": ["probe", "curate", *pretrain, *finetune]}


def done_stamps(out: Path) -> dict[str, int]:
    return {str(p.parent.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("done.json")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shared_em: Path) -> dict:
    root = tmp_path_factory.mktemp("experiment")
    config = experiment_files(root, shared_em)
    outcome = run_transfer(load_experiment(config), log=lambda line: None)
    out = root / "out"
    return {"root": root, "config": config, "out": out, "outcome": outcome,
            "results": json.loads((out / "results.json").read_text()), "table": (out / "table.md").read_text()}


def test_first_run_writes_every_unit_and_the_tables(first_run: dict) -> None:
    out, results, table = first_run["out"], first_run["results"], first_run["table"]
    assert first_run["outcome"].units("run") == unit_names(SEEDS)["all"]
    assert {(r["condition"], r["seed"]) for r in results["finetune"]} == {(c, s) for c in CONDITIONS for s in SEEDS}
    for row in results["finetune"]:
        assert 0 <= row["mean_iou"] <= 1
        assert [item["name"] for item in row["per_item"]] == ["images.050"]
        assert (out / row["dir"] / "model.pt").is_file() and (out / row["dir"] / "metrics.json").is_file()
        assert row["settings"]["seed"] == row["seed"] and row["settings"]["model"]["finetune_from"] == "none"
        assert row["settings"]["model"]["encoder"] == "resnet18"
    for row in results["pretrain"]:
        assert row["settings"]["runtime"]["seed"] == row["seed"]
        assert (out / row["checkpoint"]).is_file() and row["epoch"] == row["epochs"] == 1
        assert row["steps"] == row["patches"] // 8 and row["summary"]["knn_acc"] is not None
    curated, raw = (results["curate"]["corpora"][c]["patches"] for c in CORPORA)
    assert 0 < curated <= raw == len(read_catalog(first_run["root"] / "work"))  # raw: every ingested patch
    assert (out / "experiment.log").is_file()
    # every mean ± std in table.md is the one computed from results.json's rows
    for condition in CONDITIONS:
        values = [r["mean_iou"] for r in results["finetune"] if r["condition"] == condition]
        assert f"| {condition} | {statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n=2) |" in table
    differences = [c["mean_iou"] - r["mean_iou"] for c in results["finetune"] for r in results["finetune"]
                   if c["condition"] == "curated" and r["condition"] == "random" and c["seed"] == r["seed"]]
    assert f"{statistics.mean(differences):+.3f} ± {statistics.stdev(differences):.3f} (n=2)" in table
    assert "**mito**: curated" in table and "curated - raw = " in table
    assert str(first_run["root"]) not in table and str(Path.cwd()) not in table


def test_reruns_are_incremental(first_run: dict, shared_em: Path) -> None:
    config, out = first_run["config"], first_run["out"]
    names = unit_names(SEEDS)
    stamps = done_stamps(out)

    again = run_transfer(load_experiment(config), log=lambda line: None)
    assert again.units("skip") == names["all"] and not again.units("run") and not again.units("redo")
    results = json.loads((out / "results.json").read_text())
    for key in ("pretrain", "finetune", "curate", "summary"):
        assert results[key] == first_run["results"][key]
    assert done_stamps(out) == stamps
    assert "skip    finetune/mito/raw/seed1 (fingerprint matches)" in (out / "experiment.log").read_text()

    # --dry-run with a changed task override: says what it would redo, touches nothing
    write_yaml(config, experiment_settings(shared_em, iterations=3))
    dry = CliRunner().invoke(app, ["experiment", "transfer", str(config), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    for name in names["finetune"]:
        assert f"redo    {name} (fingerprint changed)" in dry.output
    for name in ["probe", "curate", *names["pretrain"]]:
        assert f"skip    {name} (fingerprint matches)" in dry.output
    assert done_stamps(out) == stamps

    changed = run_transfer(load_experiment(config), log=lambda line: None)
    assert changed.units("redo") == names["finetune"]
    assert changed.units("skip") == ["probe", "curate", *names["pretrain"]]
    results = json.loads((out / "results.json").read_text())
    assert {r["settings"]["train"]["iterations"] for r in results["finetune"]} == {3}
    assert results["pretrain"] == first_run["results"]["pretrain"]

    # a source file rewritten in place (same name and manifest): curate and everything after it would redo
    source = config.parent / "slices" / "images.011.png"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 1_000_000_000))
    dry = CliRunner().invoke(app, ["experiment", "transfer", str(config), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "redo    curate (fingerprint changed)" in dry.output
    assert all(f"pending {name}" in dry.output for name in names["pretrain"])
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns - 1_000_000_000))

    write_yaml(config, experiment_settings(shared_em, seeds=[0], iterations=3))
    dropped = run_transfer(load_experiment(config), log=lambda line: None)
    removed = [n for n in names["all"] if n.endswith("seed1")]
    assert sorted(dropped.units("remove")) == sorted(removed)
    assert dropped.units("skip") == unit_names([0])["all"]
    assert not any((out / name).exists() for name in removed)
    results = json.loads((out / "results.json").read_text())
    assert {r["seed"] for r in results["finetune"] + results["pretrain"]} == {0}
    assert "± n/a (n=1)" in (out / "table.md").read_text()
