"""MoCoV2 pre-training on a CEM .beton: `python -m training.moco.train CONFIG` (one node) or under torchrun.

Flat on purpose, like FAIR's main_moco.py: set up the process group, build model/optimizer/loader,
resume, then loop epochs -> steps, checkpointing every `save_every` epochs and after the last.
Launch modes: torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment, env:// rendezvous), or
`runtime.nproc` > 1 spawned processes on this node rendezvousing through a file (nothing listens).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cem_pipeline.core.config import ConfigError
from training.moco.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_released_state_dict,
    released_state_dict,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from training.moco.config import MocoConfig, dump_moco_config, load_moco_config
from training.moco.metrics import MetricsLogger
from training.moco.model import MoCo
from training.moco.probe import HEALTH_COLUMNS, EpochHealth, collapse_reasons, embedding_health, probe_knn

if TYPE_CHECKING:
    from training.data.augment import TwoViewAugment


@dataclass
class Runtime:
    """Where this process runs and how: resolved once from the config and the launch environment."""

    rank: int
    world: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def learning_rate(config: MocoConfig, epoch: int) -> float:
    """Per-epoch lr as in main_moco.py: linear-scaled base lr, x0.1 at each milestone, or half-cosine."""
    lr = config.lr
    if config.optim.schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.optim.epochs))
    return lr * 0.1 ** sum(epoch >= m for m in config.optim.milestones)


def resolve_runtime(config: MocoConfig, rank: int, world: int, local_rank: int) -> Runtime:
    use_cuda = config.runtime.device == "cuda" or (config.runtime.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    precision = config.runtime.precision
    bf16 = precision == "bf16" or (precision == "auto" and use_cuda)
    channels_last = use_cuda if config.runtime.channels_last is None else config.runtime.channels_last
    return Runtime(rank, world, device, torch.bfloat16 if bf16 else None, channels_last)


def build_model(config: MocoConfig, rt: Runtime) -> MoCo:
    """Same initial weights on every rank (seeded), and the shuffle generator seeded for checkpointing."""
    torch.manual_seed(config.runtime.seed)
    m = config.model
    model = MoCo(m.dim, m.mlp_hidden, m.queue_size, m.momentum, m.temperature, m.shuffle_bn, m.arch,
                 config.bn_splits(rt.world), m.head_bn, m.negatives, m.stem)
    model.shuffle_generator.manual_seed(config.runtime.seed)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def require_beton(config: MocoConfig) -> None:
    """Fail before spawning or building anything when the input file is absent."""
    if not config.data.beton.is_file():
        raise ConfigError(f"data.beton: {config.data.beton} does not exist (write it with `cem export`)")


def augment_params(config: MocoConfig):
    """The paper's augmentation at `data.crop_size` and `data.crop_scale`, blur sigma scaled to the view size (see DataConfig)."""
    from training.data.augment import MocoAugmentParams

    params = MocoAugmentParams(out_size=config.data.crop_size, scale=tuple(config.data.crop_scale))
    reference = config.data.blur_sigma_reference
    if reference is None:
        return params
    scale = config.data.crop_size / reference
    return dataclasses.replace(params, blur_sigma=(params.blur_sigma[0] * scale, params.blur_sigma[1] * scale))


def build_data(config: MocoConfig, rt: Runtime):
    """The ffcv loader over this rank's shard of the .beton, the two-view GPU/CPU augmentation, and [mean, std]."""
    from cem_pipeline.export.sidecar import read_manifest
    from training.data.augment import TwoViewAugment
    from training.data.moco_pipeline import make_moco_loader

    if config.optim.batch_size % rt.world:
        raise ConfigError(f"optim.batch_size {config.optim.batch_size} is not divisible by the {rt.world} processes")
    require_beton(config)
    try:
        manifest = read_manifest(config.data.manifest or config.data.beton)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.manifest: {exc}") from None
    loader = make_moco_loader(
        config.data.beton,
        batch_size=config.optim.batch_size // rt.world,
        num_workers=config.data.num_workers,
        order=config.data.order,
        distributed=rt.world > 1,
        seed=config.runtime.seed,
        drop_last=True,
    )
    augment = TwoViewAugment(
        manifest.mean, manifest.std, rt.device, seed=config.runtime.seed + rt.rank,
        params=augment_params(config),
    )
    return loader, augment, [float(manifest.mean), float(manifest.std)]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, view_q: torch.Tensor, view_k: torch.Tensor,
               rt: Runtime) -> tuple[torch.Tensor, ...]:
    """One SGD step on a batch of view pairs; returns the (unsynchronised) loss, logits and the
    normalised q and k embeddings (for the health indicators)."""
    if rt.channels_last:
        view_q = view_q.contiguous(memory_format=torch.channels_last)
        view_k = view_k.contiguous(memory_format=torch.channels_last)
    with torch.autocast(rt.device.type, dtype=rt.autocast_dtype or torch.float32, enabled=rt.autocast_dtype is not None):
        logits, labels, q, k = model(view_q, view_k, embeddings=True)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach(), q, k


