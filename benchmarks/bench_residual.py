"""Throughput of the residual-knowledge audit against the bare forward passes it cannot avoid.

The audit classifies ``N * K`` perturbed inputs per radius with *two* models (the unlearned one
and the reference), at each of the T radii of ``--taus`` (default: the CLI's grid of five). The
honest lower bound on its cost is therefore 2T bare batched forward passes over ``N * K`` pre-made
inputs, in the same batch size, in eval mode without gradients::

    baseline throughput = T*N*K / (T * (t_forward(unlearned) + t_forward(reference)))
    audit throughput    = T*N*K / t_audit        (sampling, clipping, both forwards, counting, CI)
    ratio               = audit throughput / baseline throughput     (target >= 0.8)

Both are timed in the same run after one warm-up each, the repeats alternating bare / audit so both
see the same machine load; best of ``--repeats`` each, in wall time (the target) and in process CPU
time (what the one thread itself spent, less sensitive to other jobs on a shared machine). The
minor page faults per call (fewest over the repeats) show whether the allocator handed memory back
to the system and faulted it in again (see ``privkit.audit.residual.Workspace``). ``--exact-draws``
audits with ``torch.rand``'s float draws instead of the default 16-bit grid draws. ``--breakdown``
then times the phases inside the audit (the estimator's functions wrapped with timers, the models'
forward passes timed by hooks): unit draws, perturbing (add and clip), forward passes, confidence
interval, and the rest (argmax, counting, bookkeeping), next to the bare run's forward passes.

    python benchmarks/bench_residual.py --model cnn28 --forget 256 --samples 64
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

try:
    import resource
except ImportError:  # not on Windows: no page-fault counts there
    resource = None

import torch
from torch import nn

from privkit.audit import residual as residual_module
from privkit.audit.residual import residual_knowledge

MODELS = {}


def register_model(name):
    def decorate(fn):
        MODELS[name] = fn
        return fn
    return decorate


@register_model("mlp64")
def mlp64():
    """The tests' digits MLP: 64 inputs (8x8 digits), 64 hidden units -- a worst case, almost free."""
    return (64,), nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@register_model("mlp784")
def mlp784():
    """MNIST-sized MLP: 784 -> 256 -> 10."""
    return (1, 28, 28), nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


@register_model("cnn28")
def cnn28():
    """Small CNN on 1x28x28 inputs."""
    return (1, 28, 28), nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


