"""Downstream staleness: a stage table computed from an older catalog (or upstream table) is reported stale,
export and filter refuse it naming the stage and counts, and `cem status` prints every stage's state."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cem_pipeline.cli import app
from cem_pipeline.core.catalog import CATALOG_SCHEMA, catalog_dir, read_table, write_stage_part
from cem_pipeline.core.config import ClusterConfig, ExportConfig, parse_config
from cem_pipeline.core.freshness import StaleStageError, downstream_states, record_inputs, require_fresh, table_state
from cem_pipeline.export.select import ExportError, select_patches
from cem_pipeline.filter.stage import FilterError, run_filter
from cem_pipeline.ingest.graph import ingest_state, run_ingest


def _catalog_part(workdir, volume: str, ids: range) -> None:
    n = len(ids)
    frame = pd.DataFrame({
        "patch_id": np.array(ids, np.int64), "dataset": "a", "volume": f"a/{volume}", "source_file": f"{volume}.tif",
        "axis": "xy", "slice": np.arange(n, dtype=np.int32), "y": np.zeros(n, np.int32), "x": np.zeros(n, np.int32),
        "h": np.full(n, 224, np.int32), "w": np.full(n, 224, np.int32), "dhash": np.arange(n, dtype=np.uint64),
        "mean": np.zeros(n, np.float32), "std": np.ones(n, np.float32),
    })
    path = catalog_dir(workdir) / "dataset=a" / f"{volume}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=CATALOG_SCHEMA, preserve_index=False), path)


def _dedup(workdir, ids, record: bool = True) -> None:
    ids = np.array(ids, np.int64)
    write_stage_part(workdir, "dedup", "a", pd.DataFrame({
        "patch_id": ids, "cluster_id": ids, "is_exemplar": ids % 2 == 0, "distance_to_leader": np.zeros(len(ids), np.int32)}))
    if record:
        record_inputs(workdir, "dedup")


def _score(workdir, ids) -> None:
    write_stage_part(workdir, "score", "a", pd.DataFrame({"patch_id": np.array(ids, np.int64), "score": 0.9, "informative": True}))
    record_inputs(workdir, "score")


def test_dedup_of_an_older_catalog_is_stale_and_refused(tmp_path):
    _catalog_part(tmp_path, "v1", range(10))
    _dedup(tmp_path, range(10))
    assert table_state(tmp_path, "dedup").state == "fresh"
    select_patches(tmp_path, ExportConfig(), 0)  # fresh: no error

    _catalog_part(tmp_path, "v2", range(10, 30))  # a volume ingested after dedup ran
    state = table_state(tmp_path, "dedup")
    assert state.state == "stale"
    assert state.reasons == ("computed from an older catalog", "20 catalog patches have no row")
    with pytest.raises(ExportError, match=r"export: stage 'dedup' .* is stale: .*20 catalog patches have no row; re-run `cem dedup`"):
        select_patches(tmp_path, ExportConfig(), 0)
    with pytest.raises(StaleStageError, match=r"^filter: stage 'dedup'"):
        require_fresh(tmp_path, "dedup", "filter")
    with pytest.raises(FilterError, match=r"^filter: stage 'dedup' .*20 catalog patches have no row"):
        run_filter(parse_config({"workdir": str(tmp_path)}), "random_forest")


def test_rows_of_removed_patches_make_an_unrecorded_table_stale(tmp_path):
    _catalog_part(tmp_path, "v1", range(10))
    _dedup(tmp_path, range(14), record=False)  # written without a record: the patch_id check alone
    state = table_state(tmp_path, "dedup")
    assert (state.state, state.reasons) == ("stale", ("4 rows for patches no longer in the catalog",))


def test_score_and_export_follow_their_upstream(tmp_path):
    _catalog_part(tmp_path, "v1", range(10))
    _dedup(tmp_path, range(10))
    _score(tmp_path, range(0, 10, 2))  # the exemplars
    write_stage_part(tmp_path, "export", "patches", pd.DataFrame({
        "patch_id": np.arange(0, 10, 2, dtype=np.int64), "exported": True, "export_row": np.arange(5), "export_file": "p.beton"}))
    record_inputs(tmp_path, "export")
    assert [s.state for s in downstream_states(tmp_path)] == ["fresh", "fresh", "fresh"]

    _dedup(tmp_path, range(10))  # dedup recomputed after filter and export
    dedup, score, export = downstream_states(tmp_path)
    assert dedup.state == "fresh"
    assert (score.state, score.reasons) == ("stale", ("computed from an older dedup",))
    assert export.state == "stale" and "upstream filter is stale" in export.reasons
    with pytest.raises(ExportError, match=r"stage 'score' .* computed from an older dedup; re-run `cem filter`"):
        select_patches(tmp_path, ExportConfig(), 0)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from cem_pipeline.core.cluster import open_client

    with open_client(ClusterConfig(n_workers=1, memory_limit="2GiB"), tmp_path_factory.mktemp("logs")) as c:
        yield c


def _status(config_path) -> list[str]:
    result = CliRunner().invoke(app, ["status", str(config_path)])
    assert result.exit_code == 0, result.output
    return [line.split()[:2] for line in result.output.splitlines()[1:]]


def test_status_after_a_source_changes(tmp_path, client):
    image = tmp_path / "img.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (300, 300), dtype=np.uint8)).save(image)
    data = {"workdir": str(tmp_path / "work"), "ingest": {"sources": [{"name": "a", "path": str(image)}]}}
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = parse_config(data)
    assert ingest_state(config).state == "missing"

    run_ingest(config, client, progress=False)
    ids = read_table(config.workdir, ["patch_id"])["patch_id"]
    _dedup(config.workdir, ids)
    assert _status(config_path) == [["ingest", "fresh"], ["dedup", "fresh"], ["filter", "missing"], ["export", "missing"]]

    Image.fromarray(rng.integers(0, 255, (300, 300), dtype=np.uint8)).save(image)  # new content, same patch_ids
    assert ingest_state(config).reasons == ("1 volumes new or changed",)
    assert _status(config_path)[:2] == [["ingest", "stale"], ["dedup", "fresh"]]
    run_ingest(config, client, progress=False)
    assert _status(config_path)[:2] == [["ingest", "fresh"], ["dedup", "stale"]]
    assert table_state(config.workdir, "dedup").reasons == ("computed from an older catalog",)


def test_status_reports_a_failed_source_as_failed_until_its_file_changes(tmp_path, client):
    """Right after a run with a bad source, ingest is fresh (the failure is known, errors.parquet names it);
    once the bad file is replaced, the re-run has news to process: stale."""
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 300), dtype=np.uint8)).save(good)
    bad.write_text("not an image")
    data = {"workdir": str(tmp_path / "work"),
            "ingest": {"sources": [{"name": "good", "path": str(good)}, {"name": "bad", "path": str(bad)}]}}
    config = parse_config(data)
    summary = run_ingest(config, client, progress=False)
    assert len(summary.errors) == 1
    state = ingest_state(config)
    assert state.state == "fresh" and state.counts["failed (errors.parquet)"] == 1 and state.counts["up to date"] == 1

    Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 300), dtype=np.uint8)).save(bad)
    state = ingest_state(config)
    assert state.state == "stale" and state.reasons == ("1 volumes new or changed",)
    assert state.counts["failed (errors.parquet)"] == 0
