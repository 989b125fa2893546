"""``privkit audit residual``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from privkit.cli.common import read_metrics, DataOpt, DataSeedOpt, OutOpt, SizeOpt, echo_done, handle_errors


def register(app: typer.Typer, audit_app: typer.Typer, attack_app: typer.Typer) -> None:
    audit_app.command("residual")(residual)


@handle_errors
def residual(model: Path = typer.Option(..., "--model", help="run folder of the unlearned model"),
             data: str = DataOpt,
             forget: str = typer.Option(..., "--forget", help="class=3 | attr=identity:s7 | ids=FILE | random=0.1"),
             out: Path = OutOpt,
             reference: Optional[Path] = typer.Option(None, "--reference", help="run folder of a model retrained without the forget set"),
             tau: str = typer.Option("0.01,0.02,0.03,0.05,0.1", "--tau", help="comma-separated radii"),
             headline_tau: Optional[float] = typer.Option(None, "--headline-tau", help="tau of metrics.json's headline keys (default: middle of the grid)"),
             norm: str = typer.Option("linf", "--norm", help="linf | l2"),
             sampler: str = typer.Option("uniform", "--sampler", help="uniform | gaussian | pgd"),
             samples: int = typer.Option(64, "--samples", help="perturbations per forget sample"),
             seed: int = typer.Option(0, "--seed"), data_seed: int = DataSeedOpt, size: Optional[int] = SizeOpt,
             fix: bool = typer.Option(False, "--fix", help="fine-tune with RURK where residual knowledge is found, and "
                                                           "audit again"),
             fix_always: bool = typer.Option(False, "--fix-always",
                                             help="with --fix: run RURK even when the audit finds nothing to fix"),
             fix_epochs: Optional[int] = typer.Option(None, "--fix-epochs"),
             fix_lambda: float = typer.Option(1.0, "--fix-lambda"),
             overwrite: bool = typer.Option(False, "--overwrite")) -> None:
    """Does the unlearned model still recognise slightly perturbed forget samples? (Hsu et al., 2025)"""
    from privkit.audit.run import audit_residual_run

    fix_options = {"lam": fix_lambda, **({"epochs": fix_epochs} if fix_epochs else {})}
    run = audit_residual_run(model, data, forget, out, reference_dir=reference, taus=tau, headline_tau=headline_tau,
                             norm=norm, sampler=sampler, samples=samples, seed=seed, data_seed=data_seed, size=size,
                             fix=fix or fix_always, fix_options=fix_options, force_fix=fix_always,
                             overwrite=overwrite)
    import json

    m = read_metrics(run)

    if m is None:

        return
    head = m.get("after", m)
    typer.echo(f"mean r_tau {head['mean_r_tau']:.3f} [{head['ci_low']:.3f}, {head['ci_high']:.3f}], "
               f"{100 * head['frac_above_1']:.1f}% above 1"
               + ((" (after RURK)" if m.get("fix_applied") else " (no residual knowledge: RURK not needed, model "
                   "unchanged)") if "after" in m else ""))
    echo_done(run)
