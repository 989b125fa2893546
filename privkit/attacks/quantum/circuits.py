"""Circuit descriptions, the ansatz registry and the circuit runner.

A circuit is a list of :class:`Op`. A parametric op takes its angle from the input features
``x`` (the encoding) or from the trainable parameters ``theta`` (the ansatz); the runner evaluates
every op for a whole batch, where each batch row has its own ``x`` and may have its own ``theta``.

Ansatz families (our reading of Papadopoulos et al., 2025, arXiv 2504.12806; one layer shown):

``simple``
    angle encoding ``R_X(x_j)`` on qubit ``j``; per layer ``R_Y(theta)`` on every qubit, no
    entangler (a product circuit: ``n L`` parameters).
``simple-entangled``
    angle encoding; per layer ``R_Y(theta)`` on every qubit then a CNOT ladder
    ``CNOT(0,1) CNOT(1,2) ... CNOT(n-2,n-1)`` (``n L`` parameters).
``complex``
    angle encoding; per layer ``R_Y(theta)`` and ``R_Z(theta)`` on every qubit then a CNOT ring
    (the ladder plus ``CNOT(n-1, 0)`` when ``n > 2``; ``2 n L`` parameters).
``zz-efficientsu2``
    Qiskit-style ZZ feature map (2 repetitions of ``H``, ``P(2 x_j)`` and, for each pair
    ``i < j`` of a linear chain, ``exp(-i phi/2 Z_i Z_j)`` with ``phi = 2 (pi - x_i)(pi - x_j)``),
    then an EfficientSU2-style ansatz: ``L`` blocks of ``R_Y, R_Z`` on every qubit and a CNOT
    ladder, closed by a final ``R_Y, R_Z`` layer (``2 n (L + 1)`` parameters).

Each ``theta_k`` enters exactly one Pauli rotation with coefficient 1, so the parameter-shift rule
``d f / d theta_k = [f(theta_k + pi/2) - f(theta_k - pi/2)] / 2`` is exact. In the three
angle-encoded families each ``x_j`` also enters exactly one ``R_X``, so the same rule gives
``d f / d x_j``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from privkit.attacks.quantum import simulator as sim


@dataclass(frozen=True)
class Op:
    """One gate of a circuit.

    Attributes
    ----------
    gate : str
        A name in :data:`privkit.attacks.quantum.simulator.GATES` (``RX``, ``RY``, ``RZ``, ``ZZ``,
        ``H``, ``CNOT``, ``CZ``).
    wires : tuple of int
    source : {"x", "theta", None}
        Where the angle comes from; ``None`` for fixed gates.
    index : tuple of int
        Feature or parameter indices the angle reads.
    kind : {"identity", "double", "zz-product"}
        ``identity``: ``x_j`` or ``theta_k``; ``double``: ``2 x_j``;
        ``zz-product``: ``2 (pi - x_i)(pi - x_j)``.
    """

    gate: str
    wires: tuple[int, ...]
    source: str | None = None
    index: tuple[int, ...] = ()
    kind: str = "identity"

    def angle(self, x, theta):
        """The angle for every batch row; works on torch tensors and numpy arrays alike.

        ``x`` is ``(B, n_features)``; ``theta`` is ``(P,)`` or ``(B, P)``.
        """
        values = x if self.source == "x" else theta
        first = values[..., self.index[0]]
        if self.kind == "identity":
            return first
        if self.kind == "double":
            return 2 * first
        if self.kind == "zz-product":
            second = values[..., self.index[1]]
            return 2 * (math.pi - first) * (math.pi - second)
        raise ValueError(f"unknown angle kind {self.kind!r}")


@dataclass(frozen=True)
class CircuitSpec:
    """A built circuit: its ops, parameter count, and whether ``x`` is angle-encoded by ``R_X``."""

    ops: tuple[Op, ...]
    n_qubits: int
    n_params: int
    angle_encoded: bool


ANSATZE: dict[str, Callable[[int, int], CircuitSpec]] = {}


def register_ansatz(name: str):
    """Register an ansatz builder ``(n_qubits, layers) -> CircuitSpec`` under ``name``."""

    def decorator(fn):
        ANSATZE[name] = fn
        return fn

    return decorator


def _angle_encoding(n: int) -> list[Op]:
    return [Op("RX", (j,), "x", (j,)) for j in range(n)]


def _ladder(n: int) -> list[Op]:
    return [Op("CNOT", (j, j + 1)) for j in range(n - 1)]


def _ring(n: int) -> list[Op]:
    return _ladder(n) + ([Op("CNOT", (n - 1, 0))] if n > 2 else [])


class _Counter:
    def __init__(self):
        self.k = 0

    def __call__(self) -> tuple[int]:
        self.k += 1
        return (self.k - 1,)


@register_ansatz("simple")
def simple(n_qubits: int, layers: int) -> CircuitSpec:
    nxt = _Counter()
    ops = _angle_encoding(n_qubits)
    for _ in range(layers):
        ops += [Op("RY", (j,), "theta", nxt()) for j in range(n_qubits)]
    return CircuitSpec(tuple(ops), n_qubits, nxt.k, True)


@register_ansatz("simple-entangled")
def simple_entangled(n_qubits: int, layers: int) -> CircuitSpec:
    nxt = _Counter()
    ops = _angle_encoding(n_qubits)
    for _ in range(layers):
        ops += [Op("RY", (j,), "theta", nxt()) for j in range(n_qubits)]
        ops += _ladder(n_qubits)
    return CircuitSpec(tuple(ops), n_qubits, nxt.k, True)


@register_ansatz("complex")
def complex_(n_qubits: int, layers: int) -> CircuitSpec:
    nxt = _Counter()
    ops = _angle_encoding(n_qubits)
    for _ in range(layers):
        ops += [Op("RY", (j,), "theta", nxt()) for j in range(n_qubits)]
        ops += [Op("RZ", (j,), "theta", nxt()) for j in range(n_qubits)]
        ops += _ring(n_qubits)
    return CircuitSpec(tuple(ops), n_qubits, nxt.k, True)


@register_ansatz("zz-efficientsu2")
def zz_efficientsu2(n_qubits: int, layers: int) -> CircuitSpec:
    nxt = _Counter()
    ops: list[Op] = []
    for _ in range(2):  # Qiskit ZZFeatureMap default reps=2
        ops += [Op("H", (j,)) for j in range(n_qubits)]
        ops += [Op("RZ", (j,), "x", (j,), "double") for j in range(n_qubits)]
        ops += [Op("ZZ", (j, j + 1), "x", (j, j + 1), "zz-product") for j in range(n_qubits - 1)]

    def rotation_layer():
        return ([Op("RY", (j,), "theta", nxt()) for j in range(n_qubits)]
                + [Op("RZ", (j,), "theta", nxt()) for j in range(n_qubits)])

    for _ in range(layers):
        ops += rotation_layer() + _ladder(n_qubits)
    ops += rotation_layer()
    return CircuitSpec(tuple(ops), n_qubits, nxt.k, False)


def build_circuit(ansatz: str, n_qubits: int, layers: int) -> CircuitSpec:
    """Build a registered ansatz (raises ``KeyError`` for unknown names; validate first)."""
    return ANSATZE[ansatz](n_qubits, layers)


def run_circuit(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Run ``spec`` for a batch and return the final state ``(B, 2, ..., 2)``.

    Parameters
    ----------
    x : tensor ``(B, n_features)``, real
    theta : tensor ``(P,)`` (shared) or ``(B, P)`` (one parameter set per row), real
    """
    batch = x.shape[0]
    state = sim.zero_state(spec.n_qubits, batch, dtype=sim.complex_dtype_for(x.dtype), device=x.device)
    for op in spec.ops:
        gate = sim.GATES[op.gate]
        if op.source is None:
            state = gate(state, *op.wires)
        else:
            state = gate(state, op.angle(x, theta), *op.wires)
    return state
