"""ResNet with a 1-channel stem and the MoCoV2 builder (query/key encoders, queue, shuffled BN).

Module and buffer names follow FAIR's moco builder (`encoder_q`, `encoder_k`, `queue`, `queue_ptr`,
head `fc.0`/`fc.2`) so that checkpoints have the paper's released layout and load into a plain
torchvision ResNet (ResNet50 in the paper) whose conv1 takes one channel.

Shuffled BN needs the key batch split over several BN groups. Across processes each process is a
group; within a process `bn_splits` > 1 makes every BatchNorm2d compute its statistics per
sub-batch (SplitBatchNorm2d, as in the MoCo colab demo), so one process can shuffle too.

Two options for short runs on small views (the paper's setting stays the default):
- `stem='small'`: conv1 3x3 stride 1 and no maxpool (MoCo CIFAR demo), so a 64-px view keeps an
  8x8 map at layer4 instead of 2x2 (16x the compute);
- `negatives='queue+batch'`: the batch's other keys are negatives too. The queue's keys come from
  older key encoders; with only the queue, a fast-drifting query encoder can find its positive as
  "the only fresh key" and never discriminate instances. Batch keys are exactly as fresh as the
  positive, so that shortcut no longer lowers the loss.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

ARCHS: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


STEMS = ("imagenet", "small")
NEGATIVES = ("queue", "queue+batch")


def resnet_1ch(arch: str = "resnet50", num_classes: int = 1000, stem: str = "imagenet") -> nn.Module:
    """torchvision ResNet whose first conv reads grayscale.

    stem 'imagenet': conv1.weight (64, 1, 7, 7) stride 2 + maxpool (the paper's, /4 before layer1);
    'small': conv1.weight (64, 1, 3, 3) stride 1, maxpool an Identity (/1). Both have the same
    state-dict keys, so a checkpoint must say which stem it has (its config does).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    model = ARCHS[arch](weights=None, num_classes=num_classes)
    if stem == "imagenet":
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def resnet50_1ch(num_classes: int = 1000) -> nn.Module:
    """The paper's backbone: torchvision ResNet50 with a 1-channel conv1."""
    return resnet_1ch("resnet50", num_classes)


class _SplitBatchNorm:
    """BatchNorm whose training statistics are computed separately over `splits` sub-batches.

    Sub-batch s holds samples s, s + splits, s + 2 * splits, ... (a reshape, no copy). Running
    statistics are the mean of the sub-batches' updates; eval mode is plain BatchNorm. The
    parameter and buffer names are BatchNorm's, so state dicts are unchanged.
    """

    splits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        n, c = x.shape[:2]
        s = self.splits
        if n % s:
            raise ValueError(f"batch {n} is not divisible by bn_splits {s}")
        running_mean = self.running_mean.repeat(s)  # (S * C,)
        running_var = self.running_var.repeat(s)
        out = F.batch_norm(
            x.reshape(n // s, c * s, *x.shape[2:]), running_mean, running_var, self.weight.repeat(s),
            self.bias.repeat(s), True, self.momentum if self.momentum is not None else 0.1, self.eps,
        ).reshape(x.shape)
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(s, c).mean(dim=0))
            self.running_var.copy_(running_var.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out


class SplitBatchNorm2d(_SplitBatchNorm, nn.BatchNorm2d):
    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits


class SplitBatchNorm1d(_SplitBatchNorm, nn.BatchNorm1d):
    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm2d/1d in `module` by its Split version with the same parameters (in place)."""
    for name, child in module.named_children():
        kind = {nn.BatchNorm2d: SplitBatchNorm2d, nn.BatchNorm1d: SplitBatchNorm1d}.get(type(child))
        if kind is not None:
            split = kind(child.num_features, splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batchnorm(child, splits)
    return module


def moco_encoder(dim: int = 128, mlp_hidden: int = 2048, arch: str = "resnet50", bn_splits: int = 1,
                 head_bn: bool = False, stem: str = "imagenet") -> nn.Module:
    """ResNet-1ch whose fc is MoCoV2's 2-layer MLP head (features -> hidden -> dim).

    `head_bn` puts a BatchNorm1d on the hidden layer (fc.0, fc.1 = BN, fc.3; SimCLR / MoCo v3): it
    removes the component all embeddings share, so the head cannot turn every output at once.
    """
    model = resnet_1ch(arch, num_classes=dim, stem=stem)
    features = model.fc.in_features
    hidden: list[nn.Module] = [nn.Linear(features, mlp_hidden)]
    if head_bn:
        hidden.append(nn.BatchNorm1d(mlp_hidden))
    model.fc = nn.Sequential(*hidden, nn.ReLU(inplace=True), nn.Linear(mlp_hidden, dim))
    return split_batchnorm(model, bn_splits) if bn_splits > 1 else model


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_batches(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's batch along dim 0 (no gradient flows through all_gather)."""
    _, world = _world()
    if world == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


class MoCo(nn.Module):
    """MoCoV2: InfoNCE between query and momentum-encoded key, with a FIFO queue of negatives.

    `shuffle_generator` draws the key-batch permutation for shuffled BN (across processes, and
    across the `bn_splits` BN sub-batches of each process); it is owned by the trainer so that its
    state is checkpointed and a resumed run draws the same permutations. `negatives` and `stem`:
    see the module docstring.
    """

    def __init__(
        self,
        dim: int = 128,
        mlp_hidden: int = 2048,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        shuffle_bn: bool = True,
        arch: str = "resnet50",
        bn_splits: int = 1,
        head_bn: bool = False,
        negatives: str = "queue",
        stem: str = "imagenet",
    ):
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.arch = arch
        self.stem = stem
        self.negatives = negatives
        self.bn_splits = bn_splits
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.shuffle_bn = shuffle_bn
        self.shuffle_generator = torch.Generator()
        self.encoder_q = moco_encoder(dim, mlp_hidden, arch, bn_splits, head_bn, stem)
        self.encoder_k = moco_encoder(dim, mlp_hidden, arch, bn_splits, head_bn, stem)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for param in self.encoder_k.parameters():
            param.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k <- m k + (1 - m) q, as one fused foreach op outside autograd."""
        k = [p for p in self.encoder_k.parameters()]
        q = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_lerp_(k, q, 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the global batch of keys at queue_ptr, wrapping around the end of the queue.

        Wrap-around (instead of FAIR's assert K % batch == 0) keeps every slot in FIFO order for any
        batch size <= K, including a smaller last batch.
        """
        keys = gather_batches(keys)
        n = keys.shape[0]
        if n > self.queue_size:
            raise ValueError(f"global batch {n} exceeds the queue size {self.queue_size}")
        ptr = int(self.queue_ptr)
        index = (torch.arange(n, device=keys.device) + ptr) % self.queue_size
        self.queue[:, index] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    @torch.no_grad()
    def _shuffle(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Give this process a random slice of the global batch; returns it and the inverse permutation.

        With one process the batch is permuted in place, so that its BN sub-batches (bn_splits > 1)
        hold other images than the query's; with one process and one BN group there is nothing to
        shuffle across and the input is returned unchanged.
        """
        rank, world = _world()
        if not self.shuffle_bn or world * self.bn_splits == 1:
            return x, None
        if world == 1:
            perm = torch.randperm(x.shape[0], generator=self.shuffle_generator).to(x.device)
            return x[perm], torch.argsort(perm)
        gathered = gather_batches(x)
        total = gathered.shape[0]
        perm = torch.randperm(total, generator=self.shuffle_generator).to(x.device)
        dist.broadcast(perm, src=0)
        return gathered[perm.view(world, -1)[rank]], torch.argsort(perm)

    @torch.no_grad()
    def _unshuffle(self, x: torch.Tensor, unshuffle: torch.Tensor | None) -> torch.Tensor:
        if unshuffle is None:
            return x
        rank, world = _world()
        return gather_batches(x)[unshuffle.view(world, -1)[rank]]

    @torch.no_grad()
    def _other_keys(self, k: torch.Tensor) -> torch.Tensor:
        """The global batch's keys without each query's own: (N, G - 1, dim) for a local batch of N of G.

        Row i drops global row rank * N + i (its positive), so every query sees the same G - 1 others
        as every other query of the step, in the global batch's order.
        """
        rank, _ = _world()
        keys = gather_batches(k)  # (G, dim)
        n, g = k.shape[0], keys.shape[0]
        keep = torch.ones(n, g, dtype=torch.bool, device=k.device)  # (N, G)
        keep[torch.arange(n, device=k.device), rank * n + torch.arange(n, device=k.device)] = False
        return keys.expand(n, g, -1)[keep].view(n, g - 1, -1)  # (N, G - 1, dim)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, embeddings: bool = False) -> tuple[torch.Tensor, ...]:
        """Returns logits with the positive in column 0 and the labels (all zeros); with `embeddings`,
        also the L2-normalised q and k (N, dim) for health monitoring.

        Logits are (N, 1 + K): positive, queue; with negatives 'queue+batch' (N, 1 + K + G - 1):
        positive, queue, then the global batch's G - 1 other keys (so columns 1..K are the queue's
        in both modes).
        """
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)  # (N, dim)
        with torch.no_grad():
            self.momentum_update()
            shuffled, unshuffle = self._shuffle(im_k)
            k = F.normalize(self.encoder_k(shuffled).float(), dim=1)  # (N, dim)
            k = self._unshuffle(k, unshuffle)
        with torch.autocast(q.device.type, enabled=False):  # logits in fp32: T=0.2 sharpens rounding errors
            positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
            parts = [positive, q @ self.queue.clone().detach()]  # (N, 1), (N, K)
            if self.negatives == "queue+batch":
                parts.append(torch.einsum("nc,ngc->ng", q, self._other_keys(k)))  # (N, G - 1)
            logits = torch.cat(parts, dim=1) / self.temperature  # (N, 1 + K [+ G - 1])
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self.enqueue(k)
        if embeddings:
            return logits, labels, q.detach(), k
        return logits, labels
