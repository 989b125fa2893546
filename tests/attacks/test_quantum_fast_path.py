"""The layered fast path (product-state encoding, per-layer dense unitaries, adjoint gradient)
against the general gate-by-gate program and the dense numpy reference."""

import math

import numpy as np
import pytest
import torch

from privkit.attacks.quantum.circuits import (
    ANSATZE,
    CircuitSpec,
    Op,
    build_circuit,
    compile_layered,
    expval_z_all,
    expval_z_general,
    expval_z_grid,
    run_circuit,
    run_circuit_general,
)
from privkit.attacks.quantum.models import VQNN
from privkit.attacks.quantum.reference import run_dense


def _inputs(spec, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, spec.n_qubits, generator=gen, dtype=torch.float64) * math.pi
    theta = torch.rand(spec.n_params, generator=gen, dtype=torch.float64) * 2 * math.pi
    rows = torch.rand(batch, spec.n_params, generator=gen, dtype=torch.float64) * 2 * math.pi
    return x, theta, rows


@pytest.mark.parametrize("ansatz", sorted(ANSATZE))
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_fast_state_equals_general_program_and_dense_reference(ansatz, n):
    spec = build_circuit(ansatz, n, 2)
    assert compile_layered(spec) is not None  # every registered family takes the fast path
    x, theta, rows = _inputs(spec, 4, seed=n)
    fast = run_circuit(spec, x, theta).reshape(4, -1)
    general = run_circuit_general(spec, x, theta).reshape(4, -1)
    torch.testing.assert_close(fast, general, atol=1e-12, rtol=0)
    np.testing.assert_allclose(fast.numpy(), run_dense(spec, x.numpy(), theta.numpy()), atol=1e-12)
    # one parameter set per row
    fast_rows = run_circuit(spec, x, rows).reshape(4, -1)
    torch.testing.assert_close(fast_rows, run_circuit_general(spec, x, rows).reshape(4, -1), atol=1e-12, rtol=0)
    for b in range(4):
        np.testing.assert_allclose(fast_rows[b].numpy(), run_dense(spec, x[b:b + 1].numpy(), rows[b].numpy())[0],
                                   atol=1e-12)


@pytest.mark.parametrize("ansatz", sorted(ANSATZE))
def test_grid_of_parameter_sets_equals_general_program_row_by_row(ansatz):
    spec = build_circuit(ansatz, 3, 2)
    x, _, rows = _inputs(spec, 5, seed=11)
    grid = expval_z_grid(spec, x, rows[:3])  # (3 sets, 5 inputs, 3 qubits)
    assert grid.shape == (3, 5, 3)
    for s in range(3):
        torch.testing.assert_close(grid[s], expval_z_general(spec, x, rows[s]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("ansatz", sorted(ANSATZE))
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("per_row", [False, True])
def test_autodiff_through_fast_path_equals_general_program(ansatz, n, per_row):
    spec = build_circuit(ansatz, n, 2)
    x, theta, rows = _inputs(spec, 3, seed=20 + n)
    weights = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)

    def grads(expval):
        xr = x.clone().requires_grad_(True)
        tr = (rows if per_row else theta).clone().requires_grad_(True)
        out = (expval(spec, xr, tr) @ weights).pow(2).sum()
        return torch.autograd.grad(out, (xr, tr))

    fast, general = grads(expval_z_all), grads(expval_z_general)
    for a, b in zip(fast, general):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
    assert fast[1].abs().max() > 1e-3


@pytest.mark.parametrize("ansatz", sorted(ANSATZE))
@pytest.mark.parametrize("n", [1, 3, 5])
@pytest.mark.parametrize("readout", ["mean-z", "z0"])
def test_adjoint_equals_parameter_shift_and_general_autodiff(ansatz, n, readout):
    model = VQNN(n, ansatz, 2, readout=readout)
    gen = torch.Generator().manual_seed(n)
    x = torch.rand(4, n, generator=gen, dtype=torch.float64) * math.pi
    y = torch.rand(4, generator=gen, dtype=torch.float64) * 2 - 1
    theta = model.init_params(n)
    adjoint = model.per_sample_gradients(x, y, theta, method="adjoint")
    shift = model.per_sample_gradients(x, y, theta, method="parameter-shift")
    # reference: autodiff of the general gate-by-gate program, one backward pass per row
    reference = []
    for b in range(4):
        tr = theta.clone().requires_grad_(True)
        z = expval_z_general(model.spec, x[b:b + 1], tr)
        f = z.mean(dim=1) if readout == "mean-z" else z[:, 0]
        (g,) = torch.autograd.grad(((f - y[b]) ** 2).sum(), tr)
        reference.append(g)
    reference = torch.stack(reference)
    torch.testing.assert_close(adjoint, reference, atol=1e-12, rtol=0)
    torch.testing.assert_close(shift, reference, atol=1e-12, rtol=0)
    assert reference.abs().max() > 1e-3


def test_adjoint_gradient_is_differentiable_wrt_inputs():
    model = VQNN(3, "complex", 2)
    theta = model.init_params(1)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, generator=gen, dtype=torch.float64) * math.pi
    y = torch.rand(2, generator=gen, dtype=torch.float64)

    def second_order(method):
        xr = x.clone().requires_grad_(True)
        g = model.per_sample_gradients(xr, y, theta, method=method, create_graph=True).sum(0)
        (dx,) = torch.autograd.grad(g.pow(2).sum(), xr)
        return dx

    torch.testing.assert_close(second_order("adjoint"), second_order("autodiff"), atol=1e-11, rtol=0)


def test_data_reuploading_circuit_falls_back_to_the_general_program():
    ops = (Op("RX", (0,), "x", (0,)), Op("RY", (0,), "theta", (0,)), Op("CNOT", (0, 1)),
           Op("RX", (1,), "x", (1,)), Op("RZ", (1,), "theta", (1,)))
    spec = CircuitSpec(ops, 2, 2, True)
    assert compile_layered(spec) is None
    x = torch.tensor([[0.3, 1.2], [2.0, 0.1]], dtype=torch.float64)
    theta = torch.tensor([0.7, -1.1], dtype=torch.float64)
    np.testing.assert_allclose(run_circuit(spec, x, theta).reshape(2, -1).numpy(),
                               run_dense(spec, x.numpy(), theta.numpy()), atol=1e-12)
    grid = expval_z_grid(spec, x, torch.stack([theta, -theta]))
    torch.testing.assert_close(grid[1], expval_z_general(spec, x, -theta), atol=1e-12, rtol=0)


def test_float32_fast_path_matches_float64():
    spec = build_circuit("complex", 4, 2)
    x, theta, _ = _inputs(spec, 3, seed=5)
    z32 = expval_z_all(spec, x.float(), theta.float())
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), expval_z_all(spec, x, theta), atol=1e-5, rtol=0)
