from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        workdir: Path = typer.Option(Path("cem-demo"), help="where the corpus and every output go"),
        seed: int = typer.Option(0, help="seed of the corpus generator and of every stage"),
    ) -> None:
        """Generate a small EM-like corpus and run ingest -> dedup -> label -> filter -> FFCV export on a LocalCluster."""
        import click

        from cem_pipeline.demo.run import run_demo

        command = typer.main.get_command(app)

        def run_command(args: list[str]) -> int:
            try:
                result = command.main(args=args, prog_name="cem", standalone_mode=False)
            except click.exceptions.Exit as exc:
                return exc.exit_code
            except click.ClickException as exc:
                exc.show()
                return exc.exit_code
            return result if isinstance(result, int) else 0

        code = run_demo(workdir, seed, run_command, typer.echo)
        if code:
            raise typer.Exit(code)
