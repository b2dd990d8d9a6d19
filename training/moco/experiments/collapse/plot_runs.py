"""Per-epoch summary of MoCo runs' metrics.csv files: one CSV and one PNG (loss, top-1, k-NN, emb std, gap).

usage: python training/moco/experiments/collapse/plot_runs.py OUT_STEM LABEL=RUN_DIR [LABEL=RUN_DIR ...]
"""
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = [("loss", "InfoNCE loss"), ("acc1", "contrastive top-1 (%)"), ("knn_acc", "probe k-NN acc (%)"),
          ("emb_std", "emb std x sqrt(d)"), ("batch_acc1", "in-batch top-1 (%)"), ("logit_gap", "pos - neg cosine"),
          ("queue_gap", "cos(other keys) - cos(queue)"),
          ("uniform", "uniformity")]


def per_epoch(run: Path) -> list[dict]:
    sums, counts = defaultdict(lambda: defaultdict(float)), defaultdict(lambda: defaultdict(int))
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            e = int(row["epoch"])
            for name, _ in PANELS:
                if row.get(name):
                    sums[e][name] += float(row[name])
                    counts[e][name] += 1
    return [{"epoch": e, **{n: sums[e][n] / counts[e][n] for n in sums[e]}} for e in sorted(sums)]


def main() -> None:
    stem, runs = Path(sys.argv[1]), [a.split("=", 1) for a in sys.argv[2:]]
    table = [(label, per_epoch(Path(d))) for label, d in runs]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "epoch"] + [n for n, _ in PANELS])
        for label, rows in table:
            for r in rows:
                w.writerow([label, r["epoch"]] + [f"{r[n]:.4f}" if n in r else "" for n, _ in PANELS])
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    for ax, (name, title) in zip(axes.flat, PANELS):
        for label, rows in table:
            pts = [(r["epoch"], r[name]) for r in rows if name in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes.flat[0].axhline(5.5530, color="grey", ls=":", lw=1)  # ln(257)
    axes.flat[2].axhline(50, color="grey", ls=":", lw=1)  # chance
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=80)


if __name__ == "__main__":
    main()
