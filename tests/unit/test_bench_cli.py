"""`cem bench`: where the real EM is looked up, the errors when it is missing, `cem bench all`'s
commands, and the BENCHMARKS.md writer. Nothing here runs a real benchmark."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cem_pipeline.bench import em_data, markdown, suite
from cem_pipeline.bench.errors import EmDataNotFound
from cem_pipeline.bench.machine import machine_info, machine_key, machine_summary
from cem_pipeline.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_env(monkeypatch):
    for variable in em_data.ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_lookup_order(no_env, tmp_path):
    assert em_data.locate_em_data()[0] == REPO.parent / "shared" / "data" / "em"
    no_env.setenv("CEM_SHARED_EM", str(tmp_path / "old"))
    assert em_data.locate_em_data() == (tmp_path / "old", "$CEM_SHARED_EM")
    no_env.setenv("CEM_EM_DATA", str(tmp_path / "new"))
    assert em_data.locate_em_data() == (tmp_path / "new", "$CEM_EM_DATA")
    assert em_data.locate_em_data(tmp_path / "given") == (tmp_path / "given", "--data")


def test_missing_or_empty_folder_is_a_clear_error(no_env, tmp_path):
    with pytest.raises(EmDataNotFound, match="does not exist; pass --data PATH or set CEM_EM_DATA=PATH") as missing:
        em_data.require_em_data(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(missing.value)
    (tmp_path / "empty").mkdir()
    no_env.setenv("CEM_EM_DATA", str(tmp_path / "empty"))
    with pytest.raises(EmDataNotFound, match=r"\(\$CEM_EM_DATA\) is empty"):
        em_data.require_em_data()
    (tmp_path / "empty" / "README.md").write_text("x")
    assert em_data.require_em_data() == tmp_path / "empty"


@pytest.mark.parametrize("args", [["dhash"], ["ingest"], ["export"], ["loader"], ["mocov2"], ["infer"], ["all"],
                                  ["dhash", "--em-root"]])
def test_bench_without_data_exits_2_naming_the_path(no_env, tmp_path, args):
    missing = tmp_path / "no-em-here"
    option = args[1:] or ["--data"]
    result = CliRunner().invoke(app, ["bench", args[0], *option, str(missing)])
    assert result.exit_code == 2, result.output
    assert str(missing) in result.output and "--data PATH" in result.output


def test_bad_sources_exit_2(tmp_path):
    (tmp_path / "x").write_text("")
    result = CliRunner().invoke(app, ["bench", "export", "--data", str(tmp_path), "--sources", "nope"])
    assert result.exit_code == 2 and "unknown shared source" in result.output
    assert em_data.source_names("cdeep3m_test, fei") == ["cdeep3m_test", "fei"]
    assert em_data.source_names(None) == [name for name, _ in em_data.SHARED_SOURCES]


@pytest.mark.parametrize("quick", [False, True])
def test_suite_commands_parse(quick, tmp_path):
    """Every command `cem bench all` runs is one the CLI accepts (checked by click's parser, not run)."""
    group = typer.main.get_command(app)
    bench_group = group.commands["bench"]
    assert [b.name for b in suite.BENCHES] == [n for n in bench_group.commands if n != "all"]
    for bench in suite.BENCHES:
        args = suite.command_for(bench, quick, tmp_path)
        assert args[:3] == ["bench", bench.name, "--json"]
        assert ("--data" in args) == bench.needs_data
        ctx = bench_group.commands[bench.name].make_context(bench.name, list(args[2:]))
        assert ctx.params["as_json"]


def test_module_entry_point_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "cem_pipeline.cli", "bench", "--help"], capture_output=True,
                            text=True, cwd=REPO, check=True)
    assert "all" in result.stdout


def _run(name: str, result: dict | None, machine: dict, error: str = "") -> suite.Run:
    return suite.Run(name, f"cem bench {name} --json", "2026-12-01 20:00 UTC", 1.5, result, 1 if error else 0, error, machine)


