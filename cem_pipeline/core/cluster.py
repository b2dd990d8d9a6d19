"""Start the Dask cluster a config asks for: a loopback LocalCluster, or worker jobs through dask-jobqueue.

Every pipeline command goes through `open_client`, so the same config runs a stage on a laptop
or on SLURM/PBS/SGE/LSF/HTCondor without code changes.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from distributed import Client, LocalCluster
from distributed.deploy import Cluster

from cem_pipeline.core.config import ClusterConfig

# How a GPU is requested from each batch system; users with site-specific syntax put their own
# directive in job_extra_directives and leave gpus_per_worker at 0 (worker_resources still works).
_GPU_DIRECTIVE = {
    "slurm": "--gres=gpu:{n}",
    "pbs": "-l ngpus={n}",
    "sge": "-l gpu={n}",
    "lsf": "-gpu num={n}",
}


class ClusterError(RuntimeError):
    """The cluster could not give us the workers we asked for; the message says why."""


def worker_resources(config: ClusterConfig) -> dict[str, float]:
    resources = dict(config.worker_resources)
    if config.gpus_per_worker:
        resources.setdefault("GPU", float(config.gpus_per_worker))
    return resources


def _jobqueue_class(kind: str) -> type[Cluster]:
    import dask_jobqueue

    return {
        "slurm": dask_jobqueue.SLURMCluster,
        "pbs": dask_jobqueue.PBSCluster,
        "sge": dask_jobqueue.SGECluster,
        "lsf": dask_jobqueue.LSFCluster,
        "htcondor": dask_jobqueue.HTCondorCluster,
    }[kind]


def jobqueue_kwargs(config: ClusterConfig, log_directory: Path) -> dict:
    worker_args = ["--dashboard-address", "127.0.0.1:0"]
    resources = worker_resources(config)
    if resources:
        worker_args += ["--resources", ",".join(f"{k}={v:g}" for k, v in sorted(resources.items()))]
    directives: list[str] | dict[str, str] = list(config.job_extra_directives)
    if config.gpus_per_worker:
        if config.kind == "htcondor":
            directives = {"request_gpus": str(config.gpus_per_worker)}
            directives.update(dict(d.split("=", 1) for d in config.job_extra_directives))
        else:
            directives.append(_GPU_DIRECTIVE[config.kind].format(n=config.gpus_per_worker))
    kwargs: dict = dict(
        cores=config.cores,
        processes=config.processes,
        memory=config.memory,
        walltime=config.walltime,
        job_extra_directives=directives,
        job_script_prologue=list(config.job_script_prologue),
        log_directory=str(config.log_directory or log_directory),
        worker_extra_args=worker_args,
        scheduler_options={"dashboard_address": config.dashboard_address},
    )
    if config.interface:
        kwargs["interface"] = config.interface
    if config.queue:
        kwargs["queue"] = config.queue
    if config.account:
        kwargs["account"] = config.account
    if config.kind == "htcondor":
        kwargs.pop("walltime")
        kwargs.pop("queue", None)
    return kwargs


def make_cluster(config: ClusterConfig, log_directory: Path) -> Cluster:
    if config.kind == "local":
        return LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            memory_limit=config.memory_limit,
            host="127.0.0.1",
            dashboard_address=config.dashboard_address,
            resources=worker_resources(config) or None,
            processes=True,
        )
    log_directory.mkdir(parents=True, exist_ok=True)
    return _jobqueue_class(config.kind)(**jobqueue_kwargs(config, log_directory))


def job_script(cluster: Cluster) -> str | None:
    return cluster.job_script() if hasattr(cluster, "job_script") else None


def preflight_slurm(script: str) -> None:
    """Ask slurmctld whether the job could ever run, so an impossible request fails now, not after a timeout."""
    if shutil.which("sbatch") is None:
        raise ClusterError("cluster.kind is 'slurm' but 'sbatch' is not on PATH")
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as handle:
        handle.write(script)
        handle.flush()
        result = subprocess.run(["sbatch", "--test-only", handle.name], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ClusterError(f"SLURM rejects the worker job request: {result.stderr.strip() or result.stdout.strip()}")


def _pending_reasons(cluster: Cluster) -> str:
    job_ids = [job.job_id for job in getattr(cluster, "workers", {}).values() if getattr(job, "job_id", None)]
    if not job_ids or shutil.which("squeue") is None:
        return ""
    result = subprocess.run(
        ["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


def wait_for_workers(client: Client, cluster: Cluster, n_workers: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(client.scheduler_info(n_workers=-1)["workers"]) < n_workers:
        if time.monotonic() > deadline:
            have = len(client.scheduler_info(n_workers=-1)["workers"])
            detail = _pending_reasons(cluster)
            raise ClusterError(
                f"only {have} of {n_workers} Dask workers arrived within {timeout_s:g} s"
                + (f"; job states: {detail}" if detail else "")
                + "; see the job logs in cluster.log_directory"
            )
        time.sleep(0.5)


@contextlib.contextmanager
def open_client(config: ClusterConfig, log_directory: Path, wait: bool = True) -> Iterator[Client]:
    """Start the configured cluster, wait for its workers, yield a client, and always release the jobs."""
    cluster = make_cluster(config, log_directory)
    try:
        if config.kind == "slurm":
            preflight_slurm(cluster.job_script())
        if config.adaptive is not None:
            cluster.adapt(minimum=config.adaptive.minimum, maximum=config.adaptive.maximum)
        elif config.kind != "local":
            cluster.scale(jobs=config.n_workers)
        with Client(cluster) as client:
            if wait and config.adaptive is None:
                expected = config.n_workers * (config.processes if config.kind != "local" else 1)
                wait_for_workers(client, cluster, expected, config.wait_timeout_s)
            yield client
    finally:
        cluster.close()
