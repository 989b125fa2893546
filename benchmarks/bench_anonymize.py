"""Scaling of BiometricAnonymizer: time linear in N, memory bounded by the reference pool.

Each size runs in its own subprocess so that peak resident memory (``VmHWM``) of one size does not
carry into the next. For every N the table shows

* fit and transform wall time, and the time per record (constant when time is O(N k d));
* ``data MiB``: the input array X plus the released array X' (both N x d, unavoidable);
* ``peak MiB``: peak resident memory of the whole process;
* ``working MiB``: peak minus the resident memory before fitting minus the released array,
  i.e. what the anonymizer itself needs: the pool, the relevance subsample and one batch. It should
  stay flat as N grows.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_anonymize.py --sizes 1000 10000 100000 --dim 256 --pool-size 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_one(args: argparse.Namespace) -> dict:
    import numpy as np

    from privkit.anonymize import BiometricAnonymizer

    n, d = args.worker, args.dim
    rng = np.random.default_rng(args.seed)
    n_identities = max(args.k, n // args.records_per_identity)
    identity = rng.integers(0, n_identities, n)
    keep = rng.integers(0, args.classes, n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x += rng.standard_normal((n_identities, d), dtype=np.float32)[identity]  # identity clusters
    x[:, :8] += 2.0 * keep[:, None].astype(np.float32)  # kept-attribute signal in 8 features
    rss_before = _status_kib("VmRSS")

    est = BiometricAnonymizer(k=args.k, weight=0.5, top_features=0.2, pool_size=args.pool_size, seed=args.seed)
    t0 = time.perf_counter()
    est.fit(x, keep, identity)
    t1 = time.perf_counter()
    released = est.transform(x, keep, identity, batch_size=args.batch_size)
    t2 = time.perf_counter()
    peak = _status_kib("VmHWM")
    return {
        "n": n, "fit_s": t1 - t0, "transform_s": t2 - t1,
        "data_mib": (x.nbytes + released.nbytes) / 2**20,
        "peak_mib": peak / 1024,
        "working_mib": (peak - rss_before) / 1024 - released.nbytes / 2**20,
        "pool": len(est.pool_x_), "achieved_k_min": est.achieved_k_["min"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="numbers of records N")
    p.add_argument("--dim", type=int, default=256, help="features per record d")
    p.add_argument("--pool-size", type=int, default=5000, help="reference pool size (fixed across N)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--classes", type=int, default=2, help="kept-attribute classes")
    p.add_argument("--records-per-identity", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(run_one(args)))
        return 0

    rows = []
    for n in args.sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n), "--dim", str(args.dim),
               "--pool-size", str(args.pool_size), "--k", str(args.k), "--classes", str(args.classes),
               "--records-per-identity", str(args.records_per_identity), "--batch-size", str(args.batch_size),
               "--seed", str(args.seed)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"BiometricAnonymizer scaling: d={args.dim}, k={args.k}, pool={args.pool_size}, "
          f"batch={args.batch_size}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    header = (f"{'N':>8} {'fit s':>7} {'transform s':>11} {'us/record':>9} {'transform us/rec':>16} "
              f"{'data MiB':>9} {'peak MiB':>9} {'working MiB':>11} {'min k':>5}")
    print(header)
    print("-" * len(header))
    for r in rows:
        total = r["fit_s"] + r["transform_s"]
        print(f"{r['n']:>8} {r['fit_s']:>7.2f} {r['transform_s']:>11.2f} {1e6 * total / r['n']:>9.1f} "
              f"{1e6 * r['transform_s'] / r['n']:>16.1f} {r['data_mib']:>9.1f} {r['peak_mib']:>9.1f} "
              f"{r['working_mib']:>11.1f} {r['achieved_k_min']:>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
