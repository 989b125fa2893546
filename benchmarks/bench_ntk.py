"""Benchmark the NTK / Fast-NTK machinery on a small BatchNorm CNN (CPU, random data).

Reports, in one run:

1. Jacobian rows (one row = one sample x one logit) per second of the chunked
   ``vmap(jacrev)`` path and of the ``hooks`` path (one batched forward, C backwards to the
   module outputs, per-sample gradients by einsum) against the reference notebook's
   per-sample, per-logit autograd loop (target: >= 3x), and against the floor of C backward
   passes over the same samples, i.e. C x the time of one forward + backward of the whole
   batch (target: within 1.5x). The hooks Jacobian is also checked against the vmap one.
2. Peak memory of building the full float64 Jacobian (the dual solver's working set) and of
   the streamed primal normal equations, against the analytic N*C*P*8 bytes bound. Measured
   as the peak-RSS growth (VmHWM after resetting it through /proc/self/clear_refs) in a fresh
   subprocess per probe (torch's CPU allocator is invisible to tracemalloc).
3. One-off versus per-request cost of :class:`privkit.unlearn.ntk.NTKState`, next to redoing
   the whole NTK computation for the request.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_ntk.py [--n 256 --classes 10 --size 8 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn


def make_cnn(classes: int, size: int, width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(2 * width * 4, classes),
    )
    model.train()
    with torch.no_grad():  # give BatchNorm real running statistics, then freeze them
        model(torch.randn(64, 1, size, size))
    return model.eval()


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) and return the current RSS in bytes.

    Without the reset, ``ru_maxrss`` still holds the peak of ``import torch`` and a probe
    would only see growth beyond it. Falls back to ``ru_maxrss`` where /proc is missing.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        rss = _status_kib("VmRSS")
        if rss is not None:
            return rss * 1024
    except OSError:
        pass  # no /proc: use the (possibly higher) lifetime peak as the baseline
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: build one working set and print the peak-RSS growth as JSON."""
    from privkit.unlearn.ntk import _normal_equations, _stacked_jacobian

    model = make_cnn(args.classes, args.size, args.width)
    x = torch.randn(args.n, 1, args.size, args.size)
    y = torch.randint(0, args.classes, (args.n,))
    point = {k: v.detach() for k, v in model.named_parameters()}
    # Warm up torch.func on two samples so its one-off allocations are in the baseline.
    # "auto" is the production path (hooks for this CNN), the one estimate_memory's activation term sizes
    _stacked_jacobian(model, point, x[:2], y[:2], "ce", args.chunk_size, "auto")
    before = reset_peak_rss()
    if args.memory_probe == "dual":
        jac, _ = _stacked_jacobian(model, point, x, y, "ce", args.chunk_size, "auto")
        del jac
    else:
        _normal_equations(model, point, x, y, "ce", args.chunk_size, "auto")
    print(json.dumps({"peak_growth": peak_rss() - before}))


