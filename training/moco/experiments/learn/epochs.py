"""Per-epoch means of a run's metrics.csv (the tables in this folder): python epochs.py RUN_DIR [OUT.csv]"""
import csv
import sys

from training.moco.metrics import epoch_means

COLUMNS = ["loss", "acc1", "batch_acc1", "emb_std", "logit_gap", "queue_gap", "uniform", "images_per_s"]
means = epoch_means(sys.argv[1], COLUMNS)
table = [["epoch", *COLUMNS, "knn_acc"]]
for epoch in sorted(means):
    row = means[epoch]
    table.append([epoch, *(f"{row[name]:.4f}" if name in row else "" for name in COLUMNS), row.get("knn_acc", "")])
with open(sys.argv[2], "w", newline="") if len(sys.argv) > 2 else sys.stdout as out:
    csv.writer(out).writerows(table)
