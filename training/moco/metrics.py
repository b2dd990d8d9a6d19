"""Training metrics: one CSV (append-only, survives resume), TensorBoard scalars, a tqdm bar on rank 0.

Only rank 0 writes; other ranks get a logger whose methods do nothing, so the loop has no rank checks.
A row may carry only some columns (the k-NN probe has a row of its own at the end of an epoch);
the others are left empty.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Iterable, Iterator

_POSTFIX = {"loss": ("loss", "{:.4f}"), "acc1": ("acc1", "{:.1f}"), "emb_std": ("std", "{:.2f}"),
            "knn_acc": ("knn", "{:.1f}"), "images_per_s": ("img_s", "{:.1f}")}
COLUMNS = ["epoch", "step", "loss", "acc1", "lr", "images_per_s", "emb_std", "align", "uniform", "logit_gap", "batch_acc1",
           "queue_gap", "knn_acc"]


class MetricsLogger:
    def __init__(self, directory: Path, enabled: bool, progress: bool = True):
        self.enabled = enabled
        self.progress = progress and enabled
        self.csv_path = Path(directory) / "metrics.csv"
        self._file = None
        self._writer = None
        self._tb = None
        self._bar = None
        self._postfix: dict[str, str] = {}
        if enabled:
            Path(directory).mkdir(parents=True, exist_ok=True)
            new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            self._file = open(self.csv_path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
            if new:
                self._writer.writeheader()
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(directory) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows past the checkpoint's step so the CSV has no duplicated steps."""
        if not self.enabled:
            return
        self._file.close()
        with open(self.csv_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self._file = open(self.csv_path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)

    def log(self, epoch: int, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        present = [k for k in COLUMNS[2:] if k in values]
        self._writer.writerow({"epoch": epoch, "step": step, **{k: f"{values[k]:.6g}" for k in present}})
        self._file.flush()
        for name in present:
            self._tb.add_scalar(f"{'probe' if name == 'knn_acc' else 'train'}/{name}", values[name], step)
        if self._bar is not None:
            self._postfix.update({short: fmt.format(values[name]) for name, (short, fmt) in _POSTFIX.items() if name in values})
            self._bar.set_postfix(self._postfix)

    def epoch_summary(self, epoch: int, values: dict[str, float]) -> None:
        """One line per epoch on stdout (the bar of an epoch does not stay), with the probe when it ran."""
        if not self.enabled:
            return
        line = f"epoch {epoch}: " + " ".join(f"{name} {values[name]:.4g}" for name in COLUMNS[2:] if name in values)
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def warn(self, message: str) -> None:
        """A line on stderr that stands out from the progress bar (rank 0 only)."""
        if self.enabled:
            print(f"\n{'!' * 8} {message} {'!' * 8}", file=sys.stderr, flush=True)

    def bar(self, iterable: Iterable, total: int, epoch: int) -> Iterator:
        """tqdm over one epoch on rank 0; the plain iterable elsewhere."""
        if not self.progress:
            return iter(iterable)
        from tqdm import tqdm

        self._bar = tqdm(iterable, total=total, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False)
        return self._bar

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def epoch_means(directory: Path, columns: Iterable[str]) -> dict[int, dict[str, float]]:
    """Per epoch of DIRECTORY/metrics.csv: the mean of each column over its logged steps, and the epoch's
    last k-NN accuracy as `knn_acc`; a column with no value in an epoch is left out of it."""
    sums: dict[int, dict[str, list[float]]] = {}
    with open(Path(directory) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            epoch = sums.setdefault(int(row["epoch"]), {})
            for name in (*columns, "knn_acc"):
                if row.get(name):
                    epoch.setdefault(name, []).append(float(row[name]))
    return {epoch: {name: values[-1] if name == "knn_acc" else sum(values) / len(values) for name, values in found.items()}
            for epoch, found in sums.items()}

