"""``privkit demo``: the README's main job on built-in data."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from privkit.cli.common import handle_errors


def register(app: typer.Typer, audit_app: typer.Typer, attack_app: typer.Typer) -> None:
    app.command("demo")(demo)


@handle_errors
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="folder for the demo's runs"),
         overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier demo in --out")) -> None:
    """Run every module end to end on built-in data and print where the HTML report is."""
    from privkit.demo import run_demo
    from privkit.errors import ConfigError

    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {out} is not empty; pass --overwrite or choose another folder")
        shutil.rmtree(out)
    html = run_demo(out, echo=typer.echo)
    typer.secho(f"demo report: {html.resolve()}", fg=typer.colors.GREEN)
