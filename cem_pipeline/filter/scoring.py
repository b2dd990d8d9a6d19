"""Scoring: the network's batched kernel over one chunk of patches, and the Dask graph that runs any
Classifier over the exemplars.

The classifier travels to each worker once, inside a WorkerPlugin, is readied there on first use
(Classifier.for_worker) and cached for the worker's lifetime; tasks carry only catalog rows. For
the network, GPU workers (Dask resource GPU) run CUDA + bf16 autocast + channels_last and CPU
workers give torch all of the worker's threads.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from distributed import Client, WorkerPlugin, get_worker

from cem_pipeline.core.catalog import stage_dir, write_stage_part
from cem_pipeline.core.freshness import record_inputs
from cem_pipeline.core.patches import read_patches
from cem_pipeline.filter.classifier import normalize, to_input
from cem_pipeline.filter.protocol import Classifier

PLUGIN_NAME = "cem-filter-scorer"


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode, on `device`, channels_last (the layout cuDNN / oneDNN convolutions run fastest in)."""
    return model.eval().to(device, memory_format=torch.channels_last)


def cpu_has_bf16() -> bool:
    """Native bf16 matmul/conv on this CPU (AVX512-BF16 / AMX); elsewhere bf16 autocast is slower than fp32."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(device: torch.device, cpu_bf16: bool) -> bool:
    return device.type == "cuda" or (cpu_bf16 and cpu_has_bf16())


def score_images(model: torch.nn.Module, images: Sequence[np.ndarray], input_size: int, batch_size: int,
                 device: torch.device, bf16: bool) -> np.ndarray:
    """P(informative) per uint8 patch in batches of `batch_size`, under bf16 autocast when `bf16` (see use_bf16)."""
    scores = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = normalize(to_input(images[start : start + batch_size], input_size, device))
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(batch)
            scores.append(torch.sigmoid(logits.float()).squeeze(1).cpu())
    return torch.cat(scores).numpy() if scores else np.empty(0, np.float32)


class ScorerPlugin(WorkerPlugin):
    """Carries the classifier to each worker once and readies it there (device, threads) on first use."""

    name = PLUGIN_NAME

    def __init__(self, classifier: Classifier):
        self.classifier = classifier

    def setup(self, worker) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._ready: Classifier | None = None

    def teardown(self, worker) -> None:
        self._ready = None

    def score(self, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """One batch stream at a time per worker: it already uses all the worker's threads (or its GPU)."""
        with self._lock:
            if self._ready is None:
                state = self.worker.state
                self._ready = self.classifier.for_worker(state.total_resources.get("GPU", 0), state.nthreads,
                                                         self.worker.address)
            return self._ready.score(images, batch_size)


def score_part(rows: pd.DataFrame, store: str, batch_size: int) -> pd.DataFrame:
    """Dask task: read one chunk's pixels and score them with this worker's cached model."""
    plugin: ScorerPlugin = get_worker().plugins[PLUGIN_NAME]
    scores = plugin.score(read_patches(Path(store), rows), batch_size)
    return pd.DataFrame({"patch_id": rows["patch_id"].to_numpy(), "score": scores.astype(np.float32)})


def chunks(frame: pd.DataFrame, part_size: int) -> list[pd.DataFrame]:
    """Per-dataset chunks of at most part_size rows, ordered by volume and slice so each task reads few chunks."""
    order = [c for c in ("dataset", "volume", "axis", "slice", "y", "x") if c in frame]
    frame = frame.sort_values(order, kind="stable")
    out = []
    for _, group in frame.groupby("dataset", sort=True):
        out.extend(group.iloc[start : start + part_size] for start in range(0, len(group), part_size))
    return out


def score_catalog(client: Client, workdir: Path, store: Path, candidates: pd.DataFrame, classifier: Classifier,
                  batch_size: int, part_size: int, threshold: float, gpu: bool) -> pd.DataFrame:
    """Score every candidate with `classifier` through Dask and write one 'score' table part per dataset;
    returns the scores. With `gpu`, tasks go only to workers that advertise the Dask resource GPU."""
    columns = ["patch_id", "dataset", "volume", "axis", "slice", "y", "x", "h", "w"]
    client.register_plugin(ScorerPlugin(classifier), name=PLUGIN_NAME)
    try:
        parts = chunks(candidates[columns], part_size)
        resources = {"GPU": 1} if gpu else None
        futures = [client.submit(score_part, part, str(store), batch_size, resources=resources, pure=False) for part in parts]
        results = client.gather(futures)
    finally:
        client.unregister_worker_plugin(PLUGIN_NAME)
    scored = pd.concat(results, ignore_index=True) if results else pd.DataFrame({"patch_id": [], "score": []})
    scored["informative"] = scored["score"] > threshold  # the paper keeps sigmoid > 0.5
    scored = scored.merge(candidates[["patch_id", "dataset"]], on="patch_id", how="left")
    written = {write_stage_part(workdir, "score", str(dataset), group[["patch_id", "score", "informative"]])
               for dataset, group in scored.groupby("dataset", sort=True)}
    for part in set(stage_dir(workdir, "score").glob("*.parquet")) - written:
        part.unlink()  # a dataset no longer scored (removed from the catalog): its old rows would be stale
    record_inputs(workdir, "score")
    return scored
