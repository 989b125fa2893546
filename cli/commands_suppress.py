"""``privkit suppress`` (learn a MaSS transform + audit) and ``privkit transform`` (apply a saved transform)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from privkit.cli.common import (BinsOpt, DataOpt, DataSeedOpt, OutOpt, SeedOpt, SizeOpt, echo_done, handle_errors,
                                load_data, parse_list)


def register(app: typer.Typer, audit_app: typer.Typer, attack_app: typer.Typer) -> None:
    app.command("suppress")(suppress)
    app.command("transform")(transform)


@handle_errors
def suppress(data: str = DataOpt,
             attrs: str = typer.Option(..., "--attrs", help="comma-separated attributes to suppress, e.g. gender,age"),
             out: Path = OutOpt,
             preserve: Optional[str] = typer.Option(None, "--preserve", help="comma-separated attributes to keep useful"),
             budget: Optional[List[str]] = typer.Option(None, "--budget",
                                                        help="ATTR=NATS: allowed leakage m of a suppressed attribute "
                                                             "(default 0) or information n kept about a preserved one "
                                                             "(repeatable)"),
             epochs: int = typer.Option(20, "--epochs", help="epochs of MaSS training (one epoch is only n / batch-size generator steps)"),
             batch_size: int = typer.Option(64, "--batch-size"),
             lr: float = typer.Option(1e-3, "--lr", help="learning rate of the generator and feature net"),
             attackers: str = typer.Option("linear,mlp,cnn", "--attackers", help="fresh attackers of the audit"),
             audit_all: bool = typer.Option(False, "--audit-all", help="also audit attributes neither suppressed nor kept"),
             seed: int = SeedOpt, data_seed: int = DataSeedOpt, size: Optional[int] = SizeOpt,
             bins: Optional[List[str]] = BinsOpt,
             resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
             overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in --out")) -> None:
    """Learn a transform that suppresses ATTRS while keeping the rest useful (MaSS); writes it and an audit report."""
    from privkit.suppress.report import parse_budgets, suppress_run

    budgets = parse_budgets(budget)
    ds = load_data(data, size=size, bins=bins)
    run, metrics = suppress_run(data, parse_list(attrs), out, preserve=parse_list(preserve), budgets=budgets,
                                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, data_seed=data_seed, size=size,
                                attackers=parse_list(attackers), audit_all=audit_all, resume=resume,
                                overwrite=overwrite, dataset=ds)
    for name, r in metrics["attributes"].items():
        typer.echo(f"{name} ({r['role']}): chance {r['chance']:.3f}, original {r['original']:.3f}, "
                   f"released {r['released']:.3f}")
    echo_done(run)


@handle_errors
def transform(transform_dir: Path = typer.Option(..., "--transform", help="run folder of `privkit suppress` (or another transform)"),
              data: str = DataOpt,
              out: Path = typer.Option(..., "--out", help="folder to write the released data to (must not exist)"),
              batch_size: int = typer.Option(256, "--batch-size"),
              size: Optional[int] = SizeOpt, bins: Optional[List[str]] = BinsOpt) -> None:
    """Apply a saved transform to DATA and write the release in the input's own format, batch by batch."""
    from privkit.errors import ConfigError
    from privkit.transforms import apply_transform, check_applicable, load_transform

    # everything is checked before anything is written
    saved, meta = load_transform(transform_dir)
    if Path(out).expanduser().exists():
        raise ConfigError(f"output folder {out} already exists; choose a new --out or remove it")
    ds = load_data(data, size=size, bins=bins)
    check_applicable(saved, ds, meta)
    written = apply_transform(transform_dir, ds, out, batch_size=batch_size)
    typer.secho(f"released {len(ds)} samples: {written}", fg=typer.colors.GREEN)
