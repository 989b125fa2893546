"""``privkit i2i train`` and ``privkit i2i unlearn``: image-to-image models and their unlearning.

The command functions take the same parameters as ``privkit train --task i2i`` / ``privkit unlearn
--task i2i`` would, so those can call :func:`i2i_train` / :func:`i2i_unlearn` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from privkit.cli.common import read_metrics, DataOpt, OutOpt, SeedOpt, SizeOpt, echo_done, handle_errors

def register(app: typer.Typer, audit_app: typer.Typer, attack_app: typer.Typer) -> None:
    i2i_app = typer.Typer(help="Image-to-image models (inpainting/outpainting) and their unlearning.",
                          no_args_is_help=True)
    i2i_app.command("train")(i2i_train)
    i2i_app.command("unlearn")(i2i_unlearn)
    app.add_typer(i2i_app, name="i2i")


@handle_errors
def i2i_train(data: str = DataOpt, out: Path = OutOpt,
              model: str = typer.Option("unet", "--model", help="I2I architecture: mae-tiny | unet"),
              operator: str = typer.Option("center-crop", "--operator", help="center-crop (inpaint) | outpaint"),
              mask: float = typer.Option(0.5, "--mask", help="side of the centre square: a fraction of the image side "
                                                             "(<1) or pixels (>=1)"),
              epochs: int = typer.Option(10, "--epochs"), batch_size: int = typer.Option(64, "--batch-size"),
              lr: float = typer.Option(2e-3, "--lr"),
              target: Optional[str] = typer.Option(None, "--target", help="attribute `class=` forget requests refer "
                                                                         "to (default: identity, else the first)"),
              seed: int = SeedOpt,
              data_seed: int = typer.Option(0, "--data-seed", help="seed of the data split"),
              size: Optional[int] = SizeOpt,
              width: Optional[int] = typer.Option(None, "--width", help="U-Net only: channels of the first "
                                                                         "level (default 8; 24 fits digits better, "
                                                                         "see docs/i2i.md)"),
              resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
              overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in --out")) -> None:
    """Train an image-to-image model (inpainting or outpainting); writes the model artifact and a report."""
    import json

    from privkit.errors import ConfigError
    from privkit.generative.train import train_i2i_run

    model_kwargs = None
    if width is not None:
        if model != "unet":
            raise ConfigError(f"--width {width} applies to the U-Net only, not --model {model}; drop --width "
                              f"or use --model unet")
        if width < 1:
            raise ConfigError(f"--width {width} must be at least 1; pass a positive number of channels")
        model_kwargs = {"width": width}
    run = train_i2i_run(data, out, model_name=model, operator_name=operator, mask=mask, epochs=epochs,
                        batch_size=batch_size, lr=lr, seed=seed, data_seed=data_seed, size=size, target=target,
                        model_kwargs=model_kwargs, resume=resume, overwrite=overwrite)
    m = read_metrics(run)
    if m is None:
        return
    typer.echo(f"test PSNR {m['test_psnr']:.2f} dB, SSIM {m['test_ssim']:.3f}")
    echo_done(run)


@handle_errors
def i2i_unlearn(model: Path = typer.Option(..., "--model", help="run folder of `privkit i2i train`"),
                data: str = DataOpt,
                forget: str = typer.Option(..., "--forget", help="class=NAME | attr=ATTRIBUTE:VALUE | ids=FILE | "
                                                                 "random=FRACTION"),
                method: str = typer.Option("li2024", "--method", help="li2024, max-loss, noisy-label, retain-label, "
                                                                      "random-encoder, retrain"),
                out: Path = OutOpt,
                alpha: Optional[float] = typer.Option(None, "--alpha", help="weight of the forget term (default 0.15)"),
                proxy_retain: Optional[str] = typer.Option(None, "--proxy-retain",
                                                           help="use this dataset's images as the retain set"),
                compare_retrain: bool = typer.Option(False, "--compare-retrain",
                                                     help="also retrain on the retain set in this command (timed)"),
                epochs: Optional[int] = typer.Option(None, "--epochs", help="unlearning epochs"),
                lr: Optional[float] = typer.Option(None, "--lr", help="unlearning learning rate"),
                frozen_stages: Optional[int] = typer.Option(
                    None, "--frozen-stages",
                    help="keep the first K encoder stages (input side) at their original weights (default 0)"),
                eval_epochs: int = typer.Option(8, "--eval-epochs", help="epochs of the metric classifier"),
                eval_on_completions: bool = typer.Option(
                    False, "--eval-on-completions",
                    help="also train the metric classifier on the original model's completions of the training "
                         "images (use when it reads every blurry completion as one class)"),
                data_seed: Optional[int] = typer.Option(None, "--data-seed", help="must match training (default: it)"),
                seed: Optional[int] = typer.Option(None, "--seed", help="unlearning seed (default: the training seed)"),
                size: Optional[int] = SizeOpt,
                target: Optional[str] = typer.Option(None, "--target", help="attribute `class=` refers to"),
                overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in --out")) -> None:
    """Unlearn a forget set from an image-to-image model (Li et al., ICLR 2024, or a baseline)."""
    import json

    from privkit.generative.run import i2i_unlearn_run

    run = i2i_unlearn_run(model, data, forget, method, out, alpha=alpha, proxy_retain=proxy_retain,
                          compare_retrain=compare_retrain, epochs=epochs, lr=lr, frozen_stages=frozen_stages,
                          data_seed=data_seed, seed=seed, size=size, target=target, eval_epochs=eval_epochs,
                          eval_on_completions=eval_on_completions, overwrite=overwrite)
    m = read_metrics(run)
    if m is None:
        return
    typer.echo(" ".join(f"{k}={m[k]:.3f}" for k in ("forget_fd_ratio", "retain_fd_ratio", "forget_accuracy",
                                                     "forget_chance", "unlearn_seconds") if m.get(k) is not None))
    echo_done(run)
