"""The real EM every benchmark reads, found and loaded in one place.

Where: CEM_SHARED_EM, else ../shared/data/em beside the checkout (resolved from this file, not
the working directory, so `cem bench ...` finds it from anywhere). What: tiles of the labelled
stacks for kernel benchmarks, and a pipeline config that ingests the shared sources for the
export and loader benchmarks.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cem_pipeline.ingest.hashing.pillow import PATCH_SIZE


def shared_em_root() -> Path:
    return Path(os.environ.get("CEM_SHARED_EM", Path(__file__).resolve().parents[2] / "shared" / "data" / "em"))


def real_em_patches(em_root, limit: int) -> np.ndarray:
    """Up to `limit` 224x224 uint8 tiles of the real EM data (cdeep3m, ISBI, SNEMI3D), for the bench.

    Tiles are taken at every 32-px offset so the set is large from a few slices; raises
    FileNotFoundError naming the folder when the data is absent.
    """
    from PIL import Image

    root = Path(em_root)
    files = sorted((root / "cdeep3m_mito_sbem").rglob("images.*.png"))
    files += sorted((root / "isbi2012_drosophila_l1_vnc_sstem").rglob("*.png"))
    files += sorted((root / "snemi3d_kasthuri2015_atum_sem").rglob("*.png"))
    if not files:
        raise FileNotFoundError(f"no real EM images under {root} (expected cdeep3m_mito_sbem, isbi2012_... folders)")
    tiles: list[np.ndarray] = []
    count = 0
    for path in files:
        image = np.asarray(Image.open(path).convert("L"))
        h, w = image.shape
        for y in range(0, h - PATCH_SIZE + 1, 32):
            for x in range(0, w - PATCH_SIZE + 1, 32):
                tiles.append(image[y : y + PATCH_SIZE, x : x + PATCH_SIZE])
                count += 1
                if count >= limit:
                    return np.stack(tiles)
    return np.stack(tiles)

SHARED_SOURCES = (
    ("cdeep3m_train", "cdeep3m_mito_sbem/training/images/*.png"),
    ("cdeep3m_val", "cdeep3m_mito_sbem/validation/images/*.png"),
    ("cdeep3m_test", "cdeep3m_mito_sbem/testset/*.png"),
    ("isbi_train", "isbi2012_drosophila_l1_vnc_sstem/train/image/*.png"),
    ("isbi_test", "isbi2012_drosophila_l1_vnc_sstem/test/image/*.png"),
    ("snemi3d", "snemi3d_kasthuri2015_atum_sem/stack_clahe/*.png"),
    ("fei", "fei_sem_rbc_imageio/fei-sem-rbc.tif"),
)


def existing_em_root() -> Path:
    root = shared_em_root()
    if not (root / "README.md").exists():
        raise FileNotFoundError(f"{root}: real EM data not found (set CEM_SHARED_EM)")
    return root


def bench_config(workdir: Path, n_workers: int):
    """A config that ingests the shared EM sources (as stacks of slices) into `workdir`."""
    from cem_pipeline.core.config import parse_config

    root = existing_em_root()
    sources = [{"name": name, "path": str(root / pattern), "format": "slices" if "*" in pattern else "auto"}
               for name, pattern in SHARED_SOURCES]
    return parse_config({"workdir": str(workdir), "cluster": {"n_workers": 1, "threads_per_worker": n_workers},
                         "ingest": {"sources": sources}, "export": {"num_workers": n_workers}})


def ingest_shared(config) -> int:
    from cem_pipeline.core.cluster import open_client
    from cem_pipeline.ingest.graph import run_ingest

    with open_client(config.cluster, config.workdir / "logs" / "jobs") as client:
        summary = run_ingest(config, client, progress=False)
    return summary.patches
