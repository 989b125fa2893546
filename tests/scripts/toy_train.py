"""A toy run of the shared training loop, started as a subprocess by the fault-tolerance and
distributed tests (SIGKILL / SIGINT / torchrun need a real process)."""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.models import create
from privkit.train import ClassifierConfig, ClassifierTask, LoopConfig, TrainingInterrupted, run_training, unwrap


def toy_dataset(n: int = 256, d: int = 10, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)).astype(np.float32) + y[:, None] * 0.8
    schema = Schema("features", (Attribute("y", ("a", "b", "c")),), (d,))
    return ArrayDataset(schema, x, y[:, None])


class SlowTask(ClassifierTask):
    def __init__(self, *a, sleep: float = 0.0, **k):
        super().__init__(*a, **k)
        self.sleep = sleep

    def step(self, batch, epoch, step):
        out = super().step(batch, epoch, step)
        if self.sleep:
            time.sleep(self.sleep)
        return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    a = p.parse_args()
    torch.manual_seed(0)
    ds = toy_dataset()
    model = create("mlp", ds.schema, 3, hidden=32, dropout=a.dropout)
    task = SlowTask(model, 0, ClassifierConfig(lr=0.01, optimizer="sgd"), sleep=a.sleep)
    out = Path(a.out)
    try:
        run_training(task, ds, LoopConfig(epochs=a.epochs, batch_size=a.batch_size, seed=3, progress=False, checkpoint_every=2),
                     checkpoint_dir=out / "checkpoints", resume=a.resume)
    except TrainingInterrupted as e:
        print(f"INTERRUPTED {e}", flush=True)
        return 130
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in unwrap(task.nets["model"]).state_dict().items()}, str(out / "final.safetensors"))
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
