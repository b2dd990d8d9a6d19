"""`cem label`, `cem train-filter`, `cem filter` and `cem bench score`: the uninformative-patch filter stage."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, echo_result

MODEL_FILES = {"resnet34": "patch_classifier.pt", "random_forest": "patch_classifier_rf.joblib"}


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


ModelOption = typer.Option(None, help="resnet34 or random_forest (default filter.model)")


def _model_kind(kind: str) -> str:
    if kind not in MODEL_FILES:
        _fail(f"--model must be one of {', '.join(MODEL_FILES)}, got {kind!r}", 2)
    return kind


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("label")
    def label(
        config: Optional[Path] = ConfigArg,
        port: Optional[int] = typer.Option(None, help="port on 127.0.0.1 (default filter.label_port; 0 = any free)"),
        import_file: Optional[Path] = typer.Option(
            None, "--import", help="add labels from a Parquet/CSV file (patch_id, label) instead of serving the page"
        ),
        demo_corpus: Optional[Path] = typer.Option(
            None, help="label the first filter.label_target candidates from the demo corpus's known truth (no person)"
        ),
    ) -> None:
        """Label patches informative / uninformative in a local web page; resumable, saved after every decision."""
        from cem_pipeline.core.workdir import Workdir
        from cem_pipeline.filter.label_app.server import LabelSession, make_server
        from cem_pipeline.filter.labels import LabelsError, balance, import_labels

        cfg = config_or_exit(config)
        workdir = Workdir(cfg.workdir).create()
        if import_file is not None:
            try:
                labels = import_labels(workdir.labels, import_file)
            except LabelsError as exc:
                _fail(str(exc), 2)
            typer.echo(f"{workdir.labels}: {len(labels)} labels; {balance(labels)}")
            return
        session = LabelSession(workdir, cfg.filter.label_target, cfg.filter.seed)
        if demo_corpus is not None:
            from cem_pipeline.demo.corpus import demo_labels_for_catalog
            from cem_pipeline.filter.labels import record_labels

            truth = demo_labels_for_catalog(demo_corpus, session.candidates.head(session.target))
            if not len(truth):
                _fail(f"{demo_corpus}: none of the catalog's patches come from this demo corpus", 2)
            labels = record_labels(workdir.labels, truth)
            typer.echo(f"{workdir.labels}: {len(labels)} labels from the demo corpus truth; {balance(labels)}")
            return
        if not len(session.candidates):
            _fail(f"{workdir.catalog}: no patches to label; run `cem ingest` first")
        port = cfg.filter.label_port if port is None else port
        try:
            server = make_server(session, port)
        except OSError as exc:
            _fail(f"127.0.0.1:{port}: cannot listen ({exc.strerror}); pass --port 0 for any free port")
        host, bound = server.server_address[:2]
        typer.echo(f"labelling {session.note}; target {session.target}; saving to {workdir.labels}")
        typer.echo(f"open http://{host}:{bound}/  (Ctrl-C to stop; progress is kept)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            typer.echo(f"stopped; {session.state()['counts']}")
        finally:
            server.server_close()

    @app.command("train-filter")
    def train_filter(
        config: Optional[Path] = ConfigArg,
        model: Optional[str] = ModelOption,
    ) -> None:
        """Train the patch classifier on the labels; report hold-out AUROC and write the ROC curve PNG."""
        import numpy as np
        import torch

        from cem_pipeline.core.catalog import read_table
        from cem_pipeline.core.patches import read_patches
        from cem_pipeline.core.workdir import Workdir
        from cem_pipeline.filter.classifier import WeightsError, train_classifier
        from cem_pipeline.filter.features import train_random_forest
        from cem_pipeline.filter.labels import read_labels, training_targets
        from cem_pipeline.filter.report import roc_png

        cfg = config_or_exit(config)
        kind = _model_kind(model or cfg.filter.model)
        workdir = Workdir(cfg.workdir).create()
        targets = training_targets(read_labels(workdir.labels))
        if not len(targets):
            _fail(f"{workdir.labels}: no informative/uninformative labels yet; run `cem label` first")
        rows = read_table(workdir.root).merge(targets, on="patch_id", how="inner")
        if len(rows) < len(targets):
            _fail(f"{workdir.labels}: {len(targets) - len(rows)} labelled patch ids are not in the catalog {workdir.catalog}")
        images = read_patches(workdir.store, rows)
        labels = rows["target"].to_numpy(np.int64)
        typer.echo(f"training {kind} on {len(labels)} labels ({int(labels.sum())} informative)")
        try:
            if kind == "resnet34":
                result = train_classifier(images, labels, cfg.filter)
            else:
                result = train_random_forest(images, labels, cfg.filter)
        except (ValueError, WeightsError) as exc:
            _fail(str(exc))
        path = workdir.models / MODEL_FILES[kind]
        if kind == "resnet34":
            torch.save(result.model.state_dict(), path)
        else:
            import joblib

            joblib.dump(result.model, path)
        roc = roc_png(result.y_true, result.y_score, workdir.reports / f"filter_roc_{kind}.png", f"{kind}: hold-out ROC")
        summary = {**result.summary(), "model_path": str(path), "roc_png": str(roc)}
        (workdir.reports / f"filter_train_{kind}.json").write_text(json.dumps(summary, indent=2))
        typer.echo(f"hold-out AUROC {result.auroc:.3f} (n = {len(result.y_true)}); model {path}; ROC {roc}")

    @app.command("filter")
    def filter_(
        config: Optional[Path] = ConfigArg,
        weights: Optional[Path] = typer.Option(
            None, help="resnet34 state_dict (ours or the authors' patch_quality_classifier_nn.pth); default filter.weights, then WORKDIR/models"
        ),
        model: Optional[str] = ModelOption,
    ) -> None:
        """Score the dedup exemplars through Dask; write score/informative to the catalog and a kept/dropped montage."""
        from cem_pipeline.core.catalog import read_table
        from cem_pipeline.core.cluster import (
            ClusterError,
            open_client,
            worker_resources,
        )
        from cem_pipeline.core.workdir import Workdir
        from cem_pipeline.filter.classifier import (
            WeightsError,
            classifier_from_state,
            read_state_dict,
        )
        from cem_pipeline.filter.report import count_table, kept_dropped_montage
        from cem_pipeline.filter.scoring import score_catalog
        from cem_pipeline.filter.selection import filter_candidates

        cfg = config_or_exit(config)
        kind = _model_kind(model or cfg.filter.model)
        workdir = Workdir(cfg.workdir).create()
        path = weights or (Path(cfg.filter.weights) if cfg.filter.weights and kind == "resnet34" else workdir.models / MODEL_FILES[kind])
        if not path.exists():
            _fail(f"{path}: no classifier; run `cem train-filter` or pass --weights")
        try:
            if kind == "resnet34":
                payload = read_state_dict(path)
                classifier_from_state(payload, origin=str(path))
            else:
                import joblib

                payload = joblib.load(path)
        except WeightsError as exc:
            _fail(str(exc), 2)
        candidates, note = filter_candidates(workdir.root)
        if not len(candidates):
            _fail(f"{workdir.catalog}: no patches to score; run `cem ingest` first")
        gpu = worker_resources(cfg.cluster).get("GPU", 0) > 0
        typer.echo(f"scoring {note} with {kind} {path} on {'GPU' if gpu else 'CPU'} workers")
        try:
            with open_client(cfg.cluster, workdir.logs / "jobs") as client:
                scored = score_catalog(client, workdir.root, workdir.store, candidates, kind, payload,
                                       cfg.filter.input_size, cfg.filter.batch_size, cfg.filter.part_size,
                                       cfg.filter.threshold, gpu, cfg.filter.cpu_bf16)
        except ClusterError as exc:
            _fail(f"cluster: {exc}")
        typer.echo(count_table(scored, read_table(workdir.root, ["dataset"])["dataset"]))
        typer.echo(f"before: the scored patches ({note}); after: score > {cfg.filter.threshold:g}")
        montage = kept_dropped_montage(workdir.store, candidates, scored, cfg.filter.montage_per_class, cfg.seed,
                                       workdir.reports / "filter_kept_dropped.png",
                                       f"{kind}, threshold {cfg.filter.threshold:g}")
        typer.echo(f"montage of random kept vs dropped patches: {montage}")

    @bench_app.command("score")
    def bench_score(
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        n: int = typer.Option(128, help="patches per measurement"),
        batch_size: int = typer.Option(64, help="our batch size"),
    ) -> None:
        """Patches/s of the scoring kernel vs the paper's classify_nn.py way (per-patch PIL transforms, batch 128 fp32)."""
        from cem_pipeline.bench.score import bench_scoring

        result = bench_scoring(n, batch_size)
        echo_result(result, as_json)
