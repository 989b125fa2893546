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
audits with ``torch.rand``'s float draws instead of the default 16-bit grid draws.

    python benchmarks/bench_residual.py --model cnn28 --forget 256 --samples 64
"""

from __future__ import annotations

import argparse
import time

try:
    import resource
except ImportError:  # not on Windows: no page-fault counts there
    resource = None

import torch
from torch import nn

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


def bench(name, forget, samples, batch_size, sampler, norm, repeats, device, taus, exact_draws=False):
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
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list(MODELS) if args.model == "all" else [args.model]
    print(f"device={device} threads={args.threads} N={args.forget} K={args.samples} sampler={args.sampler} "
          f"norm={args.norm} taus={args.taus} draws={'exact' if args.exact_draws else '16-bit'}; baseline = bare "
          f"forward of BOTH models over the same N*K inputs at every tau")
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


if __name__ == "__main__":
    main()
