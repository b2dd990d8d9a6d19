"""The cluster launcher: a loopback LocalCluster by default, and real SLURM jobs through dask-jobqueue."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from cem_pipeline.core.cluster import (
    ClusterError,
    jobqueue_kwargs,
    make_cluster,
    open_client,
)
from cem_pipeline.core.config import ClusterConfig


def _queued_job_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_local_cluster_listens_on_loopback_only(tmp_path):
    with open_client(ClusterConfig(n_workers=2), tmp_path) as client:
        info = client.scheduler_info(n_workers=-1)
        addresses = [info["address"], *info["workers"]]
        assert len(info["workers"]) == 2
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
        assert "127.0.0.1" in client.dashboard_link
        assert client.submit(sum, [1, 2, 3]).result() == 6


def test_local_worker_resources(tmp_path):
    config = ClusterConfig(n_workers=1, worker_resources={"GPU": 1})
    with open_client(config, tmp_path) as client:
        assert client.submit(lambda: 42, resources={"GPU": 1}).result(timeout=60) == 42


def test_gpu_request_becomes_directive_and_resource(tmp_path):
    config = ClusterConfig(kind="slurm", gpus_per_worker=1, interface="lo", job_extra_directives=["--qos=high"])
    kwargs = jobqueue_kwargs(config, tmp_path)
    assert kwargs["job_extra_directives"] == ["--qos=high", "--gres=gpu:1"]
    assert kwargs["worker_extra_args"][-2:] == ["--resources", "GPU=1"]
    cluster = make_cluster(config, tmp_path)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    assert "--dashboard-address 127.0.0.1:0" in script


def test_pbs_job_script_has_queue_account_prologue(tmp_path):
    config = ClusterConfig(
        kind="pbs", queue="workq", account="lab", interface="lo", job_script_prologue=["source /venv/bin/activate"]
    )
    cluster = make_cluster(config, tmp_path)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#PBS -q workq" in script and "#PBS -A lab" in script and "source /venv/bin/activate" in script


def _slurm_config(tmp_path: Path, **overrides) -> ClusterConfig:
    settings = dict(
        kind="slurm", n_workers=2, cores=1, processes=1, memory="1GiB", walltime="00:10:00",
        interface="lo", log_directory=str(tmp_path / "jobs"), wait_timeout_s=180,
    )
    settings.update(overrides)
    return ClusterConfig(**settings)


@pytest.mark.slurm
def test_slurm_workers_are_jobs_and_leave_the_queue(slurm, tmp_path):
    with open_client(_slurm_config(tmp_path), tmp_path) as client:
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        assert len(workers) == 2
        per_worker = client.run(lambda: __import__("os").environ.get("SLURM_JOB_ID"))
        job_ids = set(per_worker.values())
        assert len(job_ids) == 2 and all(job_ids), per_worker
        assert job_ids <= _queued_job_ids()
        squares = client.gather(client.map(lambda v: v * v, range(20)))
        assert squares == [v * v for v in range(20)]
    deadline = time.monotonic() + 60
    while job_ids & _queued_job_ids():
        assert time.monotonic() < deadline, f"jobs {job_ids & _queued_job_ids()} still queued after close"
        time.sleep(0.5)


@pytest.mark.slurm
def test_slurm_impossible_request_fails_fast_with_reason(slurm, tmp_path):
    start = time.monotonic()
    with pytest.raises(ClusterError, match="SLURM rejects"):
        with open_client(_slurm_config(tmp_path, memory="100GB"), tmp_path):
            pass
    assert time.monotonic() - start < 60
    assert not _queued_job_ids()
