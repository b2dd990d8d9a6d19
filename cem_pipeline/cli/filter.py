"""`cem label`, `cem train-filter` and `cem filter`: the uninformative-patch filter stage (`cem bench score` is in cli/bench.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cem_pipeline.cli.common import ConfigArg, config_or_exit, workdir_locked


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


ModelOption = typer.Option(None, help="resnet34 or random_forest (default filter.model)")
WeightsOption = typer.Option(
    None,
    help="resnet34 state_dict (ours or the authors' patch_quality_classifier_nn.pth); default filter.weights, then WORKDIR/models",
)


def _model_kind(kind: str) -> str:
    from cem_pipeline.filter.models import CLASSIFIERS

    if kind not in CLASSIFIERS:
        _fail(f"--model must be one of {', '.join(CLASSIFIERS)}, got {kind!r}", 2)
    return kind


def register(app: typer.Typer) -> None:
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
        from cem_pipeline.filter.labels import LabelsError, balance
        from cem_pipeline.filter.stage import FilterError, import_workdir_labels, open_label_page

        cfg = config_or_exit(config)
        if import_file is not None:
            try:
                labels_path, labels = import_workdir_labels(cfg, import_file)
            except LabelsError as exc:
                _fail(str(exc), 2)
            typer.echo(f"{labels_path}: {len(labels)} labels; {balance(labels)}")
            return
        if demo_corpus is not None:
            from cem_pipeline.demo.labels import label_from_demo_corpus

            try:
                labels_path, labels = label_from_demo_corpus(cfg, demo_corpus)
            except LabelsError as exc:
                _fail(str(exc), 2)
            typer.echo(f"{labels_path}: {len(labels)} labels from the demo corpus truth; {balance(labels)}")
            return
        try:
            page = open_label_page(cfg, port)
        except FilterError as exc:
            _fail(str(exc))
        session = page.session
        typer.echo(f"labelling {session.note}; target {session.target}; saving to {session.workdir.labels}")
        typer.echo(f"open {page.url}  (Ctrl-C to stop; progress is kept)")
        try:
            page.server.serve_forever()
        except KeyboardInterrupt:
            typer.echo(f"stopped; {session.state()['counts']}")
        finally:
            page.server.server_close()

    @app.command("train-filter")
    def train_filter(
        config: Optional[Path] = ConfigArg,
        model: Optional[str] = ModelOption,
    ) -> None:
        """Train the patch classifier on the labels; report hold-out AUROC and write the ROC curve PNG."""
        from cem_pipeline.filter import stage

        cfg = config_or_exit(config)
        kind = _model_kind(model or cfg.filter.model)
        try:
            trained = stage.train_filter(cfg, kind, echo=typer.echo)
        except (stage.FilterError, ValueError) as exc:  # ValueError: training cannot run (WeightsError included)
            _fail(str(exc))
        result = trained.result
        typer.echo(f"hold-out AUROC {result.auroc:.3f} (n = {len(result.y_true)}); model {trained.model_path}; ROC {trained.roc_png}")

    @app.command("filter")
    def filter_(
        config: Optional[Path] = ConfigArg,
        weights: Optional[Path] = WeightsOption,
        model: Optional[str] = ModelOption,
    ) -> None:
        """Score the dedup exemplars through Dask; write score/informative to the catalog and a kept/dropped montage."""
        from cem_pipeline.core.cluster import ClusterError
        from cem_pipeline.filter.classifier import WeightsError
        from cem_pipeline.filter.stage import FilterError, run_filter

        cfg = config_or_exit(config)
        kind = _model_kind(model or cfg.filter.model)
        try:
            with workdir_locked(cfg.workdir, "filter"):
                run = run_filter(cfg, kind, weights, echo=typer.echo)
        except WeightsError as exc:
            _fail(str(exc), 2)
        except FilterError as exc:
            _fail(str(exc))
        except ClusterError as exc:
            _fail(f"cluster: {exc}")
        typer.echo(run.counts)
        typer.echo(f"before: the scored patches ({run.note}); after: score > {run.threshold:g}")
        typer.echo(f"montage of random kept vs dropped patches: {run.montage}")
