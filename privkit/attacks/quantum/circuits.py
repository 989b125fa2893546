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


class NotLayeredError(ValueError):
    """``spec`` does not split into an input-only encoding and a trainable layered part."""


# ``-i P`` for the Pauli rotations ``R_P(theta) = cos(theta/2) I + sin(theta/2) (-i P)``
_NEG_I_PAULI = {
    "RX": ((0, -1j), (-1j, 0)),
    "RY": ((0, -1), (1, 0)),
    "RZ": ((-1j, 0), (0, 1j)),
}


def kron_qubits(factors: torch.Tensor) -> torch.Tensor:
    """``R_0 (x) R_1 (x) ... (x) R_{n-1}`` (qubit 0 is the most significant factor).

    ``factors`` is ``(..., n, 2, 2)``; the result is ``(..., 2^n, 2^n)``, batched over the leading
    axes (one Kronecker step per qubit, whatever the batch).
    """
    out = factors[..., 0, :, :]
    for j in range(1, factors.shape[-3]):
        nxt = factors[..., j, :, :]
        size = out.shape[-1] * 2
        out = (out[..., :, None, :, None] * nxt[..., None, :, None, :]).reshape(*out.shape[:-2], size, size)
    return out


class _LayeredProgram:
    """The fast path: ``|psi(x, theta)> = U(theta) |e(x)>`` with a trainable ``U`` built per layer.

    Every registered ansatz is an input-only encoding ``|e(x)>`` followed by trainable layers
    ``U(theta) = M_L ... M_1``, ``M_l = Pi_l K_l``: ``K_l = R_{l,0} (x) ... (x) R_{l,n-1}`` is the
    Kronecker product of the single-qubit rotations of layer ``l`` (each ``R_{l,j}`` the product
    of its qubit's Pauli rotations) and ``Pi_l`` the basis permutation of the CNOTs that close the
    layer. ``K_l = H_l (x) W_l`` splits into the Kronecker products of the first ``h = ceil(n/2)``
    qubits and of the rest, so with the state of each row reshaped to a ``2^h x 2^(n-h)`` matrix
    ``Psi``, ``K_l psi = H_l Psi W_l^T``: a layer is two small batched matrix products and a gather
    for the whole batch instead of one small kernel per gate (and ``2^(n/2)`` times fewer
    operations than the dense ``2^n x 2^n`` product):

    * angle encoding ``R_X(x_j)`` on ``|0>^n`` gives the product state
      ``e_i(x) = (-i)^{|i|} prod_j [cos(x_j/2) if bit_j(i) = 0 else sin(x_j/2)]``, built by ``n``
      outer products of 2-vectors;
    * any other encoding (the ZZ feature map) runs gate by gate on the general program, still
      one batched call;
    * ``theta`` of shape ``(P,)`` builds one ``(H_l, W_l)`` per layer; ``(S, P)`` in
      :meth:`final_state_grid` a stack over parameter sets applied to every input (all
      parameter-shifted copies at once); ``(B, P)`` one pair per input row.

    :meth:`readout_and_jacobian` gives ``df_b/dtheta`` for every row by the adjoint method at
    layer granularity (below). Everything is plain torch, so autodiff also works through it.
    """

    def __init__(self, spec: CircuitSpec):
        n = spec.n_qubits
        ops = spec.ops
        first = next((i for i, op in enumerate(ops) if op.source == "theta"), len(ops))
        encoding, trainable = ops[:first], ops[first:]
        for op in trainable:
            if op.gate == "CNOT":
                continue
            if not (op.source == "theta" and op.gate in _NEG_I_PAULI and op.kind == "identity"):
                raise NotLayeredError(f"op {op} after the first trainable gate is not a Pauli rotation of "
                                      "theta or a CNOT; use the general program")
        self.n_qubits = n
        self.n_params = spec.n_params
        wires = [op.wires[0] for op in encoding]
        self.product_encoding = (all(op.gate == "RX" and op.source == "x" and op.kind == "identity"
                                     for op in encoding) and len(set(wires)) == len(wires))
        if self.product_encoding:
            # feature read by each qubit's R_X; qubits without one stay |0> (angle 0)
            self.feature_of_wire = torch.full((n,), -1, dtype=torch.long)
            for op in encoding:
                self.feature_of_wire[op.wires[0]] = op.index[0]
            bits = (torch.arange(2 ** n)[:, None] >> torch.arange(n - 1, -1, -1)[None, :]) & 1
            self.encoding_phase = torch.tensor([(-1j) ** int(k) for k in bits.sum(dim=1)],
                                               dtype=torch.complex128)
        else:
            self.encoder = _Program(CircuitSpec(tuple(encoding), n, 0, spec.angle_encoded))

        # group the trainable ops into layers: a rotation after a CNOT run opens a new layer
        layers: list[tuple[dict[int, list[int]], list[tuple[int, int]]]] = []
        slots: dict[int, list[int]] = {}
        cnots: list[tuple[int, int]] = []
        op_gate, op_param, op_layer, op_wire, op_depth = [], [], [], [], []
        for op in trainable:
            if op.gate == "CNOT":
                cnots.append(op.wires)
                continue
            if cnots:
                layers.append((slots, cnots))
                slots, cnots = {}, []
            wire = op.wires[0]
            op_depth.append(len(slots.get(wire, [])))
            slots.setdefault(wire, []).append(len(op_gate))
            op_gate.append(op.gate)
            op_param.append(op.index[0])
            op_layer.append(len(layers))
            op_wire.append(wire)
        if slots or cnots or not layers:
            layers.append((slots, cnots))
        n_ops = len(op_gate)
        depth = max([len(v) for s, _ in layers for v in s.values()] + [1])
        # slot table (L, n, D): op index of every (layer, qubit, depth), n_ops = identity padding
        table = torch.full((len(layers), n, depth), n_ops, dtype=torch.long)
        for l, (layer_slots, _) in enumerate(layers):
            for wire, members in layer_slots.items():
                table[l, wire, :len(members)] = torch.tensor(members)
        self.table = table
        self.depth = depth
        self.n_layers = len(layers)
        self.op_param = torch.tensor(op_param, dtype=torch.long)
        self.op_layer = torch.tensor(op_layer, dtype=torch.long)
        self.op_wire = torch.tensor(op_wire, dtype=torch.long)
        self.op_depth = torch.tensor(op_depth, dtype=torch.long)
        self.neg_i_pauli = torch.tensor([_NEG_I_PAULI[g] for g in op_gate], dtype=torch.complex128).reshape(n_ops, 2, 2)
        self.perms = [sim.basis_permutation(n, c) if c else None for _, c in layers]
        self.inverse_perms = [None if p is None else torch.argsort(p) for p in self.perms]
        self.layer_ops = [torch.nonzero(self.op_layer == l).reshape(-1) for l in range(self.n_layers)]
        signs = sim.z_signs(n)  # (2^n, n)
        self.z_signs = signs
        self.n_high = (n + 1) // 2
        self.bits = (1 - signs.T) / 2  # (n, 2^n): bit_j(i)
        self.flip = torch.arange(2 ** n)[None, :] ^ (1 << torch.arange(n - 1, -1, -1))[:, None]  # (n, 2^n)

    # -- building blocks ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``|e(x)>`` for every row, complex ``(B, 2^n)``."""
        if not self.product_encoding:
            return self.encoder.run(x, x.new_zeros(0)).reshape(x.shape[0], -1)
        batch = x.shape[0]
        zero_angle = x.new_zeros(batch, 1)
        # (B, n); column -1 is the zero angle of qubits without an encoding gate
        half = torch.cat([x, zero_angle], dim=1)[:, self.feature_of_wire] / 2
        cos_half, sin_half = torch.cos(half), torch.sin(half)
        magnitude = x.new_ones(batch, 1)
        for j in range(self.n_qubits):  # qubit 0 ends up most significant
            pair = torch.stack([cos_half[:, j], sin_half[:, j]], dim=1)  # (B, 2)
            magnitude = (magnitude[:, :, None] * pair[:, None, :]).reshape(batch, -1)
        phase = self.encoding_phase.to(dtype=sim.complex_dtype_for(x.dtype), device=x.device)
        return magnitude * phase

    def gate_matrices(self, theta: torch.Tensor) -> torch.Tensor:
        """Every trainable rotation ``R(theta) = cos I + sin (-iP)``, ``(..., Q, 2, 2)``."""
        half = theta[..., self.op_param] / 2
        cdtype = sim.complex_dtype_for(theta.dtype)
        neg_i_p = self.neg_i_pauli.to(dtype=cdtype, device=theta.device)
        eye = torch.eye(2, dtype=cdtype, device=theta.device)
        return torch.cos(half)[..., None, None] * eye + torch.sin(half)[..., None, None] * neg_i_p

    def _padded(self, mats: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(2, dtype=mats.dtype, device=mats.device).expand(*mats.shape[:-3], 1, 2, 2)
        return torch.cat([mats, eye], dim=-3)

    def slot_matrices(self, theta: torch.Tensor) -> torch.Tensor:
        """``R_{l,j}`` for every layer and qubit, ``(..., L, n, 2, 2)``."""
        padded = self._padded(self.gate_matrices(theta))
        slots = padded[..., self.table[..., 0], :, :]
        for d in range(1, self.depth):
            slots = padded[..., self.table[..., d], :, :] @ slots
        return slots

    def layer_factors(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``K_l = H_l (x) W_l`` for every layer: the Kronecker products ``H_l`` of the first
        ``ceil(n/2)`` qubits' rotations, ``(..., L, 2^h, 2^h)``, and ``W_l`` of the rest,
        ``(..., L, 2^(n-h), 2^(n-h))``."""
        slots = self.slot_matrices(theta)
        high = kron_qubits(slots[..., :self.n_high, :, :])
        if self.n_high == self.n_qubits:
            low = torch.ones(high.shape[:-2] + (1, 1), dtype=high.dtype, device=high.device)
        else:
            low = kron_qubits(slots[..., self.n_high:, :, :])
        return high, low

    def layer_matrices(self, theta: torch.Tensor) -> torch.Tensor:
        """The dense ``K_l`` for every layer, ``(..., L, 2^n, 2^n)`` (for inspection and tests)."""
        return kron_qubits(self.slot_matrices(theta))

    def _apply(self, state: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """``K psi`` for ``K = H (x) W`` without forming ``K``: with ``psi`` reshaped to a
        ``2^h x 2^(n-h)`` matrix ``Psi`` (qubit 0 most significant), ``K psi = H Psi W^T``."""
        grid = state.reshape(*state.shape[:-1], high.shape[-1], low.shape[-1])
        out = high @ grid @ low.mT
        return out.reshape(*out.shape[:-2], -1)

    # -- forward -------------------------------------------------------------------------------------
    def final_state(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``U(theta) |e(x)>``, ``(B, 2^n)``, for ``theta (P,)`` (shared) or ``(B, P)`` (one set per
        row): per layer two small batched products ``H_l Psi W_l^T`` and a gather."""
        if theta.dim() == 2 and theta.shape[0] != x.shape[0]:
            raise ValueError(f"theta has {theta.shape[0]} rows but x has {x.shape[0]}; pass (P,) or (B, P)")
        state = self.encode(x)
        high, low = self.layer_factors(theta)  # (L, ...) or (B, L, ...)
        for l in range(self.n_layers):
            state = self._permute(self._apply(state, high[..., l, :, :], low[..., l, :, :]), l)
        return state

    def final_state_grid(self, x: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
        """Every parameter set on every input: ``thetas (S, P)``, ``x (B, n)`` -> ``(S, B, 2^n)``;
        per layer one ``(S, B)``-batched pair of small products."""
        state = self.encode(x)
        high, low = self.layer_factors(thetas)  # (S, L, ...)
        n_sets, batch = thetas.shape[0], x.shape[0]
        dh, dl = high.shape[-1], low.shape[-1]
        state = state.expand(n_sets, batch, -1)
        for l in range(self.n_layers):
            # one (S)-batched product per factor with the inputs folded into the columns/rows,
            # instead of S * B tiny products
            grid = state.reshape(n_sets, batch, dh, dl).transpose(1, 2).reshape(n_sets, dh, batch * dl)
            grid = (high[:, l] @ grid).reshape(n_sets, dh * batch, dl) @ low[:, l].mT
            state = self._permute(grid.reshape(n_sets, dh, batch, dl).transpose(1, 2).reshape(n_sets, batch, -1), l)
        return state

    def _permute(self, state: torch.Tensor, layer: int) -> torch.Tensor:
        perm = self.perms[layer]
        return state if perm is None else state[..., perm.to(state.device)]

    def expval_z_all(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        state = self.final_state(x, theta)
        probs = state.real ** 2 + state.imag ** 2
        return probs @ self.z_signs.to(dtype=probs.dtype, device=probs.device)

    def expval_z_grid(self, x: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
        state = self.final_state_grid(x, thetas)
        probs = state.real ** 2 + state.imag ** 2
        return probs @ self.z_signs.to(dtype=probs.dtype, device=probs.device)

    # -- adjoint gradient ----------------------------------------------------------------------------
    def generators(self, theta: torch.Tensor) -> torch.Tensor:
        """``G_q = A_q (-i P_q / 2) A_q^dagger`` for every trainable rotation, ``(Q, 2, 2)``, with
        ``A_q`` the rotations applied after ``q`` on its qubit in its layer, so that
        ``d R_{l,j} / d theta_q = G_q R_{l,j}``."""
        gates = self.gate_matrices(theta)
        padded = self._padded(gates)
        eye = torch.eye(2, dtype=gates.dtype, device=gates.device)
        after = [eye.expand(self.n_layers, self.n_qubits, 2, 2)] * self.depth
        for d in range(self.depth - 2, -1, -1):
            after[d] = after[d + 1] @ padded[self.table[..., d + 1]]
        after = torch.stack(after)  # (D, L, n, 2, 2)
        a = after[self.op_depth, self.op_layer, self.op_wire]  # (Q, 2, 2)
        return a @ (0.5 * self.neg_i_pauli.to(gates.dtype)) @ a.mH

    def readout_and_jacobian(self, x: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor):
        """``f_b = sum_w weights_w <Z_w>_b`` and ``J_bk = d f_b / d theta_k`` for a shared ``theta``.

        Adjoint method, one step per layer: with ``phi_l = K_l psi_{l-1}`` (state after the
        rotations of layer ``l``) and the costate ``chi_l = Pi_l^T M_{l+1}^dagger ... M_L^dagger O
        psi_L`` (``O = sum_w weights_w Z_w``, diagonal), a rotation ``q`` on qubit ``j`` of layer
        ``l`` gives ``d f / d theta_q = 2 Re <chi_l| G_q^{(j)} |phi_l>``; the 2x2 transition matrix
        ``T_j[a, b] = sum_{i: bit_j(i) = a} conj(chi_i) phi_{i with bit_j = b}`` is computed for
        all qubits at once. Cost: ``2 L`` layer applications of the whole batch.

        Returns ``f (B,)`` and ``J (B, P)``.
        """
        high, low = self.layer_factors(theta)
        generators = self.generators(theta)
        state = self.encode(x)
        after_rotations = []
        for l in range(self.n_layers):
            state = self._apply(state, high[l], low[l])
            after_rotations.append(state)
            state = self._permute(state, l)
        cdtype = state.dtype
        observable = (self.z_signs.to(dtype=weights.dtype, device=x.device) @ weights)  # (2^n,)
        probs = state.real ** 2 + state.imag ** 2
        readout = probs @ observable
        costate = state * observable.to(cdtype)
        bits = self.bits.to(dtype=cdtype, device=x.device)
        flip = self.flip.to(x.device)
        jacobian = x.new_zeros(x.shape[0], self.n_params)
        for l in range(self.n_layers - 1, -1, -1):
            inverse = self.inverse_perms[l]
            chi = costate if inverse is None else costate[:, inverse.to(x.device)]
            phi = after_rotations[l]
            chi_conj = chi.conj()
            same = chi_conj * phi  # (B, 2^n)
            flipped = chi_conj[:, None, :] * phi[:, flip]  # (B, n, 2^n)
            t11 = same @ bits.T  # (B, n)
            t00 = same.sum(dim=1, keepdim=True) - t11
            t10 = (flipped * bits).sum(dim=2)
            t01 = flipped.sum(dim=2) - t10
            ops = self.layer_ops[l].to(x.device)
            if ops.numel():
                g = generators[ops]  # (Q_l, 2, 2)
                w = self.op_wire[ops].to(x.device)
                value = (g[:, 0, 0] * t00[:, w] + g[:, 0, 1] * t01[:, w]
                         + g[:, 1, 0] * t10[:, w] + g[:, 1, 1] * t11[:, w])
                jacobian = jacobian.index_add(1, self.op_param[ops].to(x.device), 2 * value.real)
            costate = self._apply(chi, high[l].mH, low[l].mH)  # K^dagger chi
        return readout, jacobian


def compile_circuit(spec: CircuitSpec) -> _Program:
    """Lower ``spec`` to the general gate-by-gate program (cached on the spec)."""
    program = _PROGRAMS.get(id(spec))
    if program is None or program[0] is not spec:
        program = (spec, _Program(spec))
        _PROGRAMS[id(spec)] = program
    return program[1]


_PROGRAMS: dict[int, tuple[CircuitSpec, _Program]] = {}
_LAYERED: dict[int, tuple[CircuitSpec, _LayeredProgram | None]] = {}


def compile_layered(spec: CircuitSpec) -> _LayeredProgram | None:
    """The fast layered program of ``spec``, or ``None`` when ``spec`` has input-dependent gates
    after its trainable part begins (data re-uploading); cached on the spec."""
    entry = _LAYERED.get(id(spec))
    if entry is None or entry[0] is not spec:
        try:
            program = _LayeredProgram(spec)
        except NotLayeredError:
            program = None
        entry = (spec, program)
        _LAYERED[id(spec)] = entry
    return entry[1]


def run_circuit(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Run ``spec`` for a batch and return the final state ``(B, 2, ..., 2)`` (complex).

    Uses the layered fast path when ``spec`` allows it, else the general program.

    Parameters
    ----------
    x : tensor ``(B, n_features)``, real
    theta : tensor ``(P,)`` (shared) or ``(B, P)`` (one parameter set per row), real
    """
    layered = compile_layered(spec)
    if layered is None:
        return compile_circuit(spec).run(x, theta)
    return layered.final_state(x, theta).reshape((x.shape[0],) + (2,) * spec.n_qubits)


def run_circuit_general(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """:func:`run_circuit` on the general gate-by-gate program (any circuit)."""
    return compile_circuit(spec).run(x, theta)


def expval_z_all(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``<Z_w>`` for every row and qubit, ``(B, n)`` (layered fast path when possible)."""
    layered = compile_layered(spec)
    if layered is None:
        return compile_circuit(spec).expval_z_all(x, theta)
    return layered.expval_z_all(x, theta)


def expval_z_general(spec: CircuitSpec, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """:func:`expval_z_all` on the general gate-by-gate program."""
    return compile_circuit(spec).expval_z_all(x, theta)


def expval_z_grid(spec: CircuitSpec, x: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """``<Z_w>`` of every parameter set on every input: ``thetas (S, P)``, ``x (B, n)`` ->
    ``(S, B, n)``."""
    layered = compile_layered(spec)
    if layered is not None:
        return layered.expval_z_grid(x, thetas)
    n_sets, batch = thetas.shape[0], x.shape[0]
    x_rep = x.repeat(n_sets, 1)
    theta_rep = thetas.repeat_interleave(batch, dim=0)
    return compile_circuit(spec).expval_z_all(x_rep, theta_rep).reshape(n_sets, batch, -1)


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
