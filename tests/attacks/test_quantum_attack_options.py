"""Options of the finite-difference inversion: the step rules (the default reproduces the paper's
SGD; the normalised and Adam steps are invariant to the scale of the loss) and the window schedule."""

import math

import numpy as np
import pytest
import torch

from privkit.attacks.quantum import FiniteDifferenceInversion, VQNN
from privkit.attacks.quantum.inversion import STEP_RULES, AdamStep, GaussNewtonStep, NormalizedStep


def _client(batch=2, seed=3):
    model = VQNN(2, "simple-entangled", 2)
    theta = model.init_params(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 2, generator=gen, dtype=torch.float64) * math.pi
    y = 0.7 * torch.cos(x).mean(dim=1)
    return model, theta, x, y, model.client_gradient(x, y, theta)


def test_sgd_rule_is_the_plain_step_of_the_paper():
    model, theta, x, y, g = _client()
    attack = FiniteDifferenceInversion(model, theta, restarts=2, iterations=3, learning_rate=0.1, fd_step=0.05,
                                       fd_points=4, fd_points_by_loss=False, plateau_patience=1000,
                                       step_rule="sgd", seed=5).fit(g, y)
    # reference: the same random starts, then x <- reflect(x - eta D(x)) by hand
    gen = torch.Generator().manual_seed(5)
    current = math.pi * torch.rand(2, 2, 2, generator=gen, dtype=torch.float64)
    for _ in range(3):
        _, estimate = attack.step_losses(current, torch.tensor([4, 4]), g, y)
        current = attack._project(current - 0.1 * estimate)
    torch.testing.assert_close(torch.as_tensor(attack.reconstructions_), current, rtol=0, atol=1e-12)
    default = FiniteDifferenceInversion(model, theta, restarts=2, iterations=3, learning_rate=0.1, fd_step=0.05,
                                        fd_points=4, fd_points_by_loss=False, plateau_patience=1000,
                                        seed=5).fit(g, y)
    assert (default.reconstructions_ == attack.reconstructions_).all()


def test_normalized_step_has_length_eta_and_ignores_the_loss_scale():
    estimate = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rule = NormalizedStep(estimate.shape, torch.float64)
    step = rule(estimate, 0.05)
    torch.testing.assert_close(step.flatten(1).norm(dim=1), torch.full((3,), 0.05, dtype=torch.float64))
    torch.testing.assert_close(rule(1e-3 * estimate, 0.05), step)
    # direction unchanged: a positive multiple of D per restart
    cos = torch.nn.functional.cosine_similarity(step.flatten(1), estimate.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))


def test_adam_step_is_invariant_to_the_loss_scale_and_starts_as_sign_descent():
    gen = torch.Generator().manual_seed(1)
    estimates = [torch.randn(2, 1, 3, generator=gen, dtype=torch.float64) for _ in range(5)]
    plain, scaled = AdamStep((2, 1, 3), torch.float64), AdamStep((2, 1, 3), torch.float64)
    first = plain(estimates[0], 0.02)
    # bias-corrected first step: eta * D / |D| = eta * sign(D)
    torch.testing.assert_close(first, 0.02 * estimates[0].sign())
    torch.testing.assert_close(scaled(1e4 * estimates[0], 0.02), first)
    for est in estimates[1:]:
        torch.testing.assert_close(scaled(1e4 * est, 0.02), plain(est, 0.02), rtol=1e-10, atol=1e-14)
    # a coordinate with a 1000x smaller but consistent gradient moves as fast as a steep one
    rule = AdamStep((1, 1, 2), torch.float64)
    for _ in range(20):
        step = rule(torch.tensor([[[1.0, 1e-3]]], dtype=torch.float64), 0.01)
    torch.testing.assert_close(step[0, 0, 0], step[0, 0, 1], rtol=1e-6, atol=0)