def run_probe(kind: str, args: argparse.Namespace) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", kind,
           "--n", str(args.n), "--classes", str(args.classes), "--size", str(args.size),
           "--width", str(args.width), "--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                                              "1")})
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"])


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="samples in D")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=8, help="input is size x size, 1 channel")
    parser.add_argument("--width", type=int, default=8, help="channels of the first conv")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--loop-samples", type=int, default=32,
                        help="samples timed for the slow per-sample, per-logit loop")
    parser.add_argument("--forget", type=int, default=8, help="samples per deletion request")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-probe", choices=["dual", "primal"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        memory_probe(args)
        return

    from privkit.unlearn.jacobian import parameter_jacobian, per_sample_loop_jacobian
    from privkit.unlearn.ntk import NTKState, activation_footprint, estimate_memory, ntk_unlearn

    torch.manual_seed(0)
    model = make_cnn(args.classes, args.size, args.width)
    x = torch.randn(args.n, 1, args.size, args.size)
    y = torch.randint(0, args.classes, (args.n,))
    n_params = sum(p.numel() for p in model.parameters())
    rows = args.n * args.classes
    print(f"# bench_ntk: CNN with BatchNorm, input 1x{args.size}x{args.size}, C={args.classes}, "
          f"P={n_params}, N={args.n}, chunk={args.chunk_size}, "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}")

    # ---- 1. Jacobian throughput -------------------------------------------------------------
    t_warm = time.perf_counter()
    parameter_jacobian(model, x[:2], chunk_size=2, mode="rev")
    t_warm = time.perf_counter() - t_warm
    t_vmap = best_of(lambda: parameter_jacobian(model, x, chunk_size=args.chunk_size,
                                                mode="rev"), args.repeats)
    parameter_jacobian(model, x[:2], chunk_size=2, mode="hooks")  # warm-up, like vmap's
    t_hooks = best_of(lambda: parameter_jacobian(model, x, chunk_size=args.chunk_size,
                                                 mode="hooks"), args.repeats)
    jac_vmap = parameter_jacobian(model, x, chunk_size=args.chunk_size, mode="rev")
    jac_hooks = parameter_jacobian(model, x, chunk_size=args.chunk_size, mode="hooks")
    hooks_error = float((jac_hooks - jac_vmap).abs().max() / jac_vmap.abs().max())
    del jac_vmap, jac_hooks
    x_loop = x[:args.loop_samples]
    t_loop = best_of(lambda: per_sample_loop_jacobian(model, x_loop), 1)
    loop_rows_per_s = args.loop_samples * args.classes / t_loop

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    t_fb = best_of(forward_backward, args.repeats + 2)
    floor = args.classes * t_fb
    vmap_rows_per_s = rows / t_vmap
    hooks_rows_per_s = rows / t_hooks
    print()
    print("| Jacobian path                          | rows/s     | seconds for N*C rows | vs loop |"
          " vs floor |")
    print("|----------------------------------------|-----------:|---------------------:|--------:|"
          "---------:|")
    print(f"| per-sample, per-logit loop (notebook)  | {loop_rows_per_s:10.0f} | "
          f"{rows / loop_rows_per_s:20.3f} |   1.00x | {rows / loop_rows_per_s / floor:7.2f}x |")
    print(f"| chunked vmap(jacrev) (privkit)         | {vmap_rows_per_s:10.0f} | {t_vmap:20.3f} | "
          f"{vmap_rows_per_s / loop_rows_per_s:6.2f}x | {t_vmap / floor:7.2f}x |")
    print(f"| chunked hooks + einsum (privkit)       | {hooks_rows_per_s:10.0f} | "
          f"{t_hooks:20.3f} | {hooks_rows_per_s / loop_rows_per_s:6.2f}x | {t_hooks / floor:7.2f}x |")
    print(f"| floor: C x (forward+backward of batch) | {rows / floor:10.0f} | {floor:20.3f} | "
          f"{(rows / floor) / loop_rows_per_s:6.2f}x |   1.00x |")
    print(f"(loop timed on {args.loop_samples} samples and scaled; torch.func first-call warm-up "
          f"{t_warm:.2f} s excluded)")
    print(f"targets: vmap >= 3x loop -> {'MET' if vmap_rows_per_s >= 3 * loop_rows_per_s else 'MISSED'}"
          f"; vmap within 1.5x of floor -> {'MET' if t_vmap <= 1.5 * floor else 'MISSED'}")
    print(f"targets: hooks >= 3x loop -> "
          f"{'MET' if hooks_rows_per_s >= 3 * loop_rows_per_s else 'MISSED'}"
          f"; hooks within 1.5x of floor -> {'MET' if t_hooks <= 1.5 * floor else 'MISSED'}"
          f"; hooks vs vmap max relative difference {hooks_error:.1e}")

    # ---- 2. Peak memory -----------------------------------------------------------------------
    bound = rows * n_params * 8
    print()
    print("| working set                            | measured peak | estimate_memory | N*C*P*8 bound |")
    print("|----------------------------------------|--------------:|----------------:|--------------:|")
    for kind, solver in (("dual", "dual"), ("primal", "primal")):
        measured = run_probe(kind, args)
        est = estimate_memory(args.n, args.classes, n_params, solver, args.chunk_size,
                              activations=activation_footprint(model, dict(model.named_parameters()), x))
        # The probe builds J (dual) or J^T J and J^T r (primal), not the solve's extra copies.
        est_probe = est["jacobian_chunk"] + est["activations"] + (
            est["jacobian_full"] if kind == "dual" else n_params * n_params * 8)
        label = ("full float64 J (dual solver)" if kind == "dual"
                 else "streamed J^T J, J^T r (primal solver)")
        print(f"| {label:38s} | {fmt_bytes(measured)} | {fmt_bytes(est_probe)}  | "
              f"{fmt_bytes(bound)} |")
    print("(measured: peak-RSS growth in a fresh process; estimate: jacobian chunk + layer outputs + "
          "J or the P x P accumulator)")

    # ---- 3. NTKState: one-off vs per-request -----------------------------------------------------
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    k = args.forget
    print()
    print("| NTK forgetting cost                          | params | P     | seconds |")
    print("|----------------------------------------------|--------|------:|--------:|")
    for params in ("bn", "all"):
        state = NTKState(params=params, weight_decay=5e-4, chunk_size=args.chunk_size)
        state.fit(model, w0, x, y)
        p = int(state.w0_.numel())
        _, info = state.forget(model, x[:k], y[:k], commit=False)
        t_redo = time.perf_counter()
        _, redo = ntk_unlearn(model, w0, x[k:], y[k:], x[:k], y[:k], params=params,
                              weight_decay=5e-4, chunk_size=args.chunk_size, solver="primal")
        t_redo = time.perf_counter() - t_redo
        one_off = state.one_off_seconds_["total"]
        per_request = info["timings"]["per_request"]["total"]
        print(f"| NTKState.fit over D (one-off)                | {params:6s} | {p:5d} | "
              f"{one_off:7.3f} |")
        label = f"NTKState.forget, {k} samples ({info['downdate']})"
        print(f"| {label:44s} | {params:6s} | {p:5d} | {per_request:7.3f} |")
        print(f"| ntk_unlearn from scratch, same request       | {params:6s} | {p:5d} | "
              f"{t_redo:7.3f} |")
    print(f"(per-request cost = forget-set Jacobians + downdate; speed-up vs from scratch is "
          f"what caching buys per deletion request)")


if __name__ == "__main__":
    main()
