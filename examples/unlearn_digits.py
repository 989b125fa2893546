"""A deletion request with the Python API: train on digits, forget 5% of the training samples with
Fast-NTK and with retraining, and compare them.

Run: python examples/unlearn_digits.py [OUT_FOLDER]
"""

import json
import sys
from pathlib import Path

from privkit.classify import train_run
from privkit.unlearn.run import unlearn_run


def main(out: Path) -> None:
    base = train_run("digits", "digit", out / "base", epochs=3, progress=False)
    retrain = unlearn_run(base, "digits", "random=0.05", "retrain", out / "retrain", progress=False)
    fast = unlearn_run(base, "digits", "random=0.05", "fast-ntk", out / "fast-ntk", reference=retrain, progress=False)
    for run in (retrain, fast):
        m = json.loads((Path(run) / "metrics.json").read_text())
        print(f"{Path(run).name:>9}: UA {m['UA']:.1f}  RA {m['RA']:.1f}  TA {m['TA']:.1f}  "
              f"MIA {m['MIA_efficacy']:.1f}  {m['RTE']:.2f} s  Avg. Gap {m['avg_gap']}")
    receipt = json.loads((Path(fast) / "receipt.json").read_text())
    print("erasure receipt verdict:", receipt.get("verdict"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example-unlearn"))
