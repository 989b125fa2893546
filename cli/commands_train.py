"""``privkit train``, ``privkit evaluate`` and ``privkit audit attributes``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from privkit.cli.common import (BinsOpt, DataOpt, DataSeedOpt, ImageSizeOpt, OutOpt, SeedOpt, SizeOpt, echo_done, fail, handle_errors,
                                load_data, parse_image_size, parse_list)


def register(app: typer.Typer, audit_app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    audit_app.command("attributes")(audit_attributes)


@handle_errors
def train(data: str = DataOpt,
          target: Optional[str] = typer.Option(None, "--target", help="attribute to predict (required for classifiers)"),
          out: Path = OutOpt,
          model: Optional[str] = typer.Option(None, "--model", help="architecture (see the model registry); default per modality"),
          epochs: int = typer.Option(10, "--epochs"), batch_size: int = typer.Option(64, "--batch-size"),
          lr: float = typer.Option(1e-3, "--lr"), weight_decay: float = typer.Option(0.0, "--weight-decay"),
          seed: int = SeedOpt, data_seed: int = DataSeedOpt, size: Optional[int] = SizeOpt,
          bins: Optional[List[str]] = BinsOpt, image_size: Optional[str] = ImageSizeOpt,
          dp: bool = typer.Option(False, "--dp", help="train with DP-SGD (Opacus)"),
          target_epsilon: float = typer.Option(8.0, "--target-epsilon"), delta: float = typer.Option(1e-5, "--delta"),
          max_grad_norm: float = typer.Option(1.0, "--max-grad-norm"),
          peft: Optional[str] = typer.Option(None, "--peft", help="parameter-efficient fine-tuning: bn | prompt"),
          replay_state: Optional[bool] = typer.Option(
              None, "--replay-state/--no-replay-state",
              help="with --peft: keep what `privkit unlearn --method fast-ntk` needs to answer requests by replaying "
                   "the recipe (one-off cost; default: kept when it fits in memory)"),
          resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in --out"),
          task: str = typer.Option("classifier", "--task", help="classifier | i2i (inpainting/outpainting model; "
                                                                "same as `privkit i2i train`)"),
          operator: str = typer.Option("center-crop", "--operator", help="i2i: center-crop (inpaint) | outpaint"),
          mask: float = typer.Option(0.5, "--mask", help="i2i: side of the centre square (fraction or pixels)")) -> None:
    """Train a classifier for one attribute (or, with --task i2i, an image-to-image model); writes the
    model artifact and a report."""
    from privkit.classify import train_run
    from privkit.errors import ConfigError
    from privkit.models.registry import model_entry

    if image_size is not None and (task == "i2i" or peft is not None):
        raise ConfigError("--image-size applies to plain classifier training only (not --task i2i or --peft); "
                          "resize the images beforehand or drop it")
    if task == "i2i":
        from privkit.cli.commands_i2i import i2i_train

        ignored = [flag for flag, given in (("--dp", dp), ("--peft", peft is not None), ("--bin", bool(bins)),
                                             ("--weight-decay", weight_decay != 0.0),
                                             ("--replay-state", replay_state is not None)) if given]
        if ignored:
            raise ConfigError(f"{', '.join(ignored)} do not apply to --task i2i; drop them")

        return i2i_train(data=data, out=out, model=model or "unet", operator=operator, mask=mask, epochs=epochs,
                         batch_size=batch_size, lr=lr, target=target, seed=seed, data_seed=data_seed, size=size,
                         resume=resume, overwrite=overwrite)
    if task != "classifier":
        raise ConfigError(f"--task {task!r} is not one of classifier, i2i")
    if target is None:
        raise ConfigError("--target is required: name the attribute to predict (see `privkit datasets info`)")
    if replay_state is not None and peft is None:
        flag = "--replay-state" if replay_state else "--no-replay-state"
        raise ConfigError(f"{flag} applies to --peft training only; add --peft bn (or prompt) or drop it")
    if dp and peft is not None:
        raise ConfigError("--dp with --peft is not supported yet (the PEFT path trains without DP-SGD); drop one of them")

    if model is not None:
        model_entry(model)
    resize = parse_image_size(image_size)
    ds = load_data(data, size=size, bins=bins, image_size=resize)
    options = {k: v for k, v in (("bins", bins), ("image_size", list(resize) if resize else None)) if v}
    ds.schema.attribute(target)
    dp_cfg = {"target_epsilon": target_epsilon, "delta": delta, "max_grad_norm": max_grad_norm} if dp else None
    if peft is not None:
        from privkit.cli.commands_peft import train_peft  # lands with the unlearning module

        run = train_peft(ds, data, target, out, model, peft, epochs, batch_size, lr, weight_decay, seed, data_seed, size,
                         resume, overwrite, keep_replay_state=replay_state)
    else:
        run = train_run(data, target, out, model_name=model, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, seed=seed, data_seed=data_seed, size=size, dp=dp_cfg, resume=resume,
                        overwrite=overwrite, dataset=ds, data_options=options or None)
    echo_done(run)


@handle_errors
def evaluate(model: Path = typer.Option(..., "--model", help="run folder of a trained model"), data: str = DataOpt,
             split: str = typer.Option("test", "--split", help="test | val | train | all"),
             out: Optional[Path] = typer.Option(None, "--out", help="write the report to this run folder"),
             size: Optional[int] = SizeOpt, overwrite: bool = typer.Option(False, "--overwrite")) -> None:
    """Accuracy per attribute vs chance, with a confusion matrix."""
    from privkit.classify import evaluate_run

    report, run = evaluate_run(model, data, out, split=split, size=size, overwrite=overwrite)
    m = report.metrics
    typer.echo(f"accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci'][0]:.4f}-{m['accuracy_ci'][1]:.4f}), chance {m['chance']:.4f}")
    if run is not None:
        echo_done(run)


@handle_errors
def audit_attributes(data: str = DataOpt, out: Path = OutOpt,
                     attrs: Optional[str] = typer.Option(None, "--attrs", help="comma-separated attributes (default: all)"),
                     attackers: str = typer.Option("linear,mlp,cnn", "--attackers"),
                     seed: int = SeedOpt, size: Optional[int] = SizeOpt, bins: Optional[List[str]] = BinsOpt,
                     image_size: Optional[str] = ImageSizeOpt,
                     overwrite: bool = typer.Option(False, "--overwrite")) -> None:
    """Train fresh attackers from scratch on DATA and report held-out accuracy vs chance per attribute."""
    from privkit.evaluate.attackers import attacker_table, fresh_attackers, list_attackers
    from privkit.evaluate.report import Report
    from privkit.io.rundir import RunDir

    ds = load_data(data, size=size, bins=bins, image_size=parse_image_size(image_size))
    names = ds.schema.check_attributes(parse_list(attrs)) or ds.schema.attribute_names
    kinds = parse_list(attackers)
    if not kinds:
        fail(f"--attackers {attackers!r} names no attacker; use some of: {', '.join(list_attackers())}")
    for k in kinds:
        if k not in list_attackers():
            fail(f"unknown attacker {k!r}; known attackers: {', '.join(list_attackers())}")
    with RunDir(out, "audit-attributes", {"data": data, "attrs": names, "attackers": kinds, "seed": seed},
                overwrite=overwrite) as run:
        results = fresh_attackers(ds, names, kinds=kinds, seed=seed)
        report = Report(f"Fresh-attacker audit of {data}", "audit-attributes")
        report.update_metrics({"attributes": results})
        headers, rows = attacker_table(results)
        report.table("held-out accuracy of attackers trained from scratch", headers, rows)
        report.text("Identity attributes are audited closed-set (same people in train and test, disjoint samples); "
                    "other attributes are split by identity.")
        report.write(run.path)
        run.finish()
    for attr, r in results.items():
        typer.echo(f"{attr}: best {r['best']:.3f} ({r['best_attacker']}), chance {r['chance']:.3f}")
    echo_done(run.path)
