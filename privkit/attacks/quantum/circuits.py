"""Circuit descriptions, the ansatz registry and the circuit runner.

A circuit is a list of :class:`Op`. A parametric op takes its angle from the input features
``x`` (the encoding) or from the trainable parameters ``theta`` (the ansatz); the runner evaluates
every op for a whole batch, where each batch row has its own ``x`` and may have its own ``theta``.

Ansatz families (our reading of Papadopoulos et al., 2025, arXiv 2504.12806; one layer shown):

``simple``
    angle encoding ``R_X(x_j)`` on qubit ``j``; per layer ``R_Z(theta) R_Y(theta)`` on every
    qubit (``R_Z`` first so it is not invisible to the Z readout), no entangler: a product circuit
    with ``2 n L`` parameters.
``simple-entangled``
    ``simple`` plus a CNOT ladder ``CNOT(0,1) CNOT(1,2) ... CNOT(n-2,n-1)`` after every layer
    (``2 n L`` parameters).
``complex``
    angle encoding; per layer a full Euler rotation ``R_Z R_Y R_Z`` on every qubit, then a CNOT
    ring (the ladder plus ``CNOT(n-1, 0)`` when ``n > 2``): ``3 n L`` parameters.
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


def _rotations(gates: tuple[str, ...], n: int, nxt) -> list[Op]:
    # gate order per qubit, e.g. ("RZ", "RY") applies R_Z first
    return [Op(g, (j,), "theta", nxt()) for j in range(n) for g in gates]


@register_ansatz("simple")
def simple(n_qubits: int, layers: int) -> CircuitSpec:
    nxt = _Counter()
    ops = _angle_encoding(n_qubits)
    for _ in range(layers):
        ops += _rotations(("RZ", "RY"), n_qubits, nxt)
    return CircuitSpec(tuple(ops), n_qubits, nxt.k, True)


@register_ansatz("simple-entangled")
def simple_entangled(n_qubits: int, layers: int) -> CircuitSpec:
    nxt = _Counter()
    ops = _angle_encoding(n_qubits)
    for _ in range(layers):
        ops += _rotations(("RZ", "RY"), n_qubits, nxt) + _ladder(n_qubits)
    return CircuitSpec(tuple(ops), n_qubits, nxt.k, True)


@register_ansatz("complex")
def complex_(n_qubits: int, layers: int) -> CircuitSpec:
    nxt = _Counter()
    ops = _angle_encoding(n_qubits)
    for _ in range(layers):
        ops += _rotations(("RZ", "RY", "RZ"), n_qubits, nxt) + _ring(n_qubits)
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


_REAL_KERNELS = {"RX": sim.rx_real, "RY": sim.ry_real, "RZ": sim.rz_real, "ZZ": sim.zz_real}


class _Program:
    """``spec`` lowered for fast execution on the real view of the state.

    All angles are gathered into one ``(B, G)`` matrix so ``cos`` and ``sin`` are two calls for
    the whole circuit, and runs of consecutive CNOTs are merged into one basis permutation.
    """

    def __init__(self, spec: CircuitSpec):
        self.n_qubits = spec.n_qubits
        groups: dict[tuple[str, str], list[tuple[int, tuple[int, ...]]]] = {}
        self.steps: list[tuple] = []
        n_param_ops = 0
        pending_cnots: list[tuple[int, int]] = []

        def flush():
            if pending_cnots:
                self.steps.append(("perm", sim.basis_permutation(spec.n_qubits, pending_cnots)))
                pending_cnots.clear()

        for op in spec.ops:
            if op.gate == "CNOT":
                pending_cnots.append(op.wires)
                continue
            flush()
            if op.source is None:
                fixed = {"H": sim.hadamard_real, "CZ": sim.cz}[op.gate]
                self.steps.append(("fixed", fixed, op.wires))
            else:
                groups.setdefault((op.source, op.kind), []).append((n_param_ops, op.index))
                self.steps.append(("rot", _REAL_KERNELS[op.gate], n_param_ops, op.wires))
                n_param_ops += 1
        flush()
        # column of each parametric op inside the concatenated angle matrix
        self.groups = []
        column_of = [0] * n_param_ops
        col = 0
        for (source, kind), members in groups.items():
            index = torch.tensor([m[1] for m in members])
            self.groups.append((source, kind, index))
            for g, _ in members:
                column_of[g] = col
                col += 1
        self.steps = [(s[0], s[1], column_of[s[2]], s[3]) if s[0] == "rot" else s for s in self.steps]

    def angles(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        parts = []
        for source, kind, index in self.groups:
            values = x if source == "x" else theta
            if values.dim() == 1:
                values = values[None, :].expand(x.shape[0], -1)
            first = values[:, index[:, 0]]
            if kind == "identity":
                parts.append(first)
            elif kind == "double":
                parts.append(2 * first)
            else:  # zz-product
                parts.append(2 * (math.pi - first) * (math.pi - values[:, index[:, 1]]))
        return torch.cat(parts, dim=1) if parts else x.new_zeros((1, 0))

    def run_internal(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Final state in the simulator's internal real layout ``(2, 2, ..., 2, B)``."""
        batch = x.shape[0]
        # (G, B): each gate's angles are one contiguous row
        half = self.angles(x, theta).T / 2
        cos_half, sin_half = torch.cos(half), torch.sin(half)
        real = sim.zero_internal(self.n_qubits, batch, dtype=x.dtype, device=x.device)
        shape = real.shape
        for step in self.steps:
            kind = step[0]
            if kind == "rot":
                _, kernel, col, wires = step
                real = kernel(real, cos_half[col], sin_half[col], *wires)
            elif kind == "perm":
                real = real.reshape(2, -1, batch)[:, step[1].to(real.device)].reshape(shape)
            else:
                real = step[1](real, *step[2])
        return real

    def run(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Final complex state ``(B, 2, ..., 2)``."""
        return sim.from_internal(self.run_internal(x, theta))

    def expval_z_all(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``<Z_w>`` of the final state for every row and qubit, ``(B, n)``."""
        real = self.run_internal(x, theta)
        probs = (real * real).sum(dim=0).reshape(-1, x.shape[0])  # (2^n, B)
        return (sim.z_signs(self.n_qubits, probs.dtype).to(probs.device).T @ probs).T


def compile_circuit(spec: CircuitSpec) -> _Program:
    """Lower ``spec`` to a fast program (cached on the spec)."""
    program = _PROGRAMS.get(id(spec))
    if program is None or program[0] is not spec:
        program = (spec, _Program(spec))
        _PROGRAMS[id(spec)] = program
    return program[1]


_PROGRAMS: dict[int, tuple[CircuitSpec, _Program]] = {}


def run_circuit(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Run ``spec`` for a batch and return the final state ``(B, 2, ..., 2)`` (complex).

    Parameters
    ----------
    x : tensor ``(B, n_features)``, real
    theta : tensor ``(P,)`` (shared) or ``(B, P)`` (one parameter set per row), real
    """
    return compile_circuit(spec).run(x, theta)


def expval_z_all(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``<Z_w>`` for every row and qubit, ``(B, n)``, without materialising the complex state."""
    return compile_circuit(spec).expval_z_all(x, theta)


def run_circuit_gatewise(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Same as :func:`run_circuit` but one registered gate function per op on the complex state
    (no fusion); a torch-level reference for the fast program."""
    batch = x.shape[0]
    state = sim.zero_state(spec.n_qubits, batch, dtype=sim.complex_dtype_for(x.dtype), device=x.device)
    for op in spec.ops:
        gate = sim.GATES[op.gate]
        if op.source is None:
            state = gate(state, *op.wires)
        else:
            state = gate(state, op.angle(x, theta), *op.wires)
    return state
