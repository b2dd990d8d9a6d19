"""The `cem` command. Each stage registers its subcommands from its own module in `commands/`,
and heavy libraries (torch, ffcv) are imported inside commands so that `cem --help` stays instant."""
from __future__ import annotations

import typer

from .commands import COMMAND_MODULES

app = typer.Typer(
    help="cem: curate cellular EM into a deduplicated, informative training set; pre-train and transfer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks: ours vs the paper's way, measured in the same run.", no_args_is_help=True)

for module in COMMAND_MODULES:
    module.register(app, bench_app)
app.add_typer(bench_app, name="bench")
