r"""Residual knowledge of every unlearning method, before and after RURK (issue 6, point 4).

Per scenario: train a base classifier (``train_run``), retrain it without the forget set once
(the reference ``a``), then for every other registered method ``m``: unlearn (``unlearn_run``)
and run the ``privkit audit residual --fix`` flow (``audit_residual_run``: audit, RURK, re-audit)
against that reference. Reported per method, with the residual knowledge

.. math::

    r_\tau(x, y) = \frac{\Pr_{x' \in B_p(x, \tau)}[m(x') = y]}{\Pr_{x' \in B_p(x, \tau)}[a(x') = y]}
    \approx \frac{k_m + 1}{k_a + 1}

(``K = --samples`` uniform L-inf perturbations per forget sample):

* mean :math:`r_\tau` over the forget set at every :math:`\tau` of the grid, before RURK;
* the fraction of forget samples with :math:`r_\tau > 1` at the headline :math:`\tau`, before/after;
* mean :math:`r_\tau` after RURK at the headline :math:`\tau`;
* test accuracy (TA) before/after RURK next to the retrained model's, the TA change caused by
  RURK itself (points and test images) and the distance to retraining's TA; the scenario title says
  how many test images one point is (ORL: 80 images, one point is 0.8 of an image);
* how the fix ended: not needed (no residual knowledge), stopped by the stop rule once fresh
  perturbations were no longer recognised (step), or at the end of its epoch budget.

The RURK options were tuned on digits (see :data:`CLASS_FIX` and :data:`SAMPLES_FIX`): a forgotten
class or identity and a random forget set need different learning rates / lambdas.

Targets (issue 6): after RURK mean :math:`r_\tau \le 1.05`, the fraction above 1 cut by at least
80% relative to the base method, and TA within 1 point of retraining.

``ntk`` (full-parameter NTK) is skipped: its Jacobian over every CNN parameter is far too slow on a
CPU; ``fast-ntk`` (BN parameters only) covers the NTK family. ``retrain`` is the reference itself.

    OMP_NUM_THREADS=1 python benchmarks/bench_residual_methods.py --quick
    OMP_NUM_THREADS=1 python benchmarks/bench_residual_methods.py --scenarios faces-identity,orl-person

Prints one markdown table per scenario.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"
TAUS = (0.01, 0.02, 0.03, 0.05, 0.1)
SKIPPED = {"retrain": "the reference itself", "ntk": "full-parameter NTK: far too slow on a CPU for the CNN"}

# Targets of issue 6
TARGET_MEAN = 1.05
TARGET_FRAC_CUT = 0.8
TARGET_TA_POINTS = 1.0


def scenarios(orl: Path) -> dict[str, dict]:
    """The scenarios (and base-model recipes) of ``bench_unlearn.py``, which this benchmark shares."""
    from bench_unlearn import scenarios as unlearn_scenarios

    shared = unlearn_scenarios(orl)
    chosen = {name: dict(shared[name]) for name in ("digits-class", "digits-random", "faces-identity", "orl-person")}
    # The CLASS_FIX rate (3e-3, tuned on digits) cost the fix 30 points of TA on the faces model even where
    # there was no residual knowledge to remove: fine-tuning alone at that rate wrecks a 40-identity model
    # trained on 560 images. Faces are fixed at their recipe's own rate.
    for name in ("faces-identity", "orl-person"):
        chosen[name]["fix_lr"] = 1e-3
    return chosen


def _row_at(per_tau: list[dict], tau: float) -> dict:
    for row in per_tau:
        if math.isclose(row["tau"], tau, rel_tol=1e-6):
            return row
    raise KeyError(tau)


def targets_met(before: dict, after: dict, ta_after: float, ta_retrain: float) -> dict[str, bool]:
    """The three targets of issue 6 at the headline tau (``before``/``after``: ``to_metrics`` dicts)."""
    f0, f1 = before["frac_above_1"], after["frac_above_1"]
    # relative cut of the fraction above 1; with nothing above 1 before, "no increase" is all one can ask
    cut_ok = (f1 <= f0) if f0 == 0 else (f0 - f1) / f0 >= TARGET_FRAC_CUT
    return {"mean": after["mean_r_tau"] <= TARGET_MEAN, "cut": cut_ok,
            "TA": abs(ta_after - ta_retrain) * 100 <= TARGET_TA_POINTS}


def run_scenario(name: str, sc: dict, methods: list[str], args, root: Path) -> tuple[list[str], list[list[str]], dict]:
    from privkit.audit.run import audit_residual_run
    from privkit.classify import train_run
    from privkit.unlearn.run import unlearn_run

    t_start = time.perf_counter()
    base = root / f"{name}-base"
    # --reuse: a finished base model / reference of an earlier run with the same options is kept (their
    # code is not what this benchmark measures, and the faces base models are the slow part)
    if not (args.reuse and (base / "complete").exists()):
        train_run(sc["data"], sc["target"], base, epochs=sc["epochs"] or args.epochs, lr=sc["lr"], seed=args.seed,
                  size=sc["size"], progress=False, data_options=sc["data_options"], overwrite=args.reuse)
    ref = root / f"{name}-retrain"
    if not (args.reuse and (ref / "complete").exists()):
        unlearn_run(base, sc["data"], sc["forget"], "retrain", ref, seed=args.seed, progress=False,
                    overwrite=args.reuse)
    ta_retrain = json.loads((ref / "metrics.json").read_text())["TA"] / 100.0  # unlearn metrics are in percent
    n_forget = json.loads((ref / "receipt.json").read_text())["config"]["n_forget"]
    head = args.headline_tau
    headers = (["method"] + [f"r(τ={t:g}) before" for t in args.taus]
               + [f"frac>1 @{head:g} before → after", f"mean r @{head:g} after", "TA before → after (retrain)",
                  "ΔTA by RURK, points (images)", "TA after − retrain, points", "fix", "targets (mean / cut / TA)",
                  "s"])
    rows, summary = [], {}
    info_test = None  # test-set size, read from the first audit
    rurk_delta: dict[str, float] = {}  # TA change (points) of the rows where RURK ran
    for method in methods:
        t0 = time.perf_counter()
        mdir, adir = root / f"{name}-{method}", root / f"{name}-{method}-audit"
        try:
            unlearn_run(base, sc["data"], sc["forget"], method, mdir, seed=args.seed, progress=False,
                        overwrite=args.reuse)
            audit_residual_run(mdir, sc["data"], sc["forget"], adir, reference_dir=ref, taus=args.taus,
                               headline_tau=head, samples=args.samples, seed=args.seed, fix=True, overwrite=args.reuse,
                               fix_options=args.fix_options or default_fix(sc["forget"], sc.get("fix_lr")))
        except Exception as e:  # a failing method is a row of the table, not the end of the benchmark
            rows.append([method] + ["–"] * (len(headers) - 2) + [f"error: {type(e).__name__}: {str(e)[:80]}"])
            print("| " + " | ".join(rows[-1]) + " |", flush=True)
            continue
        m = json.loads((adir / "metrics.json").read_text())
        before, after = m["before"], m["after"]
        ok = targets_met(before, after, m["TA_after"], ta_retrain)
        summary[method] = ok
        n_test = int(m["n_test"])
        delta_images = round((m["TA_after"] - m["TA_before"]) * n_test)
        rows.append([method] + [f"{_row_at(before['per_tau'], t)['mean_r_tau']:.2f}" for t in args.taus]
                    + [f"{before['frac_above_1']:.3f} → {after['frac_above_1']:.3f}", f"{after['mean_r_tau']:.3f}",
                       f"{m['TA_before']:.3f} → {m['TA_after']:.3f} ({ta_retrain:.3f})",
                       f"{100 * (m['TA_after'] - m['TA_before']):+.1f} ({delta_images:+d})",
                       f"{100 * (m['TA_after'] - ta_retrain):+.1f}", fix_outcome(m),
                       " / ".join("✓" if ok[k] else "✗" for k in ("mean", "cut", "TA")),
                       f"{time.perf_counter() - t0:.0f}"])
        info_test = n_test
        if m.get("fix_applied"):
            rurk_delta[method] = 100 * (m["TA_after"] - m["TA_before"])
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    info = {"n_forget": n_forget, "ta_retrain": ta_retrain, "seconds": time.perf_counter() - t_start,
            "targets": summary, "n_test": info_test, "rurk_delta": rurk_delta}
    return headers, rows, info


def fix_outcome(metrics: dict) -> str:
    """How the ``--fix`` flow ended: not needed, stopped by the stop rule (at which step), or the epoch budget."""
    if not metrics.get("fix_applied"):
        return "not needed"
    stop = metrics.get("fix_stop", "epochs")
    checks = metrics.get("fix_checks") or []
    step = checks[-1].get("restored_step", checks[-1]["step"]) if checks else "?"
    backtracks = sum("halved" in c.get("action", "") for c in checks)
    return f"{stop} @ step {step}" + (f", lr halved {backtracks}x" if backtracks else "")


def print_table(title: str, headers: list[str], rows: list[list[str]], info: dict) -> None:
    n_test = info.get("n_test")
    test_note = f"; test set {n_test} images, 1 point = {n_test / 100:.2g} images" if n_test else ""
    print(f"\n### {title} (forget set: {info['n_forget']} samples; retrain TA {info['ta_retrain']:.3f}{test_note}; "
          f"{info['seconds']:.0f} s)\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    met = [k for k, ok in info["targets"].items() if all(ok.values())]
    print("\n'ΔTA by RURK' is the fixed model's TA minus the audited model's (0 where no fix was needed); "
          "'TA after − retrain' is what the TA target (within 1 point) measures.")
    print(f"\nall three targets met by {len(met)}/{len(info['targets'])} methods"
          + (f": {', '.join(met)}" if met else ""), flush=True)
    delta = info.get("rurk_delta") or {}
    if delta:
        print(f"RURK ran on {len(delta)} method(s); its own TA change: "
              + ", ".join(f"{k} {v:+.1f}" for k, v in delta.items()) + " points", flush=True)
    else:
        print("RURK ran on no method (no residual knowledge found)", flush=True)


def parse_fix_options(text: str) -> dict:
    """``epochs=3,lam=1,tau=0.05,sampler=uniform`` -> RURK hyperparameters (numbers parsed)."""
    out: dict = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        if not value:
            raise argparse.ArgumentTypeError(f"--fix-options item {item!r} is not KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def main(argv=None) -> None:
    import torch

    from privkit.unlearn import list_unlearners

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits scenarios only, 16 samples per forget sample")
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated subset of digits-class,digits-random,faces-identity,orl-person")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: every registered one "
                        "except " + ", ".join(SKIPPED) + ")")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the base model")
    parser.add_argument("--samples", type=int, default=64, help="perturbations per forget sample (K)")
    parser.add_argument("--taus", default=",".join(f"{t:g}" for t in TAUS))
    parser.add_argument("--headline-tau", type=float, default=0.03)
    parser.add_argument("--fix-options", type=parse_fix_options, default=None,
                        help="RURK hyperparameters KEY=VALUE,... for every scenario (default: CLASS_FIX for a class "
                             "or identity, SAMPLES_FIX for random/ids forget sets)")
    parser.add_argument("--orl", type=Path, default=DEFAULT_ORL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run folders here (default: temporary)")
    parser.add_argument("--reuse", action="store_true", help="with --workdir: keep finished base and reference "
                        "models found there (same scenario, seed and epochs), redo every method, audit and fix")
    args = parser.parse_args(argv)
    args.taus = tuple(float(t) for t in args.taus.split(","))
    if not any(math.isclose(args.headline_tau, t) for t in args.taus):
        parser.error(f"--headline-tau {args.headline_tau:g} is not in --taus")
    if args.reuse and args.workdir is None:
        parser.error("--reuse needs --workdir (the folder holding the earlier run)")
    if args.quick and "--samples" not in (sys.argv[1:] if argv is None else argv):
        args.samples = 16
    torch.set_num_threads(1)

    available = scenarios(args.orl)
    names = (args.scenarios.split(",") if args.scenarios
             else ["digits-class", "digits-random"] if args.quick else list(available))
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(available)}")
    registered = list_unlearners()
    methods = args.methods.split(",") if args.methods else [m for m in registered if m not in SKIPPED]
    bad = [m for m in methods if m not in registered or m in SKIPPED]
    if bad:
        parser.error(f"method(s) {bad} not benchmarked; choose from {[m for m in registered if m not in SKIPPED]}")
    print(f"taus={args.taus} headline tau={args.headline_tau:g} samples K={args.samples} sampler=uniform linf; "
          f"base model: {args.epochs} epochs; RURK fix options: "
          + (str(args.fix_options) if args.fix_options else f"class/identity {CLASS_FIX}, random/ids {SAMPLES_FIX}; "
             "faces scenarios at lr 1e-3")
          + "; utility safeguards at the rurk defaults (retain distillation 1.0, BatchNorm statistics frozen in the "
            "penalty and recomputed on the retain set, stop rule on fresh perturbations against the reference every "
            "quarter epoch, validation floor min(start, reference) - 1 point on the retained classes: a check under it "
            "is not accepted and the saved model is never under it)")
    print("skipped: " + "; ".join(f"{k} ({v})" for k, v in SKIPPED.items()))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            sc = available[name]
            if "needs" in sc and not Path(sc["needs"]).exists():
                print(f"\n### {name}: skipped ({sc['needs']} not found; pass --orl PATH)")
                continue
            print(f"\n{name}: data={sc['data']} target={sc['target']} forget={sc['forget']}", flush=True)
            headers, rows, info = run_scenario(name, sc, methods, args, root)
            print_table(f"{name}: {sc['data']}, forget {sc['forget']}", headers, rows, info)


#: RURK options of the fix, per kind of forget request (``--fix-options`` overrides them all).
#: The registry default (PGD perturbations, lambda=1, tau=0.03, half the recipe's epochs at its
#: learning rate, Adam 1e-3) left NegGrad at mean r_tau 1.89 / 12% above 1 on digits class=3. Tuned
#: on digits (3-epoch base model, K=16):
#: * a whole class (or identity) forgotten: the retain set holds no sample of it, so retain CE and
#:   penalty pull the same way; uniform perturbations, 3 epochs at 3x the learning rate (3e-3)
#:   brought every method to r_tau = 1.00 / 0% above 1 with TA within 1 point of retrain
#:   (lr 1e-3 with lambda=3 still left 5% above 1);
#: * random samples: the retain set holds the same classes, so the penalty fights the retain CE;
#:   lr 3e-3 or lambda=1 cost 2-5 points of TA, lambda=0.1 at the recipe's lr 1e-3 keeps TA within
#:   1 point. Faces and ORL forget one identity of an identity classifier: the class setting.
CLASS_FIX: dict = {"sampler": "uniform", "epochs": 3, "lr": 3e-3, "lam": 1.0, "tau": 0.03}
SAMPLES_FIX: dict = {"sampler": "uniform", "epochs": 3, "lr": 1e-3, "lam": 0.1, "tau": 0.03}


def default_fix(forget_spec: str, fix_lr: float | None = None) -> dict:
    """RURK options for a forget request (:data:`CLASS_FIX` or :data:`SAMPLES_FIX`), ``lr`` overridden if given."""
    options = dict(SAMPLES_FIX if forget_spec.startswith(("random=", "ids=")) else CLASS_FIX)
    if fix_lr is not None:
        options["lr"] = float(fix_lr)
    return options


if __name__ == "__main__":
    main()
