"""Every unlearning method on the parameter-efficient (``--peft bn``) models, per deletion request.

The issue's table (digits random 10 % and one class, synthetic-faces one identity, ORL one person)
on the models Fast-NTK is meant for: ``train_peft_run`` (the path of ``privkit train --peft bn
--replay-state``) pretrains the CNN on half of the training split and fine-tunes the BN-affine and
head parameters on the other half (10 epochs, Adam ``lr=1e-2``, batch 64, w0-penalty 5e-4), as in
``bench_fast_ntk_steps.py``. Every registered method then runs with its registry defaults on the
same request (the baselines train the same PEFT parameters with the recipe's BatchNorm statistics
frozen; ``fast-ntk`` is the default ``step="auto"``, which is the replay step when the run keeps a
replay state). Full-parameter ``ntk`` is left out here (P = 57k on this CNN; it runs on a width-8
CNN in ``bench_unlearn.py``). Retraining runs with ``--retrain-seeds`` seeds: Avg. Gap is reported
against the seed-0 retraining (the issue's reference) and against the mean of all of them.
RTE is one run's wall time (the machine's load is printed per row); the per-request speed-up of
Fast-NTK with medians over repeats is ``bench_fast_ntk_steps.py``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast_ntk_steps import REQUESTS, _bold, for_each_scenario, peft_run, retrain_references  # noqa: E402
from bench_unlearn import DEFAULT_ORL  # noqa: E402

SKIP = ("ntk",)  # full-parameter NTK: see bench_unlearn.py's width-8 scenarios


def run_scenario(key: str, orl: Path, root: Path, methods: list[str], seeds: int, only: list[str] | None) -> None:
    from privkit.unlearn import get_unlearner
    from privkit.unlearn.metrics import GAP_KEYS, avg_gap, unlearning_metrics
    from privkit.unlearn.run import prepare_request, run_method

    ds, data, target, run = peft_run(key, orl, root)
    for forget, role in REQUESTS[key].items():
        if (only and forget not in only) or (not only and role != "required"):
            continue
        req = prepare_request(run, data, forget, data_seed=0, seed=0, dataset=ds)
        refs, mean = retrain_references(req, target, seeds)
        original = unlearning_metrics(req.start_model, req.retain, req.forget, req.test, target, 0.0, seed=0)
        rows = [("retrain", refs[0], "seed 0"), ("(original)", original, "")]
        for name in methods:
            if name == "retrain":
                continue
            method = get_unlearner(name)
            if hasattr(method, "check"):  # the pre-flight check of `privkit unlearn`, where a method has one
                method.check(req.start_model, req.context)
            model, seconds, info = run_method(method, req)
            m = unlearning_metrics(model, req.retain, req.forget, req.test, target, seconds, seed=0)
            ntk = info.get("ntk") or {}
            rows.append((name, m, f"step {ntk['step']}, {ntk.get('path')}" if ntk.get("step") else ""))
        for name, m, note in rows:
            rte = "–" if name == "(original)" else f"{m['RTE']:.2f}"
            cells = [f"{key}: {forget}", name] + [f"{m[k]:.2f}" for k in GAP_KEYS] + [
                rte, _bold(avg_gap(m, refs[0])), _bold(avg_gap(m, mean)), note, f"{os.getloadavg()[0]:.1f}"]
            print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits,faces,orl", help="comma-separated PEFT scenarios: digits,faces,orl")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every registered one but ntk)")
    p.add_argument("--retrain-seeds", type=int, default=5, help="retrainings per request (seeds 0..K-1)")
    p.add_argument("--requests", default=None, help="comma-separated requests (default: the issue's, 'required')")
    p.add_argument("--orl", type=Path, default=DEFAULT_ORL)
    args = p.parse_args()
    from privkit.unlearn import list_unlearners

    methods = args.methods.split(",") if args.methods else [m for m in list_unlearners() if m not in SKIP]
    unknown = sorted(set(methods) - set(list_unlearners()))
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {', '.join(list_unlearners())}")
    if args.retrain_seeds < 1:
        p.error("--retrain-seeds must be at least 1")
    header = ["request", "method", "UA", "RA", "TA", "MIA eff.", "RTE s", "avg_gap vs retrain seed 0",
              f"avg_gap vs mean of {args.retrain_seeds} retrains", "note", "load (1 min)"]
    only = args.requests.split(",") if args.requests else None
    for_each_scenario(header, args.data, args.orl,
                      lambda key, root: run_scenario(key, args.orl, root, methods, args.retrain_seeds, only))


if __name__ == "__main__":
    main()
