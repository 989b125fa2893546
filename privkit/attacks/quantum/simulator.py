"""A batched, differentiable statevector simulator in torch.

The state of ``n`` qubits for a batch of ``B`` circuits is a complex tensor shaped
``(B, 2, 2, ..., 2)``: axis ``1 + w`` is qubit ``w`` and qubit 0 is the most significant bit of
the flattened basis index (the convention of PennyLane and of textbook Kronecker products).
Every batch row may carry its own gate angles, so one call evaluates many inputs *and* many
parameter sets (for example all ``2P`` parameter-shifted copies of a circuit) at once.

Gates act on one qubit axis at a time and never build a ``2^n x 2^n`` matrix:

* a general one-qubit matrix ``U`` is contracted with ``torch.tensordot`` / ``torch.einsum`` on the
  qubit axis;
* the Pauli rotations use ``R_P(theta) = cos(theta/2) I - i sin(theta/2) P``: ``P`` is a flip
  (X, Y) or a sign (Z) of the qubit axis, so a rotation costs a few element-wise operations;
* CNOT swaps the target axis inside the control=1 slice, CZ and the ZZ phase are element-wise
  phases.

All operations are plain torch operations, so autodiff (``torch.autograd``) differentiates the
output with respect to the angles (float64/complex128 by default).
"""

from __future__ import annotations

from typing import Callable

import torch

