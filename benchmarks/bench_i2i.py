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

    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --quick
    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --scenarios digits-class,faces-age --models unet,mae-tiny

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

SCENARIOS = {
    # 8x8 digits; centre crop of half the side (the paper's 25 %-area centre crop)
    "digits-class": dict(data="digits", size=None, image_size=None, forget="class=3",
                         proxy=("synthetic-faces", 300)),
    # 400 synthetic faces shrunk to 32x32 to fit a CPU budget; forget the concept "old" (age group:
    # wrinkles and eye bags fall in the hidden centre)
    "faces-age": dict(data="synthetic-faces", size=400, image_size=32, forget="attr=age:old",
                          proxy=None),  # no other built-in image data: digits are 8x8 arrays that do not resize
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
                 unlearn_epochs: int, eval_epochs: int, mask: float, root: Path, seed: int) -> list[list]:
    from privkit.data import load_dataset
    from privkit.generative.metrics import FeatureClassifier
    from privkit.generative.run import prepare_i2i_request, run_i2i_method, score_models
    from privkit.generative.train import train_i2i_run
    from privkit.generative.unlearn import get_i2i_unlearner

    ds = load_dataset(sc["data"], size=sc["size"], image_size=sc["image_size"])
    run = train_i2i_run(sc["data"], root / f"{name}-{model_name}", model_name=model_name, epochs=train_epochs,
                        size=sc["size"], mask=mask, seed=seed, progress=False, dataset=ds)
    request = prepare_i2i_request(run, sc["data"], sc["forget"], dataset=ds)
    evaluator = FeatureClassifier(request.forget_attribute, epochs=eval_epochs, seed=seed).fit(request.train)
    h, w = ds.schema.input_shape[1:]
    proxies = {"held-out": heldout_proxy(request, sc["forget"])}
    if sc["proxy"] is not None:
        pdata, psize = sc["proxy"]
        proxies[pdata] = load_dataset(pdata, size=psize, image_size=(h, w))
    batch = request.context.i2i_recipe.batch_size
    steps_per_epoch = math.ceil(len(request.real_retain) / batch)
    models, seconds, steps = {"original": request.model}, {"original": 0.0}, {"original": 0}
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
    sizes = f"n_retain={len(request.real_retain)} n_forget={len(request.forget)} " \
            f"test forget/retain={orig['forget']['n']}/{orig['retain']['n']}"
    rows = []
    for label, s in scores.items():
        f, r = s["forget"], s["retain"]
        rows.append([name, model_name, label, f["fd"] / orig["forget"]["fd"], r["fd"] / orig["retain"]["fd"],
                     f["accuracy"], f["chance"], r["accuracy"], f["psnr"], r["psnr"], f["ssim"], r["ssim"],
                     seconds[label], steps[label], seconds["retrain"] / seconds[label] if seconds[label] > 0 else None])
    print(f"{name} {model_name}: {sizes}; original FD forget {orig['forget']['fd']:.3f} retain "
          f"{orig['retain']['fd']:.3f}", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits only, unet (about a minute on one CPU thread)")
    p.add_argument("--scenarios", default="digits-class,faces-age")
    p.add_argument("--models", default="unet,mae-tiny")
    p.add_argument("--mask", type=float, default=0.5, help="side of the hidden centre square (fraction of the side)")
    p.add_argument("--train-epochs", type=int, default=30, help="the original recipe (also used by retrain)")
    p.add_argument("--unlearn-epochs", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.5, help="alpha of the li2024 rows (the paper's 0.15 is also run)")
    p.add_argument("--eval-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.scenarios, args.models = "digits-class", "unet"
    a = args.alpha
    # the paper's alpha as its own row, unless --alpha already is the paper's
    paper_row = [] if a == 0.15 else [("li2024 (alpha 0.15)", {"method": "li2024", "alpha": 0.15})]
    methods = [(f"li2024 (alpha {a:g})", {"method": "li2024", "alpha": a}), *paper_row,
               (f"li2024 (alpha {a:g})", {"method": "li2024", "alpha": a, "proxy": "held-out"}),
               (f"li2024 (alpha {a:g})", {"method": "li2024", "alpha": a, "proxy": "other"}),
               ("max-loss", {"method": "max-loss"}), ("noisy-label", {"method": "noisy-label"}),
               ("retain-label", {"method": "retain-label"}), ("random-encoder", {"method": "random-encoder"})]
    headers = ["scenario", "model", "method", "forget FD ratio", "retain FD ratio", "forget acc", "chance",
               "retain acc", "forget PSNR", "retain PSNR", "forget SSIM", "retain SSIM", "seconds", "steps",
               "speed-up vs retrain"]
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for sc_name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            sc = dict(SCENARIOS[sc_name])
            for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
                other = sc["proxy"][0] if sc["proxy"] else None
                ms = [(lbl, dict(prm, proxy=other) if prm.get("proxy") == "other" else prm) for lbl, prm in methods
                      if not (prm.get("proxy") == "other" and other is None)]
                rows += run_scenario(sc_name, sc, model_name, ms, args.train_epochs, args.unlearn_epochs,
                                     args.eval_epochs, args.mask, Path(tmp), args.seed)
    print(f"\nmask {args.mask}, train epochs {args.train_epochs}, unlearn epochs {args.unlearn_epochs}")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(fmt(v) for v in r) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; targets (issue): forget FD ratio >= 3, forget acc within 10 points "
          f"of chance, retain FD ratio <= 1.1, proxy within 10 % of real retain")


if __name__ == "__main__":
    main()
