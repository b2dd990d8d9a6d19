"""`cem experiment transfer`: curate -> MoCoV2 per corpus and seed -> frozen-encoder U-Net per task,
condition and seed -> IoU, each step in this process through the stages' own functions.

Every unit of work (probe, curate, each pre-training run, each fine-tune + evaluation) has a folder
with a `done.json` whose fingerprint is the sha256 of the unit's fully resolved config plus its
inputs' identity. A re-run skips a unit whose fingerprint matches and whose outputs are intact,
redoes (after deleting its folder) one whose fingerprint changed, and removes the folders of units
no longer in the config, so editing the config and re-running redoes exactly what the edit touched.
An interrupted pre-training run resumes from its last checkpoint when its fingerprint is unchanged.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from cem_pipeline.core.atomic import write_text_atomic
from cem_pipeline.core.config import CemConfig
from cem_pipeline.core.cpu import cpu_model_and_flags
from cem_pipeline.core.lock import WorkdirBusy, WorkdirLock
from cem_pipeline.experiment.config import CONDITIONS, CORPORA, RECOMMENDED_SEEDS, Experiment, moco_config, seg_config
from cem_pipeline.experiment.table import render_markdown, task_summary
from training.moco.config import MocoConfig, dump_moco_config
from training.seg.config import SegConfig

DONE = "done.json"
STARTED = "started.json"
REPO = Path(__file__).resolve().parents[2]
SUMMARY_COLUMNS = ("loss", "acc1", "batch_acc1", "emb_std")
_CHECKPOINT_EPOCH = re.compile(r"checkpoint_(\d+)\.pth\.tar$")


class ExperimentError(RuntimeError):
    """A unit failed; the message names the unit, its folder and the stage's reason."""


@dataclass
class Unit:
    """One unit of work: where it writes, what it runs with (JSON) and the identity of what it reads."""

    name: str
    directory: Path
    config: dict[str, Any]
    inputs: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return sha256_json({"config": self.config, "inputs": self.inputs})


@dataclass
class Outcome:
    """What an invocation did (or, with dry_run, would do): (unit, action, reason) in order."""

    plan: list[tuple[str, str, str]] = field(default_factory=list)
    results: Path | None = None
    table: Path | None = None

    def units(self, action: str) -> list[str]:
        return [unit for unit, done, _ in self.plan if done == action]


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: Path) -> dict[str, int]:
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def display_path(path: Path, output_dir: Path) -> str:
    """A path as shown in table.md: relative to the repository when inside it, else to output_dir."""
    path = Path(path).resolve()
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    return os.path.relpath(path, output_dir)


def final_epoch_summary(run_dir: Path) -> dict[str, float | None]:
    """The last epoch's means of metrics.csv and its k-NN accuracy, plus the last step."""
    from training.moco.metrics import epoch_means

    means = epoch_means(run_dir, SUMMARY_COLUMNS)
    last = means[max(means)] if means else {}
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        steps = max((int(row["step"]) for row in csv.DictReader(f)), default=0)
    return {name: last.get(name) for name in (*SUMMARY_COLUMNS, "knn_acc")} | {"steps": steps}


@contextlib.contextmanager
def restored_threads() -> Iterator[None]:
    """The trainers set this process' torch and numba thread counts; put them back after each unit."""
    import numba
    import torch

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


@contextlib.contextmanager
def locked(root: Path, command: str) -> Iterator[None]:
    try:
        with WorkdirLock(root, command):
            yield
    except WorkdirBusy as exc:
        raise ExperimentError(str(exc)) from None