DEFAULT_REAL_DTYPE = torch.float64
DEFAULT_COMPLEX_DTYPE = torch.complex128

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def complex_dtype_for(real_dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching ``real_dtype`` (float64 -> complex128)."""
    return _COMPLEX_OF[real_dtype]


def zero_state(n_qubits: int, batch: int, *, dtype: torch.dtype = DEFAULT_COMPLEX_DTYPE,
               device: torch.device | str | None = None) -> torch.Tensor:
    """``|0...0>`` for a batch: a tensor shaped ``(batch, 2, ..., 2)`` with ``n_qubits`` qubit axes."""
    state = torch.zeros((batch,) + (2,) * n_qubits, dtype=dtype, device=device)
    state.view(batch, -1)[:, 0] = 1.0
    return state


def _axis(wire: int) -> int:
    # axis 0 is the batch axis
    return 1 + wire


def _angle_column(angle: torch.Tensor | float, state: torch.Tensor) -> torch.Tensor:
    """Angles as a real tensor shaped ``(B, 1, ..., 1)`` broadcastable against ``state``."""
    angle = torch.as_tensor(angle, dtype=state.real.dtype, device=state.device)
    if angle.dim() == 0:
        angle = angle.expand(state.shape[0])
    return angle.reshape((-1,) + (1,) * (state.dim() - 1))


def _axis_vector(values, state: torch.Tensor, wire: int) -> torch.Tensor:
    """A length-2 vector laid along qubit axis ``wire`` (shape ``(1, .., 2, .., 1)``)."""
    shape = [1] * state.dim()
    shape[_axis(wire)] = 2
    return torch.as_tensor(values, dtype=state.dtype, device=state.device).reshape(shape)


def apply_matrix(state: torch.Tensor, matrix: torch.Tensor, wire: int) -> torch.Tensor:
    """Apply a one-qubit matrix on qubit ``wire``: ``psi'[.., i, ..] = sum_j U[i, j] psi[.., j, ..]``.

    ``matrix`` is ``(2, 2)`` (same gate for every batch row; a ``tensordot`` on the qubit axis) or
    ``(B, 2, 2)`` (one gate per batch row; an ``einsum`` over batch and qubit axis).
    """
    axis = _axis(wire)
    matrix = matrix.to(state.dtype)
    if matrix.dim() == 2:
        return torch.tensordot(matrix, state, dims=([1], [axis])).movedim(0, axis)
    moved = state.movedim(axis, -1)
    out = torch.einsum("bij,b...j->b...i", matrix, moved)
    return out.movedim(-1, axis)


def rx(state: torch.Tensor, theta, wire: int) -> torch.Tensor:
    """``R_X(theta) = cos(theta/2) I - i sin(theta/2) X`` on qubit ``wire``."""
    half = _angle_column(theta, state) / 2
    return torch.cos(half) * state - 1j * torch.sin(half) * state.flip(_axis(wire))


def ry(state: torch.Tensor, theta, wire: int) -> torch.Tensor:
    """``R_Y(theta) = cos(theta/2) I - i sin(theta/2) Y``; ``-iY = [[0, -1], [1, 0]]``."""
    half = _angle_column(theta, state) / 2
    sign = _axis_vector([-1.0, 1.0], state, wire)
    return torch.cos(half) * state + torch.sin(half) * (sign * state.flip(_axis(wire)))


def rz(state: torch.Tensor, theta, wire: int) -> torch.Tensor:
    """``R_Z(theta) = diag(exp(-i theta/2), exp(i theta/2))``: an element-wise phase."""
    half = _angle_column(theta, state) / 2
    z = _axis_vector([1.0, -1.0], state, wire).real
    return state * torch.polar(torch.ones_like(half * z), -half * z)


_HADAMARD = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / 2 ** 0.5


def hadamard(state: torch.Tensor, wire: int) -> torch.Tensor:
    """Hadamard on qubit ``wire`` (a ``tensordot`` with the 2x2 matrix)."""
    return apply_matrix(state, _HADAMARD.to(state.device), wire)


def cnot(state: torch.Tensor, control: int, target: int) -> torch.Tensor:
    """CNOT: flip qubit ``target`` inside the ``control = 1`` slice."""
    if control == target:
        raise ValueError(f"CNOT control and target must differ, both are {control}")
    c_axis = _axis(control)
    off, on = state.unbind(c_axis)
    # after removing the control axis, axes above it shift down by one
    t_axis = _axis(target) - (1 if target > control else 0)
    return torch.stack([off, on.flip(t_axis)], dim=c_axis)


def cz(state: torch.Tensor, wire_a: int, wire_b: int) -> torch.Tensor:
    """CZ: phase -1 on ``|1>_a |1>_b`` (symmetric in its wires)."""
    mask = _axis_vector([0.0, 1.0], state, wire_a) * _axis_vector([0.0, 1.0], state, wire_b)
    return state * (1 - 2 * mask)


def zz_phase(state: torch.Tensor, phi, wire_a: int, wire_b: int) -> torch.Tensor:
    """``R_ZZ(phi) = exp(-i phi/2 Z_a Z_b)`` (PennyLane's ``IsingZZ``; Qiskit's CNOT-P-CNOT block
    up to a global phase)."""
    half = _angle_column(phi, state) / 2
    zz = (_axis_vector([1.0, -1.0], state, wire_a) * _axis_vector([1.0, -1.0], state, wire_b)).real
    return state * torch.polar(torch.ones_like(half * zz), -half * zz)


def probabilities(state: torch.Tensor) -> torch.Tensor:
    """``|psi|^2`` with the state's shape (real)."""
    return state.real ** 2 + state.imag ** 2


def expval_z(state: torch.Tensor, wire: int) -> torch.Tensor:
    """``<Z_wire>`` for every batch row, shape ``(B,)``."""
    return expval_z_all(state)[:, wire]


def expval_z_all(state: torch.Tensor) -> torch.Tensor:
    """``<Z_w>`` for every qubit ``w``, shape ``(B, n)``."""
    probs = probabilities(state)
    n = state.dim() - 1
    out = []
    for w in range(n):
        other = tuple(a for a in range(1, n + 1) if a != _axis(w))
        marginal = probs.sum(dim=other) if other else probs
        out.append(marginal[:, 0] - marginal[:, 1])
    return torch.stack(out, dim=1)


# --- gate registry -----------------------------------------------------------------------------

GATES: dict[str, Callable] = {}
PARAMETRIC_GATES: set[str] = set()


def register_gate(name: str, *, parametric: bool):
    """Register a gate function under ``name`` (decorator). Parametric gates take ``(state, angle,
    *wires)``, fixed gates ``(state, *wires)``."""

    def decorator(fn):
        GATES[name] = fn
        if parametric:
            PARAMETRIC_GATES.add(name)
        return fn

    return decorator


register_gate("RX", parametric=True)(rx)
register_gate("RY", parametric=True)(ry)
register_gate("RZ", parametric=True)(rz)
register_gate("ZZ", parametric=True)(zz_phase)
register_gate("H", parametric=False)(hadamard)
register_gate("CNOT", parametric=False)(cnot)
register_gate("CZ", parametric=False)(cz)
