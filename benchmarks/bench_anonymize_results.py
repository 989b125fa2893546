"""Privacy and utility of the anonymizer against naive baselines at matched kept-attribute accuracy.

For each dataset (ORL faces: hide identity, keep glasses; FSDD: hide speaker, keep digit;
synthetic-motion: hide subject, keep activity) this trains fresh attackers (closed-set for the
identity, identity-disjoint for the kept attribute) on

* the original data,
* the anonymizer's release (``BiometricAnonymizer``, one or more settings),
* each naive baseline (Gaussian blur / noise and pixelation / coarse quantisation, see
  ``privkit.anonymize.baselines``) at a sweep of strengths,

and prints one markdown table per dataset. *Matched* comparison: for an anonymizer setting with
kept-attribute accuracy ``U``, a baseline's re-identification is the lowest it reaches among its
strengths (or the untouched original) whose kept accuracy is at least ``U - tolerance`` (when
none keeps that much, its point of highest kept accuracy, which favours the baseline); the
target is ``(reid_baseline - chance) >= 2 (reid_anonymizer - chance)`` for both baselines.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_anonymize_results.py --quick
    OMP_NUM_THREADS=1 python benchmarks/bench_anonymize_results.py --datasets orl motion
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = {
    # name: (spec, sensitive, keep)
    "orl": (str(REPO.parent / "shared" / "data" / "orl_faces"), "identity", "glasses"),
    "fsdd": (str(REPO.parent / "shared" / "data" / "fsdd"), "speaker", "digit"),
    "motion": ("synthetic-motion", "subject", "activity"),
}
FULL_STRENGTHS = {"blur": (1.0, 2.0, 4.0, 8.0, 16.0), "pixelate": (2, 4, 8, 16, 32)}
QUICK_STRENGTHS = {"blur": (2.0, 6.0, 16.0), "pixelate": (4, 12, 32)}
FULL_SETTINGS = ({"k": 5, "weight": 0.5, "top_features": 0.2}, {"k": 3, "weight": 0.7, "top_features": 0.2},
                 {"k": 8, "weight": 0.5, "top_features": 0.1})
QUICK_SETTINGS = ({"k": 5, "weight": 0.5, "top_features": 0.2},)


def stratified_subset(ds, keep: str, sensitive: str, n: int, seed: int):
    """At most ``n`` records, the same share of every (identity, kept class) cell."""
    if n is None or n >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    cell = ds.attr(sensitive).astype(np.int64) * 1000 + ds.attr(keep)
    chosen = []
    for c in np.unique(cell):
        members = np.flatnonzero(cell == c)
        take = max(1, int(round(len(members) * n / len(ds))))
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return ds.subset(np.sort(np.concatenate(chosen)))


def evaluate(ds, samples, sensitive, keep, kinds, seed, epochs):
    from privkit.anonymize.run import released_dataset
    from privkit.evaluate.attackers import fresh_attackers

    released = released_dataset(ds, np.asarray(samples, dtype=np.float32))
    r = fresh_attackers(released, [sensitive, keep], kinds=kinds, seed=seed, epochs=epochs)
    return {"reid": r[sensitive]["best"], "reid_chance": r[sensitive]["chance"],
            "keep": r[keep]["best"], "keep_chance": r[keep]["chance"]}


def matched_reid(points: list[dict], utility: float, tolerance: float) -> dict | None:
    """The baseline point of lowest re-identification among those keeping >= utility - tolerance."""
    ok = [p for p in points if p["keep"] >= utility - tolerance]
    return min(ok, key=lambda p: p["reid"]) if ok else None


def run_dataset(name: str, args) -> str:
    from privkit.anonymize.baselines import apply_baseline
    from privkit.anonymize.run import AnonymizeConfig, fit_anonymizer, max_feasible_k, release, representation_for
    from privkit.data import load_dataset

    spec, sensitive, keep = DATASETS[name]
    t0 = time.time()
    ds = load_dataset(spec)
    ds = stratified_subset(ds, keep, sensitive, args.max_records, args.seed)
    rep = representation_for(ds.schema)
    x, _ = ds.materialize()
    kinds = tuple(args.attackers.split(","))
    epochs = {k: args.epochs for k in kinds} if args.epochs else None
    strengths = QUICK_STRENGTHS if args.quick else FULL_STRENGTHS
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    feasible = max_feasible_k(ds, sensitive, keep)

    rows = []
    original = evaluate(ds, x.numpy(), sensitive, keep, kinds, args.seed, epochs)
    rows.append(("original", "-", original))
    anonymized = []
    for s in settings:
        if s["k"] > feasible:
            continue
        cfg = AnonymizeConfig(seed=args.seed, **s)
        anonymizer = fit_anonymizer(x, ds, sensitive, keep, cfg, representation=rep)
        out = release(anonymizer, x, ds, sensitive, keep, batch_size=256)
        p = evaluate(ds, out, sensitive, keep, kinds, args.seed, epochs)
        p["min_k"] = anonymizer.achieved_k_["min"]
        label = f"k={s['k']} w={s['weight']} p={s['top_features']}"
        rows.append(("anonymizer", label, p))
        anonymized.append((label, p))
    baseline_points: dict[str, list[dict]] = {}
    for b, values in strengths.items():
        baseline_points[b] = [dict(original, strength=0)]
        for v in values:
            out = apply_baseline(b, x, rep, v, seed=args.seed)
            p = evaluate(ds, out.numpy(), sensitive, keep, kinds, args.seed, epochs)
            p["strength"] = v
            rows.append((b, str(v), p))
            baseline_points[b].append(p)

    chance = original["reid_chance"]
    lines = [f"### {name}: hide {sensitive}, keep {keep} ({len(ds)} records, {ds.schema.modality}, "
             f"attackers {','.join(kinds)}, {time.time() - t0:.0f} s)", "",
             f"| method | setting / strength | {keep} acc | {sensitive} acc (re-id) | re-id - chance |",
             "|---|---|---|---|---|"]
    for method, setting, p in rows:
        lines.append(f"| {method} | {setting} | {p['keep']:.3f} | {p['reid']:.3f} | {p['reid'] - chance:+.3f} |")
    lines += ["", f"chance: {sensitive} {chance:.3f}, {keep} {original['keep_chance']:.3f}. Matched comparison "
              f"(baseline strength with {keep} accuracy >= anonymizer's - {args.tolerance:.2f}; ratio = baseline "
              f"excess re-id / anonymizer excess re-id, target >= 2):", "",
              "| anonymizer | baseline | baseline strength | baseline re-id | anonymizer re-id | ratio | target met |",
              "|---|---|---|---|---|---|---|"]
    for label, p in anonymized:
        for b, points in baseline_points.items():
            m = matched_reid(points, p["keep"], args.tolerance)
            note = ""
            if m is None:  # the baseline never keeps as much: compare at its most useful point (favours it)
                m = max(points, key=lambda q: (q["keep"], -q["reid"]))
                note = f" (never reaches {keep} {p['keep']:.3f}; its best is {m['keep']:.3f})"
            excess_a, excess_b = p["reid"] - chance, m["reid"] - chance
            ratio = excess_b / excess_a if excess_a > 1e-9 else float("inf")
            lines.append(f"| {label} | {b} | {m['strength']}{note} | {m['reid']:.3f} | {p['reid']:.3f} | {ratio:.2f} | "
                         f"{'yes' if ratio >= 2 else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="one anonymizer setting, 3 strengths per baseline, "
                                                              "at most 1000 records, 20 attacker epochs")
    parser.add_argument("--attackers", default="linear,mlp", help="fresh attackers (linear, mlp, cnn)")
    parser.add_argument("--max-records", type=int, default=None, help="stratified subsample per dataset")
    parser.add_argument("--epochs", type=int, default=None, help="attacker epochs (default: privkit's)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="kept-accuracy slack of the matching")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.max_records = args.max_records or 1000
        args.epochs = args.epochs or 20
    os.environ.setdefault("PRIVKIT_CACHE", str(REPO / ".bench-cache-data"))
    print(f"# Anonymizer vs naive baselines (seed {args.seed}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}"
          f"{', quick' if args.quick else ''})\n", flush=True)
    for name in args.datasets:
        print(run_dataset(name, args) + "\n", flush=True)


if __name__ == "__main__":
    main()
