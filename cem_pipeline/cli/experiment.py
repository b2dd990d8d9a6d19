"""`cem experiment transfer CONFIG [--dry-run]`: the transfer experiment (cem_pipeline/experiment)."""
from __future__ import annotations

from pathlib import Path

import typer

experiment_app = typer.Typer(help="Experiments that chain the pipeline and the trainers.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")

    @experiment_app.command("transfer")
    def transfer(
        config: Path = typer.Argument(..., help="experiment YAML (see cem_pipeline/experiment/configs/)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the units and what would be run, skipped, redone "
                                     "or removed; run nothing"),
    ) -> None:
        """Curate, pre-train MoCoV2 per corpus and seed, fine-tune frozen-encoder U-Nets; write results.json and table.md.

        Corpora: curated (the pipeline's export selection), raw (every patch). Encoders: random, curated, raw.

        Resumable: a unit whose fingerprint is unchanged is skipped (see cem_pipeline/experiment/README.md).
        """
        from cem_pipeline.core.config import ConfigError
        from cem_pipeline.experiment.config import load_experiment
        from cem_pipeline.experiment.runs import ExperimentError, run_transfer

        try:
            outcome = run_transfer(load_experiment(config), dry_run=dry_run, log=typer.echo)
        except ConfigError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except ExperimentError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        counts = ", ".join(f"{len(outcome.units(action))} {action}" for action in ("run", "redo", "resume", "skip", "remove", "pending"))
        typer.echo(f"{'dry run: ' if dry_run else ''}{counts}")
        if outcome.table is not None:
            typer.echo(f"table: {outcome.table}")
