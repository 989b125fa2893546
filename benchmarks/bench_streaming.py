"""Peak memory of the streaming commands at 10k and 100k samples (issue: scale and reliability).

`transform` (a MaSS transform), `anonymize` (applying a fitted anonymizer) and `audit residual`
read their input batch by batch from a memory-mapped ``.npz`` and write (or summarise) as they go,
so their working memory should not grow with N. Each (command, N) runs in a fresh subprocess that
samples its anonymous resident memory (``RssAnon``: heap and tensors, not the file pages of the
memory-mapped input, which the kernel can drop at will) every 5 ms; the table reports the peak
above the process's memory after imports and fitting, so the 100k/10k ratio is the baseline
comparison.

    python benchmarks/bench_streaming.py                 # N = 10k and 100k
    python benchmarks/bench_streaming.py --sizes 2000 20000 --dim 32   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_kib())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = rss_anon_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_kib())


def make_npz(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """Uncompressed npz (memory-mapped by the npz loader): 50 identities, a binary label, a kept class."""
    rng = np.random.default_rng(seed)
    identity = rng.integers(0, 50, n)
    label = rng.integers(0, 2, n)
    centres = rng.normal(size=(50, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 10000):
        sl = slice(start, min(n, start + 10000))
        x[sl] = centres[identity[sl]] + rng.normal(size=(sl.stop - sl.start, dim)).astype(np.float32)
        x[sl, 0] += 2.0 * label[sl]
    np.savez(path, x=x, person=np.array([f"p{i}" for i in identity]), label=label, identity=np.array("person"))


def fit_artifacts(work: Path, dim: int) -> None:
    """Fit a MaSS transform, an anonymizer and two classifiers on a small sample (not measured)."""
    from privkit.data import load_dataset

    small = work / "fit.npz"
    make_npz(small, 2000, dim, seed=1)
    ds = load_dataset(small)
    from privkit.cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    r = runner.invoke(app, ["suppress", "--data", str(small), "--attrs", "person", "--preserve", "label",
                            "--epochs", "1", "--out", str(work / "mass")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["anonymize", "--data", str(small), "--sensitive", "person", "--keep", "label",
                            "--k", "3", "--out", str(work / "anon")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--data", str(small), "--target", "label", "--epochs", "1", "--out", str(work / "model")])
    assert r.exit_code == 0, r.output
    del ds


def child(command: str, work: Path, n: int) -> dict:
    import torch

    from privkit.data import load_dataset

    torch.set_num_threads(1)
    data = load_dataset(work / f"data-{n}.npz")
    out = work / f"out-{command}-{n}"
    if command in ("transform", "anonymize"):
        from privkit.transforms import apply_transform, load_transform

        run = work / ("mass" if command == "transform" else "anon")
        load_transform(run)  # load (and import) before measuring
        base = rss_anon_kib()
        t0 = time.perf_counter()
        with PeakSampler() as peak:
            apply_transform(run, data, out, batch_size=512)
    else:
        from privkit.audit.residual import residual_knowledge
        from privkit.models import load_model

        model, _ = load_model(work / "model")
        reference, _ = load_model(work / "model")
        col = data.schema.index("label")
        base = rss_anon_kib()
        t0 = time.perf_counter()
        with PeakSampler() as peak:
            batches = ((x, a[:, col]) for _, x, a in data.batches(512))
            residual_knowledge(model, reference, batches, None, taus=(0.05,), samples=8, clip=None, batch_size=4096)
    seconds = time.perf_counter() - t0
    return {"command": command, "n": n, "seconds": seconds, "peak_mib": (peak.peak - base) / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--commands", nargs="+", default=["transform", "anonymize", "audit-residual"])
    p.add_argument("--child", nargs=3, metavar=("COMMAND", "WORK", "N"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), int(a.child[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        fit_artifacts(work, a.dim)
        for n in a.sizes:
            make_npz(work / f"data-{n}.npz", n, a.dim)
        rows = []
        for command in a.commands:
            for n in a.sizes:
                res = subprocess.run([sys.executable, __file__, "--child", command, str(work), str(n)],
                                     capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
                if res.returncode != 0:
                    raise SystemExit(res.stderr[-3000:])
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"# bench_streaming: features d={a.dim}, batch 512, peak anonymous RSS above the post-setup level")
        print("| command | N | seconds | samples/s | peak working memory (MiB) | peak vs smallest N |")
        print("|---|---|---|---|---|---|")
        for command in a.commands:
            mine = [r for r in rows if r["command"] == command]
            base = max(mine[0]["peak_mib"], 1e-9)
            for r in mine:
                print(f"| {command} | {r['n']} | {r['seconds']:.1f} | {r['n'] / r['seconds']:.0f} | {r['peak_mib']:.1f} | "
                      f"{r['peak_mib'] / base:.2f}x |")


if __name__ == "__main__":
    main()
