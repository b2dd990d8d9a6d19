"""What a person checks the filter with: the hold-out ROC curve, random kept vs dropped patches,
and per-dataset counts before and after filtering."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cem_pipeline.core.patches import read_patches


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_png(y_true: np.ndarray, y_score: np.ndarray, path: Path, title: str) -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(y_true, y_score)
    auroc = roc_auc_score(y_true, y_score)
    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    axes.plot(fpr, tpr, lw=2, label=f"AUROC {auroc:.3f} (n = {len(y_true)})")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def montage_png(kept: Sequence[np.ndarray], dropped: Sequence[np.ndarray], path: Path, title: str = "") -> Path:
    """Two panels of patches, kept (informative) on the left and dropped on the right."""
    plt = _pyplot()
    columns = 4
    rows = max(1, -(-max(len(kept), len(dropped)) // columns))
    figure, axes = plt.subplots(rows, 2 * columns + 1, figsize=(2 * columns + 1, rows + 0.6), dpi=100, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for offset, images in ((0, kept), (columns + 1, dropped)):
        for index, image in enumerate(images):
            axes[index // columns, offset + index % columns].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0, columns // 2].set_title(f"kept ({len(kept)})", loc="left")
    axes[0, columns + 1 + columns // 2].set_title(f"dropped ({len(dropped)})", loc="left")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def kept_dropped_montage(store: Path, candidates: pd.DataFrame, scored: pd.DataFrame, per_class: int, seed: int,
                         path: Path, title: str) -> Path:
    """A seeded random sample of each side of the threshold, so the cut can be judged by eye."""
    rng = np.random.default_rng(seed)
    rows = candidates.set_index("patch_id").loc[scored["patch_id"]].reset_index()
    panels = []
    for keep in (True, False):
        pool = rows[scored["informative"].to_numpy() == keep]
        pick = np.sort(rng.choice(len(pool), min(len(pool), per_class), replace=False))
        panels.append(read_patches(store, pool.iloc[pick]))
    return montage_png(panels[0], panels[1], path, title)


def count_table(scored: pd.DataFrame, catalog_datasets: pd.Series) -> str:
    """Per dataset: catalog patches, scored patches (before), kept (after) and the share dropped."""
    counts = scored.groupby("dataset").agg(before=("informative", "size"), after=("informative", "sum"))
    counts["patches"] = catalog_datasets.astype(str).value_counts()
    lines = [f"{'dataset':<32}{'patches':>10}{'before':>10}{'after':>10}{'dropped':>10}"]
    for dataset, row in [*counts.iterrows(), ("total", counts.sum())]:
        dropped = 1 - row.after / row.before if row.before else 0.0
        lines.append(f"{dataset:<32}{int(row.patches):>10}{int(row.before):>10}{int(row.after):>10}{dropped:>10.1%}")
    return "\n".join(lines)