def git_state() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (None when git is unavailable)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine_info(experiment: Experiment, moco_threads: int | None) -> dict[str, Any]:
    import torch

    model, _ = cpu_model_and_flags()
    seg_threads = {task.name: task.settings.get("train", {}).get("threads") for task in experiment.tasks}
    return {
        "cpu_model": model,
        "cores": os.cpu_count() or 1,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "moco_threads": moco_threads,
        "seg_threads": ", ".join(f"{name}={threads}" for name, threads in seg_threads.items()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


class TransferRun:
    """One invocation over an experiment: plans the units in dependency order, runs or skips each."""

    def __init__(self, experiment: Experiment, dry_run: bool, log: Callable[[str], None]):
        self.experiment = experiment
        self.dry_run = dry_run
        self.echo = log
        self.outcome = Outcome()
        self.done: dict[str, dict[str, Any]] = {}  # unit name -> its done.json, for the results
        self.out = experiment.output_dir

    # ---- bookkeeping ------------------------------------------------------------------------

    def log(self, line: str) -> None:
        self.echo(line)
        if not self.dry_run:
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "experiment.log", "a") as f:
                f.write(f"{stamp} {line}\n")

    def record(self, unit: str, action: str, reason: str) -> None:
        self.outcome.plan.append((unit, action, reason))
        self.log(f"{action:7s} {unit} ({reason})")

    def state(self, unit: Unit, intact: Callable[[dict[str, Any]], bool], resumable: bool) -> tuple[str, str]:
        """(action, reason), action one of run, redo, resume, skip: skip when done.json's fingerprint
        matches and `intact(done)` holds; an interrupted resumable unit with an unchanged fingerprint resumes."""
        done = read_json(unit.directory / DONE)
        if done is None:
            started = read_json(unit.directory / STARTED)
            if started is None:
                return "run", "new"
            if resumable and started.get("fingerprint") == unit.fingerprint:
                return "resume", "interrupted, same fingerprint"
            return "run", "interrupted, restarts"
        if done.get("fingerprint") != unit.fingerprint:
            return "redo", "fingerprint changed"
        if not intact(done):
            return "redo", "its outputs changed on disk"
        return "skip", "fingerprint matches"

    def perform(self, unit: Unit, intact: Callable[[dict[str, Any]], bool], work: Callable[[bool], dict[str, Any]],
                resumable: bool = False) -> dict[str, Any] | None:
        """Skip, or run `work(resume)` in a fresh (or, resuming, the kept) folder and write done.json.
        Returns the unit's done.json, or None in a dry run when it would run."""
        action, reason = self.state(unit, intact, resumable)
        self.record(unit.name, action, reason)
        if action == "skip":
            self.done[unit.name] = read_json(unit.directory / DONE)
            return self.done[unit.name]
        if self.dry_run:
            return None
        resume = action == "resume"
        if not resume and unit.directory.exists():
            shutil.rmtree(unit.directory)
        unit.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(unit.directory / STARTED, json.dumps({"unit": unit.name, "fingerprint": unit.fingerprint}))
        started = time.perf_counter()
        try:
            with restored_threads():
                outputs = work(resume)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ExperimentError(f"{unit.name} failed ({display_path(unit.directory, self.out)}): {exc}") from exc
        done = {"unit": unit.name, "fingerprint": unit.fingerprint, "config": unit.config, "inputs": unit.inputs,
                "outputs": outputs, "seconds": time.perf_counter() - started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_text_atomic(unit.directory / DONE, json.dumps(done, indent=2, sort_keys=True) + "\n")
        self.log(f"done    {unit.name} in {done['seconds']:.1f} s")
        self.done[unit.name] = done
        return done

    def pending(self, name: str, upstream: str) -> None:
        self.record(name, "pending", f"after {upstream}")

    # ---- the plan ---------------------------------------------------------------------------

    def pretrain_dir(self, corpus: str, seed: int) -> Path:
        return self.out / "pretrain" / corpus / f"seed{seed}"

    def finetune_dir(self, task: str, condition: str, seed: int) -> Path:
        return self.out / "finetune" / task / condition / f"seed{seed}"

    def planned_dirs(self) -> set[Path]:
        seeds = self.experiment.seeds
        dirs = {self.out / "curate"} | {self.pretrain_dir(c, s) for c in CORPORA for s in seeds}
        dirs |= {self.finetune_dir(t.name, c, s) for t in self.experiment.tasks for c in CONDITIONS for s in seeds}
        if self.experiment.config.pretrain.probe is not None:
            dirs.add(self.out / "probe")
        return dirs

    def remove_stale(self) -> None:
        """Unit folders (they hold started.json) that the config no longer names, then emptied parents."""
        planned = self.planned_dirs()
        found = [p.parent for p in self.out.glob("*/" + STARTED)] + [p.parent for p in self.out.glob("pretrain/*/*/" + STARTED)]
        found += [p.parent for p in self.out.glob("finetune/*/*/*/" + STARTED)]
        for directory in sorted(set(found) - planned):
            self.record(str(directory.relative_to(self.out)), "remove", "no longer in the config")
            if not self.dry_run:
                shutil.rmtree(directory)
        if self.dry_run:
            return
        for tree in ("pretrain", "finetune"):
            for directory, subdirs, files in os.walk(self.out / tree, topdown=False):
                if not subdirs and not files:
                    os.rmdir(directory)

    def execute(self) -> None:
        started = time.perf_counter()
        if len(self.experiment.seeds) < RECOMMENDED_SEEDS:
            self.log(f"note: {len(self.experiment.seeds)} seed(s); a seed spread worth comparing with needs at least {RECOMMENDED_SEEDS}")
        self.remove_stale()
        probe_ready, probe = self.probe()
        exports = self.curate()
        upstream = "curate" if exports is None else None if probe_ready else "probe"
        self.finetune(self.pretrain(exports, probe, upstream))
        if not self.dry_run:
            self.write_results(time.perf_counter() - started)

    # ---- units ------------------------------------------------------------------------------

    def probe(self) -> tuple[bool, Path | None]:
        """(ready, probe Parquet or None when none is configured); not ready in a dry run that would build it."""
        settings = self.experiment.config.pretrain.probe
        if settings is None:
            return True, None
        images, masks = self.experiment.probe_images, self.experiment.probe_masks
        params = settings.model_dump(mode="json", exclude={"images", "masks"})
        directory = self.out / "probe"
        unit = Unit("probe", directory, {"images": [str(p) for p in images], "masks": [str(p) for p in masks], **params},
                    {"files": [file_stamp(p) for p in (*images, *masks)]})
        path = directory / "probe.parquet"

        def build(_: bool) -> dict[str, Any]:
            from training.moco.probe import build_probe_set

            build_probe_set(images, masks, path, **params)
            return {"probe": "probe/probe.parquet", "sha256": file_sha256(path)}

        done = self.perform(unit, lambda _: path.is_file(), build)
        return done is not None, path

    def curate(self) -> dict[str, dict[str, Any]] | None:
        """Both exports' identity (beton, sidecar JSON, rows) by corpus; None in a dry run that would curate."""
        from cem_pipeline.ingest.fingerprint import volume_fingerprint
        from cem_pipeline.sources.manifest import expand_all, specs_of

        corpora = self.experiment.corpora
        pipeline = corpora["curated"]
        items, _ = expand_all(specs_of(pipeline.ingest))
        # ingest's own per-volume fingerprints: a source file rewritten, added or removed changes them
        inputs = {"volumes": sorted(volume_fingerprint(i, pipeline.ingest, pipeline.seed) for i in items)}
        unit = Unit("curate", self.out / "curate", {c: corpora[c].model_dump(mode="json") for c in CORPORA}, inputs)

        def intact(done: dict[str, Any]) -> bool:
            return all(Path(e["beton"]).is_file() and file_stamp(Path(e["beton"])) == e["beton_stamp"]
                       and Path(e["meta"]).is_file() and file_sha256(Path(e["meta"])) == e["meta_sha256"]
                       for e in done["outputs"].values())

        done = self.perform(unit, intact, lambda _: self.run_curate(corpora))
        return None if done is None else done["outputs"]

    def run_curate(self, corpora: dict[str, CemConfig]) -> dict[str, dict[str, Any]]:
        """ingest -> dedup once (both resumable), then one export per corpus from the same catalog."""
        from cem_pipeline.core.cluster import open_client
        from cem_pipeline.core.workdir import Workdir
        from cem_pipeline.dedup.graph import run_dedup
        from cem_pipeline.export.writer import run_export
        from cem_pipeline.ingest.graph import run_ingest

        pipeline = corpora["curated"]
        workdir = Workdir(pipeline.workdir).create()
        outputs = {}
        with locked(workdir.root, "experiment transfer (curate)"):
            with open_client(pipeline.cluster, workdir.logs / "jobs") as client:
                summary = run_ingest(pipeline, client, progress=False)
                for line in summary.lines():
                    self.log(f"  ingest: {line}")
                if summary.errors and pipeline.ingest.fail_on_error:
                    raise ExperimentError(f"ingest: {len(summary.errors)} source(s) failed and ingest.fail_on_error is set")
                dedup = pipeline.dedup
                groups = run_dedup(client, workdir.root, dedup.distance, dedup.rule, dedup.group_by, pipeline.seed)
                self.log(f"  dedup: {len(groups)} groups, {int(groups['computed'].sum())} recomputed")
            for corpus in CORPORA:
                result = run_export(corpora[corpus])
                for note in result.notes:
                    self.log(f"  export {corpus}: note: {note}")
                beton = result.files[0]
                self.log(f"  export {corpus}: {result.rows} patches -> {display_path(beton, self.out)}")
                outputs[corpus] = {"export": corpora[corpus].export.name, "beton": str(beton), "beton_stamp": file_stamp(beton),
                                   "meta": str(result.meta_path), "meta_sha256": file_sha256(result.meta_path), "patches": result.rows}
        return outputs

    def epochs(self, exports: dict[str, dict[str, Any]], corpus: str, base_epochs: int, batch_size: int) -> int:
        """The corpus' epochs: the base's, or with equal_steps for raw, scaled to the curated corpus' steps."""
        if not self.experiment.config.pretrain.equal_steps or corpus == "curated":
            return base_epochs
        steps = {name: exports[name]["patches"] // batch_size for name in CORPORA}
        for name, per_epoch in steps.items():
            if per_epoch == 0:
                raise ExperimentError(f"corpus {name}: {exports[name]['patches']} patches, fewer than one batch of {batch_size}")
        return max(1, round(base_epochs * steps["curated"] / steps[corpus]))

    def pretrain(self, exports: dict[str, dict[str, Any]] | None, probe: Path | None,
                 upstream: str | None) -> dict[tuple[str, int], dict[str, Any] | None]:
        """Every (corpus, seed) run; returns their done.json outputs (None where a dry run would run it or,
        with `upstream` set, would first run that unit)."""
        experiment = self.experiment
        settings, base = experiment.pretrain_settings, experiment.pretrain_base
        origin = f"{experiment.config.pretrain.config} (with pretrain.overrides of {experiment.path})"
        checkpoints: dict[tuple[str, int], dict[str, Any] | None] = {}
        for corpus in CORPORA:
            for seed in experiment.seeds:
                name = f"pretrain/{corpus}/seed{seed}"
                if upstream is not None:
                    self.pending(name, upstream)
                    checkpoints[corpus, seed] = None
                    continue
                export = exports[corpus]
                directory = self.pretrain_dir(corpus, seed)
                template = moco_config(settings, base, Path(export["beton"]), directory, seed, origin, probe=probe)
                epochs = self.epochs(exports, corpus, template.optim.epochs, template.optim.batch_size)
                config = moco_config(settings, base, Path(export["beton"]), directory, seed, origin, epochs, probe)
                monitored = config.monitor.probe
                inputs = {"beton": export["beton_stamp"], "export_meta_sha256": export["meta_sha256"],
                          "probe_sha256": file_sha256(monitored) if monitored is not None else None}
                unit = Unit(name, directory, dump_moco_config(config), inputs)
                done = self.perform(unit, self.checkpoint_intact,
                                    lambda resume, c=config, p=export["patches"]: self.run_pretrain(c, p, resume), resumable=True)
                checkpoints[corpus, seed] = None if done is None else done["outputs"]
        return checkpoints

    def checkpoint_intact(self, done: dict[str, Any]) -> bool:
        outputs = done["outputs"]
        return all((self.out / outputs[key]).is_file() and file_stamp(self.out / outputs[key]) == outputs[f"{key}_stamp"]
                   for key in ("checkpoint", "initial_checkpoint"))

    def run_pretrain(self, config: MocoConfig, patches: int, resume: bool) -> dict[str, Any]:
        """MoCoV2 in this process (or its own spawned processes / torchrun); the transfer uses the last checkpoint."""
        from training.moco.checkpoint import checkpoint_path, latest_checkpoint
        from training.moco.train import launch

        if resume:
            config.output.resume = "auto"
        launch(config)
        checkpoint = latest_checkpoint(config.output.dir)
        if checkpoint is None:
            raise ExperimentError(f"{config.output.dir}: pre-training wrote no checkpoint")
        epoch = int(_CHECKPOINT_EPOCH.search(checkpoint.name).group(1))
        if epoch < config.optim.epochs:
            self.log(f"  warning: pre-training stopped at epoch {epoch} of {config.optim.epochs} (monitor.stop_on_collapse)")
        initial = checkpoint_path(config.output.dir, 0)
        if not initial.is_file():
            raise ExperimentError(f"{config.output.dir}: pre-training wrote no initial checkpoint {initial.name}")
        summary = final_epoch_summary(config.output.dir)
        return {"checkpoint": str(checkpoint.relative_to(self.out)), "checkpoint_sha256": file_sha256(checkpoint),
                "checkpoint_stamp": file_stamp(checkpoint), "initial_checkpoint": str(initial.relative_to(self.out)),
                "initial_checkpoint_sha256": file_sha256(initial), "initial_checkpoint_stamp": file_stamp(initial),
                "epoch": epoch, "epochs": config.optim.epochs,
                "steps": summary.pop("steps"), "patches": patches, "summary": summary}

    def finetune(self, checkpoints: dict[tuple[str, int], dict[str, Any] | None]) -> None:
        experiment = self.experiment
        for task in experiment.tasks:
            origin = f"{task.source} (with tasks[{task.name}].overrides of {experiment.path})"
            for condition in CONDITIONS:
                for seed in experiment.seeds:
                    name = f"finetune/{task.name}/{condition}/seed{seed}"
                    directory = self.finetune_dir(task.name, condition, seed)
                    checkpoint, inputs = None, {}
                    if condition != "random" or experiment.config.random_encoder == "initial":
                        # the random encoder is the curated run's checkpoint_0000, identical to the raw run's
                        source = "curated" if condition == "random" else condition
                        key = "initial_checkpoint" if condition == "random" else "checkpoint"
                        outputs = checkpoints[source, seed]
                        if outputs is None:
                            self.pending(name, f"pretrain/{source}/seed{seed}")
                            continue
                        checkpoint = self.out / outputs[key]
                        inputs = {"checkpoint_sha256": outputs[f"{key}_sha256"]}
                    config = seg_config(task.settings, directory, seed, experiment.arch, checkpoint, origin)
                    unit = Unit(name, directory, config.model_dump(mode="json"), inputs)
                    self.perform(unit, lambda _, d=directory: (d / "metrics.json").is_file(),
                                 lambda _, c=config: self.run_finetune(c))

    def run_finetune(self, config: SegConfig) -> dict[str, Any]:
        from training.seg.evaluate import run_evaluation
        from training.seg.train import run_training

        stage_log = lambda line: self.log(f"  {line}")  # noqa: E731
        run_training(config, log=stage_log)
        metrics = run_evaluation(config, log=stage_log)
        return {"mean_iou": metrics["mean_iou"], "classes": metrics["classes"], "per_item": metrics["per_item"]}

    # ---- results ----------------------------------------------------------------------------

    def write_results(self, invocation_seconds: float) -> None:
        """results.json (every run, its settings and numbers) and table.md, from the units' done.json."""
        experiment, out = self.experiment, self.out
        curate = self.done["curate"]
        pretrain = []
        for corpus in CORPORA:
            for seed in experiment.seeds:
                done = self.done[f"pretrain/{corpus}/seed{seed}"]
                pretrain.append({"corpus": corpus, "seed": seed, "dir": f"pretrain/{corpus}/seed{seed}", **done["outputs"],
                                 "seconds": done["seconds"], "settings": done["config"]})
        finetune = []
        for task in experiment.tasks:
            for condition in CONDITIONS:
                for seed in experiment.seeds:
                    name = f"finetune/{task.name}/{condition}/seed{seed}"
                    done = self.done[name]
                    finetune.append({"task": task.name, "condition": condition, "seed": seed, "dir": name, **done["outputs"],
                                     "seconds": done["seconds"], "settings": done["config"]})
        units = sum(done["seconds"] for done in self.done.values())
        results = {
            "name": experiment.config.name,
            "config": display_path(experiment.path, out),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "git": git_state(),
            "machine": machine_info(experiment, experiment.pretrain_settings.get("runtime", {}).get("threads")),
            "seeds": experiment.seeds,
            "conditions": list(CONDITIONS),
            "random_encoder": experiment.config.random_encoder,
            "wall_seconds": {"units": units, "invocation": invocation_seconds, "skipped": len(self.outcome.units("skip")),
                             "ran": sum(len(self.outcome.units(action)) for action in ("run", "redo", "resume"))},
            "curate": {"seconds": curate["seconds"], "corpora": {
                corpus: {"export": e["export"], "patches": e["patches"], "beton": display_path(Path(e["beton"]), out)}
                for corpus, e in curate["outputs"].items()}},
            "pretrain": pretrain,
            "finetune": finetune,
            "tasks": [{"name": t.name, "config": display_path(t.source, out), "eval_items": t.eval_items} for t in experiment.tasks],
            "summary": {t.name: task_summary(finetune, t.name, CONDITIONS) for t in experiment.tasks},
        }
        self.outcome.results = write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
        self.outcome.table = write_text_atomic(out / "table.md", render_markdown(results))
        self.log(f"wrote {display_path(self.outcome.results, out)} and {display_path(self.outcome.table, out)}")


def run_transfer(experiment: Experiment, dry_run: bool = False, log: Callable[[str], None] = print) -> Outcome:
    """Run (or with dry_run only plan) the experiment; returns what was run, skipped, redone and removed."""
    run = TransferRun(experiment, dry_run, log)
    if dry_run:
        run.execute()
    else:
        with locked(experiment.output_dir, "experiment transfer"):
            run.execute()
    return run.outcome
