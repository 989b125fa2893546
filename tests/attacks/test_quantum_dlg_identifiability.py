"""Canonical (L-BFGS) DLG, its optimiser registry and periodic reduction; identifiability tools."""

import math

import numpy as np
import pytest
import torch

from privkit.attacks.quantum import (
    DLG_OPTIMIZERS,
    TanhMLP,
    VQNN,
    dlg_attack,
    gradient_input_jacobian,
    register_dlg_optimizer,
)
from privkit.errors import ConfigError


def _mlp_client():
    mlp = TanhMLP(n_features=2, hidden=4)
    params = mlp.init_params(0)
    x = torch.tensor([[0.8, 2.2]], dtype=torch.float64)
    y = torch.tensor([0.3], dtype=torch.float64)
    return mlp, params, x, y, mlp.client_gradient(x, y, params)


def test_canonical_lbfgs_dlg_recovers_the_input_of_a_classical_mlp():
    mlp, params, x, y, g = _mlp_client()
    out = dlg_attack(mlp, params, g, y, true_inputs=x.numpy(), restarts=1, iterations=15,
                     optimizer="lbfgs", seed=0)
    assert out["success"].all()
    np.testing.assert_allclose(out["reconstructed"][0], x.numpy(), atol=1e-4)
    # L-BFGS takes several loss evaluations per outer iteration, Adam exactly one
    assert out["evaluations"] > 15
    adam = dlg_attack(mlp, params, g, y, restarts=1, iterations=15, optimizer="adam", seed=0)
    assert adam["evaluations"] == 15


def test_unknown_dlg_optimizer_is_a_one_line_config_error():
    mlp, params, x, y, g = _mlp_client()
    with pytest.raises(ConfigError, match="unknown DLG optimizer 'sgd'") as err:
        dlg_attack(mlp, params, g, y, optimizer="sgd")
    assert "\n" not in str(err.value)


def test_input_period_maps_a_periodic_image_of_the_truth_onto_the_truth():
    model = VQNN(2, "simple", 2)
    theta = model.init_params(0)
    x = torch.tensor([[2.0, 0.8]], dtype=torch.float64)
    y = 0.7 * torch.cos(x).mean(dim=1)
    g = model.client_gradient(x, y, theta)
    image = x + torch.tensor([2 * math.pi, -2 * math.pi], dtype=torch.float64)

    @register_dlg_optimizer("jump-to-image")
    def _jump(xp, loss_fn, iterations, learning_rate):
        with torch.no_grad():
            xp.copy_(image)
        return [float(loss_fn(xp).detach())]

    try:
        out = dlg_attack(model, theta, g, y, true_inputs=x.numpy(), restarts=1, iterations=1,
                         optimizer="jump-to-image", input_period=2 * math.pi)
    finally:
        DLG_OPTIMIZERS.pop("jump-to-image")
    # the image has the same gradient (angle encoding is 2 pi-periodic) ...
    assert out["loss_history"][0, 0] < 1e-20
    # ... is a failure as a raw x' and the truth after reduction modulo 2 pi
    assert out["final_mse_unreduced"][0] > 1.0
    assert out["success"][0] and out["final_mse"][0] < 1e-20


def test_gradient_input_jacobian_matches_central_differences_and_has_full_rank_at_batch_three():
    model = VQNN(2, "simple-entangled", 2)
    theta = model.init_params(1)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, generator=gen, dtype=torch.float64) * math.pi
    y = 0.7 * torch.cos(x).mean(dim=1)
    jac = gradient_input_jacobian(model, theta, x, y)
    assert jac.shape == (model.n_params, 6)
    step = 1e-6
    for k in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[k] = step
        plus = model.client_gradient((x.reshape(-1) + e).reshape(3, 2), y, theta)
        minus = model.client_gradient((x.reshape(-1) - e).reshape(3, 2), y, theta)
        torch.testing.assert_close(jac[:, k], (plus - minus) / (2 * step), rtol=1e-6, atol=1e-8)
    assert int(torch.linalg.matrix_rank(jac, rtol=1e-10)) == 6


@pytest.mark.parametrize("n_qubits,layers", [(1, 4), (2, 2), (2, 6)])
def test_shared_gradients_span_at_most_three_to_the_n_minus_one_dimensions(n_qubits, layers):
    # angle encoding puts rho(x) in span{I, Z, Y}^(x)n and the readout is traceless, so
    # d f / d theta over all inputs spans <= 3^n - 1 dimensions however many parameters there are
    model = VQNN(n_qubits, "simple-entangled", layers)
    theta = model.init_params(0)
    x = torch.rand(64, n_qubits, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.pi
    df = model.per_sample_gradients(x, model.forward(x, theta) - 0.5, theta, method="autodiff")
    rank = int(torch.linalg.matrix_rank(df, rtol=1e-10))
    assert rank == min(3 ** n_qubits - 1, model.n_params)
