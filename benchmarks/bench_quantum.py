"""Benchmark of the VQNN gradient-inversion stack (issue 7).

(a) simulator throughput: batched forward + gradient of 64 inputs, 6 qubits, 3 layers of the
    ``complex`` ansatz, privkit vs PennyLane ``default.qubit`` (torch, broadcasting, backprop)
    and ``lightning.qubit`` (adjoint), when installed;
(b) the time of one attack iteration at 6 qubits with N = 16;
(c) the success pattern: 2 qubits single-shot, 6 qubits with and without the Kalman filter,
    batches of 2 and 3 on the 2-qubit entangled model (each with the current defaults and the
    previous ones: plain random start, SGD at eta = 0.1) with the identifiability of the batch at
    the truth, and DLG (Adam and Zhu et al.'s L-BFGS) on the VQNN vs a classical MLP.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_quantum.py [--quick] [--repeats 10] [--skip-success | --only-success]
          [--skip-dlg | --only-dlg]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from privkit.attacks.quantum import (FiniteDifferenceInversion, TanhMLP, VQNN, dlg_attack,
                                    gradient_input_jacobian, run_qnn_attack)
from privkit.attacks.quantum.tasks import load_task


def timeit(fn, repeats: int, min_seconds: float = 0.5) -> float:
    """Median wall time (ms) of ``fn`` after two warm-up calls, over at least ``repeats`` calls and
    at least ``min_seconds`` of calls (on a shared machine a few-millisecond call needs many
    samples for a stable median)."""
    fn()
    fn()
    times = []
    began = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def throughput(repeats: int) -> list[tuple[str, float]]:
    n, layers, batch = 6, 3, 64
    model = VQNN(n, "complex", layers)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, n, generator=gen, dtype=torch.float64) * math.pi
    y = torch.rand(batch, generator=gen, dtype=torch.float64)
    theta0 = model.init_params(0)

    def privkit_backprop():
        theta = theta0.clone().requires_grad_(True)
        loss = model.loss_per_sample(x, y, theta).sum()
        loss.backward()

    rows = [("privkit torch statevector, backprop (sum-loss gradient)", timeit(privkit_backprop, repeats)),
            ("privkit per-sample gradients, autodiff",
             timeit(lambda: model.per_sample_gradients(x, y, theta0, method="autodiff"), repeats)),
            ("privkit per-sample gradients, adjoint (per layer, shared theta)",
             timeit(lambda: model.per_sample_gradients(x, y, theta0, method="adjoint"), repeats)),
            ("privkit per-sample gradients, parameter shift (2P+1 parameter sets x 64 inputs, one call)",
             timeit(lambda: model.per_sample_gradients(x, y, theta0), max(3, repeats // 4)))]
    try:
        import pennylane as qml
    except ImportError:
        print("PennyLane not installed: skipping the PennyLane rows")
        return rows

    spec = model.spec

    def body(xs, params):
        for op in spec.ops:
            if op.source == "x":
                qml.RX(xs[..., op.index[0]], wires=op.wires[0])
            elif op.source == "theta":
                getattr(qml, op.gate)(params[op.index[0]], wires=op.wires[0])
            else:
                qml.CNOT(wires=list(op.wires))
        return [qml.expval(qml.PauliZ(w)) for w in range(n)]

    dev = qml.device("default.qubit", wires=n)
    circuit = qml.QNode(body, dev, interface="torch", diff_method="backprop")

    def pl_default():
        theta = theta0.clone().requires_grad_(True)
        f = torch.stack(circuit(x, theta)).mean(dim=0)
        ((f - y) ** 2).sum().backward()

    rows.append(("PennyLane default.qubit, torch, broadcasting, backprop", timeit(pl_default, repeats)))
    try:
        ldev = qml.device("lightning.qubit", wires=n)
    except Exception as err:  # noqa: BLE001 - report why the optional device is absent
        print(f"lightning.qubit unavailable ({err}); skipping")
        return rows
    lcircuit = qml.QNode(body, ldev, interface="torch", diff_method="adjoint")

    def pl_lightning():
        theta = theta0.clone().requires_grad_(True)
        f = torch.stack(lcircuit(x, theta)).mean(dim=0)
        ((f - y) ** 2).sum().backward()

    rows.append(("PennyLane lightning.qubit, torch, adjoint", timeit(pl_lightning, max(3, repeats // 4))))
    return rows


def attack_iteration(repeats: int) -> float:
    model = VQNN(6, "complex", 2)
    theta = model.init_params(0)
    x = torch.rand(1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * math.pi
    y = 0.7 * torch.cos(x).mean(dim=1)
    g = model.client_gradient(x, y, theta)
    attack = FiniteDifferenceInversion(model, theta, restarts=1, fd_points=16)
    return timeit(lambda: attack.step_losses((x + 0.1)[None], torch.tensor([16]), g, y), repeats)


def success_row(name, seeds, **kwargs):
    """Per-restart and any-restart success, median final MSE, and the median final (normalised)
    gradient-matching loss of the failed restarts: a failed restart with a loss near 0 found
    another input with the same gradient (unidentifiable); one with a large loss stalled in a
    local minimum."""
    runs = [run_qnn_attack(seed=s, **kwargs) for s in seeds]
    finals = np.concatenate([[p["final_mse"] for p in r["per_restart"]] for r in runs])
    losses = np.concatenate([[p["loss"][-1] for p in r["per_restart"]] for r in runs])
    best = [min(p["final_mse"] for p in r["per_restart"]) <= 0.005 for r in runs]
    seconds = sum(r["timing_s"] for r in runs)
    failed = finals > 0.005
    failed_loss = float(np.median(losses[failed])) if failed.any() else float("nan")
    return (name, float(np.mean(~failed)), float(np.mean(best)), float(np.median(finals)),
            failed_loss, len(finals), seconds)


DLG_TARGETS = (
    # (label, model, batch); batch-1 targets are sample `seed` of the task, the batch of 3 is drawn
    # as run_qnn_attack draws it (the batch of the finite-difference rows above)
    ("VQNN (2 qubits, simple, 2 layers, 8 params)", "vqnn", 1),
    ("tanh MLP (2-2-1, 9 params)", "mlp", 1),
    ("VQNN batch 3 (2 qubits, simple-entangled, 2 layers)", "vqnn-entangled", 3),
)


def dlg_rows(seeds, iterations, restarts=5):
    """DLG with Adam (``lr = 0.05``, normalised loss) and with the canonical L-BFGS of Zhu et al.
    (``lr = 1``, 20 inner evaluations per iteration, raw loss), same targets, restarts, starts
    and success threshold, on :data:`DLG_TARGETS`. For the VQNNs, the success of ``x'`` reduced
    modulo ``2 pi`` (angle encoding is ``2 pi``-periodic) is shown next to the raw one. The batch
    of 3 also tests whether the gradient determines that batch at all: an exact-gradient
    quasi-Newton method is not slowed down by the flat valley that stalls SGD."""
    rows = []
    for label, make, batch in DLG_TARGETS:
        for optimizer in ("adam", "lbfgs"):
            raw, reduced, evaluations, start = [], [], 0, time.perf_counter()
            for seed in seeds:
                data = load_task("cos", 2, seed)
                if batch == 1:
                    x = torch.as_tensor(data.X[seed:seed + 1])
                    y = torch.as_tensor(data.y[seed:seed + 1])
                else:
                    index = np.random.default_rng(seed).choice(data.X.shape[0], size=batch, replace=False)
                    x, y = torch.as_tensor(data.X[index]), torch.as_tensor(data.y[index])
                model = {"vqnn": lambda: VQNN(2, "simple", 2), "mlp": lambda: TanhMLP(2, 2),
                         "vqnn-entangled": lambda: VQNN(2, "simple-entangled", 2)}[make]()
                params = model.init_params(seed)
                g = model.client_gradient(x, y, params)
                periodic = isinstance(model, VQNN)
                out = dlg_attack(model, params, g, y, true_inputs=x.numpy(), restarts=restarts,
                                 iterations=iterations, optimizer=optimizer, seed=seed,
                                 input_period=2 * math.pi if periodic else None)
                raw.extend(out["final_mse_unreduced"] <= 0.005)
                reduced.extend(out["success"])
                evaluations += out["evaluations"]
            rows.append((f"DLG {optimizer} on {label}", float(np.mean(raw)),
                         float(np.mean(reduced)) if periodic else None, len(raw), evaluations,
                         time.perf_counter() - start))
    return rows


def identifiability_rows(seeds, layers=2):
    """Local identifiability of a batch on the 2-qubit simple-entangled model at the truth:
    ``rank d g / d x`` against the ``2 B`` unknowns, ``sigma_min / sigma_max`` of that Jacobian,
    and ``lambda_min`` of the normalised loss's Hessian ``2 J^T J / ||g||^2`` (medians over the
    targets); same client draw as :func:`run_qnn_attack`."""
    rows = []
    for batch in (1, 2, 3):
        ranks, ratios, lambdas = [], [], []
        for seed in seeds:
            data = load_task("cos", 2, seed)
            index = np.random.default_rng(seed).choice(data.X.shape[0], size=batch, replace=False)
            x, y = data.X[index], data.y[index]
            model = VQNN(2, "simple-entangled", layers)
            theta = model.init_params(seed)
            g = model.client_gradient(torch.as_tensor(x), torch.as_tensor(y), theta)
            jac = gradient_input_jacobian(model, theta, x, y)
            sv = torch.linalg.svdvals(jac)
            ranks.append(int(torch.linalg.matrix_rank(jac, rtol=1e-10)))
            ratios.append(float(sv[-1] / sv[0]))
            lambdas.append(float(torch.linalg.eigvalsh(2 * jac.T @ jac / g.pow(2).sum())[0]))
        rows.append((batch, model.n_params, 2 * batch, min(ranks), max(ranks), float(np.median(ratios)),
                     float(np.median(lambdas))))
    return rows


def gradient_span_rows(layer_counts=(2, 4, 6), n_qubits=2, n_inputs=64):
    """Numerical rank of ``{d f(x) / d theta}`` over random inputs against ``M`` and the bound
    ``3^n - 1``: with angle encoding ``rho(x) = (x)_j (I + cos x_j Z - sin x_j Y) / 2`` lies in a
    ``3^n``-dimensional span and the observable is traceless, so every shared gradient
    ``g = sum_b 2 (f(x_b) - y_b) d f(x_b) / d theta`` lies in a fixed subspace of dimension at
    most ``3^n - 1`` whatever the number of layers."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_inputs, n_qubits, generator=gen, dtype=torch.float64) * math.pi
    for layers in layer_counts:
        model = VQNN(n_qubits, "simple-entangled", layers)
        theta = model.init_params(0)
        # with y = f - 1/2 the per-sample loss gradient 2 (f - y) df/dtheta is exactly df/dtheta
        y = model.forward(x, theta) - 0.5
        jac = model.per_sample_gradients(x, y, theta, method="autodiff")  # = d f / d theta
        rows.append((layers, model.n_params, int(torch.linalg.matrix_rank(jac, rtol=1e-10)), 3 ** n_qubits - 1))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer targets, restarts and iterations")
    parser.add_argument("--repeats", type=int, default=20, help="timing repeats (median reported)")
    parser.add_argument("--skip-success", action="store_true", help="only the timing parts (a), (b)")
    parser.add_argument("--only-success", action="store_true", help="only the success pattern (c)")
    parser.add_argument("--skip-dlg", action="store_true", help="in (c), leave out the DLG baseline rows")
    parser.add_argument("--only-dlg", action="store_true",
                        help="in (c), only the DLG baseline rows (run them in a second process)")
    args = parser.parse_args()
    args.skip_success_rows = args.only_dlg
    torch.set_num_threads(1)
    if not args.only_success:
        timing_parts(args)
    if not args.skip_success:
        success_pattern(args)


