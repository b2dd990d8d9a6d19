"""`cem demo`: the whole curation pipeline on a generated EM-like corpus, end to end, with no person.

The demo writes an ordinary config file next to its outputs and then runs the very same stage
commands a user would (`cem ingest`, `cem dedup`, ...), so every step can be re-run or inspected by
hand afterwards. The generator knows which patches are informative, which stands in for the
person at the labelling page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

from cem_pipeline.demo.corpus import generate_demo_corpus


def demo_config(workdir: Path, manifest: Path, seed: int) -> dict:
    """Small, CPU-friendly settings: the paper's algorithms with fewer classifier epochs and a 64-px classifier input."""
    return {
        "workdir": str(workdir),
        "seed": seed,
        "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "3GiB"},
        "ingest": {"sources": str(manifest), "cloudvolume_samples": 20},
        "dedup": {"distance": 12, "rule": "le"},
        "filter": {"model": "resnet34", "epochs": 3, "input_size": 64, "label_target": 400, "batch_size": 64},
        "export": {"name": "demo"},
    }


def demo_steps(config_path: Path, corpus: Path) -> list[list[str]]:
    config = str(config_path)
    return [
        ["ingest", config, "--no-progress"],
        ["catalog", config],
        ["dedup", config, "--show", "6"],
        ["label", config, "--demo-corpus", str(corpus)],
        ["train-filter", config],
        ["filter", config],
        ["export", config],
    ]


def prepare_demo(workdir: Path, seed: int) -> tuple[Path, Path]:
    """Generate the corpus (once) and write the demo config; returns (config path, corpus root)."""
    workdir = workdir.resolve()
    corpus = workdir / "corpus"
    manifest = corpus / "sources.yaml"
    if not manifest.exists():
        manifest = generate_demo_corpus(corpus, seed=seed)
    config_path = workdir / "demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(workdir, manifest, seed), sort_keys=False))
    return config_path, corpus


def run_demo(workdir: Path, seed: int, run_command: Callable[[list[str]], int], echo: Callable[[str], None]) -> int:
    """Run every curation stage in order; stops at the first failing stage and returns its exit code."""
    config_path, corpus = prepare_demo(workdir, seed)
    echo(f"demo corpus: {corpus}\nconfig:      {config_path}")
    for step in demo_steps(config_path, corpus):
        echo(f"\n$ cem {' '.join(step)}")
        code = run_command(step)
        if code:
            echo(f"demo stopped: `cem {step[0]}` exited with {code}")
            return code
    echo(
        "\ndemo finished. Next:\n"
        f"  cem catalog {config_path}    (per-dataset counts)\n"
        f"  cem train mocov2 <mocov2.yaml>    (pre-train on {workdir.resolve() / 'export'}; see training/moco/configs)\n"
        "  notebooks/query_catalog.ipynb    (query the catalog with pandas / DuckDB)"
    )
    return 0
