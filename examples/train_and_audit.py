"""Train a classifier with the Python API, save it, reload it and audit the raw data with fresh attackers.

Run: python examples/train_and_audit.py [OUT_FOLDER]
"""

import sys
from pathlib import Path

from privkit.classify import train_run
from privkit.data import load_dataset
from privkit.evaluate.attackers import fresh_attackers
from privkit.models import load_model


def main(out: Path) -> None:
    data = load_dataset("digits")
    print(f"{len(data)} samples, attributes {data.schema.attribute_names}, chance {data.chance('digit'):.3f}")
    run = train_run("digits", "digit", out / "digits-model", epochs=3, dataset=data, progress=False)
    model, meta = load_model(run)
    print(f"trained {meta['architecture']}: test accuracy {meta['metrics']['accuracy']:.3f}")
    results = fresh_attackers(data, ["digit"], kinds=("linear",))
    print(f"a fresh linear attacker reaches {results['digit']['linear']:.3f} (chance {results['digit']['chance']:.3f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example-train"))
