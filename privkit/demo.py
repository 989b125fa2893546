"""``privkit demo``: the README's main job, end to end on built-in data in a few minutes.

Each step writes its own run folder under ``out``; the demo's own report links their headline
numbers together. Steps: train a classifier (with the fresh-attacker audit of the raw data),
suppress a sensitive attribute with MaSS, unlearn one person with Fast-NTK against retraining and
audit the residual knowledge, anonymize, and attack a quantum model's gradients.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from privkit.evaluate.report import Report

STEPS: list[tuple[str, str]] = []


def step(name: str, description: str):
    def deco(fn: Callable):
        STEPS.append((name, description))
        _FUNCS[name] = fn
        return fn

    return deco


_FUNCS: dict[str, Callable] = {}
FACES = "synthetic-faces"
FACES_SIZE = 480


@step("train", "classifier for `glasses` on synthetic faces")
def _train(out: Path, report: Report, echo) -> dict:
    from privkit.classify import train_run

    run = train_run(FACES, "glasses", out / "train", size=FACES_SIZE, epochs=4, progress=True)
    import json

    m = json.loads((run / "metrics.json").read_text())
    return {"accuracy": m["accuracy"], "chance": m["chance"], "report": str(run / "report.html")}


def _metrics(run: Path) -> dict:
    import json

    return json.loads((run / "metrics.json").read_text())


@step("audit", "fresh attackers on the raw faces: what an adversary could learn before any protection")
def _audit(out: Path, report: Report, echo) -> dict:
    from privkit.data import load_dataset
    from privkit.evaluate.attackers import fresh_attackers

    data = load_dataset(FACES, size=FACES_SIZE)
    results = fresh_attackers(data, ["identity", "gender", "glasses"], kinds=("linear", "mlp"), epochs={"linear": 20, "mlp": 20})
    for attr, r in results.items():
        echo(f"   {attr}: best attacker {r['best']:.2f} vs chance {r['chance']:.2f}")
    return {attr: {"best": r["best"], "chance": r["chance"]} for attr, r in results.items()}




@step("suppress", "MaSS: release phone-motion windows without who walked, keeping the activity")
def _suppress(out: Path, report: Report, echo) -> dict:
    from privkit.suppress.report import suppress_run

    # motion, not faces: MaSS on 64x64 images needs minutes per epoch on a CPU (docs/benchmarks.md)
    run, m = suppress_run("synthetic-motion", ["subject"], out / "suppress", preserve=["activity"], epochs=12,
                          size=400, attackers=("linear", "mlp"), attacker_epochs={"linear": 20, "mlp": 20})
    attrs = m["attributes"]
    for name, a in attrs.items():
        echo(f"   {name} ({a['role']}): original {a['original']:.2f} -> released {a['released']:.2f} (chance {a['chance']:.2f})")
    return {name: {k: a[k] for k in ("role", "chance", "original", "released")} for name, a in attrs.items()} | {
        "report": str(run / "report.html")}


@step("anonymize", "model-agnostic anonymization of the faces: hide identity, keep glasses")
def _anonymize(out: Path, report: Report, echo) -> dict:
    from privkit.anonymize.run import AnonymizeConfig, anonymize_run

    run = anonymize_run(FACES, "identity", "glasses", out / "anonymize", AnonymizeConfig(k=5, curve_k=(1, 5)),
                        size=FACES_SIZE)
    m = _metrics(run)
    r = m["reidentification"]
    echo(f"   re-identification {r['original']:.2f} -> {r['released']:.2f} (chance {r['chance']:.2f})")
    return {"reidentification": r, "report": str(run / "report.html")}


@step("unlearn", "a deletion request: forget one person with Fast-NTK, compared with retraining")
def _unlearn(out: Path, report: Report, echo) -> dict:
    from privkit.unlearn.run import unlearn_run

    forget = "attr=identity:p001"
    unlearn_run(out / "train", FACES, forget, "retrain", out / "retrain", size=FACES_SIZE)
    run = unlearn_run(out / "train", FACES, forget, "fast-ntk", out / "unlearn-fast-ntk", reference=out / "retrain",
                      size=FACES_SIZE)
    m = _metrics(run)
    echo(f"   Fast-NTK: UA {m['UA']:.1f}, TA {m['TA']:.1f}, {m['RTE']:.1f} s; Avg. Gap to retrain {m['avg_gap']:.2f} points")
    return {k: m[k] for k in ("UA", "RA", "TA", "MIA_efficacy", "RTE", "avg_gap")} | {"report": str(run / "report.html")}


@step("residual", "residual-knowledge audit of the unlearned model against the retrained one")
def _residual(out: Path, report: Report, echo) -> dict:
    from privkit.audit.run import audit_residual_run

    run = audit_residual_run(out / "unlearn-fast-ntk", FACES, "attr=identity:p001", out / "audit-residual",
                             reference_dir=out / "retrain", samples=16, size=FACES_SIZE, taus=(0.01, 0.03, 0.1))
    m = _metrics(run)
    echo(f"   mean r_tau {m['mean_r_tau']:.2f} (CI {m['ci_low']:.2f}-{m['ci_high']:.2f}) at tau {m['tau']:g}")
    return {k: m[k] for k in ("mean_r_tau", "ci_low", "ci_high", "frac_above_1")} | {"report": str(run / "report.html")}


@step("attack", "gradient inversion on a 2-qubit quantum neural network")
def _attack(out: Path, report: Report, echo) -> dict:
    from privkit.attacks.quantum.run import attack_run

    run, result = attack_run(out / "attack-qnn", task="cos", qubits=2, ansatz="simple", restarts=3, seed=0)
    echo(f"   {result['success_rate']:.0%} of 3 restarts recovered the input")
    return {"success_rate": result["success_rate"], "mse_mean": result["mse_mean"], "report": str(run / "report.html")}


def run_demo(out: Path, echo=print, only: list[str] | None = None) -> Path:
    """Run every demo step into ``out`` and write the demo's summary report; return its path."""
    from privkit.io.atomic import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    report = Report("privkit demo", "demo")
    rows = []
    for name, description in STEPS:
        if only and name not in only:
            continue
        echo(f"== {name}: {description}")
        t0 = time.perf_counter()
        result = _FUNCS[name](out, report, echo)
        seconds = time.perf_counter() - t0
        result["seconds"] = seconds
        report.update_metrics({name: result})
        rows.append([name, description, f"{seconds:.1f}", result.get("report", "")])
    report.table("steps", ["step", "what", "seconds", "report"], rows)
    report.write(out)
    atomic_write_json(out / "complete", {"command": "demo"})
    return out / "report.html"
