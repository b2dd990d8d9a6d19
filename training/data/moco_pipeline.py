"""MoCoV2 input: the exported .beton through ffcv's Loader, two augmented views per image.

    from training.data.moco_pipeline import make_moco_loader
    from training.data.augment import TwoViewAugment
    from cem_pipeline.export.sidecar import read_manifest

    meta = read_manifest(beton)
    loader = make_moco_loader(beton, batch_size=128, num_workers=8, order="random",
                              distributed=world_size > 1, seed=0, drop_last=True)
    augment = TwoViewAugment(meta.mean, meta.std, device="cuda" if available else "cpu", seed=rank)
    for epoch in range(epochs):
        for batch in loader:                      # a MocoBatch
            view_q, view_k = augment(*batch)      # float (B, 1, 224, 224) each

The loader decodes raw uint8 images (B, S, S) with ffcv's numba pipeline in `num_workers`
threads; all augmentation happens in `TwoViewAugment`, batched, on the GPU when one is given and
in a fused parallel CPU kernel otherwise. `batch.images` is ffcv's reused buffer (valid until the
next batch); `valid_hw` and `patch_id` are copies. Under DDP pass distributed=True: ffcv then
shards each epoch's RANDOM order across ranks like torch's DistributedSampler (QUASI_RANDOM is not
supported there by ffcv 1.0.2, so it is refused). Each iteration over the loader is a new epoch
with a new seeded order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import torch

ORDERS = ("random", "quasi_random", "sequential")


class MocoBatch(NamedTuple):
    images: torch.Tensor    # uint8 (B, S, S), ffcv's buffer
    valid_hw: torch.Tensor  # int64 (B, 2): real pixels are images[i, :h, :w]
    patch_id: torch.Tensor  # int64 (B,)


class MocoLoader:
    """Iterable of MocoBatch over an ffcv Loader (one pass = one epoch)."""

    def __init__(self, loader, fields: list[str]):
        self.loader = loader
        self._positions = {name: i for i, name in enumerate(fields)}

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch `epoch`: ffcv orders epoch e by (seed, e), so a resumed run
        continues the sequence of an uninterrupted one."""
        self.loader.next_epoch = int(epoch)

    def __iter__(self) -> Iterator[MocoBatch]:
        at = self._positions
        for batch in self.loader:
            hw = torch.cat([batch[at["h"]].reshape(-1, 1), batch[at["w"]].reshape(-1, 1)], dim=1).clone()
            yield MocoBatch(batch[at["image"]], hw, batch[at["patch_id"]].reshape(-1).clone())


def _order(order: str, distributed: bool):
    from ffcv.loader import OrderOption

    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if distributed and order == "quasi_random":
        raise ValueError("ffcv 1.0.2 does not support QUASI_RANDOM with distributed=True; use order='random'")
    return {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
            "sequential": OrderOption.SEQUENTIAL}[order]


def make_moco_loader(beton_path: str | Path, batch_size: int, num_workers: int, order: str = "random",
                     distributed: bool = False, seed: int = 0, drop_last: bool = True,
                     os_cache: bool = True, batches_ahead: int = 3) -> MocoLoader:
    """ffcv Loader over an exported .beton yielding MocoBatch (see module docstring)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.loader import Loader
    from ffcv.reader import Reader
    from ffcv.transforms import ToTensor

    path = Path(beton_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .beton")
    names = list(Reader(str(path)).handlers)
    missing = {"image", "patch_id", "h", "w"} - set(names)
    if missing:
        raise ValueError(f"{path}: not a `cem export` file (fields {names}, missing {sorted(missing)})")
    pipelines: dict = {name: None for name in names}
    pipelines["image"] = [NDArrayDecoder(), ToTensor()]
    for name in ("patch_id", "h", "w"):
        pipelines[name] = [IntDecoder(), ToTensor()]
    loader = Loader(str(path), batch_size=batch_size, num_workers=num_workers, os_cache=os_cache,
                    order=_order(order, distributed), distributed=distributed, seed=seed, drop_last=drop_last,
                    batches_ahead=batches_ahead, pipelines=pipelines)
    return MocoLoader(loader, [n for n in names if pipelines[n] is not None])
