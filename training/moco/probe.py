"""Representation health during MoCo pre-training: a labelled k-NN probe set and collapse indicators.

The probe set is made of real EM the pre-training never sees (by default the cdeep3m validation
slices 050-059): square patches labelled by whether their mitochondria fraction exceeds a
threshold, split by y position into a `bank` (top half of each slice) and a `query` part (bottom
half), so that no query overlaps a bank patch and the same place in an adjacent slice (40 nm away,
nearly the same image) cannot answer a query. Classes are balanced per split, so chance is 50 %.

Collapse indicators (Wang & Isola 2020 for alignment/uniformity; SimSiam's per-dimension std of
L2-normalised embeddings, which is ~1/sqrt(d) for a well-spread representation and ~0 when it
collapses to a point) are computed from a training step's embeddings and logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PROBE_COLUMNS = ["image", "label", "fraction", "split", "slice", "y", "x", "size"]


def build_probe_set(images: list[Path], labels: list[Path], out: Path, patch: int = 224, stride: int = 96,
                    threshold: float = 0.05, per_class: int = 64, seed: int = 0) -> Path:
    """Write the probe Parquet: uint8 patch bytes, binary label (mito fraction > threshold), split.

    Patches lying in the top half of a slice go to `bank`, bottom half to `query` (half =
    floor(height / 2)); each split is subsampled to `per_class` patches per class (fewer if a class
    has fewer) with a seeded generator. The cdeep3m defaults (threshold 0.05, top/bottom) give both
    classes enough patches in both halves; a left/right split does not (mitochondria cluster left).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if len(images) != len(labels) or not images:
        raise ValueError(f"need matching, non-empty image and label lists (got {len(images)} and {len(labels)})")
    rows: dict[str, list] = {name: [] for name in PROBE_COLUMNS}
    for index, (image_path, label_path) in enumerate(zip(images, labels)):
        image = np.asarray(Image.open(image_path).convert("L"))
        mask = np.asarray(Image.open(label_path)) > 0
        if image.shape != mask.shape:
            raise ValueError(f"{image_path}: shape {image.shape} differs from its label {label_path} {mask.shape}")
        height, width = image.shape
        half = height // 2
        for split, y_range in (("bank", range(0, half - patch + 1, stride)), ("query", range(half, height - patch + 1, stride))):
            for y in y_range:
                for x in range(0, width - patch + 1, stride):
                    fraction = float(mask[y:y + patch, x:x + patch].mean())
                    rows["image"].append(np.ascontiguousarray(image[y:y + patch, x:x + patch]).tobytes())
                    rows["label"].append(int(fraction > threshold))
                    rows["fraction"].append(fraction)
                    rows["split"].append(split)
                    rows["slice"].append(index)
                    rows["y"].append(y)
                    rows["x"].append(x)
                    rows["size"].append(patch)
    rng = np.random.default_rng(seed)
    label, split = np.array(rows["label"]), np.array(rows["split"])
    keep = []
    for name in ("bank", "query"):
        for cls in np.unique(label):
            members = np.flatnonzero((split == name) & (label == cls))
            keep.extend(rng.permutation(members)[:per_class].tolist())
    keep = sorted(keep)
    table = pa.table({name: [values[i] for i in keep] for name, values in rows.items()})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


def cdeep3m_validation_probe(em_root: Path, out: Path, **kwargs) -> Path:
    """The default probe: cdeep3m validation slices 050-059 (../shared/data/em/cdeep3m_mito_sbem)."""
    root = Path(em_root) / "cdeep3m_mito_sbem" / "validation"
    images = sorted((root / "images").glob("images.*.png"))
    labels = [root / "labels" / f"mitos_3D.{p.name.split('.')[1]}.png" for p in images]
    return build_probe_set(images, labels, out, **kwargs)


@dataclass(frozen=True)
class ProbeSet:
    """Probe patches resized to the view size and normalised like the training views."""

    bank: torch.Tensor         # float32 (Nb, 1, S, S)
    bank_labels: torch.Tensor  # int64 (Nb,)
    query: torch.Tensor        # float32 (Nq, 1, S, S)
    query_labels: torch.Tensor  # int64 (Nq,)

    @property
    def chance(self) -> float:
        """Accuracy (%) of always answering the query set's most frequent class."""
        counts = torch.bincount(self.query_labels)
        return 100.0 * float(counts.max()) / float(counts.sum())


