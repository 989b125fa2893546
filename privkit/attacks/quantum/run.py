"""Run folder + report of one VQNN gradient-inversion audit (what ``privkit attack qnn`` writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from privkit.attacks.quantum import api
from privkit.evaluate.report import Report
from privkit.io.rundir import RunDir


def attack_report(result: dict) -> Report:
    cfg = result.get("config", {})
    report = Report(f"Gradient inversion on a {cfg.get('qubits')}-qubit VQNN ({cfg.get('ansatz')}, task {cfg.get('task')})",
                    "attack-qnn")
    report.set_metric("success_rate", result["success_rate"])
    report.set_metric("mse_mean", result["mse_mean"])
    report.set_metric("mse_se", result["mse_se"])
    report.update_metrics({"privacy": result.get("privacy"), "config": cfg, "timing_s": result.get("timing_s")})
    restarts = len(result["per_restart"])
    report.verdict(f"{result['success_rate']:.0%} of {restarts} restarts recovered the client's inputs "
                   f"(MSE <= {api.SUCCESS_MSE}); mean MSE {result['mse_mean']:.4g} +- {result['mse_se']:.2g}.",
                   ok=result["success_rate"] == 0)
    report.table("restarts", ["restart", "final MSE", "success"],
                 [[i, r["final_mse"], r["success"]] for i, r in enumerate(result["per_restart"])])
    report.table("true vs reconstructed inputs (best restart)", ["sample", "true", "reconstructed"],
                 [[b, str([round(v, 4) for v in t]), str([round(v, 4) for v in r])]
                  for b, (t, r) in enumerate(zip(result["true"], result["reconstructed"]))])
    for title, fig in api.make_figures(result):
        report.figure(title, fig)
    return report


def attack_run(out: Path, *, overwrite: bool = False, progress: Callable | None = None, **kwargs) -> tuple[Path, dict]:
    """Validate, attack, and write a finished run folder with ``metrics.json`` and ``report.html``."""
    check = {k: v for k, v in kwargs.items()
             if k not in ("kalman", "seed", "fd_step", "fd_points", "plateau_patience", "attack_options", "delta")}
    api.validate_attack_config(**check)
    with RunDir(out, "attack-qnn", dict(kwargs), overwrite=overwrite) as run:
        result = api.run_qnn_attack(**kwargs, progress=progress)
        run.write_json("attack.json", result)
        attack_report(result).write(run.path)
        run.finish()
    return Path(out), result
