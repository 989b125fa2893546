"""Gradient inversion on a 2-qubit variational quantum neural network with the Python API.

Run: python examples/quantum_gradient_inversion.py [OUT_FOLDER]
"""

import sys
from pathlib import Path

from privkit.attacks.quantum.run import attack_run


def main(out: Path) -> None:
    run, result = attack_run(out / "qnn", task="cos", qubits=2, ansatz="simple", restarts=3, seed=0)
    print(f"success rate {result['success_rate']:.2f}; mean MSE {result['mse_mean']:.4g}; report {run / 'report.html'}")
    print("true inputs:         ", [round(v, 3) for v in result["true"][0]])
    print("reconstructed inputs:", [round(v, 3) for v in result["reconstructed"][0]])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example-qnn"))
