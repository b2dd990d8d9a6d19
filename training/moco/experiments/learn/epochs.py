"""Per-epoch means of a run's metrics.csv (the tables in this folder): python epochs.py RUN_DIR [OUT.csv]"""
import csv
import sys
from collections import defaultdict

COLUMNS = ["loss", "acc1", "batch_acc1", "emb_std", "logit_gap", "queue_gap", "uniform", "images_per_s"]
values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
knn: dict[int, float] = {}
with open(sys.argv[1] + "/metrics.csv", newline="") as f:
    for row in csv.DictReader(f):
        epoch = int(row["epoch"])
        if row.get("knn_acc"):
            knn[epoch] = float(row["knn_acc"])
        for name in COLUMNS:
            if row.get(name):
                values[epoch][name].append(float(row[name]))
table = [["epoch", *COLUMNS, "knn_acc"]]
for epoch in sorted(values):
    means = [f"{sum(v) / len(v):.4f}" if (v := values[epoch][name]) else "" for name in COLUMNS]
    table.append([epoch, *means, knn.get(epoch, "")])
with open(sys.argv[2], "w", newline="") if len(sys.argv) > 2 else sys.stdout as out:
    csv.writer(out).writerows(table)
