"""The `cem` command. Each command group registers its subcommands from its own module here, and
heavy libraries (torch, ffcv) are imported inside commands so that `cem --help` stays instant.
Commands parse arguments and call the stage packages; they hold no pipeline logic. Every
`cem bench ...` lives in cli/bench.py."""
from __future__ import annotations

import typer

from cem_pipeline.cli import (
    bench,
    cluster,
    config,
    dedup,
    demo,
    experiment,
    export,
    filter,
    ingest,
    seg,
    status,
    train,
)

app = typer.Typer(
    help="cem: curate cellular EM into a deduplicated, informative training set; pre-train and transfer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# the order `cem --help` lists them: the pipeline's order
for group in (demo, ingest, dedup, filter, export, status, train, seg, experiment, cluster, config, bench):
    group.register(app)
