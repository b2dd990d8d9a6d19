"""The numbers of a transfer experiment, summarised: means and sample stds over seeds, paired
differences, one verdict sentence per task, and the Markdown table, all from `results.json`'s rows.

A difference between two conditions is taken per seed (same seed = same decoder initialisation,
batches and augmentation; only the encoder differs), then averaged. It counts as "larger than the
seed spread" when |mean| exceeds the sample std of those paired differences; with n = 3 that is a
t statistic above sqrt(3) ~ 1.7, a weak criterion that the table states next to its verdicts.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

PRETRAIN_COLUMNS = (("loss", "final loss", 3), ("batch_acc1", "in-batch top-1 %", 1), ("emb_std", "emb_std", 3),
                    ("knn_acc", "k-NN %", 1))
SPREAD_RULE = ("A difference is taken per seed (same seed: same decoder init, batches and augmentation) and counts as "
               "larger than the seed spread when |mean| exceeds the sample std of the paired differences "
               "(n = 3: t > 1.7, a weak criterion).")


@dataclass(frozen=True)
class Stats:
    """Mean and sample standard deviation (ddof 1) of the values present; std is None below two values."""

    mean: float | None
    std: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def describe(values: Iterable[float | None]) -> Stats:
    present = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not present:
        return Stats(None, None, 0)
    return Stats(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present))


def paired_differences(a: dict[int, float | None], b: dict[int, float | None]) -> dict[int, float]:
    """a - b per seed, over the seeds where both have a value."""
    return {seed: a[seed] - b[seed] for seed in sorted(set(a) & set(b)) if a[seed] is not None and b[seed] is not None}


def iou_by_seed(finetune: list[dict[str, Any]], task: str, condition: str) -> dict[int, float | None]:
    return {row["seed"]: row["mean_iou"] for row in finetune if row["task"] == task and row["condition"] == condition}


def task_summary(finetune: list[dict[str, Any]], task: str, conditions: Iterable[str]) -> dict[str, Any]:
    """Per condition: stats over seeds and the per-seed values; per other condition: the paired difference to random."""
    per_condition = {c: iou_by_seed(finetune, task, c) for c in conditions}
    summary: dict[str, Any] = {"conditions": {}, "differences": {}}
    for condition, values in per_condition.items():
        summary["conditions"][condition] = {**describe(values.values()).as_dict(), "per_seed": _by_name(values)}
    pairs = [(c, "random") for c in per_condition if c != "random"] + [("curated", "raw")]
    for a, b in pairs:
        if a in per_condition and b in per_condition:
            diffs = paired_differences(per_condition[a], per_condition[b])
            summary["differences"][f"{a}-{b}"] = {**describe(diffs.values()).as_dict(), "per_seed": _by_name(diffs)}
    return summary


def _by_name(values: dict[int, Any]) -> dict[str, Any]:
    """Seed keys as strings, as JSON stores them, so a summary reads the same before and after a round trip."""
    return {str(seed): value for seed, value in values.items()}


def _stats(entry: dict[str, Any]) -> Stats:
    return Stats(entry["mean"], entry["std"], entry["n"])


def format_stats(stats: Stats, digits: int = 3, signed: bool = False) -> str:
    """'0.512 ± 0.010 (n=3)'; a single value shows its std as n/a; no value at all is 'n/a'."""
    if stats.n == 0 or stats.mean is None:
        return "n/a"
    value = stats.mean if abs(stats.mean) >= 0.5 * 10 ** -digits else 0.0  # no "-0.000"
    mean = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    std = "n/a" if stats.std is None else f"{stats.std:.{digits}f}"
    return f"{mean} ± {std} (n={stats.n})"


def exceeds_spread(stats: Stats) -> bool | None:
    """Whether |mean| exceeds the std of the paired differences; None when there is no spread (n < 2)."""
    if stats.n < 2 or stats.mean is None or stats.std is None:
        return None
    return abs(stats.mean) > stats.std


def comparison(stats: Stats, a: str, b: str) -> str:
    text = f"{a} - {b} = {format_stats(stats, signed=True)}"
    judged = exceeds_spread(stats)
    if stats.n == 0:
        return f"{a} - {b}: no seed has both"
    if judged is None:
        return f"{text}: one seed, no spread to judge it by"
    return f"{text}: {'larger than the seed spread' if judged else 'within the seed spread, not a measured difference'}"


def relation(stats: Stats) -> str:
    if exceeds_spread(stats):
        return "beats" if stats.mean > 0 else "is worse than"
    return "does not measurably differ from"


def verdict(task: str, summary: dict[str, Any]) -> str:
    """One sentence from the numbers: does curated beat random, and raw, by more than the seed spread?"""
    differences = summary["differences"]
    versus_random, versus_raw = _stats(differences["curated-random"]), _stats(differences["curated-raw"])
    return (f"**{task}**: curated {relation(versus_random)} random ({comparison(versus_random, 'curated', 'random')}); "
            f"it {relation(versus_raw)} raw ({comparison(versus_raw, 'curated', 'raw')}).")


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _value(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _distinct(values: Iterable[Any]) -> str:
    found = sorted(set(values))
    return ", ".join(str(v) for v in found) if found else "n/a"


def pretrain_table(results: dict[str, Any]) -> list[str]:
    header = "| corpus | export | patches | epochs | steps | " + " | ".join(label for _, label, _ in PRETRAIN_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (5 + len(PRETRAIN_COLUMNS))]
    for corpus, info in results["curate"]["corpora"].items():
        runs = [r for r in results["pretrain"] if r["corpus"] == corpus]
        cells = [corpus, f"`{info['export']}`", str(info["patches"]), _distinct(r["epoch"] for r in runs),
                 _distinct(r["steps"] for r in runs)]
        cells += [format_stats(describe(r["summary"].get(key) for r in runs), digits) for key, _, digits in PRETRAIN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def task_table(results: dict[str, Any], task: dict[str, Any]) -> list[str]:
    seeds = results["seeds"]
    summary = results["summary"][task["name"]]
    lines = [f"| encoder | IoU mean ± std (n) | per seed ({', '.join(str(s) for s in seeds)}) | minus random, paired |",
             "|---|---|---|---|"]
    for condition in results["conditions"]:
        entry = summary["conditions"][condition]
        per_seed = ", ".join(_value(entry["per_seed"].get(str(seed))) for seed in seeds)
        difference = summary["differences"].get(f"{condition}-random")
        versus_random = "—" if difference is None else format_stats(_stats(difference), signed=True)
        cells = [condition, format_stats(_stats(entry)), per_seed, versus_random]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


RANDOM_ENCODERS = {
    "initial": "the weights each seed's pre-training starts from (checkpoint_0000, frozen like the others): "
               "minus random is the effect of pre-training, free of the luck of two random draws",
    "independent": "the segmentation model's own random init for the seed (frozen): the paper's Figure 2c baseline",
}


def render_markdown(results: dict[str, Any]) -> str:
    """table.md: wall time and machine first, then pre-training per corpus, then IoU per task with its verdict."""
    machine, git, wall = results["machine"], results["git"], results["wall_seconds"]
    commit = "unknown" if git["commit"] is None else git["commit"][:12] + (" (uncommitted changes)" if git["dirty"] else "")
    lines = [
        f"# Transfer experiment `{results['name']}`",
        "",
        f"- wall time: {format_seconds(wall['units'])} of work over all units "
        f"(this invocation {format_seconds(wall['invocation'])}: {wall['ran']} units run, {wall['skipped']} skipped)",
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"torch threads {machine['torch_threads']} (MoCo runtime.threads {machine['moco_threads']}, "
        f"seg train.threads {machine['seg_threads']}), GPU {machine['gpu']}",
        f"- config `{results['config']}`, git {commit}, seeds {', '.join(str(s) for s in results['seeds'])}, written {results['created']}",
        f"- random = {RANDOM_ENCODERS[results.get('random_encoder', 'independent')]}",
        "",
        "## Pre-training (MoCoV2; final-epoch means, mean ± std over seeds)",
        "",
        *pretrain_table(results),
        "",
    ]
    for task in results["tasks"]:
        lines += [f"## {task['name']}: IoU on {task['eval_items']} held-out item(s) (`{task['config']}`)", "",
                  *task_table(results, task), "", verdict(task["name"], results["summary"][task["name"]]), ""]
    lines += [SPREAD_RULE, ""]
    return "\n".join(lines)
