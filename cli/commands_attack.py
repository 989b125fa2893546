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
        learning_rate: Optional[float] = typer.Option(None, "--learning-rate",
                                                      help="step size of the attack (default: the step rule's own, "
                                                           "0.1 for sgd, 1.0 for gauss-newton)"),
        step_rule: Optional[str] = typer.Option(None, "--step-rule",
                                                help="auto (sgd for one input, gauss-newton for a batch) | sgd | "
                                                     "gauss-newton | normalized | adam"),
        start_candidates: Optional[int] = typer.Option(None, "--start-candidates",
                                                       help="start each restart at the lowest-loss of K uniform draws "
                                                            "in the feature range (default 1000; 1 = plain random "
                                                            "start, the paper's)"),
        noise_sigma: float = typer.Option(0.0, "--noise-sigma", help="Gaussian noise on shared gradients (defence)"),
        clip: Optional[float] = typer.Option(None, "--clip", help="clip shared gradients to this norm before noise"),
        out: Path = OutOpt, overwrite: bool = typer.Option(False, "--overwrite")) -> None:
    """Simulate a federated client on a VQNN and try to recover its inputs from the shared gradient."""
    from privkit.attacks.quantum.run import attack_run

    kwargs = dict(task=task, qubits=qubits, ansatz=ansatz, batch=batch, restarts=restarts, noise_sigma=noise_sigma,
                  clip=clip, kalman=kalman, seed=seed)
    if layers is not None:
        kwargs["layers"] = layers
    if iterations is not None:
        kwargs["iterations"] = iterations
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    if step_rule is not None:
        kwargs["step_rule"] = step_rule
    if start_candidates is not None:
        kwargs["start_candidates"] = start_candidates
    run, result = attack_run(out, overwrite=overwrite, progress=progress_callback("attacking"), **kwargs)
    typer.echo(f"success rate {result['success_rate']:.2f}, MSE {result['mse_mean']:.4g} +- {result['mse_se']:.2g}")
    echo_done(run)
