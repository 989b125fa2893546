"""``privkit attack qnn``: gradient inversion on variational quantum neural networks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from privkit.cli.common import OutOpt, echo_done, handle_errors, progress_callback


def register(app: typer.Typer, audit_app: typer.Typer, attack_app: typer.Typer) -> None:
    attack_app.command("qnn")(qnn)


@handle_errors
def qnn(task: str = typer.Option("cos", "--task", help="cos | digits2 | digits6 | fraud ... (see docs/attacks.md)"),
        qubits: int = typer.Option(6, "--qubits", help="number of qubits (1-20)"),
        ansatz: str = typer.Option("complex", "--ansatz", help="simple | complex | simple-entangled | zz-efficientsu2"),
        layers: Optional[int] = typer.Option(None, "--layers", help="ansatz layers"),
        batch: int = typer.Option(1, "--batch", help="client batch size B (inputs to recover)"),
        kalman: bool = typer.Option(False, "--kalman/--no-kalman", help="smooth iterates with a Kalman filter"),
        restarts: int = typer.Option(10, "--restarts"), iterations: Optional[int] = typer.Option(None, "--iterations"),
        seed: int = typer.Option(0, "--seed"),
        noise_sigma: float = typer.Option(0.0, "--noise-sigma", help="Gaussian noise on shared gradients (defence)"),
        clip: Optional[float] = typer.Option(None, "--clip", help="clip shared gradients to this norm before noise"),
        out: Path = OutOpt, overwrite: bool = typer.Option(False, "--overwrite")) -> None:
    """Simulate a federated client on a VQNN and try to recover its inputs from the shared gradient."""
    from privkit.attacks.quantum import api
    from privkit.evaluate.report import Report
    from privkit.io.rundir import RunDir

    kwargs = dict(task=task, qubits=qubits, ansatz=ansatz, batch=batch, restarts=restarts, noise_sigma=noise_sigma,
                  clip=clip)
    if layers is not None:
        kwargs["layers"] = layers
    if iterations is not None:
        kwargs["iterations"] = iterations
    api.validate_attack_config(**kwargs)
    config = dict(kwargs, kalman=kalman, seed=seed)
    with RunDir(out, "attack-qnn", config, overwrite=overwrite) as run:
        result = api.run_qnn_attack(**kwargs, kalman=kalman, seed=seed, progress=progress_callback("attacking"))
        report = Report(f"Gradient inversion on a {qubits}-qubit VQNN ({ansatz}, task {task})", "attack-qnn")
        report.set_metric("success_rate", result["success_rate"])
        report.set_metric("mse_mean", result["mse_mean"])
        report.set_metric("mse_se", result["mse_se"])
        report.update_metrics({"privacy": result.get("privacy"), "config": result.get("config"),
                               "timing_s": result.get("timing_s")})
        ok = result["success_rate"] == 0
        report.verdict(f"{result['success_rate']:.0%} of {restarts} restarts recovered the client's inputs "
                       f"(MSE <= {api.SUCCESS_MSE}); mean MSE {result['mse_mean']:.4g} +- {result['mse_se']:.2g}.", ok=ok)
        rows = [[i, r["final_mse"], r["success"]] for i, r in enumerate(result["per_restart"])]
        report.table("restarts", ["restart", "final MSE", "success"], rows)
        report.table("true vs reconstructed inputs (best restart)", ["sample", "true", "reconstructed"],
                     [[b, str([round(v, 4) for v in t]), str([round(v, 4) for v in r])]
                      for b, (t, r) in enumerate(zip(result["true"], result["reconstructed"]))])
        for title, fig in api.make_figures(result):
            report.figure(title, fig)
        run.write_json("attack.json", result)
        report.write(run.path)
        run.finish()
    typer.echo(f"success rate {result['success_rate']:.2f}, MSE {result['mse_mean']:.4g} +- {result['mse_se']:.2g}")
    echo_done(run.path)
