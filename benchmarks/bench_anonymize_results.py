"""Privacy-utility curves of the anonymizer, two naive baselines and MaSS, compared at matched kept-attribute accuracy.

For each dataset (ORL faces: hide identity, keep glasses; FSDD: hide speaker, keep digit;
synthetic-motion: hide subject, keep activity) this trains fresh attackers (closed-set for the
identity, identity-disjoint for the kept attribute and for one attribute *not* used for relevance)
on

* the original data,
* the anonymizer's release (``BiometricAnonymizer``) over a sweep of its own settings: ``k`` up to
  the number of identities in the smallest kept class, weight ``w`` (0 included) and the fraction
  of relevant features,
* each naive baseline (Gaussian blur / noise and pixelation / coarse quantisation, see
  ``privkit.anonymize.baselines``) over a sweep of strengths,
* MaSS (``privkit.suppress.MaSS``: suppress the identity, preserve the kept attribute) trained on
  the *same* representation rows the anonymizer works on (a ``features`` dataset of the encoded
  rows, so MaSS uses its features->features generator), its release decoded back to samples the
  same way as the anonymizer's,

and prints one markdown table per dataset (every point of every curve).

*Matched* comparison. Every method gives a curve of points ``(U, R)``: kept-attribute accuracy and
re-identification accuracy. For a baseline point ``(U_b, R_b)`` the anonymizer's matched
re-identification is the lowest ``R`` among its settings with ``U >= U_b - tolerance`` (the
anonymizer's Pareto front read at the baseline's utility; no interpolation). The target holds
against a baseline when ``R_b - chance >= 2 (R_a - chance)`` at *every* point of that baseline's
curve (its untouched original included); the smallest such ratio is reported.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_anonymize_results.py --quick
    OMP_NUM_THREADS=1 python benchmarks/bench_anonymize_results.py --datasets orl motion
    OMP_NUM_THREADS=1 python benchmarks/bench_anonymize_results.py --quick --datasets fsdd --max-records 600

Each FSDD release costs about a minute (Griffin-Lim resynthesis, attackers on waveforms): the full
sweep there takes tens of minutes on one core.
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
    # name: (spec, sensitive, keep, other attribute not used for relevance)
    "orl": (str(REPO.parent / "shared" / "data" / "orl_faces"), "identity", "glasses", "gender"),
    "fsdd": (str(REPO.parent / "shared" / "data" / "fsdd"), "speaker", "digit", "accent"),
    "motion": ("synthetic-motion", "subject", "activity", "gender"),
}
FULL_STRENGTHS = {"blur": (1.0, 2.0, 4.0, 8.0, 16.0), "pixelate": (2, 4, 8, 16, 32)}
QUICK_STRENGTHS = {"blur": (2.0, 6.0, 16.0), "pixelate": (4, 12, 32)}
#: Anonymizer sweep: k values ("max" = the largest feasible k), weights, relevant-feature fractions.
FULL_SWEEP = {"k": (2, 3, 5, "max"), "weight": (0.0, 0.5, 0.8), "top_features": (0.2,)}
QUICK_SWEEP = {"k": (5, "max"), "weight": (0.0, 0.5), "top_features": (0.2,)}


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


def evaluate(ds, samples, attributes, kinds, seed, epochs):
    """Best fresh-attacker accuracy and chance per attribute on ``samples`` labelled as ``ds``."""
    from privkit.anonymize.run import released_dataset
    from privkit.evaluate.attackers import fresh_attackers

    released = released_dataset(ds, np.asarray(samples, dtype=np.float32))
    r = fresh_attackers(released, list(attributes), kinds=kinds, seed=seed, epochs=epochs)
    return {a: r[a]["best"] for a in attributes} | {f"{a}_chance": r[a]["chance"] for a in attributes}


def anonymizer_settings(sweep: dict, feasible: int) -> list[dict]:
    ks = sorted({min(feasible, feasible if k == "max" else int(k)) for k in sweep["k"]})
    return [{"k": k, "weight": w, "top_features": p} for k in ks if k >= 2 for w in sweep["weight"]
            for p in sweep["top_features"]]


def mass_release(ds, x, rep, sensitive: str, keep: str, args) -> tuple[np.ndarray, str]:
    """MaSS fitted on the representation rows (features modality), released and decoded to samples."""
    import torch

    from privkit.data.datasets import ArrayDataset
    from privkit.data.schema import Schema
    from privkit.suppress import MaSS

    rows = np.concatenate([rep.encode(x[i:i + 512]) for i in range(0, len(x), 512)]).astype(np.float32)
    schema = Schema("features", ds.schema.attributes, (rows.shape[1],))
    rows_ds = ArrayDataset(schema, rows, np.asarray(ds.labels), sample_ids=list(ds.sample_ids))
    mass = MaSS(suppress=[sensitive], preserve=[keep], epochs=args.mass_epochs, seed=args.seed)
    mass.fit(rows_ds)
    out = []
    for start in range(0, len(rows), 512):
        batch = torch.from_numpy(rows[start:start + 512])
        out.append(mass.transform(batch, indices=range(start, start + len(batch))).numpy())
    out = np.concatenate(out).astype(np.float64)
    released = np.concatenate([rep.decode(out[i:i + 512]).numpy() for i in range(0, len(out), 512)])
    return released.astype(np.float32), f"{args.mass_epochs} epochs, mlp-resnet on {rows.shape[1]}-d rows"


def run_dataset(name: str, args) -> str:
    from privkit.anonymize.baselines import apply_baseline
    from privkit.anonymize.run import AnonymizeConfig, fit_anonymizer, max_feasible_k, release, representation_for
    from privkit.data import load_dataset

    spec, sensitive, keep, other = DATASETS[name]
    attributes = (sensitive, keep, other)
    t0 = time.time()
    ds = load_dataset(spec)
    n_all = len(ds)
    ds = stratified_subset(ds, keep, sensitive, args.max_records, args.seed)
    rep = representation_for(ds.schema)
    x, _ = ds.materialize()
    kinds = tuple(args.attackers.split(","))
    epochs = {k: args.epochs for k in kinds} if args.epochs else None
    strengths = QUICK_STRENGTHS if args.quick else FULL_STRENGTHS
    feasible = max_feasible_k(ds, sensitive, keep)
    settings = anonymizer_settings(QUICK_SWEEP if args.quick else FULL_SWEEP, feasible)

    def timed_eval(samples):
        return evaluate(ds, samples, attributes, kinds, args.seed, epochs)

    rows = []  # (method, setting, point)
    original = timed_eval(x.numpy())
    chance = original[f"{sensitive}_chance"]
    rows.append(("original", "-", original))
    curves: dict[str, list[tuple[str, dict]]] = {"anonymizer": []}
    for s in settings:
        cfg = AnonymizeConfig(seed=args.seed, **s)
        anonymizer = fit_anonymizer(x, ds, sensitive, keep, cfg, representation=rep)
        out = release(anonymizer, x, ds, sensitive, keep, batch_size=256)
        p = timed_eval(out)
        label = f"k={s['k']} w={s['weight']} p={s['top_features']} (min k {anonymizer.achieved_k_['min']})"
        rows.append(("anonymizer", label, p))
        curves["anonymizer"].append((label, p))
        print(f"  [{name}] anonymizer {label}: {keep} {p[keep]:.3f} {sensitive} {p[sensitive]:.3f} "
              f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    for b, values in strengths.items():
        curves[b] = [("original", original)]
        for v in values:
            out = apply_baseline(b, x, rep, v, seed=args.seed)
            p = timed_eval(out.numpy())
            rows.append((b, str(v), p))
            curves[b].append((str(v), p))
        print(f"  [{name}] {b} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    if args.mass_epochs > 0:
        out, mass_label = mass_release(ds, x, rep, sensitive, keep, args)
        p = timed_eval(out)
        rows.append(("MaSS", mass_label, p))
        curves["MaSS"] = [(mass_label, p)]
        print(f"  [{name}] MaSS done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    subset = f", stratified subset of {n_all}" if len(ds) < n_all else ""
    lines = [f"### {name}: hide {sensitive}, keep {keep}, other {other} ({len(ds)} records{subset}, "
             f"{ds.schema.modality}, attackers {','.join(kinds)}, {time.time() - t0:.0f} s)", "",
             f"chance: {sensitive} {chance:.3f}, {keep} {original[f'{keep}_chance']:.3f}, "
             f"{other} {original[f'{other}_chance']:.3f}", "",
             f"| method | setting / strength | {keep} acc (kept) | {other} acc (not used) | {sensitive} acc (re-id) | re-id - chance |",
             "|---|---|---|---|---|---|"]
    for method, setting, p in rows:
        lines.append(f"| {method} | {setting} | {p[keep]:.3f} | {p[other]:.3f} | {p[sensitive]:.3f} | "
                     f"{p[sensitive] - chance:+.3f} |")

    anon = curves["anonymizer"]

    def matched(u: float):
        ok = [(lab, p) for lab, p in anon if p[keep] >= u - args.tolerance]
        return min(ok, key=lambda lp: lp[1][sensitive]) if ok else None

    lines += ["", f"Matched comparison (anonymizer: lowest re-id among its settings with {keep} acc >= the other "
              f"method's - {args.tolerance:.2f}; ratio = other method's excess re-id / anonymizer's, target >= 2):", "",
              f"| compared with | strength / setting | its {keep} acc | its re-id | anonymizer setting | anonymizer {keep} acc | "
              f"anonymizer re-id | ratio | >= 2 |", "|---|---|---|---|---|---|---|---|---|"]
    verdicts = {}
    for method in [m for m in curves if m != "anonymizer"]:
        worst = float("inf")
        for lab, q in curves[method]:
            m = matched(q[keep])
            if m is None:
                lines.append(f"| {method} | {lab} | {q[keep]:.3f} | {q[sensitive]:.3f} | none reaches it | - | - | - | **no** |")
                worst = -float("inf")
                continue
            excess_a, excess_b = m[1][sensitive] - chance, q[sensitive] - chance
            ratio = excess_b / excess_a if excess_a > 1e-9 else float("inf")
            worst = min(worst, ratio)
            ok = ratio >= 2
            lines.append(f"| {method} | {lab} | {q[keep]:.3f} | {q[sensitive]:.3f} | {m[0]} | {m[1][keep]:.3f} | "
                         f"{m[1][sensitive]:.3f} | {ratio:.2f} | {'yes' if ok else '**no**'} |")
        if curves[method]:
            verdicts[method] = worst
    lines += ["", "Smallest ratio over each method's curve: " + ", ".join(
        f"{m} {v:.2f} ({'>= 2' if v >= 2 else '**< 2**'})" for m, v in verdicts.items()) + ". Target (both naive "
        f"baselines): {'met' if all(verdicts[b] >= 2 for b in strengths) else '**missed**'}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="4 anonymizer settings, 3 strengths per baseline, "
                                                              "at most 1000 records, 20 attacker epochs, 5 MaSS epochs")
    parser.add_argument("--attackers", default="linear,mlp", help="fresh attackers (linear, mlp, cnn)")
    parser.add_argument("--max-records", type=int, default=None, help="stratified subsample per dataset")
    parser.add_argument("--epochs", type=int, default=None, help="attacker epochs (default: privkit's)")
    parser.add_argument("--mass-epochs", type=int, default=None, help="MaSS epochs (0: skip MaSS; default 15, quick 5)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="kept-accuracy slack of the matching")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.max_records = args.max_records or 1000
        args.epochs = args.epochs or 20
    if args.mass_epochs is None:
        args.mass_epochs = 5 if args.quick else 15
    os.environ.setdefault("PRIVKIT_CACHE", str(REPO / ".bench-cache-data"))
    print(f"# Anonymizer vs naive baselines and MaSS (seed {args.seed}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '?')}{', quick' if args.quick else ''})\n", flush=True)
    for name in args.datasets:
        print(run_dataset(name, args) + "\n", flush=True)


if __name__ == "__main__":
    main()
