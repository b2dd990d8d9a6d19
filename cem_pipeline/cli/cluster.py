from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit


def register(app: typer.Typer) -> None:
    cluster_app = typer.Typer(help="Start and hold the configured Dask cluster.", no_args_is_help=True)
    app.add_typer(cluster_app, name="cluster")

    @cluster_app.command("up")
    def up(config: Optional[Path] = ConfigArg) -> None:
        """Start the cluster, print its dashboard and job script, wait for the workers, hold until Ctrl-C."""
        from cem_pipeline.core.cluster import ClusterError, job_script, open_client
        from cem_pipeline.core.workdir import Workdir

        cfg = config_or_exit(config)
        workdir = Workdir(cfg.workdir).create()
        try:
            with open_client(cfg.cluster, workdir.logs / "jobs") as client:
                script = job_script(client.cluster)
                if script:
                    typer.echo("# worker job script\n" + script)
                typer.echo(f"scheduler: {client.scheduler.address}")
                typer.echo(f"dashboard: {client.dashboard_link}")
                typer.echo(f"workers:   {len(client.scheduler_info(n_workers=-1)['workers'])}")
                typer.echo("holding the cluster; Ctrl-C to stop")
                try:
                    while True:
                        time.sleep(1)
                except KeyboardInterrupt:
                    typer.echo("stopping")
        except ClusterError as exc:
            typer.secho(f"cluster: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
