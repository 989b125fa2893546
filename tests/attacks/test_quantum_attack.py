"""The finite-difference gradient inversion, DLG, the defence and the validation."""

import json
import math

import numpy as np
import pytest
import torch

from privkit.attacks.quantum import (
    FiniteDifferenceInversion,
    TanhMLP,
    VQNN,
    clip_and_noise,
    dlg_attack,
    gaussian_mechanism_epsilon,
    gradient_matching_loss,
    make_figures,
    matched_mse,
    run_qnn_attack,
    validate_attack_config,
)
from privkit.errors import ConfigError


def _client(n=2, ansatz="simple", layers=2, batch=1, seed=0):
    model = VQNN(n, ansatz, layers)
    theta = model.init_params(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(batch, n, generator=gen, dtype=torch.float64) * math.pi
    y = 0.7 * torch.cos(x).mean(dim=1)
    return model, theta, x, y, model.client_gradient(x, y, theta)


def test_loss_is_zero_at_the_true_input_and_positive_elsewhere():
    model, theta, x, y, g = _client()
    cands = torch.stack([x, x + 0.3])
    loss = gradient_matching_loss(model, theta, g, y, cands)
    assert loss[0] < 1e-20 and loss[1] > 1e-4


def test_finite_difference_estimate_approximates_the_exact_derivative():
    model, theta, x, y, g = _client(n=3, ansatz="complex")
    attack = FiniteDifferenceInversion(model, theta, restarts=1, fd_step=1e-4)
    current = (x + 0.2)[None]
    base, estimate = attack.step_losses(current, torch.tensor([1]), g, y)
    xr = current.clone().requires_grad_(True)
    per_sample = model.per_sample_gradients(xr[0], y, theta, method="autodiff", create_graph=True)
    exact_loss = (per_sample.sum(0) - g).pow(2).mean() / g.pow(2).mean()
    (exact,) = torch.autograd.grad(exact_loss, xr)
    assert float(base[0]) == pytest.approx(float(exact_loss.detach()), rel=1e-10)
    torch.testing.assert_close(estimate, exact, rtol=1e-5, atol=1e-8)


def test_moving_average_over_n_steps_is_the_mean_of_the_single_step_quotients():
    model, theta, x, y, g = _client()
    attack = FiniteDifferenceInversion(model, theta, restarts=2, fd_step=0.05)
    current = torch.stack([x + 0.4, x - 0.1])
    _, avg = attack.step_losses(current, torch.tensor([4, 2]), g, y)
    for r, n_points in enumerate([4, 2]):
        singles = []
        for k in range(1, n_points + 1):
            one = FiniteDifferenceInversion(model, theta, restarts=1, fd_step=0.05 * k)
            singles.append(one.step_losses(current[r:r + 1], torch.tensor([1]), g, y)[1])
        torch.testing.assert_close(avg[r:r + 1], torch.stack(singles).mean(0), atol=1e-12, rtol=0)


def test_two_qubit_single_sample_attack_succeeds_with_fixed_seed():
    result = run_qnn_attack("cos", qubits=2, ansatz="simple", restarts=3, iterations=100, seed=4)
    assert result["success_rate"] >= 2 / 3
    assert matched_mse(np.array(result["reconstructed"]), np.array(result["true"])) <= 0.005
    for run in result["per_restart"]:
        assert run["success"] == (run["final_mse"] <= 0.005)
        assert run["loss"][-1] < run["loss"][0]
        assert len(run["loss"]) == len(run["mse"]) == 101
    json.dumps(result)  # plain data only
    assert [title for title, _ in make_figures(result)] == ["Loss and MSE against iteration",
                                                           "Reconstructed vs true inputs"]


def test_kalman_option_keeps_iterates_in_range_and_descends():
    model, theta, x, y, g = _client()
    attack = FiniteDifferenceInversion(model, theta, restarts=3, iterations=40, kalman=True, learning_rate=0.1,
                                       fd_step=0.05, seed=1).fit(g, y, true_inputs=x)
    assert np.all((attack.reconstructions_ >= 0) & (attack.reconstructions_ <= math.pi))
    assert np.all(attack.loss_history_[:, -1] < attack.loss_history_[:, 0])


def test_matched_mse_is_permutation_invariant():
    true = np.array([[0.1, 0.2], [2.0, 3.0], [1.0, 1.5]])
    assert matched_mse(true[[2, 0, 1]], true) == 0.0
    assert matched_mse(true[[2, 0, 1]] + 0.1, true) == pytest.approx(0.01)


def test_plateau_halves_the_number_of_averaged_steps():
    model, theta, x, y, g = _client()
    attack = FiniteDifferenceInversion(model, theta, restarts=2, iterations=60, learning_rate=0.0,
                                       fd_points=16, plateau_patience=10).fit(g, y)
    # with a zero learning rate the loss never improves: N halves every 10 + 1 iterations
    assert attack.fd_points_history_[0, 0] == 16
    assert attack.fd_points_history_[0, -1] == 1
    assert set(np.unique(attack.fd_points_history_)) == {1, 2, 4, 8, 16}


def test_dlg_recovers_the_input_of_a_classical_mlp():
    mlp = TanhMLP(n_features=2, hidden=4)
    params = mlp.init_params(0)
    x = torch.tensor([[0.8, 2.2]], dtype=torch.float64)
    y = torch.tensor([0.3], dtype=torch.float64)
    g = mlp.client_gradient(x, y, params)
    out = dlg_attack(mlp, params, g, y, true_inputs=x.numpy(), restarts=2, iterations=300,
                     learning_rate=0.05, seed=0)
    assert out["success_rate"] > 0
    assert out["loss_history"][:, -1].min() < 1e-6


def test_clip_and_noise_and_gaussian_epsilon():
    g = torch.tensor([3.0, 4.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    assert float(clip_and_noise(g, 1.0, 0.0, gen).norm()) == pytest.approx(1.0)
    noisy = torch.stack([clip_and_noise(torch.zeros(2000, dtype=torch.float64), None, 0.3, gen)])
    assert float(noisy.std()) == pytest.approx(0.3, rel=0.1)
    eps = [gaussian_mechanism_epsilon(s, 1.0) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=1.0, noise_multiplier=1.0, steps=1, orders=orders)
    assert eps[1] == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0], rel=1e-6)


def test_noise_result_reports_privacy():
    result = run_qnn_attack("cos", qubits=2, ansatz="simple", restarts=1, iterations=3, noise_sigma=0.5, clip=1.0)
    assert result["privacy"]["noise_multiplier"] == 0.5
    assert result["privacy"]["epsilon"] == pytest.approx(gaussian_mechanism_epsilon(0.5, 1.0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(qubits=0), r"qubits=0 .*\[1, 20\]"),
    (dict(qubits=21), r"qubits=21 .*\[1, 20\]"),
    (dict(ansatz="fancy"), r"unknown ansatz 'fancy'; known ansatze: complex, simple, simple-entangled, zz-efficientsu2"),
    (dict(task="mnist"), r"unknown task 'mnist'"),
    (dict(batch=10_000), r"batch=10000 is larger than the 200 samples"),
    (dict(restarts=0), r"restarts=0 must be a positive integer"),
    (dict(iterations=-1), r"iterations=-1 must be a positive integer"),
    (dict(noise_sigma=0.1), r"needs a clipping bound"),
    (dict(learning_rate=-0.5), r"learning_rate=-0.5 must be > 0"),
    (dict(step_rule="newton"), r"unknown step rule 'newton'; known step rules: auto, adam, gauss-newton, normalized, sgd"),
    (dict(start_candidates=0), r"start_candidates=0 must be a positive integer"),
])
def test_validation_errors_are_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        validate_attack_config(**kwargs)
    assert "\n" not in str(info.value)