def timing_parts(args):
    """Parts (a) and (b)."""
    print("(a) batched forward + gradient, 64 inputs, 6 qubits, complex ansatz, 3 layers")
    rows = throughput(args.repeats)
    width = max(len(r[0]) for r in rows)
    for name, ms in rows:
        print(f"  {name:<{width}}  {ms:9.2f} ms")
    ours = rows[0][1]
    pennylane = [ms for name, ms in rows if name.startswith("PennyLane")]
    if pennylane:
        print(f"  speed-up of privkit backprop vs the faster PennyLane config: {min(pennylane) / ours:.1f}x")

    print("\n(b) one attack iteration, 6 qubits, complex ansatz (2 layers, 36 params), N = 16, "
          "one restart (193 candidates x adjoint per-sample gradients, one batched call)")
    print(f"  {attack_iteration(args.repeats):.2f} ms")


def success_pattern(args):
    """Part (c)."""
    seeds = [0, 1, 2] if args.quick else [0, 1, 2, 3, 4]
    restarts = 5 if args.quick else 10
    six_iters = 100 if args.quick else 150
    print(f"\n(c) success pattern (cos task; targets = seeds {seeds}; {restarts} restarts each; "
          "success: MSE <= 0.005)")
    header = (f"  {'setting':<70} {'iters':>5} {'per-restart':>11} {'any-restart':>11} {'median MSE':>11} "
              f"{'failed: median loss':>19} {'runs':>5} {'time s':>7}")
    # the previous defaults (the paper's plain random start and SGD step at eta = 0.1) next to the
    # current ones (best-of-1000 start; Gauss-Newton step for batches), tuned on target seeds
    # 100-104, disjoint from the reported seeds 0-4
    old = dict(start_candidates=1, step_rule="sgd", learning_rate=0.1)
    six = dict(qubits=6, ansatz="complex", restarts=restarts, iterations=six_iters)
    entangled = dict(qubits=2, ansatz="simple-entangled", restarts=restarts, iterations=500)
    experiments = [
        ("2 qubits, simple, batch 1", 150, dict(qubits=2, ansatz="simple", restarts=restarts)),
        ("2 qubits, simple, batch 1, previous defaults", 150,
         dict(qubits=2, ansatz="simple", restarts=restarts, **old)),
        ("6 qubits, complex, batch 1, moving average only", six_iters, dict(six)),
        ("6 qubits, complex, batch 1, + Kalman", six_iters, dict(six, kalman=True)),
        ("6 qubits, complex, batch 1, moving average only, previous defaults", six_iters, dict(six, **old)),
        ("6 qubits, complex, batch 1, + Kalman, previous defaults", six_iters, dict(six, kalman=True, **old)),
        # batches: a flat valley (smallest Hessian eigenvalue ~1e-2 of the normalised loss for
        # B = 2, ~2e-4 for B = 3, identifiability table below) that plain SGD crosses too slowly
        ("2 qubits, simple-entangled, batch 2, moving average only", 500, dict(entangled, batch=2)),
        ("2 qubits, simple-entangled, batch 2, + Kalman", 500, dict(entangled, batch=2, kalman=True)),
        ("2 qubits, simple-entangled, batch 2, + Kalman, previous defaults", 500,
         dict(entangled, batch=2, kalman=True, **old)),
        ("2 qubits, simple-entangled, batch 3, moving average only", 500, dict(entangled, batch=3)),
        ("2 qubits, simple-entangled, batch 3, + Kalman", 500, dict(entangled, batch=3, kalman=True)),
        ("2 qubits, simple-entangled, batch 3, + Kalman, previous defaults", 500,
         dict(entangled, batch=3, kalman=True, **old)),
    ]
    if not args.skip_success_rows:
        print(header)
    for name, iterations, kwargs in ([] if args.skip_success_rows else experiments):
        row = success_row(name, seeds, task="cos", **kwargs)
        print(f"  {row[0]:<70} {iterations:>5} {row[1]:>11.0%} {row[2]:>11.0%} {row[3]:>11.2e} {row[4]:>19.2e} "
              f"{row[5]:>5} {row[6]:>7.1f}", flush=True)

    if not args.skip_success_rows:
        identifiability_tables(seeds)
    if args.skip_dlg:
        return
    dlg_table(args, seeds, restarts)


