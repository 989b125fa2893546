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


# --- Pauli rotations -----------------------------------------------------------------------------
#
# Complex element-wise products with broadcast real coefficients are slow on CPU (every call
# promotes and copies, and broadcasting over many size-2 axes defeats vectorisation). The hot
# kernels therefore work on an internal *real* layout ``(2, 2, ..., 2, B)``: axis 0 holds the
# real and imaginary parts, axis ``1 + w`` is qubit ``w`` (as in the public layout) and the batch
# is the last, contiguous axis, so per-row coefficients broadcast along contiguous memory.
# Multiplying by ``-i`` maps ``(re, im) -> (im, -re)``: a flip of axis 0 times ``[1, -1]``, and
# every rotation is one ``addcmul``: ``R_P(theta) psi = cos(theta/2) psi + sin(theta/2) (-i P psi)``.


def to_internal(state: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, 2, ..., 2)`` -> real internal layout ``(2, 2, ..., 2, B)``."""
    return torch.view_as_real(state).movedim(-1, 0).movedim(1, -1)


def from_internal(real: torch.Tensor) -> torch.Tensor:
    """Real internal layout ``(2, 2, ..., 2, B)`` -> complex ``(B, 2, ..., 2)``."""
    return torch.view_as_complex(real.movedim(-1, 1).movedim(0, -1).contiguous())


def zero_internal(n_qubits: int, batch: int, *, dtype: torch.dtype = DEFAULT_REAL_DTYPE,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``|0...0>`` in the internal layout."""
    real = torch.zeros((2,) + (2,) * n_qubits + (batch,), dtype=dtype, device=device)
    real.view(2, -1, batch)[0, 0] = 1.0
    return real


def _sign(ndim: int, axis: int, values, like: torch.Tensor) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = 2
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(shape)


def rx_real(real: torch.Tensor, cos_half: torch.Tensor, sin_half: torch.Tensor, wire: int) -> torch.Tensor:
    """``R_X`` on the internal layout: ``cos psi + sin * J(X psi)`` with ``J(re, im) = (im, -re)``."""
    coeff = sin_half * _sign(real.dim(), 0, [1.0, -1.0], real)
    return torch.addcmul(cos_half * real, coeff, real.flip((0, _axis(wire))))


def ry_real(real: torch.Tensor, cos_half: torch.Tensor, sin_half: torch.Tensor, wire: int) -> torch.Tensor:
    """``R_Y`` on the internal layout: ``-iY = [[0, -1], [1, 0]]`` is a real flip with signs ``[-1, 1]``."""
    coeff = sin_half * _sign(real.dim(), _axis(wire), [-1.0, 1.0], real)
    return torch.addcmul(cos_half * real, coeff, real.flip(_axis(wire)))


def _diagonal_real(real, cos_half, sin_half, z):
    # (c - i s z) psi = c psi + s z J(psi)
    coeff = sin_half * (z * _sign(real.dim(), 0, [1.0, -1.0], real))
    return torch.addcmul(cos_half * real, coeff, real.flip(0))


def rz_real(real: torch.Tensor, cos_half: torch.Tensor, sin_half: torch.Tensor, wire: int) -> torch.Tensor:
    """``R_Z = cos I - i sin Z`` on the internal layout (``Z`` is a sign on the qubit axis)."""
    return _diagonal_real(real, cos_half, sin_half, _sign(real.dim(), _axis(wire), [1.0, -1.0], real))


def zz_real(real: torch.Tensor, cos_half: torch.Tensor, sin_half: torch.Tensor, wire_a: int,
            wire_b: int) -> torch.Tensor:
    """``exp(-i phi/2 Z_a Z_b)`` on the internal layout."""
    nd = real.dim()
    z = _sign(nd, _axis(wire_a), [1.0, -1.0], real) * _sign(nd, _axis(wire_b), [1.0, -1.0], real)
    return _diagonal_real(real, cos_half, sin_half, z)


