"""MaSS attribute suppression with the Python API, on a small feature dataset: remove `gender`
while keeping `task`, then check with a fresh attacker trained on the released data.

Run: python examples/suppress_features.py [OUT_FOLDER]
"""

import sys
from pathlib import Path

import numpy as np

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.evaluate.attackers import fresh_attackers
from privkit.suppress import MaSS


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    n, d = 600, 8
    gender, task = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 2.5 * gender                                      # gender lives in one direction
    x[:, 1] += 2.5 * task                                        # the useful attribute in another
    schema = Schema("features", (Attribute("gender", ("f", "m")), Attribute("task", ("a", "b"))), (d,))
    data = ArrayDataset(schema, x, np.stack([gender, task], 1))
    mass = MaSS(suppress=["gender"], preserve=["task"], epochs=10, seed=0, nce_weight=0.3).fit(data)
    released = ArrayDataset(schema, mass.transform(data.materialize()[0]).detach().numpy(), data.labels)
    before = fresh_attackers(data, kinds=("linear", "mlp"))
    after = fresh_attackers(released, kinds=("linear", "mlp"))
    for attr in ("gender", "task"):
        print(f"{attr}: fresh attacker {before[attr]['best']:.2f} -> {after[attr]['best']:.2f} (chance {after[attr]['chance']:.2f})")
    mass.save(out / "mass")
    print("saved transform to", out / "mass")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example-suppress"))
