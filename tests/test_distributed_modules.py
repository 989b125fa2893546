"""Module training loops under torchrun (2 CPU processes, gloo): MaSS and PEFT fine-tuning.

The loop itself is checked for exact 1-vs-2-process equivalence in tests/test_train.py; these
check that each module's own task (several networks, alternating steps, frozen BN) runs under
DDP and that only rank 0 writes its run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def torchrun(args: list[str], cwd: Path, port: int) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "torchrun"
    return subprocess.run([str(exe), "--nproc_per_node", "2", "--master_port", str(port), "-m", "privkit.cli.main", *args],
                          cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)


def test_mass_suppress_under_torchrun(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    gender, task = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 0] += 2 * gender
    x[:, 1] += 2 * task
    np.savez(tmp_path / "f.npz", x=x, gender=gender, task=task)
    res = torchrun(["suppress", "--data", "f.npz", "--attrs", "gender", "--preserve", "task", "--epochs", "1",
                    "--attackers", "linear", "--out", "run"], tmp_path, 29541)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (tmp_path / "run" / "complete").exists() and (tmp_path / "run" / "weights.safetensors").exists()
    assert res.stdout.count("report:") == 1


@pytest.mark.slow
def test_peft_training_under_torchrun(tmp_path):
    res = torchrun(["train", "--data", "digits", "--target", "digit", "--peft", "bn", "--epochs", "1", "--out", "run"],
                   tmp_path, 29543)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (tmp_path / "run" / "complete").exists()


@pytest.mark.slow
def test_i2i_training_under_torchrun(tmp_path):
    res = torchrun(["train", "--task", "i2i", "--data", "digits", "--epochs", "1", "--out", "run"], tmp_path, 29545)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (tmp_path / "run" / "complete").exists()
    assert res.stdout.count("report:") == 1