def test_every_step_rule_descends_and_unknown_rule_is_rejected():
    model, theta, x, y, g = _client(batch=1)
    for name, lr in (("sgd", 0.1), ("normalized", 0.05), ("adam", 0.05), ("gauss-newton", 1.0)):
        attack = FiniteDifferenceInversion(model, theta, restarts=2, iterations=30, learning_rate=lr,
                                           fd_step=0.05, step_rule=name, seed=0).fit(g, y)
        assert (attack.loss_history_[:, -1] < attack.loss_history_[:, 0]).all(), name
    assert set(STEP_RULES) >= {"sgd", "normalized", "adam", "gauss-newton"}
    with pytest.raises(ValueError, match="unknown step_rule 'newton'"):
        FiniteDifferenceInversion(model, theta, step_rule="newton")


def test_window_reference_loss_keeps_the_full_window_until_the_loss_falls_below_it():
    model, theta, x, y, g = _client(batch=1)
    common = dict(restarts=3, iterations=40, learning_rate=0.1, fd_step=0.05, fd_points=16,
                  plateau_patience=1000, seed=2)
    attack = FiniteDifferenceInversion(model, theta, window_reference_loss=1.0, **common).fit(g, y)
    loss, points = attack.loss_history_, attack.fd_points_history_
    # the cap N_0 sqrt(L / 1) of every iteration, as a running minimum (N never grows)
    cap = np.minimum.accumulate(np.clip(np.ceil(16 * np.sqrt(loss[:, :-1] / 1.0)), 1, 16), axis=1)
    np.testing.assert_array_equal(points[:, 1:], cap)
    # the old reference, each restart's own starting loss, is the default
    old = FiniteDifferenceInversion(model, theta, **common).fit(g, y)
    old_cap = np.minimum.accumulate(np.clip(np.ceil(16 * np.sqrt(old.loss_history_[:, :-1]
                                                                   / old.loss_history_[:, :1])), 1, 16), axis=1)
    np.testing.assert_array_equal(old.fd_points_history_[:, 1:], old_cap)
    with pytest.raises(ValueError, match="window_reference_loss=0"):
        FiniteDifferenceInversion(model, theta, window_reference_loss=0)



