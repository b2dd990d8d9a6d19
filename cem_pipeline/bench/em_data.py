"""The real EM every benchmark (and the test suite) reads, found and loaded in one place.

Where: `--data PATH`, else the CEM_EM_DATA variable, else CEM_SHARED_EM (its older name), else
../shared/data/em beside the checkout. The default is resolved from this file, not the working
directory, so `cem bench ...` finds it from anywhere; tests/conftest.py calls `require_em_data`
too, so benchmarks and tests can never look in different places. What: tiles of the labelled
stacks for the kernel benchmarks, the cdeep3m SBEM stack for the volume benchmarks, and a
pipeline config that ingests the shared sources for the export and loader benchmarks.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cem_pipeline.bench.errors import BenchError, EmDataNotFound

ENV_VARS = ("CEM_EM_DATA", "CEM_SHARED_EM")
DEFAULT_EM_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "em"
CDEEP3M_SLICES = "cdeep3m_mito_sbem/training/images"

SHARED_SOURCES = (
    ("cdeep3m_train", "cdeep3m_mito_sbem/training/images/*.png"),
    ("cdeep3m_val", "cdeep3m_mito_sbem/validation/images/*.png"),
    ("cdeep3m_test", "cdeep3m_mito_sbem/testset/*.png"),
    ("isbi_train", "isbi2012_drosophila_l1_vnc_sstem/train/image/*.png"),
    ("isbi_test", "isbi2012_drosophila_l1_vnc_sstem/test/image/*.png"),
    ("snemi3d", "snemi3d_kasthuri2015_atum_sem/stack_clahe/*.png"),
    ("fei", "fei_sem_rbc_imageio/fei-sem-rbc.tif"),
)


def locate_em_data(path: str | Path | None = None) -> tuple[Path, str]:
    """(folder, where the choice came from): `path`, else $CEM_EM_DATA, else $CEM_SHARED_EM, else the default."""
    if path is not None and str(path):
        return Path(path).expanduser(), "--data"
    for variable in ENV_VARS:
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser(), f"${variable}"
    return DEFAULT_EM_DATA, "the default, ../shared/data/em beside the checkout"


def require_em_data(path: str | Path | None = None) -> Path:
    """The real EM folder (see `locate_em_data`); EmDataNotFound, naming the folder and how to pass
    another, when it does not exist or is empty."""
    root, origin = locate_em_data(path)
    if not root.is_dir() or not any(root.iterdir()):
        state = "is empty" if root.is_dir() else "does not exist"
        raise EmDataNotFound(f"real EM data not found: {root} ({origin}) {state}; pass --data PATH or set "
                             f"CEM_EM_DATA=PATH to the folder holding cdeep3m_mito_sbem/, isbi2012_.../, ...")
    return root


def cdeep3m_slices(em_root: Path) -> list[Path]:
    """The 20 consecutive cdeep3m SBEM 1024^2 training slices, in z order."""
    folder = Path(em_root) / CDEEP3M_SLICES
    files = sorted(folder.glob("images.*.png"))
    if not files:
        raise EmDataNotFound(f"{folder}: no images.*.png (the cdeep3m SBEM slices of the real EM data)")
    return files


def cdeep3m_stack(em_root: Path, depth: int | None = None) -> np.ndarray:
    """The first `depth` (default: all) cdeep3m training slices as a (Z, Y, X) uint8 volume."""
    from PIL import Image

    files = cdeep3m_slices(em_root)
    if depth is not None and len(files) < depth:
        raise BenchError(f"{Path(em_root) / CDEEP3M_SLICES}: need {depth} slices, found {len(files)}")
    return np.stack([np.asarray(Image.open(f)) for f in files[:depth]])


def real_em_patches(em_root, limit: int, size: int | None = None, stride: int = 32,
                    files: Sequence[Path] | None = None) -> np.ndarray:
    """Up to `limit` (size, size) uint8 tiles (default 224, the patch size) of the real EM images.

    Tiles are taken at every `stride`-px offset, so a small stride makes a large set from a few
    slices and stride = size gives non-overlapping tiles. `files` defaults to the labelled stacks
    (cdeep3m, ISBI, SNEMI3D); raises EmDataNotFound naming the folder when they are absent.
    """
    from PIL import Image

    if size is None:
        from cem_pipeline.ingest.hashing.pillow import PATCH_SIZE

        size = PATCH_SIZE
    root = Path(em_root)
    if files is None:
        files = sorted((root / "cdeep3m_mito_sbem").rglob("images.*.png"))
        files += sorted((root / "isbi2012_drosophila_l1_vnc_sstem").rglob("*.png"))
        files += sorted((root / "snemi3d_kasthuri2015_atum_sem").rglob("*.png"))
    if not files:
        raise EmDataNotFound(f"no real EM images under {root} (expected cdeep3m_mito_sbem, isbi2012_... folders); "
                             "pass --data PATH or set CEM_EM_DATA=PATH")
    tiles: list[np.ndarray] = []
    for path in files:
        image = np.asarray(Image.open(path).convert("L"))
        h, w = image.shape
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                tiles.append(image[y : y + size, x : x + size])
                if len(tiles) >= limit:
                    return np.stack(tiles)
    return np.stack(tiles)


def source_names(sources: str | Sequence[str] | None) -> list[str]:
    """The SHARED_SOURCES names selected by a comma-separated list (None or empty: all)."""
    known = [name for name, _ in SHARED_SOURCES]
    if not sources:
        return known
    names = [s.strip() for s in sources.split(",")] if isinstance(sources, str) else list(sources)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown shared source(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def bench_config(workdir: Path, n_workers: int, em_root: Path | None = None, sources: str | Sequence[str] | None = None):
    """A config that ingests the shared EM sources (as stacks of slices) into `workdir`."""
    from cem_pipeline.core.config import parse_config

    root = require_em_data(em_root)
    chosen = set(source_names(sources))
    entries = [{"name": name, "path": str(root / pattern), "format": "slices" if "*" in pattern else "auto"}
               for name, pattern in SHARED_SOURCES if name in chosen]
    return parse_config({"workdir": str(workdir), "cluster": {"n_workers": 1, "threads_per_worker": n_workers},
                         "ingest": {"sources": entries}, "export": {"num_workers": n_workers}})


def ingest_shared(config) -> int:
    from cem_pipeline.core.cluster import open_client
    from cem_pipeline.ingest.graph import run_ingest

    with open_client(config.cluster, config.workdir / "logs" / "jobs") as client:
        summary = run_ingest(config, client, progress=False)
    return summary.patches


def ingested_config(workdir: Path, n_workers: int, em_root: Path | None = None, sources: str | Sequence[str] | None = None):
    """`bench_config` for `workdir`, with the shared sources ingested there unless a catalog already is."""
    config = bench_config(workdir, n_workers, em_root, sources)
    if not (config.workdir / "catalog").exists():
        ingest_shared(config)
    return config


@contextlib.contextmanager
def bench_workdir(workdir: Path | None, name: str) -> Iterator[Path]:
    """`workdir` itself (kept, so a later run reuses what it ingested), or a temporary one removed afterwards."""
    if workdir is not None:
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix=f"cem-bench-{name}-") as tmp:
        yield Path(tmp)
