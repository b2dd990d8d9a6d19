"""Scoring: a batched kernel over one chunk of patches, and the Dask graph that runs it over the exemplars.

The model travels to each worker once, inside a WorkerPlugin, and is built there on first use and
cached for the worker's lifetime; tasks carry only catalog rows. GPU workers (Dask resource GPU)
run CUDA + bf16 autocast + channels_last; CPU workers give torch all of the worker's threads.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from distributed import Client, WorkerPlugin, get_worker

from cem_pipeline.core.catalog import write_stage_part
from cem_pipeline.core.patches import read_patches
from cem_pipeline.filter.classifier import classifier_from_state, normalize, to_input
from cem_pipeline.filter.features import forest_scores

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
    """Carries the weights to each worker once and builds the model there on first use."""

    name = PLUGIN_NAME

    def __init__(self, kind: str, payload: Any, input_size: int, cpu_bf16: bool):
        self.kind = kind
        self.payload = payload
        self.input_size = input_size
        self.cpu_bf16 = cpu_bf16

    def setup(self, worker) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._model = None
        self.device = torch.device("cpu")

    def teardown(self, worker) -> None:
        self._model = None

    def _build(self):
        gpus = self.worker.state.total_resources.get("GPU", 0)
        if self.kind == "random_forest":
            return self.payload
        if gpus:
            if not torch.cuda.is_available():
                raise RuntimeError(f"worker {self.worker.address} advertises GPU={gpus:g} but torch sees no CUDA device")
            self.device = torch.device("cuda")
        else:
            torch.set_num_threads(max(1, self.worker.state.nthreads))
        return prepare_model(classifier_from_state(self.payload), self.device)

    def score(self, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """One batch stream at a time per worker: it already uses all the worker's threads (or its GPU)."""
        with self._lock:
            if self._model is None:
                self._model = self._build()
            if self.kind == "random_forest":
                return forest_scores(self._model, images)
            return score_images(self._model, images, self.input_size, batch_size, self.device,
                                use_bf16(self.device, self.cpu_bf16))


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


def score_catalog(client: Client, workdir: Path, store: Path, candidates: pd.DataFrame, kind: str, payload: Any,
                  input_size: int, batch_size: int, part_size: int, threshold: float, gpu: bool,
                  cpu_bf16: bool) -> pd.DataFrame:
    """Score every candidate through Dask and write one 'score' table part per dataset; returns the scores."""
    columns = ["patch_id", "dataset", "volume", "axis", "slice", "y", "x", "h", "w"]
    client.register_plugin(ScorerPlugin(kind, payload, input_size, cpu_bf16), name=PLUGIN_NAME)
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
    for dataset, group in scored.groupby("dataset", sort=True):
        write_stage_part(workdir, "score", str(dataset), group[["patch_id", "score", "informative"]])
    return scored