def load_probe(config: MocoConfig, norms: list[float], rt: Runtime):
    """The k-NN probe set at the view size, normalised like the views (rank 0 only; None elsewhere or unset)."""
    from training.moco.probe import load_probe_set

    if config.monitor.probe is None or not rt.is_main:
        return None
    if not config.monitor.probe.is_file():
        raise ConfigError(f"monitor.probe: {config.monitor.probe} does not exist (write it with training.moco.probe.build_probe_set)")
    return load_probe_set(config.monitor.probe, config.data.crop_size, *norms)


def _resume_source(config: MocoConfig) -> Path | None:
    if config.output.resume == "auto":
        return latest_checkpoint(config.output.dir)
    return config.output.resume


def _gather_rng(model: MoCo, augment: TwoViewAugment, rt: Runtime) -> list[dict[str, Any]]:
    """Every rank's RNG states (torch's, the shuffled-BN permutation's, the augmentation's),
    collected on all ranks (rank 0 saves them)."""
    state = rng_state({"shuffle": model.shuffle_generator}) | augment.state_dict()
    if rt.world == 1:
        return [state]
    states: list[Any] = [None] * rt.world
    dist.all_gather_object(states, state)
    return states


def _save(config: MocoConfig, model: MoCo, optimizer: torch.optim.Optimizer, augment: TwoViewAugment, norms: list[float],
          rt: Runtime, epoch: int, step: int) -> None:
    """Checkpoint after `epoch` epochs (0: the seeded initial weights) in the released layout; every rank takes part."""
    rng = _gather_rng(model, augment, rt)
    if rt.is_main:
        save_checkpoint(
            checkpoint_path(config.output.dir, epoch),
            {
                "epoch": epoch,
                "arch": config.model.arch,
                "state_dict": released_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "norms": norms,
                "scheduler": {"kind": config.optim.schedule, "epoch": epoch, "lr": learning_rate(config, epoch)},
                "step": step,
                "loader": {"seed": config.runtime.seed, "next_epoch": epoch},
                "rng": rng,
                "config": dump_moco_config(config),
            },
        )
    if rt.world > 1:
        dist.barrier()


