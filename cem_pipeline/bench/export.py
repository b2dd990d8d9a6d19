"""`cem bench export`: the .beton export against the paper's crop-to-TIFF step, on the same ingested real EM."""
from __future__ import annotations

import time
from pathlib import Path

from cem_pipeline.bench.em_data import bench_workdir, ingested_config


def run(workdir: Path | None, num_workers: int, em_root: Path | None = None, sources: str | None = None) -> dict:
    """Ours: `run_export` (.beton, block reads, DatasetWriter workers). Baseline: the paper's
    crop-to-TIFF step — every patch read on its own and written as one TIFF file.

    `workdir` is kept (and its ingested catalog reused by a later run); None: a temporary one."""
    with bench_workdir(workdir, "export") as root:
        return _measure(root, num_workers, em_root, sources)


def _measure(workdir: Path, num_workers: int, em_root: Path | None, sources: str | None) -> dict:
    import tifffile

    from cem_pipeline.core.patches import read_patch
    from cem_pipeline.export.select import select_patches
    from cem_pipeline.export.writer import run_export

    config = ingested_config(workdir, num_workers, em_root, sources)
    rows = select_patches(config.workdir, config.export, config.seed).rows
    out = config.workdir / "paper_tiffs"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, row in enumerate(rows.itertuples(index=False)):
        tifffile.imwrite(out / f"{i:07d}.tiff", read_patch(config.workdir, row._asdict()))
    baseline_rate = len(rows) / (time.perf_counter() - started)
    result = run_export(config, num_workers=num_workers)
    ours_rate = result.rows / result.seconds
    return {"benchmark": "export", "unit": "patches written/s", "patches": result.rows, "workers": num_workers,
            "baseline_per_s": baseline_rate, "ours_per_s": ours_rate, "ratio": ours_rate / baseline_rate}