def test_kalman_builds_velocity_along_a_consistent_descent_direction():
    from privkit.attacks.quantum.inversion import _KalmanSmoother

    step = 0.01
    smoother = _KalmanSmoother(torch.zeros(3), 1e-2, 1e-2, velocity_decay=0.9)
    position = torch.zeros(3)
    moves = []
    for _ in range(60):
        predicted = smoother.predict()
        # the SGD measurement from the predicted position under a constant gradient
        new = smoother.update(predicted - step)
        smoother.p = new
        moves.append(float((position - new)[0]))
        position = new
    # steady state: each move is (k1 + k2 / (1 - rho)) * step > step (momentum), finite, monotone
    assert moves[-1] > 2 * step
    assert moves[-1] == pytest.approx(moves[-2], rel=1e-3)
    k = _KalmanSmoother(torch.zeros(1), 1e-2, 1e-2, velocity_decay=1.0)
    assert k.rho == 1.0


def test_loss_based_cap_shrinks_the_window_as_the_loss_falls():
    model, theta, x, y, g = _client()
    attack = FiniteDifferenceInversion(model, theta, restarts=3, iterations=40, learning_rate=0.1,
                                       fd_step=0.05, fd_points=16, plateau_patience=1000, seed=2).fit(g, y)
    loss, points = attack.loss_history_, attack.fd_points_history_
    cap = np.maximum(1, np.ceil(16 * np.sqrt(loss[:, :-1] / loss[:, :1])))
    assert np.all(points[:, 1:] <= cap)
    assert np.all(np.diff(points, axis=1) <= 0)  # N never grows
    off = FiniteDifferenceInversion(model, theta, restarts=3, iterations=40, learning_rate=0.1, fd_step=0.05,
                                    fd_points=16, plateau_patience=1000, seed=2,
                                    fd_points_by_loss=False).fit(g, y)
    assert np.all(off.fd_points_history_ == 16)
    assert points.min() < 16  # the loss fell, so the cap acted