def train(config: MocoConfig, rank: int = 0, world: int = 1, local_rank: int = 0) -> dict[str, Any]:
    """Run (or resume) pre-training in this process; returns the final epoch, step and last logged metrics."""
    if config.runtime.threads:
        import numba  # the CPU augmentation kernel is a parallel numba loop

        torch.set_num_threads(config.runtime.threads)
        numba.set_num_threads(min(config.runtime.threads, numba.config.NUMBA_NUM_THREADS))
    rt = resolve_runtime(config, rank, world, local_rank)
    if rt.device.type == "cuda":
        torch.cuda.set_device(rt.device)
    loader, augment, norms = build_data(config, rt)
    model = build_model(config, rt)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay,
    )

    start_epoch, step = 0, 0
    source = _resume_source(config)
    if source is not None:
        checkpoint = load_checkpoint(source)
        try:
            load_released_state_dict(model, checkpoint["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"{source}: does not match model config ({exc})") from None
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        if checkpoint["loader"]["seed"] != config.runtime.seed:
            raise CheckpointError(f"{source}: saved with runtime.seed {checkpoint['loader']['seed']}, config has {config.runtime.seed}")
        if len(checkpoint["rng"]) != world:
            raise CheckpointError(f"{source}: saved by {len(checkpoint['rng'])} processes, resuming with {world}")
        restore_rng_state(checkpoint["rng"][rank], {"shuffle": model.shuffle_generator})
        try:
            augment.load_state_dict(checkpoint["rng"][rank])
        except KeyError as exc:
            raise CheckpointError(f"{source}: {exc.args[0]}") from None
    loader.set_epoch(start_epoch)
    if source is None and config.output.save_initial:
        _save(config, model, optimizer, augment, norms, rt, 0, 0)

    if config.runtime.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()
    # Buffers are synced once at construction; afterwards the queue stays identical on every rank by
    # construction (all enqueue the gathered keys), so a per-step broadcast (32 MB at K=65,536) is waste.
    ddp = (
        DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None, forward_sync_buffers=False)
        if world > 1
        else model
    )
    metrics = MetricsLogger(config.output.dir, enabled=rt.is_main, progress=config.output.progress)
    metrics.truncate_after(step)
    probe = load_probe(config, norms, rt)
    monitor = config.monitor
    last: dict[str, float] = {}
    collapsed_at: int | None = None
    try:
        for epoch in range(start_epoch, config.optim.epochs):
            lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ddp.train()
            health = EpochHealth()
            window_start, window_images = time.perf_counter(), 0
            for batch in metrics.bar(loader, len(loader), epoch):
                view_q, view_k = augment(*batch)
                loss, logits, q, k = train_step(ddp, optimizer, view_q, view_k, rt)
                step += 1
                window_images += view_q.shape[0] * world
                if step % config.output.log_every == 0:
                    indicators = embedding_health(q, k, logits, config.model.temperature, config.model.queue_size)
                    stats = torch.tensor([loss.float().item(), (logits.argmax(1) == 0).float().mean().item() * 100,
                                          *(indicators[name] for name in HEALTH_COLUMNS)], device=rt.device)
                    if world > 1:
                        dist.all_reduce(stats)
                        stats /= world
                    elapsed = time.perf_counter() - window_start
                    values = stats.tolist()
                    last = {"loss": values[0], "acc1": values[1], "lr": lr, "images_per_s": window_images / elapsed,
                            **dict(zip(HEALTH_COLUMNS, values[2:]))}
                    health.add(last)
                    metrics.log(epoch, step, last)
                    window_start, window_images = time.perf_counter(), 0
            if probe is not None and ((epoch + 1) % monitor.every == 0 or epoch + 1 == config.optim.epochs):
                last["knn_acc"] = probe_knn(model.encoder_q, probe, k=monitor.knn_k)
                metrics.log(epoch, step, {"knn_acc": last["knn_acc"]})
            epoch_health = health.mean()
            metrics.epoch_summary(epoch, {**epoch_health, **({"knn_acc": last["knn_acc"]} if "knn_acc" in last else {})})
            # health is all-reduced, so every rank reaches the same verdict
            reasons = []
            if epoch >= monitor.warmup_epochs:
                reasons = collapse_reasons(epoch_health, monitor.min_emb_std, monitor.min_logit_gap, monitor.max_queue_gap)
            if reasons:
                metrics.warn(f"REPRESENTATION COLLAPSE at epoch {epoch}: {'; '.join(reasons)}"
                             + (" -- stopping (monitor.stop_on_collapse)" if monitor.stop_on_collapse else ""))
                collapsed_at = epoch if collapsed_at is None else collapsed_at
            stop = bool(reasons) and monitor.stop_on_collapse
            if (epoch + 1) % config.output.save_every == 0 or epoch + 1 == config.optim.epochs or stop:
                _save(config, model, optimizer, augment, norms, rt, epoch + 1, step)
            if stop:
                return {"epoch": epoch + 1, "step": step, "collapsed_at": collapsed_at, **last}
    finally:
        metrics.close()
    return {"epoch": config.optim.epochs, "step": step, "collapsed_at": collapsed_at, **last}


def _worker(local_rank: int, config: MocoConfig, world: int, init_file: str) -> None:
    """One spawned process on this node; gloo/NCCL bootstrap stays on the loopback interface."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    backend = "nccl" if resolve_runtime(config, 0, world, local_rank).device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=local_rank, world_size=world)
    try:
        train(config, local_rank, world, local_rank)
    finally:
        dist.destroy_process_group()


def launch(config: MocoConfig) -> dict[str, Any] | None:
    """Run under torchrun if its environment is present, else spawn `runtime.nproc` local processes."""
    require_beton(config)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if resolve_runtime(config, rank, world, local_rank).device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
        try:
            return train(config, rank, world, local_rank)
        finally:
            dist.destroy_process_group()
    if config.runtime.nproc == 1:
        return train(config)
    config.output.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=config.output.dir, prefix=".rendezvous-") as tmp:
        torch.multiprocessing.start_processes(
            _worker, args=(config, config.runtime.nproc, str(Path(tmp) / "init")), nprocs=config.runtime.nproc, start_method="spawn"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m training.moco.train CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        launch(load_moco_config(args[0]))
    except (ConfigError, CheckpointError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
