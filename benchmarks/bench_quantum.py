"""Benchmark of the VQNN gradient-inversion stack (issue 7).

(a) simulator throughput: batched forward + gradient of 64 inputs, 6 qubits, 3 layers of the
    ``complex`` ansatz, privkit vs PennyLane ``default.qubit`` (torch, broadcasting, backprop)
    and ``lightning.qubit`` (adjoint), when installed;
(b) the time of one attack iteration at 6 qubits with N = 16;
(c) the success pattern: 2 qubits single-shot, 6 qubits with and without the Kalman filter,
    batches of 2 and 3 on the 2-qubit entangled model, and DLG on the VQNN vs a classical MLP.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_quantum.py [--quick] [--repeats 10] [--skip-success | --only-success]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from privkit.attacks.quantum import FiniteDifferenceInversion, TanhMLP, VQNN, dlg_attack, run_qnn_attack
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
    runs = [run_qnn_attack(seed=s, **kwargs) for s in seeds]
    finals = np.concatenate([[p["final_mse"] for p in r["per_restart"]] for r in runs])
    best = [min(p["final_mse"] for p in r["per_restart"]) <= 0.005 for r in runs]
    seconds = sum(r["timing_s"] for r in runs)
    return (name, float(np.mean(finals <= 0.005)), float(np.mean(best)), float(np.median(finals)),
            len(finals), seconds)


def dlg_rows(seeds, iterations):
    rows = []
    for label, make in (("DLG on VQNN (2 qubits, simple, 2 layers, 8 params)", "vqnn"),
                        ("DLG on tanh MLP (2-2-1, 9 params)", "mlp")):
        successes, total = 0, 0
        for seed in seeds:
            data = load_task("cos", 2, seed)
            x = torch.as_tensor(data.X[seed:seed + 1])
            y = torch.as_tensor(data.y[seed:seed + 1])
            if make == "vqnn":
                model = VQNN(2, "simple", 2)
                params = model.init_params(seed)
                g = model.client_gradient(x, y, params)
            else:
                model = TanhMLP(2, 2)
                params = model.init_params(seed)
                g = model.client_gradient(x, y, params)
            out = dlg_attack(model, params, g, y, true_inputs=x.numpy(), restarts=5, iterations=iterations,
                             learning_rate=0.05, seed=seed)
            successes += int(out["success"].sum())
            total += len(out["success"])
        rows.append((label, successes / total, total))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer targets, restarts and iterations")
    parser.add_argument("--repeats", type=int, default=20, help="timing repeats (median reported)")
    parser.add_argument("--skip-success", action="store_true", help="only the timing parts (a), (b)")
    parser.add_argument("--only-success", action="store_true", help="only the success pattern (c)")
    args = parser.parse_args()
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
    header = f"  {'setting':<58} {'per-restart':>11} {'any-restart':>11} {'median MSE':>11} {'runs':>5} {'time s':>7}"
    print(header)
    experiments = [
        ("2 qubits, simple, batch 1", dict(qubits=2, ansatz="simple", restarts=restarts)),
        ("6 qubits, complex, batch 1, moving average only",
         dict(qubits=6, ansatz="complex", restarts=restarts, iterations=six_iters)),
        ("6 qubits, complex, batch 1, + Kalman",
         dict(qubits=6, ansatz="complex", restarts=restarts, iterations=six_iters, kalman=True)),
        # batches: a flat valley (smallest Hessian eigenvalue ~0.01 of the normalised loss) that
        # plain SGD crosses too slowly; the Kalman filter's look-ahead velocity crosses it
        ("2 qubits, simple-entangled, batch 2, moving average only",
         dict(qubits=2, ansatz="simple-entangled", batch=2, restarts=restarts, iterations=500)),
        ("2 qubits, simple-entangled, batch 2, + Kalman",
         dict(qubits=2, ansatz="simple-entangled", batch=2, restarts=restarts, iterations=500, kalman=True)),
        ("2 qubits, simple-entangled, batch 3, + Kalman",
         dict(qubits=2, ansatz="simple-entangled", batch=3, restarts=restarts, iterations=500, kalman=True)),
    ]
    for name, kwargs in experiments:
        row = success_row(name, seeds, task="cos", **kwargs)
        print(f"  {row[0]:<58} {row[1]:>11.0%} {row[2]:>11.0%} {row[3]:>11.2e} {row[4]:>5} {row[5]:>7.1f}",
              flush=True)
    print("\n  DLG baseline (Adam on x', exact second-order autodiff, 5 restarts per target)")
    for name, rate, total in dlg_rows(seeds, 150 if args.quick else 300):
        print(f"  {name:<58} {rate:>11.0%} {'':>11} {'':>11} {total:>5}")


if __name__ == "__main__":
    main()
