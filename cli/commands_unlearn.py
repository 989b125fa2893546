"""``privkit unlearn``: remove a forget set from a trained classifier and compare with retraining."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from privkit.cli.common import read_metrics, DataOpt, DataSeedOpt, OutOpt, SizeOpt, echo_done, handle_errors


def register(app: typer.Typer, audit_app: typer.Typer, attack_app: typer.Typer) -> None:
    app.command("unlearn")(unlearn)


def parse_method_options(values: Optional[List[str]]) -> dict:
    """``["linearise=trained", "lam=0.5"]`` -> ``{"linearise": "trained", "lam": 0.5}``.

    A value is read as JSON where it parses (numbers, true/false, null), else kept as a string.
    """
    import json

    from privkit.errors import ConfigError

    options: dict = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--option {item!r} must be KEY=VALUE, e.g. --option linearise=pretrained")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip()
        options[key.strip().replace("-", "_")] = value
    return options


@handle_errors
def unlearn(model: Path = typer.Option(..., "--model", help="run folder of the trained model"),
            data: str = DataOpt,
            forget: str = typer.Option(..., "--forget",
                                       help="class=NAME | attr=ATTRIBUTE:VALUE | ids=FILE (indices as `privkit datasets "
                                            "info` numbers them) | random=FRACTION"),
            method: str = typer.Option(..., "--method", help="retrain, finetune, neggrad, neggrad-plus, random-label, "
                                                             "l1-sparse, salun, scrub, ntk, fast-ntk, rurk"),
            out: Path = OutOpt,
            reference: Optional[Path] = typer.Option(None, "--reference", help="a `--method retrain` run of the same "
                                                                               "forget set (for avg_gap)"),
            compare_retrain: bool = typer.Option(False, "--compare-retrain", help="also retrain in this command as the "
                                                                                 "reference"),
            from_run: Optional[Path] = typer.Option(None, "--from", help="apply RURK post hoc to this unlearning run's "
                                                                         "model (with --method rurk)"),
            data_seed: int = DataSeedOpt,
            seed: Optional[int] = typer.Option(None, "--seed", help="unlearning seed (default: the training seed)"),
            epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs of an iterative method"),
            lr: Optional[float] = typer.Option(None, "--lr", help="learning rate of an iterative method"),
            option: Optional[List[str]] = typer.Option(None, "--option",
                                                       help="a method hyperparameter KEY=VALUE, e.g. linearise=pretrained "
                                                            "or weighting=identity for fast-ntk (repeatable)"),
            size: Optional[int] = SizeOpt,
            tolerance: float = typer.Option(5.0, "--tolerance", help="points within which UA and MIA efficacy must "
                                                                     "match retrain for a positive verdict"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in --out"),
            task: str = typer.Option("classifier", "--task", help="classifier | i2i (image-to-image model; same as "
                                                                  "`privkit i2i unlearn`)"),
            alpha: Optional[float] = typer.Option(None, "--alpha", help="i2i: weight of the forget term (default 0.15)"),
            proxy_retain: Optional[str] = typer.Option(None, "--proxy-retain",
                                                       help="i2i: use this dataset's images as the retain set")) -> None:
    """Unlearn a forget set from a trained classifier (or, with --task i2i, an image-to-image model);
    writes the model, metrics, report and erasure receipt."""
    import json

    from privkit.errors import ConfigError
    from privkit.unlearn.run import unlearn_run

    if task == "i2i" and option:
        raise ConfigError("--option applies to classifier unlearning methods; for --task i2i use --alpha/--epochs/--lr")
    if task == "i2i":
        from privkit.cli.commands_i2i import i2i_unlearn

        return i2i_unlearn(model=model, data=data, forget=forget, method=method, out=out, alpha=alpha,
                           proxy_retain=proxy_retain, compare_retrain=compare_retrain, epochs=epochs, lr=lr,
                           eval_epochs=8, data_seed=data_seed, seed=seed, size=size, target=None, overwrite=overwrite)
    if task != "classifier":
        raise ConfigError(f"--task {task!r} is not one of classifier, i2i")
    if alpha is not None or proxy_retain is not None:
        raise ConfigError("--alpha and --proxy-retain apply to image-to-image models; add --task i2i")

    run = unlearn_run(model, data, forget, method, out, reference=reference, compare_retrain=compare_retrain,
                      from_run=from_run, data_seed=data_seed, seed=seed, epochs=epochs, lr=lr, size=size,
                      method_options=parse_method_options(option), tolerance=tolerance, overwrite=overwrite)
    metrics = read_metrics(run)
    if metrics is None:
        return
    shown = " ".join(f"{k}={metrics[k]:.2f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                     for k in ("UA", "RA", "TA", "MIA_efficacy", "RTE", "avg_gap"))
    typer.echo(shown)
    echo_done(run)