def load_probe_set(path: Path, size: int, mean: float, std: float) -> ProbeSet:
    """Read a probe Parquet; patches are resized (bilinear, antialiased) to `size` as whole-patch views."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    patch = np.array(table["size"])
    if len(set(patch.tolist())) != 1:
        raise ValueError(f"{path}: patches of several sizes {sorted(set(patch.tolist()))}")
    side = int(patch[0])
    images = np.stack([np.frombuffer(b, np.uint8).reshape(side, side) for b in table["image"]])
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)  # (N, 1, P, P)
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.sub_(mean).div_(std)
    labels = torch.tensor(table["label"], dtype=torch.long)
    split = np.array(table["split"])
    bank, query = torch.from_numpy(split == "bank"), torch.from_numpy(split == "query")
    return ProbeSet(x[bank], labels[bank], x[query], labels[query])


def pooled_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Global-average-pooled backbone features (N, C) of a torchvision ResNet, in eval mode, no grad.

    The encoder's mode is restored afterwards, so this can run inside the training loop.
    """
    was_training = encoder.training
    encoder.eval()
    body = nn.Sequential(*(m for name, m in encoder.named_children() if name not in ("avgpool", "fc")))
    device = next(encoder.parameters()).device
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            out.append(body(chunk.to(device)).float().mean(dim=(2, 3)).cpu())
    encoder.train(was_training)
    return torch.cat(out)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, query_labels: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN top-1 accuracy (%) with cosine similarity, as in InstDisc/MoCo's monitor.

    Each of the k nearest bank features votes for its label with weight exp(similarity / T).
    """
    bank = F.normalize(bank.float(), dim=1)    # (Nb, C)
    query = F.normalize(query.float(), dim=1)  # (Nq, C)
    k = min(k, bank.shape[0])
    similarity, index = (query @ bank.T).topk(k, dim=1)  # (Nq, k)
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    votes = torch.zeros(query.shape[0], classes)
    votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
    return 100.0 * float((votes.argmax(dim=1) == query_labels).float().mean())


def probe_knn(encoder: nn.Module, probe: ProbeSet, k: int = 20) -> float:
    """k-NN accuracy (%) of the encoder's pooled features on the probe set."""
    return knn_accuracy(pooled_features(encoder, probe.bank), probe.bank_labels,
                        pooled_features(encoder, probe.query), probe.query_labels, k=k)


@torch.no_grad()
def embedding_health(q: torch.Tensor, k: torch.Tensor, logits: torch.Tensor, temperature: float,
                     queue_size: int | None = None) -> dict[str, float]:
    """Collapse indicators of one step.

    q, k: (N, d) L2-normalised query and key embeddings of the positive pairs; logits (N, 1 + K [+ ...]),
    positive in column 0, queue in columns 1..K, divided by the temperature; `queue_size` K (None:
    every column after the positive is the queue's) keeps batch negatives appended after the queue
    (negatives 'queue+batch') out of the queue's statistics.
    emb_std: mean over dimensions of the per-dimension std of q, divided by 1/sqrt(d) (so ~1 healthy,
    ~0 collapsed); align: E||q - k||^2; uniform: log E exp(-2 ||q_i - q_j||^2) over pairs i != j
    (lower is more uniform; 0 means every embedding is the same point); logit_gap: mean positive
    minus mean negative cosine similarity; batch_acc1: % of q_i whose nearest key among the batch's
    own keys is k_i (chance 100 / N) -- the queue's logits cannot tell instance discrimination from a
    "which batch is this" signature that BN statistics shared by q and k leak, this can;
    queue_gap: mean cosine of q with the batch's other keys minus that with the queue -- ~0 when the
    queue holds keys like the current ones, > 0 when its keys are stale (the key encoder chasing a
    drifting query encoder: then the positive is recognised by its age and acc1 is not instance
    discrimination).
    """
    q, k = q.float(), k.float()
    n, d = q.shape
    std = q.std(dim=0).mean() * math.sqrt(d)
    align = (q - k).pow(2).sum(dim=1).mean()
    sq_dist = torch.cdist(q, q).pow(2)  # (N, N)
    off_diagonal = sq_dist[~torch.eye(n, dtype=torch.bool, device=q.device)]
    uniform = off_diagonal.mul(-2).exp().mean().log() if n > 1 else torch.tensor(0.0)
    cos = logits.float()[:, :None if queue_size is None else 1 + queue_size] * temperature  # (N, 1 + K)
    gap = cos[:, 0].mean() - cos[:, 1:].mean()
    in_batch = q @ k.T  # (N, N), positives on the diagonal
    batch_acc = in_batch.argmax(dim=1).eq(torch.arange(n, device=q.device)).float().mean() * 100
    others = in_batch[~torch.eye(n, dtype=torch.bool, device=q.device)].mean() if n > 1 else cos[:, 0].mean()
    queue_gap = others - cos[:, 1:].mean()
    return {"emb_std": float(std), "align": float(align), "uniform": float(uniform), "logit_gap": float(gap),
            "batch_acc1": float(batch_acc), "queue_gap": float(queue_gap)}


HEALTH_COLUMNS = ["emb_std", "align", "uniform", "logit_gap", "batch_acc1", "queue_gap"]


class EpochHealth:
    """Means of the logged health indicators over one epoch."""

    def __init__(self):
        self.sums = {name: 0.0 for name in HEALTH_COLUMNS}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for name in HEALTH_COLUMNS:
            self.sums[name] += values[name]
        self.count += 1

    def mean(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()} if self.count else {}


def collapse_reasons(health: dict[str, float], min_emb_std: float, min_logit_gap: float,
                     max_queue_gap: float) -> list[str]:
    """Which collapse thresholds an epoch's mean health crossed (empty: healthy or nothing logged)."""
    if not health:
        return []
    reasons = []
    if health["emb_std"] < min_emb_std:
        reasons.append(f"embedding std {health['emb_std']:.3f} x 1/sqrt(d) < {min_emb_std}")
    if health["logit_gap"] < min_logit_gap:
        reasons.append(f"positive-negative cosine gap {health['logit_gap']:.3f} < {min_logit_gap}")
    if health["queue_gap"] > max_queue_gap:
        reasons.append(f"stale queue: keys of the batch are {health['queue_gap']:.3f} closer to q than the queue's "
                       f"(> {max_queue_gap}); acc1 measures key age, not instances")
    return reasons
