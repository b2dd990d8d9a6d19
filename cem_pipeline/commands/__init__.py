"""Subcommand modules of `cem`, in the order `cem --help` lists them (the pipeline's order);
each exposes `register(app, bench_app)`."""
from . import (
    cluster_cmd,
    config_cmd,
    dedup_cmd,
    demo_cmd,
    dhash_cmd,
    export_cmd,
    filter_cmd,
    ingest_cmd,
    seg_cmd,
    train_cmd,
)

COMMAND_MODULES = [
    demo_cmd, ingest_cmd, dhash_cmd, dedup_cmd, filter_cmd, export_cmd, train_cmd, seg_cmd, cluster_cmd, config_cmd,
]
