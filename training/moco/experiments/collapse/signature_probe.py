"""Where does a run's contrastive top-1 come from? On fresh batches with a trained checkpoint, compare
the positive with (a) the saved queue and (b) the other keys of the same batch, with BN in train mode
(batch statistics, as in training) and in eval mode (running statistics: no batch information).

usage: python training/moco/experiments/collapse/signature_probe.py CONFIG CHECKPOINT
"""
import sys

import torch
import torch.nn.functional as F

from training.moco.checkpoint import load_checkpoint, load_released_state_dict
from training.moco.config import load_moco_config
from training.moco.train import build_data, build_model, resolve_runtime

config = load_moco_config(sys.argv[1])
torch.set_num_threads(2)
rt = resolve_runtime(config, 0, 1, 0)
loader, augment, norms = build_data(config, rt)
model = build_model(config, rt)
load_released_state_dict(model, load_checkpoint(sys.argv[2])["state_dict"])
queue = model.queue.clone()  # (dim, K)
batches = [augment(*b) for _, b in zip(range(6), loader)]
for mode in ("train", "eval"):
    model.train(mode == "train")
    with torch.no_grad():
        qs = [F.normalize(model.encoder_q(view_q), dim=1) for view_q, _ in batches]  # each (N, dim)
        ks = [F.normalize(model.encoder_k(view_k), dim=1) for _, view_k in batches]
    rows = []
    for b, (q, k) in enumerate(zip(qs, ks)):
        n = len(q)
        pos = (q * k).sum(1)  # (N,)
        saved = q @ queue  # (N, K): keys enqueued during training
        fresh = q @ torch.cat([ks[o] for o in range(len(ks)) if o != b]).T  # (N, 5N): other batches, same encoder now
        batch = q @ k.T  # (N, N)
        off = batch[~torch.eye(n, dtype=torch.bool)]
        rows.append([
            (pos > saved.max(1).values).float().mean() * 100,
            (pos > fresh.max(1).values).float().mean() * 100,
            (batch.argmax(1) == torch.arange(n)).float().mean() * 100,
            pos.mean(), off.mean(), fresh.mean(), saved.mean(),
        ])
    r = torch.tensor(rows).mean(0).tolist()
    print(f"BN {mode:5s}: top-1 vs saved queue {r[0]:5.1f}% | vs other batches' keys {r[1]:5.1f}% | in-batch {r[2]:5.1f}% ; "
          f"cos(q, k+) {r[3]:.3f}, other keys same batch {r[4]:.3f}, other batches {r[5]:.3f}, saved queue {r[6]:.3f}")
