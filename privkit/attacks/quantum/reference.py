"""A slow, obviously-correct dense reference simulator in numpy (for tests).

Every gate is expanded to a ``2^n x 2^n`` matrix by Kronecker products with qubit 0 as the
most significant factor, and applied to one state vector at a time. Use it only to check the
batched simulator on a handful of qubits.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from privkit.attacks.quantum.circuits import CircuitSpec

I2 = np.eye(2, dtype=complex)
X = np.array([[0, 1], [1, 0]], dtype=complex)
Y = np.array([[0, -1j], [1j, 0]], dtype=complex)
Z = np.array([[1, 0], [0, -1]], dtype=complex)
H = np.array([[1, 1], [1, -1]], dtype=complex) / np.sqrt(2)
P0 = np.array([[1, 0], [0, 0]], dtype=complex)
P1 = np.array([[0, 0], [0, 1]], dtype=complex)


def rotation(pauli: np.ndarray, angle: float) -> np.ndarray:
    """``exp(-i angle/2 P) = cos(angle/2) I - i sin(angle/2) P``."""
    return np.cos(angle / 2) * I2 - 1j * np.sin(angle / 2) * pauli


def embed(ops_by_wire: dict[int, np.ndarray], n: int) -> np.ndarray:
    """``kron`` of the given one-qubit matrices, identity elsewhere (qubit 0 leftmost)."""
    return reduce(np.kron, [ops_by_wire.get(w, I2) for w in range(n)])


def dense_gate(gate: str, wires: tuple[int, ...], angle: float | None, n: int) -> np.ndarray:
    """The full ``2^n x 2^n`` matrix of one gate."""
    if gate in ("RX", "RY", "RZ"):
        return embed({wires[0]: rotation({"RX": X, "RY": Y, "RZ": Z}[gate], angle)}, n)
    if gate == "H":
        return embed({wires[0]: H}, n)
    if gate == "CNOT":
        c, t = wires
        return embed({c: P0}, n) + embed({c: P1, t: X}, n)
    if gate == "CZ":
        a, b = wires
        return embed({a: P0}, n) + embed({a: P1, b: Z}, n)
    if gate == "ZZ":
        a, b = wires
        zz = embed({a: Z, b: Z}, n)
        # exp(-i phi/2 ZZ) with ZZ diagonal and squaring to I
        return np.cos(angle / 2) * np.eye(2 ** n) - 1j * np.sin(angle / 2) * zz
    raise ValueError(f"unknown gate {gate!r}")


def run_dense(spec: CircuitSpec, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Final state vectors ``(B, 2^n)`` of ``spec`` for inputs ``x (B, n)`` and ``theta (P,)``."""
    n = spec.n_qubits
    states = []
    for row in np.atleast_2d(x):
        psi = np.zeros(2 ** n, dtype=complex)
        psi[0] = 1.0
        for op in spec.ops:
            angle = None if op.source is None else float(op.angle(row[None, :], theta[None, :])[0])
            psi = dense_gate(op.gate, op.wires, angle, n) @ psi
        states.append(psi)
    return np.stack(states)


def dense_expval_z(states: np.ndarray, wire: int, n: int) -> np.ndarray:
    """``<psi| Z_wire |psi>`` for each row of ``states``."""
    z = embed({wire: Z}, n)
    return np.einsum("bi,ij,bj->b", states.conj(), z, states).real
