"""`cem train ...`.

`train_app` is the shared `cem train` sub-typer: other training stages add their command to it
from their own module (`from cem_pipeline.cli.train import train_app; @train_app.command("seg")`),
in any order relative to this module's `register`.
"""
from __future__ import annotations

import glob
from pathlib import Path

import typer

train_app = typer.Typer(help="Train models: MoCoV2 pre-training, segmentation transfer.", no_args_is_help=True)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
PROBE_HELP = (
    "Write the k-NN probe set that `cem train mocov2` monitors (monitor.probe) from labelled EM.\n\n"
    "Cuts every image into PATCH x PATCH patches (every STRIDE px) and labels each 1 when its mask's foreground "
    "fraction exceeds THRESHOLD, else 0. Patches in the top half of an image form the `bank` split, those in the "
    "bottom half the `query` split (no query overlaps a bank patch); each split keeps PER-CLASS patches of each "
    "class, so k-NN chance is 50 %. Use EM that the pre-training never sees.\n\n"
    "The default probe (cdeep3m validation slices 050-059): cem train probe-set "
    "--images ../shared/data/em/cdeep3m_mito_sbem/validation/images "
    "--masks ../shared/data/em/cdeep3m_mito_sbem/validation/labels --out probe.parquet"
)


def _files(spec: str, option: str) -> list[Path]:
    """A folder (its image files), a glob pattern or one file, in natural-sort order of the file names."""
    from training.seg.datasets import natural_key

    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
    if not found:
        typer.secho(f"{option} {spec}: no image files (a folder of {', '.join(IMAGE_SUFFIXES)}, a glob or a file)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return sorted(found, key=lambda p: (natural_key(p), str(p)))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")

    @train_app.command("mocov2")
    def mocov2(config: Path = typer.Argument(..., help="MoCoV2 YAML config (see training/moco/configs/)")) -> None:
        """Pre-train a 1-channel ResNet (model.arch: resnet18/34/50) with MoCoV2 on a .beton.

        Spawns runtime.nproc local processes; under torchrun, one process per GPU.
        """
        from cem_pipeline.core.config import ConfigError
        from training.moco.checkpoint import CheckpointError
        from training.moco.config import load_moco_config
        from training.moco.train import launch

        try:
            launch(load_moco_config(config))
        except (ConfigError, CheckpointError) as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    @train_app.command("probe-set", help=PROBE_HELP)
    def probe_set(
        images: str = typer.Option(..., "--images", help="EM images: a folder, a glob ('slices/*.png') or one file; "
                                   "8-bit gray (other modes are converted to L)"),
        masks: str = typer.Option(..., "--masks", help="label masks, same layout; nonzero = foreground. Paired with "
                                  "--images by position in natural-sort order, so counts and shapes must agree"),
        out: Path = typer.Option(..., "--out", help="probe Parquet to write (set it as monitor.probe in the MoCoV2 config)"),
        patch: int = typer.Option(224, "--patch", min=8, help="side of the square probe patches (px)"),
        stride: int = typer.Option(96, "--stride", min=1, help="step between patch origins (px)"),
        threshold: float = typer.Option(0.05, "--threshold", min=0.0, max=1.0,
                                        help="label 1 when the patch's foreground fraction exceeds this"),
        per_class: int = typer.Option(64, "--per-class", min=1, help="patches kept per class in each split (fewer if absent)"),
        seed: int = typer.Option(0, "--seed", help="seed of the per-class subsampling"),
    ) -> None:
        """Write the k-NN probe set that `cem train mocov2` monitors (monitor.probe) from labelled EM (help: PROBE_HELP)."""
        from training.moco.probe import build_probe_set

        image_files, mask_files = _files(images, "--images"), _files(masks, "--masks")
        if len(image_files) != len(mask_files):
            typer.secho(f"--images matched {len(image_files)} files but --masks {len(mask_files)}; they are paired "
                        "by natural-sort position, so the counts must agree", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        try:
            path = build_probe_set(image_files, mask_files, out, patch=patch, stride=stride, threshold=threshold,
                                   per_class=per_class, seed=seed)
        except (OSError, ValueError) as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        _report_probe(path, per_class)


def _report_probe(path: Path, per_class: int) -> None:
    """One line per split with its patch count per label; a warning when a split is not balanced."""
    from collections import Counter

    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["split", "label"]).to_pydict()
    counts = Counter(zip(table["split"], table["label"]))
    typer.echo(f"wrote {path}: {len(table['label'])} patches")
    for split in ("bank", "query"):
        per_label = {label: n for (name, label), n in sorted(counts.items()) if name == split}
        typer.echo(f"  {split}: " + ", ".join(f"label {label}: {n}" for label, n in per_label.items()))
        if len(per_label) < 2 or len(set(per_label.values())) > 1:
            typer.secho(f"  warning: {split} is not balanced over two classes (wanted {per_class} each); "
                        "k-NN chance is then not 50 % -- change --threshold, --stride or --per-class",
                        fg=typer.colors.YELLOW, err=True)
