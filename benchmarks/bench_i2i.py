"""Benchmark I2I unlearning: every method against retraining the generator on D_R, in one run.

For each scenario an I2I model is trained once with the original recipe (``privkit i2i train``,
``--train-epochs``), the metric classifier once (privkit's own CNN, see
``privkit.generative.metrics``), the generator is retrained on the retain set with the *same*
recipe (timed: training steps only), then every method runs (timed the same way: its own
optimisation only, no evaluation) and is scored on the forget and retain test sets: FD ratio
(after / original model's), the metric classifier's accuracy on completed images vs chance,
PSNR/SSIM, seconds, optimiser steps and speed-up vs retraining.

Proxy-retain rows replace D_R by (a) ``held-out``: the scenario's validation images that are not
in the forget selection (never trained on, so not in D_R) and (b) another built-in dataset
resized to the same image size (``synthetic-faces`` for digits; none for faces).

Each scenario has its own mask and metric-classifier recipe (``SCENARIOS``: why each was chosen);
the scenario line also prints the metric classifier's accuracy on the ground-truth test images
(the ceiling of "forget acc"). A second table compares every proxy row with the real-retain row
of the same alpha (relative difference; accuracies in points).

    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --quick
    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --quick --alpha 0.25,0.5 --lr 1e-3 --unlearn-epochs 10
    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --quick --methods none --mask 0.75   # original vs retrain only
    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --quick --alpha 0.35 --frozen-stages 1,0 --lr 1e-3 --unlearn-epochs 10
    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --quick --unet-width 24 --alpha 0.35,0.5 --frozen-stages 1,0 --lr 1e-3 --unlearn-epochs 10
    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --scenarios faces-age --models unet --size 1600 --train-epochs 60 --methods none
    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --scenarios digits-class,faces-age --models unet,mae-tiny

``--unet-width`` sets the U-Net's channel width (default: the model's, 8); ``--size`` the number of
generated faces (default: the scenario's 400); ``--forget`` another forget request (e.g.
``class=5``, to check that a setting chosen on one class carries over to others).

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

SCENARIOS = {
    # 8x8 digits; centre crop of 5 of the 8 pixels (mask 0.625). The paper's half-side crop (0.5)
    # leaves a 2-px border that still shows the class: a generator retrained without the class
    # completes forget images the metric classifier still recognises 0.32 of the time (chance
    # 0.10), so the accuracy target cannot be met even by exact unlearning; at 0.625 retraining
    # gives 0.03 while the original model still completes the class (0.76); at 0.75 (one-pixel
    # ring) the original model itself no longer does (0.30). `--mask` overrides it.
    "digits-class": dict(data="digits", size=None, image_size=None, forget="class=3",
                         proxy=("synthetic-faces", 300), eval_epochs=8, mask=0.625,
                         eval_on_completions=False),
    # 400 synthetic faces shrunk to 32x32 to fit a CPU budget; forget the concept "old" (age group:
    # wrinkles and eye bags). The metric classifier trains 30 epochs on the real training images
    # and on the original model's completions of them: at 8 epochs on real images only it called
    # almost every completion "old" and could not measure forgetting. Mask 0.75 (24 of 32 px):
    # at 0.5 the visible border (grey hair, hairline) shows the age, and a generator retrained
    # without old faces still completes them into images recognised as old 0.83 of the time
    # (original model 0.92); at 0.75, 0.08 (original 0.46).
    # No proxy from another domain: digits are 8x8 arrays that do not resize.
    "faces-age": dict(data="synthetic-faces", size=400, image_size=32, forget="attr=age:old",
                      proxy=None, eval_epochs=30, mask=0.75, eval_on_completions=True),
}


def fmt(v) -> str:
    return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def heldout_proxy(request, forget_spec: str):
    """Validation images outside the forget selection: real images of the domain that are not in D_R."""
    from privkit.data.splits import select_forget
    from privkit.errors import ConfigError

    try:
        _, keep = select_forget(request.val, forget_spec, target=request.target)
    except ConfigError:  # no validation image matches the selection: all of them are usable
        return request.val
    return request.val.subset(keep)


def run_scenario(name: str, sc: dict, model_name: str, methods: list[tuple[str, dict]], train_epochs: int,
                 unlearn_epochs: int, eval_epochs: int, mask: float, root: Path, seed: int,
                 retrain: bool = True, eval_on_completions: bool = False,
                 model_kwargs: dict | None = None) -> list[list]:
    from privkit.data import load_dataset
    from privkit.generative.metrics import FeatureClassifier
    from privkit.generative.run import prepare_i2i_request, run_i2i_method, score_models
    from privkit.generative.train import train_i2i_run
    from privkit.generative.unlearn import get_i2i_unlearner

    ds = load_dataset(sc["data"], size=sc["size"], image_size=sc["image_size"])
    run = train_i2i_run(sc["data"], root / f"{name}-{model_name}", model_name=model_name, epochs=train_epochs,
                        size=sc["size"], mask=mask, seed=seed, progress=False, dataset=ds, model_kwargs=model_kwargs)
    request = prepare_i2i_request(run, sc["data"], sc["forget"], dataset=ds)
    completions = None
    if eval_on_completions:
        from privkit.generative.train import reconstruct

        completions = reconstruct(request.model, request.operator, request.train.materialize()[0])
    evaluator = FeatureClassifier(request.forget_attribute, epochs=eval_epochs, seed=seed).fit(
        request.train, completions=completions)
    h, w = ds.schema.input_shape[1:]
    proxies = {"held-out": heldout_proxy(request, sc["forget"])}
    if sc["proxy"] is not None:
        pdata, psize = sc["proxy"]
        proxies[pdata] = load_dataset(pdata, size=psize, image_size=(h, w))
    batch = request.context.i2i_recipe.batch_size
    steps_per_epoch = math.ceil(len(request.real_retain) / batch)
    models, seconds, steps = {"original": request.model}, {"original": 0.0}, {"original": 0}
    if retrain:
        models["retrain"], seconds["retrain"], _ = run_i2i_method(get_i2i_unlearner("retrain"), request,
                                                                  retain=request.real_retain)
        steps["retrain"] = train_epochs * steps_per_epoch
    for label, params in methods:
        if params.get("proxy") and params["proxy"] not in proxies:
            continue
        retain = proxies[params["proxy"]] if params.get("proxy") else None
        epochs = unlearn_epochs
        if retain is not None:
            # an epoch is a pass over D_R: give a smaller proxy set as many optimiser steps as the real one
            epochs = max(unlearn_epochs, round(unlearn_epochs * steps_per_epoch / math.ceil(len(retain) / batch)))
            label = f"{label} ({params['proxy']} proxy, n={len(retain)}, {epochs} epochs)"
        method = get_i2i_unlearner(params["method"], epochs=epochs,
                                   **{k: v for k, v in params.items() if k not in ("method", "proxy")})
        models[label], seconds[label], _ = run_i2i_method(method, request, retain=retain)
        steps[label] = epochs * math.ceil(len(retain if retain is not None else request.retain) / batch)
    scores = score_models(models, request, evaluator)
    orig = scores["original"]
    truth_acc = {set_name: orig[set_name]["truth_accuracy"] for set_name in ("forget", "retain")}
    sizes = f"n_retain={len(request.real_retain)} n_forget={len(request.forget)} " \
            f"test forget/retain={orig['forget']['n']}/{orig['retain']['n']}"
    rows = []
    for label, s in scores.items():
        f, r = s["forget"], s["retain"]
        rows.append([name, model_name, label, f["fd"] / orig["forget"]["fd"], r["fd"] / orig["retain"]["fd"],
                     f["accuracy"], f["chance"], r["accuracy"], f["psnr"], r["psnr"], f["ssim"], r["ssim"],
                     seconds[label], steps[label],
                     seconds["retrain"] / seconds[label] if seconds[label] > 0 and "retrain" in seconds else None])
    spec = request.model.privkit_spec["kwargs"]
    print(f"{name} {model_name} {spec} (mask {mask}): {sizes}; original FD forget {orig['forget']['fd']:.3f} retain "
          f"{orig['retain']['fd']:.3f}; metric classifier on ground-truth test images: forget acc "
          f"{truth_acc['forget']:.2f}, retain acc {truth_acc['retain']:.2f}", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits only, unet (about a minute on one CPU thread)")
    p.add_argument("--scenarios", default="digits-class,faces-age")
    p.add_argument("--models", default="unet,mae-tiny")
    p.add_argument("--mask", type=float, default=None,
                   help="side of the hidden centre square, fraction of the side (default: the scenario's)")
    p.add_argument("--train-epochs", type=int, default=30, help="the original recipe (also used by retrain)")
    p.add_argument("--unlearn-epochs", type=int, default=3)
    p.add_argument("--alpha", default="0.5",
                   help="alpha of the li2024 rows, or a comma list of alphas (one row each; the proxy rows use the "
                        "first); the paper's 0.15 is also run")
    p.add_argument("--eval-epochs", type=int, default=None,
                   help="epochs of the metric classifier (default: the scenario's, see SCENARIOS)")
    p.add_argument("--frozen-stages", default="0",
                   help="li2024 rows keep the first K encoder stages (input side) at the original weights; a comma "
                        "list gives one row per alpha and K (the proxy rows use the first of each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="learning rate of every unlearning method (default: theirs)")
    p.add_argument("--methods", default="all",
                   help="comma list of rows to run besides original and retrain: li2024, li2024-paper, "
                        "proxy-held-out, proxy-other, max-loss, noisy-label, retain-label, random-encoder; "
                        "'none' for original and retrain only (e.g. to compare masks)")
    p.add_argument("--eval-on-completions", choices=["yes", "no"], default=None,
                   help="also train the metric classifier on the original model's completions of the training "
                        "images (default: the scenario's)")
    p.add_argument("--skip-retrain", action="store_true", help="no retraining row (quicker tuning runs)")
    p.add_argument("--forget", default=None, help="forget request instead of the scenario's (e.g. attr=age:old)")
    p.add_argument("--unet-width", type=int, default=None,
                   help="channels of the U-Net's first level (default: the model's, 8); mae-tiny is unaffected")
    p.add_argument("--size", type=int, default=None,
                   help="number of images of a generated dataset (synthetic-faces) instead of the scenario's")
    args = p.parse_args(argv)
    if args.quick:
        args.scenarios, args.models = "digits-class", "unet"
    if args.unet_width is not None and args.unet_width < 1:
        p.error(f"--unet-width {args.unet_width} must be at least 1 (the default is 8)")
    scenario_names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown_scenarios = sorted(set(scenario_names) - set(SCENARIOS))
    if unknown_scenarios:
        p.error(f"unknown --scenarios {unknown_scenarios}; choose from {sorted(SCENARIOS)}")
    if args.size is not None:  # checked before any scenario trains, not after the first one
        if args.size < 1:
            p.error(f"--size {args.size} must be at least 1")
        for sc_name in scenario_names:
            if SCENARIOS[sc_name]["size"] is None:
                p.error(f"--size {args.size}: scenario {sc_name} uses a fixed dataset ({SCENARIOS[sc_name]['data']}); "
                        "leave --size out or choose a synthetic-faces scenario")
    alphas = [float(v) for v in str(args.alpha).split(",") if v.strip()]
    a = alphas[0]
    try:
        frozen = [int(v) for v in str(args.frozen_stages).split(",") if v.strip()]
    except ValueError:
        p.error(f"--frozen-stages {args.frozen_stages!r}: give whole numbers, e.g. 1 or 1,0")
    k = frozen[0]
    # the paper's alpha (whole encoder trained) as its own row, unless the alpha rows already have it
    paper_row = [] if 0.15 in alphas and 0 in frozen else [
        ("li2024-paper", "li2024 (alpha 0.15)", {"method": "li2024", "alpha": 0.15})]

    def li_label(alpha: float, stages: int) -> str:
        return f"li2024 (alpha {alpha:g}" + (f", {stages} encoder stage{'s' * (stages > 1)} frozen)" if stages else ")")

    methods = [*[("li2024", li_label(v, fz), {"method": "li2024", "alpha": v, "frozen_stages": fz})
                 for fz in frozen for v in alphas], *paper_row,
               ("proxy-held-out", li_label(a, k), {"method": "li2024", "alpha": a, "frozen_stages": k,
                                                   "proxy": "held-out"}),
               ("proxy-other", li_label(a, k), {"method": "li2024", "alpha": a, "frozen_stages": k, "proxy": "other"}),
               ("max-loss", "max-loss", {"method": "max-loss"}), ("noisy-label", "noisy-label", {"method": "noisy-label"}),
               ("retain-label", "retain-label", {"method": "retain-label"}),
               ("random-encoder", "random-encoder", {"method": "random-encoder"})]
    if args.methods != "all":
        wanted = {m.strip() for m in args.methods.split(",") if m.strip()} - {"none"}
        unknown = wanted - {key for key, _, _ in methods} - {"li2024-paper"}
        if unknown:
            p.error(f"unknown --methods {sorted(unknown)}; choose from {[key for key, _, _ in methods]}")
        methods = [m for m in methods if m[0] in wanted]
    if args.lr is not None:
        methods = [(key, label, dict(prm, lr=args.lr)) for key, label, prm in methods]
    methods = [(label, prm) for _, label, prm in methods]
    headers = ["scenario", "model", "method", "forget FD ratio", "retain FD ratio", "forget acc", "chance",
               "retain acc", "forget PSNR", "retain PSNR", "forget SSIM", "retain SSIM", "seconds", "steps",
               "speed-up vs retrain"]
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for sc_name in scenario_names:
            sc = dict(SCENARIOS[sc_name])
            if args.forget:
                sc["forget"] = args.forget
            if args.size is not None:
                sc["size"] = args.size
            for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
                other = sc["proxy"][0] if sc["proxy"] else None
                ms = [(lbl, dict(prm, proxy=other) if prm.get("proxy") == "other" else prm) for lbl, prm in methods
                      if not (prm.get("proxy") == "other" and other is None)]
                rows += run_scenario(sc_name, sc, model_name, ms, args.train_epochs, args.unlearn_epochs,
                                     args.eval_epochs or sc["eval_epochs"], args.mask or sc["mask"], Path(tmp),
                                     args.seed, retrain=not args.skip_retrain,
                                     eval_on_completions=sc["eval_on_completions"] if args.eval_on_completions is None
                                     else args.eval_on_completions == "yes",
                                     model_kwargs={"width": args.unet_width} if model_name == "unet" and args.unet_width
                                     else None)
    print(f"\nmask {args.mask or 'per scenario'}, U-Net width {args.unet_width or 'default (8)'}, "
          f"train epochs {args.train_epochs}, unlearn epochs {args.unlearn_epochs}, "
          f"li2024 frozen encoder stages {args.frozen_stages}, "
          f"metric-classifier epochs {args.eval_epochs or 'per scenario'}, unlearning lr {args.lr or 'method default'}")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(fmt(v) for v in r) + " |")
    proxy_rows = [r for r in rows if " proxy, n=" in r[2]]
    if proxy_rows:
        # proxy vs real retain, same scenario/model/alpha: relative difference on FD ratios, PSNR and SSIM,
        # difference in points on accuracies (a relative difference of accuracies near 0 means nothing)
        print("\n| scenario | model | proxy row | forget FD ratio | retain FD ratio | forget acc (points) | "
              "retain acc (points) | forget PSNR | retain PSNR | forget SSIM | retain SSIM | all within 10 %? |")
        print("|" + "---|" * 12)
        for r in proxy_rows:
            base = next((b for b in rows if b[:2] == r[:2] and b[2] == r[2].split(" (", 2)[0] + " (" +
                         r[2].split(" (", 2)[1]), None)
            if base is None:
                continue
            rel = [(r[i] - base[i]) / abs(base[i]) for i in (3, 4, 8, 9, 10, 11)]
            pts = [100 * (r[i] - base[i]) for i in (5, 7)]
            ok = all(abs(v) <= 0.10 for v in rel) and all(abs(v) <= 10 for v in pts)
            cells = [f"{rel[0]:+.0%}", f"{rel[1]:+.0%}", f"{pts[0]:+.0f}", f"{pts[1]:+.0f}",
                     *[f"{v:+.0%}" for v in rel[2:]], "yes" if ok else "**no**"]
            print("| " + " | ".join([r[0], r[1], r[2]] + cells) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; targets (issue): forget FD ratio >= 3, forget acc within 10 points "
          f"of chance, retain FD ratio <= 1.1, proxy within 10 % of real retain")


if __name__ == "__main__":
    main()
