"""Sanity check of the MoCo model + optimiser alone: with weak augmentation (flips only, so the two views
of an image are nearly the same) contrastive learning must spread the embeddings and find the positive
among the batch's other keys. A collapse here would be a bug in the model or the step, not the recipe.

usage: python training/moco/experiments/collapse/sanity_identical_views.py BETON [STEPS] [LR] [MOMENTUM] [HEAD_BN: 0/1] [STRONG: 0/1]
"""
import sys

import torch

from cem_pipeline.export.sidecar import read_manifest
from training.data.augment import MocoAugmentParams, TwoViewAugment
from training.data.moco_pipeline import make_moco_loader
from training.moco.model import MoCo
from training.moco.probe import embedding_health
from training.moco.train import Runtime, train_step

beton, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
lr, m = (float(sys.argv[3]) if len(sys.argv) > 3 else 0.03), (float(sys.argv[4]) if len(sys.argv) > 4 else 0.99)
torch.set_num_threads(2)
torch.manual_seed(0)
meta = read_manifest(beton)
head_bn = len(sys.argv) > 5 and sys.argv[5] == "1"
strong = len(sys.argv) > 6 and sys.argv[6] == "1"
weak = MocoAugmentParams(out_size=64) if strong else MocoAugmentParams(
    out_size=64, scale=(0.9, 1.0), rotate_p=0.0, brightness=0.0, contrast=0.0, blur_p=0.0, noise_p=0.0)
augment = TwoViewAugment(meta.mean, meta.std, "cpu", seed=0, params=weak)
loader = make_moco_loader(beton, batch_size=32, num_workers=2, seed=0)
model = MoCo(128, 2048, 256, m, 0.2, arch="resnet18")
if head_bn:  # hidden BN in the projection head (SimCLR / MoCo v3): removes the embeddings' common component
    for enc in (model.encoder_q, model.encoder_k):
        enc.fc = torch.nn.Sequential(enc.fc[0], torch.nn.BatchNorm1d(2048), enc.fc[1], enc.fc[2])
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    for p in model.encoder_k.parameters():
        p.requires_grad = False
model.train()
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)
rt = Runtime(0, 1, torch.device("cpu"), None, False)
step = 0
while step < steps:
    for batch in loader:
        q_view, k_view = augment(*batch)
        loss, logits, q, k = train_step(model, opt, q_view, k_view, rt)
        step += 1
        if step % 5 == 0:
            h = embedding_health(q, k, logits, 0.2)
            print(f"step {step}: loss {loss.item():.3f} acc1 {(logits.argmax(1) == 0).float().mean().item() * 100:.1f} "
                  + " ".join(f"{n} {v:.3f}" for n, v in h.items()), flush=True)
        if step >= steps:
            break
