"""Config loading: typed, strict, with errors that name the key and what is allowed."""
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cem_pipeline.cli import app
from cem_pipeline.core.config import ConfigError, dump_config, load_config, parse_config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "cem_pipeline" / "configs").glob("*.yaml") if p.name != "sources.yaml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cem.yaml"
    path.write_text(text)
    return path


def test_defaults_are_local_and_loopback():
    config = load_config(None)
    assert config.cluster.kind == "local"
    assert config.cluster.dashboard_address.startswith("127.0.0.1:")
    assert config.dedup.distance == 12 and config.dedup.rule == "le"
    assert config.workdir.is_absolute()


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    path = write(tmp_path, "cluster:\n  kind: local\n  n_wrokers: 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert "cluster.n_wrokers" in message and str(path) in message
    assert "n_workers" in message and "threads_per_worker" in message


def test_bad_value_names_allowed_values(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, "cluster:\n  kind: slrum\n"))
    message = str(excinfo.value)
    assert "cluster.kind" in message and "'slurm'" in message and "'local'" in message and "slrum" in message


def test_bad_dataset_name_and_type_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.name"):
        parse_config({"ingest": {"sources": [{"name": "a/b", "path": "x"}]}})
    with pytest.raises(ConfigError, match=r"dedup\.distance"):
        parse_config({"dedup": {"distance": 65}})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "cluster: [\n"))


def test_manifest_path_resolves_next_to_config(tmp_path):
    config = load_config(write(tmp_path, "ingest:\n  sources: sources.yaml\nworkdir: $HOME/w\n"))
    assert config.ingest.sources == str(tmp_path / "sources.yaml")
    assert "$HOME" not in str(config.workdir)


def test_dump_round_trips():
    config = load_config(None)
    import yaml

    assert parse_config(yaml.safe_load(dump_config(config))) == config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load_and_show(path):
    load_config(path)
    result = CliRunner().invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert "cluster:" in result.output


def test_config_show_reports_bad_key(tmp_path):
    result = CliRunner().invoke(app, ["config", "show", str(write(tmp_path, "dedup:\n  distnce: 3\n"))])
    assert result.exit_code == 2
    assert "dedup.distnce" in result.output


@pytest.mark.parametrize("voxel", [[40, -5.9, -5.9], [0, 5, 5], [40, ".nan", 5], [".inf", 5, 5]])
def test_non_positive_or_non_finite_voxel_size_is_rejected(tmp_path, voxel):
    text = f"ingest:\n  sources:\n    - {{name: a, path: a.tif, voxel_size: [{', '.join(str(v) for v in voxel)}]}}\n"
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.voxel_size: .*finite number > 0"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("selection", ["is_exemplar AND informative", "dataset IN ('a', 'b') AND h = 224 AND score > 0.5"])
def test_selection_accepts_one_boolean_expression(selection):
    assert parse_config({"export": {"selection": selection}}).export.selection == selection


@pytest.mark.parametrize("selection, reason", [
    ("true) UNION (SELECT 1", "one boolean expression"),
    ("true) LIMIT (1", "one boolean expression"),
    ("dataset IN (SELECT dataset FROM read_csv('/etc/passwd'))", "subqueries are not allowed"),
    ("score >", "not a valid SQL expression"),
])
def test_selection_rejects_anything_but_one_expression(selection, reason):
    with pytest.raises(ConfigError, match=rf"export\.selection: .*{reason}"):
        parse_config({"export": {"selection": selection}})


def test_selection_with_statements_writes_no_file(tmp_path):
    """The attack of issue 14 item 4: DuckDB would run the COPY; the config is refused before any SQL runs."""
    target = tmp_path / "pwned.csv"
    selection = f"true; COPY (SELECT 'x') TO '{target}' (FORMAT csv); SELECT * FROM patches WHERE true"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), "export": {"selection": selection}}))
    result = CliRunner().invoke(app, ["export", str(config)])
    assert result.exit_code == 2
    assert "export.selection" in result.output and "';'" in result.output
    assert not target.exists()


def test_manifest_file_with_unknown_key_fails_before_any_cluster_starts(tmp_path):
    """The same message quality as an inline source (file, source number, key, allowed keys), and no cluster:
    a typo must not cost a SLURM allocation."""
    (tmp_path / "m.yaml").write_text("- name: a\n  path: a.png\n  colour: red\n")
    config = write(tmp_path, f"workdir: {tmp_path / 'w'}\ningest: {{sources: {tmp_path / 'm.yaml'}}}\n")
    result = CliRunner().invoke(app, ["ingest", str(config), "--no-progress"])
    assert result.exit_code == 2
    assert f"{tmp_path / 'm.yaml'}: source 1: unknown key 'colour'; allowed keys here: " in result.output
    assert "voxel_size" in result.output and "pydantic" not in result.output
    assert not (tmp_path / "w" / "logs" / "jobs").exists() and not (tmp_path / "w" / ".cem.lock").exists()
