"""The `cem` command surface: every pipeline stage and benchmark is reachable from one entry point."""
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cem_pipeline.cli import app

PIPELINE = ["demo", "ingest", "catalog", "dedup", "label", "train-filter", "filter", "export",
            "train", "infer", "evaluate", "cluster", "config", "bench"]
BENCHES = ["ingest", "dhash", "dedup", "score", "loader", "export", "mocov2", "infer", "all"]


def _listed(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_help_lists_every_stage():
    output = _listed([])
    for name in PIPELINE:
        assert f" {name} " in output, name


def test_bench_and_train_subcommands():
    bench = _listed(["bench"])
    for name in BENCHES:
        assert f" {name} " in bench, name
    train = _listed(["train"])
    assert " mocov2 " in train and " seg " in train


def test_console_script_starts_without_heavy_imports():
    code = "import sys; from cem_pipeline.cli import app; print(sorted(m for m in ('torch', 'ffcv') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"