def identifiability_tables(seeds):
    """The identifiability of batches and the span of the gradients (cheap)."""
    print("\n  identifiability at the truth, 2 qubits, simple-entangled, 2 layers (medians over the targets)")
    print(f"  {'batch':>5} {'M':>3} {'unknowns 2B':>11} {'rank dg/dx (min-max)':>20} {'sigma_min/sigma_max':>19} "
          f"{'lambda_min(H)':>13}")
    for batch, m, unknowns, rmin, rmax, ratio, lam in identifiability_rows(seeds):
        print(f"  {batch:>5} {m:>3} {unknowns:>11} {f'{rmin}-{rmax}':>20} {ratio:>19.1e} {lam:>13.1e}")
    print("  rank of {df(x)/dtheta} over 64 random inputs, 2 qubits, simple-entangled (bound 3^n - 1)")
    for layers, m, rank, bound in gradient_span_rows():
        print(f"    layers {layers}: M = {m:>2}, rank {rank}, bound {bound}")


def dlg_table(args, seeds, restarts):
    """The DLG baseline rows."""
    dlg_iters = 150 if args.quick else 300
    print(f"\n  DLG baseline (exact second-order autodiff, {dlg_iters} iterations, {restarts} restarts per target; "
          "adam: lr 0.05, 1 evaluation/iteration; lbfgs: Zhu et al., lr 1, <= 20 evaluations/iteration)")
    print(f"  {'setting':<62} {'per-restart':>11} {'x mod 2pi':>9} {'runs':>5} {'evaluations':>11} {'time s':>7}")
    for name, rate, reduced, total, evaluations, seconds in dlg_rows(seeds, dlg_iters, restarts):
        reduced_text = "" if reduced is None else f"{reduced:.0%}"
        print(f"  {name:<62} {rate:>11.0%} {reduced_text:>9} {total:>5} {evaluations:>11} {seconds:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
