"""Benchmark I2I unlearning: every method against retraining the generator on D_R, in one run.

For each scenario an I2I model is trained once (``privkit i2i train`` recipe), the metric
classifier once (privkit's own CNN, see ``privkit.generative.metrics``), the generator is retrained
on the retain set with the original recipe (timed), then every method runs (timed) and is scored
on the forget and retain test sets: FD ratio (after / original model's), the metric classifier's
accuracy on completed images vs chance, PSNR/SSIM, seconds and speed-up vs retraining. The
``li2024 (proxy)`` row replaces D_R by ``synthetic-faces`` resized to the same image size.

    OMP_NUM_THREADS=1 python benchmarks/bench_i2i.py --quick
    python benchmarks/bench_i2i.py --scenarios digits-class,faces-identity --models unet,mae-tiny

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SCENARIOS = {
    "digits-class": dict(data="digits", size=None, forget="class=3", proxy=("synthetic-faces", 300)),
    "faces-identity": dict(data="synthetic-faces", size=200, forget="attr=identity:0", proxy=None),
}


def fmt(v) -> str:
    return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def run_scenario(name: str, sc: dict, model_name: str, methods: list[tuple[str, dict]], train_epochs: int,
                 unlearn_epochs: int, eval_epochs: int, root: Path, seed: int) -> list[list]:
    from privkit.data import load_dataset
    from privkit.generative.metrics import FeatureClassifier
    from privkit.generative.run import prepare_i2i_request, run_i2i_method, score_models
    from privkit.generative.train import train_i2i_run
    from privkit.generative.unlearn import get_i2i_unlearner

    ds = load_dataset(sc["data"], size=sc["size"])
    run = train_i2i_run(sc["data"], root / f"{name}-{model_name}", model_name=model_name, epochs=train_epochs,
                        size=sc["size"], seed=seed, progress=False, dataset=ds)
    request = prepare_i2i_request(run, sc["data"], sc["forget"], dataset=ds)
    evaluator = FeatureClassifier(request.forget_attribute, epochs=eval_epochs, seed=seed).fit(request.train)
    models, seconds = {"original": request.model}, {"original": 0.0}
    models["retrain"], seconds["retrain"], _ = run_i2i_method(get_i2i_unlearner("retrain"), request,
                                                              retain=request.real_retain)
    for label, params in methods:
        method = get_i2i_unlearner(params["method"], epochs=unlearn_epochs,
                                   **{k: v for k, v in params.items() if k not in ("method", "proxy")})
        retain = None
        if params.get("proxy"):
            if sc["proxy"] is None:
                continue
            pdata, psize = sc["proxy"]
            h, w = ds.schema.input_shape[1:]
            retain = load_dataset(pdata, size=psize, image_size=(h, w))
        models[label], seconds[label], _ = run_i2i_method(method, request, retain=retain)
    scores = score_models(models, request, evaluator)
    orig = scores["original"]
    rows = []
    for label, s in scores.items():
        f, r = s["forget"], s["retain"]
        rows.append([name, model_name, label, f["fd"] / orig["forget"]["fd"], r["fd"] / orig["retain"]["fd"],
                     f["accuracy"], f["chance"], r["accuracy"], f["psnr"], r["psnr"], f["ssim"], r["ssim"],
                     seconds[label], seconds["retrain"] / seconds[label] if seconds[label] > 0 else None])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits only, unet, few epochs (a couple of minutes on CPU)")
    p.add_argument("--scenarios", default="digits-class,faces-identity")
    p.add_argument("--models", default="unet,mae-tiny")
    p.add_argument("--train-epochs", type=int, default=15)
    p.add_argument("--unlearn-epochs", type=int, default=10)
    p.add_argument("--eval-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.scenarios, args.models, args.train_epochs, args.unlearn_epochs = "digits-class", "unet", 8, 6
    methods = [("li2024", {"method": "li2024", "alpha": 0.15}),
               ("li2024 (alpha=1)", {"method": "li2024", "alpha": 1.0}),
               ("li2024 (proxy)", {"method": "li2024", "alpha": 0.15, "proxy": True}),
               ("max-loss", {"method": "max-loss"}), ("noisy-label", {"method": "noisy-label"}),
               ("retain-label", {"method": "retain-label"}), ("random-encoder", {"method": "random-encoder"})]
    headers = ["scenario", "model", "method", "forget FD ratio", "retain FD ratio", "forget acc", "chance",
               "retain acc", "forget PSNR", "retain PSNR", "forget SSIM", "retain SSIM", "seconds",
               "speed-up vs retrain"]
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for sc_name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
                rows += run_scenario(sc_name, SCENARIOS[sc_name], model_name, methods, args.train_epochs,
                                     args.unlearn_epochs, args.eval_epochs, Path(tmp), args.seed)
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(fmt(v) for v in r) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; targets (issue): forget FD ratio >= 3, forget acc within 10 points "
          f"of chance, retain FD ratio <= 1.1")


if __name__ == "__main__":
    main()