@register_model("cnn64")
def cnn64():
    """Small CNN on 3x64x64 inputs (face-sized)."""
    return (3, 64, 64), nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def _workload(name, forget, samples, batch_size, sampler, norm, device, taus, exact_draws=False):
    """The two models, and the bare and audit calls over the same number of inputs: (bare, audit, info)."""
    shape, unlearned = MODELS[name]()
    _, reference = MODELS[name]()
    unlearned.to(device).eval()
    reference.to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((forget, *shape), generator=g)
    y = torch.randint(0, 10, (forget,), generator=g)
    n = forget * samples * len(taus)
    chunk = max(1, batch_size // samples) * samples  # the audit's own forward batch size
    inputs = torch.rand((n, *shape), generator=g).to(device)

    def bare():
        with torch.no_grad():
            for model in (unlearned, reference):
                for start in range(0, n, chunk):
                    model(inputs[start:start + chunk]).argmax(dim=-1)
        _sync(device)

    # passed only when asked for, so the script also times estimators without the option (git HEAD)
    draws = {"exact_draws": True} if exact_draws else {}

    def audit():
        residual_knowledge(unlearned, reference, x, y, taus=taus, norm=norm, sampler=sampler, samples=samples,
                           batch_size=batch_size, seed=0, **draws)
        _sync(device)

    return bare, audit, {"inputs": n, "batch": chunk, "models": (unlearned, reference)}


def bench(name, forget, samples, batch_size, sampler, norm, repeats, device, taus, exact_draws=False):
    bare, audit, info = _workload(name, forget, samples, batch_size, sampler, norm, device, taus, exact_draws)
    n, chunk = info["inputs"], info["batch"]

    # Repeats alternate bare / audit so that both see the same machine load (on a shared machine the
    # load changes within seconds); best of the repeats for each. The process CPU time is reported too:
    # it is what the single thread spent, whatever else ran on the machine.
    wall = {"bare": float("inf"), "audit": float("inf")}
    cpu = dict(wall)
    faults = dict(wall)
    runs = (("bare", bare), ("audit", audit))
    for _, fn in runs:
        fn()  # warm-up
    for _ in range(repeats):
        for label, fn in runs:
            f0, t0, c0 = _minor_faults(), time.perf_counter(), time.process_time()
            fn()
            wall[label] = min(wall[label], time.perf_counter() - t0)
            cpu[label] = min(cpu[label], time.process_time() - c0)
            faults[label] = min(faults[label], _minor_faults() - f0)
    return {
        "model": name, "inputs": n, "batch": chunk,
        "bare_per_s": n / wall["bare"], "audit_per_s": n / wall["audit"],
        "ratio": wall["bare"] / wall["audit"], "cpu_ratio": cpu["bare"] / cpu["audit"],
        "faults_audit": int(faults["audit"]), "faults_bare": int(faults["bare"]),
    }


def breakdown(name, forget, samples, batch_size, sampler, norm, repeats, device, taus, exact_draws=False):
    """Wall time of the audit's phases, measured inside the audit: {phase: [seconds per repeat]}.

    The estimator's unit draws (``NoiseStreams.unit_cube``/``fill``), its sampler and its
    confidence-interval method are wrapped with timers for the duration of the measurement, and both
    models' forward passes are timed by hooks; "perturb" is the sampler's time less the draws, "rest"
    the audit's time less all of these (argmax, counting, bookkeeping, the summary). The bare run's
    forward passes are timed by the same hooks, so the two forward columns compare directly.
    """
    bare, audit, info = _workload(name, forget, samples, batch_size, sampler, norm, device, taus, exact_draws)
    spent = {}
    active = set()  # labels being timed: unit_cube calls fill in exact mode, which must not count twice

    def timed(label, fn):
        @functools.wraps(fn)  # keeps the signature: the estimator checks whether a sampler takes out=
        def wrapper(*args, **kwargs):
            if label in active:
                return fn(*args, **kwargs)
            active.add(label)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(device)
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
                active.discard(label)
        return wrapper

    streams_cls = residual_module.NoiseStreams
    patched = [(streams_cls, attr, getattr(streams_cls, attr)) for attr in ("unit_cube", "fill")]
    registries = [(registry, key, label, registry[key]) for registry, key, label in
                  ((residual_module.SAMPLERS, sampler, "sampler"), (residual_module.CI_METHODS, "bootstrap", "ci"))]
    handles = []
    started = {}
    try:
        for owner, attr, fn in patched:
            setattr(owner, attr, timed("draws", fn))
        for registry, key, label, fn in registries:
            dict.__setitem__(registry, key, timed(label, fn))  # the registry refuses a second registration
        for model in info["models"]:
            handles.append(model.register_forward_pre_hook(lambda m, a: started.__setitem__(m, time.perf_counter())))
            handles.append(model.register_forward_hook(
                lambda m, a, out: spent.__setitem__("forward", spent.get("forward", 0.0)
                                                    + time.perf_counter() - started[m])))
        rows = {"bare: total": [], "bare: forward passes": [], "bare: rest (argmax, slicing)": [],
                "audit: total": [], "audit: unit draws": [], "audit: perturb (add, clip)": [],
                "audit: forward passes": [], "audit: confidence interval": [],
                "audit: rest (argmax, counts, bookkeeping)": []}
        bare()
        audit()  # warm-up
        for _ in range(repeats):
            spent.clear()
            t0 = time.perf_counter()
            bare()
            total = time.perf_counter() - t0
            rows["bare: total"].append(total)
            rows["bare: forward passes"].append(spent.get("forward", 0.0))
            rows["bare: rest (argmax, slicing)"].append(total - spent.get("forward", 0.0))
            spent.clear()
            t0 = time.perf_counter()
            audit()
            total = time.perf_counter() - t0
            parts = {k: spent.get(k, 0.0) for k in ("draws", "sampler", "forward", "ci")}
            rows["audit: total"].append(total)
            rows["audit: unit draws"].append(parts["draws"])
            rows["audit: perturb (add, clip)"].append(parts["sampler"] - parts["draws"])
            rows["audit: forward passes"].append(parts["forward"])
            rows["audit: confidence interval"].append(parts["ci"])
            rows["audit: rest (argmax, counts, bookkeeping)"].append(total - parts["sampler"] - parts["forward"]
                                                                     - parts["ci"])
    finally:
        for owner, attr, fn in patched:
            setattr(owner, attr, fn)
        for registry, key, _, fn in registries:
            dict.__setitem__(registry, key, fn)
        for handle in handles:
            handle.remove()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all", choices=["all", *MODELS])
    parser.add_argument("--forget", type=int, default=256, help="forget samples N")
    parser.add_argument("--samples", type=int, default=64, help="perturbations per forget sample K")
    parser.add_argument("--batch-size", type=int, default=4096, help="most perturbed inputs per forward pass")
    parser.add_argument("--sampler", default="uniform", choices=["uniform", "gaussian"])
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--taus", default="0.01,0.02,0.03,0.05,0.1",
                        help="radii audited in one call (default: the CLI's grid)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exact-draws", action="store_true",
                        help="audit with torch.rand float draws (earlier streams) instead of 16-bit grid draws")
    parser.add_argument("--breakdown", action="store_true",
                        help="then time the phases inside the audit (instrumented repeats, after the measurement)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list(MODELS) if args.model == "all" else [args.model]
    print(f"device={device} threads={args.threads} N={args.forget} K={args.samples} sampler={args.sampler} "
          f"norm={args.norm} taus={args.taus} draws={'exact' if args.exact_draws else '16-bit'}; baseline = bare "
          f"forward of BOTH models over the same N*K inputs at every tau")
    if hasattr(os, "getloadavg"):  # the machine's load when the run started (1, 5, 15 min), for shared machines
        print("load average at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    header = (f"{'model':<8} {'inputs':>8} {'batch':>6} {'bare 2x fwd/s':>14} {'audit/s':>12} {'ratio':>6} "
              f"{'CPU-time ratio':>14} {'page faults audit/bare':>22}  target>=0.8 (wall ratio)")
    print(header)
    print("-" * len(header))
    for name in names:
        row = bench(name, args.forget, args.samples, args.batch_size, args.sampler, args.norm, args.repeats, device,
                    tuple(float(t) for t in args.taus.split(",")), exact_draws=args.exact_draws)
        ok = "ok" if row["ratio"] >= 0.8 else "BELOW"
        faults = f"{row['faults_audit']} / {row['faults_bare']}"
        print(f"{row['model']:<8} {row['inputs']:>8} {row['batch']:>6} {row['bare_per_s']:>14,.0f} "
              f"{row['audit_per_s']:>12,.0f} {row['ratio']:>6.2f} {row['cpu_ratio']:>14.2f} {faults:>22}  {ok}")
    if args.breakdown:
        for name in names:
            phases = breakdown(name, args.forget, args.samples, args.batch_size, args.sampler, args.norm,
                               args.repeats, device, tuple(float(t) for t in args.taus.split(",")),
                               exact_draws=args.exact_draws)
            print(f"\n{name}: where the time goes, ms per call (min / median over {args.repeats} instrumented "
                  f"repeats; the timers and hooks add a little)")
            for label, values in phases.items():
                print(f"  {label:<44} {min(values) * 1e3:9.2f} / {statistics.median(values) * 1e3:9.2f}")


if __name__ == "__main__":
    main()
