"""The transfer experiment's table maths (sample std, paired differences, verdicts, n = 1), its Markdown
(no absolute paths), and its config checks (errors name the file and key before any work starts)."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cem_pipeline.core.config import ConfigError
from cem_pipeline.experiment.config import deep_merge, load_experiment
from cem_pipeline.experiment.table import (
    Stats,
    describe,
    format_stats,
    paired_differences,
    render_markdown,
    task_summary,
    verdict,
)


def rows(task: str, values: dict[str, list[float | None]]) -> list[dict]:
    return [{"task": task, "condition": condition, "seed": seed, "mean_iou": value}
            for condition, per_seed in values.items() for seed, value in enumerate(per_seed)]


def test_describe_is_mean_and_sample_std_and_skips_missing_values() -> None:
    stats = describe([0.5, 0.6, None, 0.7, float("nan")])
    assert stats.n == 3 and stats.mean == pytest.approx(0.6) and stats.std == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert describe([0.4]) == Stats(0.4, None, 1)
    assert describe([None]) == Stats(None, None, 0)


def test_formats_show_n_and_na_for_a_single_value() -> None:
    assert format_stats(Stats(0.51234, 0.0101, 3)) == "0.512 ± 0.010 (n=3)"
    assert format_stats(Stats(0.4, None, 1)) == "0.400 ± n/a (n=1)"
    assert format_stats(Stats(None, None, 0)) == "n/a"
    assert format_stats(Stats(-0.0001, 0.01, 2), signed=True) == "+0.000 ± 0.010 (n=2)"


def test_paired_differences_use_only_seeds_both_conditions_have() -> None:
    diffs = paired_differences({0: 0.5, 1: 0.6, 2: None, 4: 0.1}, {0: 0.4, 1: 0.4, 2: 0.3, 3: 0.2})
    assert list(diffs) == [0, 1] and diffs[0] == pytest.approx(0.1) and diffs[1] == pytest.approx(0.2)


def test_summary_pairs_by_seed_and_the_verdict_follows_the_spread() -> None:
    finetune = rows("mito", {"random": [0.30, 0.40, 0.35], "curated": [0.40, 0.51, 0.44], "raw": [0.39, 0.53, 0.425]})
    summary = task_summary(finetune, "mito", ["random", "curated", "raw"])
    versus_random = summary["differences"]["curated-random"]
    assert versus_random["per_seed"] == pytest.approx({"0": 0.10, "1": 0.11, "2": 0.09})
    assert versus_random["std"] == pytest.approx(0.01)  # the std of paired differences, not of either condition
    assert summary["conditions"]["curated"]["std"] == pytest.approx(statistics.stdev([0.40, 0.51, 0.44]))
    sentence = verdict("mito", summary)
    assert "curated beats random (curated - random = +0.100 ± 0.010 (n=3): larger than the seed spread)" in sentence
    assert "it does not measurably differ from raw (curated - raw = +0.002 ± 0.019 (n=3): within the seed spread, " \
           "not a measured difference)" in sentence
    worse = task_summary(rows("t", {"random": [0.5, 0.6], "curated": [0.3, 0.41], "raw": [0.3, 0.4]}), "t", ["random", "curated", "raw"])
    assert "curated is worse than random" in verdict("t", worse)
    single = task_summary(rows("t", {"random": [0.5], "curated": [0.6], "raw": [0.4]}), "t", ["random", "curated", "raw"])
    assert "one seed, no spread to judge it by" in verdict("t", single)
    assert "curated does not measurably differ from random" in verdict("t", single)


def synthetic_results(tmp_path: Path) -> dict:
    finetune = rows("mito", {"random": [0.3], "curated": [0.4], "raw": [0.35]})
    for row in finetune:
        row["settings"] = {"output_dir": str(tmp_path / "out"), "data": {"root": "/abs/data"}}
    summary = {"mito": task_summary(finetune, "mito", ["random", "curated", "raw"])}
    pretrain = [{"corpus": c, "seed": 0, "epoch": 8, "steps": 240, "summary": {"loss": 4.2, "batch_acc1": 11.0, "emb_std": 0.4,
                 "knn_acc": None}, "settings": {"data": {"beton": str(tmp_path / "x.beton")}}} for c in ("curated", "raw")]
    return {
        "name": "t", "config": "cem_pipeline/experiment/configs/transfer_cpu.yaml", "created": "2026-12-02 00:00 UTC",
        "git": {"commit": "0123456789abcdef", "dirty": False}, "seeds": [0], "conditions": ["random", "curated", "raw"],
        "machine": {"cpu_model": "CPU", "cores": 2, "usable_cores": 2, "torch_threads": 2, "moco_threads": 2, "seg_threads": "mito=2",
                    "gpu": "none"},
        "wall_seconds": {"units": 3725.0, "invocation": 12.0, "ran": 3, "skipped": 9},
        "curate": {"seconds": 1.0, "corpora": {"curated": {"export": "real", "patches": 970, "beton": "cem-work/x/real.beton"},
                                               "raw": {"export": "real-raw", "patches": 1296, "beton": "cem-work/x/real-raw.beton"}}},
        "pretrain": pretrain, "finetune": finetune, "summary": summary,
        "tasks": [{"name": "mito", "config": "training/seg/configs/cdeep3m_mito_mocov2.yaml", "eval_items": 10}],
    }


def test_markdown_has_the_numbers_and_no_absolute_paths(tmp_path: Path) -> None:
    table = render_markdown(synthetic_results(tmp_path))
    assert "1 h 02 min of work over all units" in table
    assert "| curated | 0.400 ± n/a (n=1) | 0.400 | +0.100 ± n/a (n=1) |" in table
    assert "| random | 0.300 ± n/a (n=1) | 0.300 | — |" in table
    assert "| curated | `real` | 970 | 8 | 240 | 4.200 ± n/a (n=1) | 11.0 ± n/a (n=1) | 0.400 ± n/a (n=1) | n/a |" in table
    assert str(tmp_path) not in table
    assert not re.search(r"(^|[\s(`'\"])/[A-Za-z]", table)


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    """An experiment whose task config does not validate."""
    Image.fromarray(np.zeros((224, 224), np.uint8)).save(tmp_path / "image.png")
    write(tmp_path / "cem.yaml", {"workdir": str(tmp_path / "work"),
                                  "ingest": {"sources": [{"name": "one", "path": str(tmp_path / "image.png")}]}})
    write(tmp_path / "moco.yaml", {"data": {"beton": "x.beton"}, "model": {"arch": "resnet18"}})
    write(tmp_path / "seg.yaml", {"name": "s", "output_dir": "o", "data": {"layout": "folders2d", "root": "r", "train": {"images": "i"}},
                                  "train": {"iterations": 1, "crop_size": 64, "colour": 1}})
    (tmp_path / "sub").mkdir()
    return write(tmp_path / "sub" / "experiment.yaml", {
        "name": "e", "output_dir": "out", "seeds": [0, 1],
        "corpus": {"pipeline": "../cem.yaml"}, "pretrain": {"config": "../moco.yaml"},
        "tasks": [{"name": "t", "config": "../seg.yaml"}],
    })


def test_a_task_config_that_does_not_validate_names_its_file_and_key(minimal: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_experiment(minimal)
    message = str(error.value)
    assert str(minimal.parent.parent / "seg.yaml") in message and "train.colour" in message
    assert not (minimal.parent / "out").exists()


def test_missing_files_and_per_run_overrides_are_errors(minimal: Path) -> None:
    settings = yaml.safe_load(minimal.read_text())
    write(minimal, deep_merge(settings, {"tasks": [{"name": "t", "config": "../absent.yaml"}]}))
    with pytest.raises(ConfigError, match=r"tasks\[t\]\.config: .*absent\.yaml does not exist"):
        load_experiment(minimal)
    write(minimal, deep_merge(settings, {"pretrain": {"overrides": {"output": {"dir": "elsewhere"}}}}))
    with pytest.raises(ConfigError, match=r"pretrain\.overrides: 'output\.dir' cannot be overridden"):
        load_experiment(minimal)
    write(minimal, deep_merge(settings, {"tasks": [{"name": "t", "config": "../seg.yaml", "overrides": {"model": {"init": "random"}}}]}))
    with pytest.raises(ConfigError, match=r"'model\.init' cannot be overridden"):
        load_experiment(minimal)
    write(minimal.parent.parent / "cem.yaml", {"ingest": {"sources": [{"name": "gone", "path": "/absent/*.png"}]}})
    with pytest.raises(ConfigError, match=r"cem\.yaml: source 'gone': /absent/\*\.png: the glob matches no files"):
        load_experiment(minimal)
    write(minimal, deep_merge(settings, {"seeds": [1, 1]}))
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        load_experiment(minimal)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["transfer_cpu", "transfer_gpu"])
def test_the_shipped_configs_validate(name: str, shared_em: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both read ../shared (the seg configs' data.root is relative to the repository root, run from there)."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    experiment = load_experiment(repo / "cem_pipeline" / "experiment" / "configs" / f"{name}.yaml")
    assert len(experiment.seeds) >= 3 and [t.name for t in experiment.tasks] == ["cdeep3m_mito", "isbi2012_membranes"]
    assert experiment.arch == ("resnet18" if name == "transfer_cpu" else "resnet50")