def test_markdown_sections(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nhand-written text\n")
    here = machine_info()
    dedup = {"baseline_per_s": 100.0, "ours_per_s": 37700.0, "ratio": 377.0, "cemraw_baseline_per_s": 90.0,
             "cemraw_ours_per_s": 340000.0, "cemraw_ratio": 3777.0, "note": "a --> b"}
    markdown.write_runs(path, [_run("dedup", dedup, here), _run("dhash", None, here, "exit code 1")], False,
                        Path("/em"), "cem bench all --markdown", True)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text\n")
    assert "| dedup | hashes/s | 100 | 37,700 | 377.00x |" in text
    assert "| dedup cemraw | hashes/s | 90 | 340,000 | 3777.00x |" in text
    assert "| dhash | patches/s | failed | failed | - |" in text and "**Failed**: exit code 1." in text
    assert machine_summary(here) in text and "`cem bench dedup --json`" in text.replace("```bash\n", "`").replace("\n```", "`")

    # one benchmark again: only its entry changes; the section is rewritten in place, not appended
    markdown.write_runs(path, [_run("dhash", {"baseline_per_s": 4000.0, "ours_per_s": 200000.0, "ratio": 50.0}, here)],
                        False, None, "cem bench dhash --markdown", False)
    text = path.read_text()
    assert text.count(markdown.END) == 1 and "| dhash | patches/s | 4,000 | 200,000 | 50.00x |" in text
    # the data folder is named relative to the written file, never as this machine's absolute path
    relative = os.path.relpath("/em", tmp_path.resolve())
    assert "| dedup | hashes/s |" in text and f"Real EM: `{relative}`" in text and "`/em`" not in text
    assert text.index("#### dhash") < text.index("#### dedup")  # the pipeline's order, whatever the write order

    # a quick run and another machine get sections of their own; `bench all` rewrites its section whole
    other = {**here, "cpu_model": "Other CPU"}
    markdown.write_runs(path, [_run("score", {"baseline_per_s": 1.0, "ours_per_s": 3.0, "ratio": 3.0}, other)], False,
                        None, "x", False)
    markdown.write_runs(path, [_run("score", {"baseline_per_s": 1.0, "ours_per_s": 2.0, "ratio": 2.0}, here)], True,
                        Path("/em"), "x", True)
    markdown.write_runs(path, [_run("score", {"baseline_per_s": 1.0, "ours_per_s": 2.0, "ratio": 2.0}, here)], False,
                        Path("/em"), "x", True)
    text = path.read_text()
    keys = [json.loads(m.group(1))["key"] for m in markdown.SECTION.finditer(text)]
    assert keys == [machine_key(here), machine_key(other), machine_key(here) + " (quick)"]
    assert "### dedup" not in text and text.count("### score") == 3


def test_single_bench_markdown_records_the_command(monkeypatch, tmp_path):
    from cem_pipeline.bench import dedup

    monkeypatch.setattr(dedup, "run", lambda *args: {"baseline_per_s": 10.0, "ours_per_s": 20.0, "ratio": 2.0})
    path = tmp_path / "B.md"
    result = CliRunner().invoke(app, ["bench", "dedup", "--json", "--hashes", "2000", "--sweep", "--markdown",
                                      "--markdown-file", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["ratio"] == 2.0
    text = path.read_text()
    assert "cem bench dedup --json --hashes 2000 --sweep\n" in text and "| dedup | hashes/s | 10 | 20 | 2.00x |" in text


def test_machine_info_names_the_vnni_kernel():
    info = machine_info()
    assert info["cores"] >= 1 and set(info["cpu_flags"]) == set(suite_flags())
    assert ("VNNI dHash kernel used" in machine_summary(info)) == info["vnni_dhash_kernel"]


def suite_flags():
    from cem_pipeline.bench.machine import CPU_FLAGS

    return CPU_FLAGS