def _on_complex(kernel):
    """Lift an internal-layout rotation kernel to a gate on complex ``(B, 2, ..., 2)`` states."""

    def gate(state: torch.Tensor, theta, *wires: int) -> torch.Tensor:
        half = torch.as_tensor(theta, dtype=state.real.dtype, device=state.device) / 2
        if half.dim() == 0:
            half = half.expand(state.shape[0])
        return from_internal(kernel(to_internal(state), torch.cos(half), torch.sin(half), *wires))

    gate.__doc__ = kernel.__doc__
    return gate


rx = _on_complex(rx_real)
ry = _on_complex(ry_real)
rz = _on_complex(rz_real)
zz_phase = _on_complex(zz_real)


_HADAMARD = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / 2 ** 0.5


def hadamard(state: torch.Tensor, wire: int) -> torch.Tensor:
    """Hadamard on qubit ``wire`` (a ``tensordot`` with the 2x2 matrix on the qubit axis)."""
    return apply_matrix(state, _HADAMARD.to(state.device), wire)


def hadamard_real(real: torch.Tensor, wire: int) -> torch.Tensor:
    """Hadamard on the internal layout (a real matrix acts on both parts alike)."""
    h = _HADAMARD.to(dtype=real.dtype, device=real.device)
    return torch.tensordot(h, real, dims=([1], [_axis(wire)])).movedim(0, _axis(wire))


def cnot(state: torch.Tensor, control: int, target: int) -> torch.Tensor:
    """CNOT: flip qubit ``target`` inside the ``control = 1`` slice (either layout)."""
    if control == target:
        raise ValueError(f"CNOT control and target must differ, both are {control}")
    c_axis = _axis(control)
    off, on = state.unbind(c_axis)
    # after removing the control axis, axes above it shift down by one
    t_axis = _axis(target) - (1 if target > control else 0)
    return torch.stack([off, on.flip(t_axis)], dim=c_axis)


def cz(state: torch.Tensor, wire_a: int, wire_b: int) -> torch.Tensor:
    """CZ: phase -1 on ``|1>_a |1>_b`` (either layout; symmetric in its wires)."""
    nd = state.dim()
    mask = _sign(nd, _axis(wire_a), [0.0, 1.0], state.real) * _sign(nd, _axis(wire_b), [0.0, 1.0], state.real)
    return state * (1 - 2 * mask)


def basis_permutation(n_qubits: int, gates) -> torch.Tensor:
    """The basis-index permutation of a sequence of CNOTs ``[(control, target), ...]``.

    ``new_state.flatten()[i] = state.flatten()[perm[i]]``; a length-``2^n`` index (no matrix), so a
    whole CNOT ladder or ring costs one gather.
    """
    index = torch.arange(2 ** n_qubits).reshape((1,) + (2,) * n_qubits)
    for control, target in gates:
        index = cnot(index, control, target)
    return index.reshape(-1)


def probabilities(state: torch.Tensor) -> torch.Tensor:
    """``|psi|^2`` with the state's shape (real)."""
    return state.real ** 2 + state.imag ** 2


def expval_z(state: torch.Tensor, wire: int) -> torch.Tensor:
    """``<Z_wire>`` for every batch row, shape ``(B,)``."""
    return expval_z_all(state)[:, wire]


def z_signs(n_qubits: int, dtype=torch.float64) -> torch.Tensor:
    """``(2^n, n)`` table of the eigenvalue of ``Z_w`` on each basis state."""
    bits = torch.arange(2 ** n_qubits)[:, None] >> torch.arange(n_qubits - 1, -1, -1)[None, :] & 1
    return (1 - 2 * bits).to(dtype)


def expval_z_all(state: torch.Tensor) -> torch.Tensor:
    """``<Z_w>`` for every qubit ``w``, shape ``(B, n)`` (one matmul of the probabilities)."""
    n = state.dim() - 1
    probs = probabilities(state).reshape(state.shape[0], -1)
    return probs @ z_signs(n, probs.dtype).to(probs.device)


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
