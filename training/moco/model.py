"""ResNet50 with a 1-channel stem and the MoCoV2 builder (query/key encoders, queue, shuffled BN).

Module and buffer names follow FAIR's moco builder (`encoder_q`, `encoder_k`, `queue`, `queue_ptr`,
head `fc.0`/`fc.2`) so that checkpoints have the paper's released layout and load into a plain
torchvision ResNet50 whose conv1 takes one channel.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50


def resnet50_1ch(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet50 whose first conv reads grayscale: conv1.weight is (64, 1, 7, 7)."""
    model = resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def moco_encoder(dim: int = 128, mlp_hidden: int = 2048) -> nn.Module:
    """ResNet50-1ch whose fc is MoCoV2's 2-layer MLP head (2048 -> hidden -> dim)."""
    model = resnet50_1ch(num_classes=dim)
    features = model.fc.in_features
    model.fc = nn.Sequential(nn.Linear(features, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, dim))
    return model


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

    `shuffle_generator` draws the cross-process batch permutation for shuffled BN; it is owned by
    the trainer so that its state is checkpointed and a resumed run draws the same permutations.
    """

    def __init__(
        self,
        dim: int = 128,
        mlp_hidden: int = 2048,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        shuffle_bn: bool = True,
    ):
        super().__init__()
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.shuffle_bn = shuffle_bn
        self.shuffle_generator = torch.Generator()
        self.encoder_q = moco_encoder(dim, mlp_hidden)
        self.encoder_k = moco_encoder(dim, mlp_hidden)
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

        With one process there is nothing to shuffle across (BN would see the same batch), so the
        input is returned unchanged.
        """
        rank, world = _world()
        if world == 1 or not self.shuffle_bn:
            return x, None
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

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits (N, 1 + K) with the positive in column 0, and the labels (all zeros)."""
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            shuffled, unshuffle = self._shuffle(im_k)
            k = F.normalize(self.encoder_k(shuffled).float(), dim=1)
            k = self._unshuffle(k, unshuffle)
        with torch.autocast(q.device.type, enabled=False):  # logits in fp32: T=0.2 sharpens rounding errors
            positive = (q * k).sum(dim=1, keepdim=True)
            negative = q @ self.queue.clone().detach()
            logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self.enqueue(k)
        return logits, labels
