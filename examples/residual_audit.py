"""Residual-knowledge audit with the Python API: does a fine-tuned "unlearned" model still
recognise perturbed forget samples better than a retrained one? Then fix it with RURK.

Run: python examples/residual_audit.py [OUT_FOLDER]
"""

import json
import sys
from pathlib import Path

from privkit.audit.run import audit_residual_run
from privkit.classify import train_run
from privkit.unlearn.run import unlearn_run


def main(out: Path) -> None:
    base = train_run("digits", "digit", out / "base", epochs=3, progress=False)
    finetuned = unlearn_run(base, "digits", "class=3", "finetune", out / "finetune", progress=False)
    retrained = unlearn_run(base, "digits", "class=3", "retrain", out / "retrain", progress=False)
    run = audit_residual_run(finetuned, "digits", "class=3", out / "audit", reference_dir=retrained, samples=16,
                             taus=(0.02, 0.05), fix=True, fix_options={"epochs": 1})
    m = json.loads((run / "metrics.json").read_text())
    for side in ("before", "after"):
        s = m[side]
        print(f"{side:>6} RURK: mean r_tau {s['mean_r_tau']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}], "
              f"{100 * s['frac_above_1']:.0f}% of forget samples above 1")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example-residual"))