def test_finite_difference_residual_jacobian_matches_the_exact_one():
    from privkit.attacks.quantum import gradient_input_jacobian

    model, theta, x, y, g = _client(batch=2)
    attack = FiniteDifferenceInversion(model, theta, restarts=1, fd_step=1e-5)
    current = (x + 0.15)[None]
    base, estimate, residual, jacobian = attack.step_losses(current, torch.tensor([1]), g, y, with_jacobian=True)
    scale = torch.sqrt(g.numel() * g.pow(2).mean())
    exact = gradient_input_jacobian(model, theta, current[0], y) / scale
    torch.testing.assert_close(jacobian[0], exact, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(residual.pow(2).sum(1), base, rtol=1e-12, atol=0)
    # the loss gradient estimate is 2 J^T r up to the O(h^2) finite-difference error
    torch.testing.assert_close(estimate.reshape(1, -1), 2 * (jacobian.transpose(1, 2) @ residual[..., None])[..., 0],
                               rtol=1e-5, atol=1e-8)
    # the moving average over N steps applies to the Jacobian as to D (same weights)
    _, _, _, jac4 = FiniteDifferenceInversion(model, theta, restarts=1, fd_step=0.05).step_losses(
        current, torch.tensor([4]), g, y, with_jacobian=True)
    singles = [FiniteDifferenceInversion(model, theta, restarts=1, fd_step=0.05 * k).step_losses(
        current, torch.tensor([1]), g, y, with_jacobian=True)[3] for k in range(1, 5)]
    torch.testing.assert_close(jac4, torch.stack(singles).mean(0), rtol=0, atol=1e-12)


def test_gauss_newton_step_solves_a_linear_residual_and_ignores_the_loss_scale():
    gen = torch.Generator().manual_seed(2)
    jacobian = torch.randn(2, 8, 3, generator=gen, dtype=torch.float64)
    # an ill-conditioned column: the direction plain gradient descent crawls along
    jacobian[:, :, 2] *= 1e-2
    truth_offset = torch.randn(2, 3, generator=gen, dtype=torch.float64) * 0.1
    residual = (jacobian @ truth_offset[..., None])[..., 0]  # r(x) = J (x - x*), x - x* = offset
    rule = GaussNewtonStep((2, 1, 3), torch.float64, damping=0.0, max_step=10.0)
    step = rule(torch.zeros(2, 1, 3, dtype=torch.float64), 1.0, jacobian=jacobian, residual=residual)
    torch.testing.assert_close(step.reshape(2, 3), truth_offset, rtol=1e-9, atol=1e-12)
    # scaling the loss (r -> c r, J -> c J) leaves the damped step unchanged
    damped = GaussNewtonStep((2, 1, 3), torch.float64)
    a = damped(torch.zeros(2, 1, 3, dtype=torch.float64), 1.0, jacobian=jacobian, residual=residual)
    b = damped(torch.zeros(2, 1, 3, dtype=torch.float64), 1.0, jacobian=30 * jacobian, residual=30 * residual)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    # the trust radius caps the step length
    capped = GaussNewtonStep((2, 1, 3), torch.float64, damping=0.0, max_step=0.01)
    c = capped(torch.zeros(2, 1, 3, dtype=torch.float64), 1.0, jacobian=jacobian, residual=residual)
    torch.testing.assert_close(c.flatten(1).norm(dim=1), torch.full((2,), 0.01, dtype=torch.float64))


def test_start_candidates_starts_each_restart_at_the_best_of_k_uniform_draws():
    from privkit.attacks.quantum import gradient_matching_loss

    model, theta, x, y, g = _client(batch=2)
    attack = FiniteDifferenceInversion(model, theta, restarts=3, iterations=0, start_candidates=50, seed=7).fit(g, y)
    # reference: the same generator draws the old starts, then K - 1 more per restart
    gen = torch.Generator().manual_seed(7)
    first = math.pi * torch.rand(3, 2, 2, generator=gen, dtype=torch.float64)
    more = math.pi * torch.rand(3, 49, 2, 2, generator=gen, dtype=torch.float64)
    pool = torch.cat([first[:, None], more], dim=1)
    pool_loss = gradient_matching_loss(model, theta, g, y, pool.reshape(-1, 2, 2)).reshape(3, 50)
    np.testing.assert_allclose(attack.loss_history_[:, 0], pool_loss.min(dim=1).values.numpy(), rtol=1e-12)
    np.testing.assert_allclose(attack.reconstructions_, pool[torch.arange(3), pool_loss.argmin(dim=1)].numpy())
    assert (attack.loss_history_[:, 0] <= pool_loss[:, 0].numpy()).all()
    # K = 1 (the default) is the paper's plain random start: the first draw
    plain = FiniteDifferenceInversion(model, theta, restarts=3, iterations=0, seed=7).fit(g, y)
    np.testing.assert_array_equal(plain.reconstructions_, first.numpy())
    with pytest.raises(ValueError, match="start_candidates=0"):
        FiniteDifferenceInversion(model, theta, start_candidates=0)


def test_auto_step_rule_uses_sgd_for_one_input_and_gauss_newton_for_a_batch():
    from privkit.attacks.quantum.api import STEP_RULE_LEARNING_RATES, resolve_step_rule, run_qnn_attack

    assert resolve_step_rule("auto", 1) == "sgd" and resolve_step_rule("auto", 3) == "gauss-newton"
    assert resolve_step_rule("adam", 3) == "adam"
    for batch, rule in ((1, "sgd"), (2, "gauss-newton")):
        cfg = run_qnn_attack("cos", qubits=2, ansatz="simple-entangled", batch=batch, restarts=1, iterations=1,
                             start_candidates=3)["config"]
        assert cfg["step_rule"] == rule and cfg["learning_rate"] == STEP_RULE_LEARNING_RATES[rule]
        assert cfg["start_candidates"] == 3
    # an explicit step size wins over the rule's default
    cfg = run_qnn_attack("cos", qubits=2, ansatz="simple", restarts=1, iterations=1, learning_rate=0.3,
                         step_rule="sgd")["config"]
    assert cfg["learning_rate"] == 0.3
