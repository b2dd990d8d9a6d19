"""Subcommand modules of `cem`; each exposes `register(app, bench_app)`."""
from . import cluster_cmd, config_cmd

COMMAND_MODULES = [config_cmd, cluster_cmd]
