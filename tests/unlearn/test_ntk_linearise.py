"""NTK forgetting linearised at the trained weights w*, and the Gauss-Newton weighting.

References are computed independently: exact ridge retraining by least squares (linear model,
squared loss), and a Newton step with the exact Hessian from autograd (multinomial logistic
regression, where the Gauss-Newton matrix *is* the Hessian of the cross-entropy).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.unlearn.jacobian import flatten_parameters, unflatten_parameters
from privkit.unlearn.ntk import NTKState, ntk_unlearn, weighted_rows
from bn_cnn import bn_cnn

F64 = torch.float64


def _ridge(x, y, w0, lam):
    """argmin_W ||[x 1] W^T - Y||^2 + lam ||W - W0||^2 by least squares on the augmented system."""
    a = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1)
    w_init = torch.cat([w0["weight"], w0["bias"][:, None]], 1)
    lhs = np.vstack([a.numpy(), np.sqrt(lam) * np.eye(a.shape[1])])
    rhs = np.vstack([y.numpy(), np.sqrt(lam) * w_init.numpy().T])
    w = torch.from_numpy(np.linalg.lstsq(lhs, rhs, rcond=None)[0].T)
    return w[:, :-1], w[:, -1]


def _linear(seed=0, n=40, d=5, c=3):
    torch.manual_seed(seed)
    model = nn.Linear(d, c).double()
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    return model, w0, torch.randn(n, d, dtype=F64), torch.randn(n, c, dtype=F64)


def _set(model, weight, bias):
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)


@pytest.mark.parametrize("solver", ["primal", "dual"])
@pytest.mark.parametrize("where", ["trained", "elsewhere"])
def test_linearised_away_from_w0_still_equals_exact_ridge_retraining(solver, where):
    # A linear model equals its linearisation at any point a, so with the w0-penalty kept in the
    # right-hand side (J^T r - lambda (a - w0)) the step must land on ridge retraining over D_r
    # whether a is the trained w* or an arbitrary point.
    model, w0, x, y = _linear()
    wd, n_f = 0.03, 7
    _set(model, *_ridge(x, y, w0, len(x) * wd))
    if where == "trained":
        point = {k: v.detach().clone() for k, v in model.named_parameters()}
    else:
        gen = torch.Generator().manual_seed(3)
        point = {k: v.detach() + torch.randn(v.shape, generator=gen, dtype=F64)
                 for k, v in model.named_parameters()}
    unlearned, info = ntk_unlearn(model, w0, x[n_f:], y[n_f:], x[:n_f], y[:n_f], weight_decay=wd,
                                  loss="mse", solver=solver, linearise_at=point)
    retrained_w, retrained_b = _ridge(x[n_f:], y[n_f:], w0, (len(x) - n_f) * wd)
    assert info["solver"] == solver and info["linearised_at"] == "given point"
    torch.testing.assert_close(unlearned.weight.detach(), retrained_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(unlearned.bias.detach(), retrained_b, rtol=0, atol=1e-6)
    assert (retrained_w - model.weight.detach()).abs().max() > 1e-3  # the forget set mattered


def test_squared_loss_newton_step_is_exact_from_the_trained_weights():
    # The single Newton step of the brief: w_lin(D_r) - w* = (J_r^T J_r + lam_r I)^-1 (J_r^T r_r(w*)
    # - lam_r (w* - w0)) lands on ridge retraining for a linear model with squared loss. The
    # difference form adds delta_D = w_lin(D) - w*, which is 0 when w* minimises the D objective.
    model, w0, x, y = _linear(seed=1)
    wd, n_f = 0.05, 9
    _set(model, *_ridge(x, y, w0, len(x) * wd))
    point = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = NTKState(params="all", weight_decay=wd, loss="mse").fit(model, w0, x, y, linearise_at=point)
    torch.testing.assert_close(state.delta_, torch.zeros_like(state.delta_), rtol=0, atol=1e-9)
    unlearned, info = state.forget(model, x[:n_f], y[:n_f], method="woodbury")
    retrained_w, retrained_b = _ridge(x[n_f:], y[n_f:], w0, (len(x) - n_f) * wd)
    torch.testing.assert_close(unlearned.weight.detach(), retrained_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(unlearned.bias.detach(), retrained_b, rtol=0, atol=1e-6)


def test_gauss_newton_rows_give_the_softmax_hessian():
    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(5, 4, 7, generator=gen, dtype=F64)
    logits = 3 * torch.randn(5, 4, generator=gen, dtype=F64)
    rows = weighted_rows(jac, logits, "ce", "ggn")
    prob = torch.softmax(logits, 1)
    expected = sum(jac[i].T @ (torch.diag(prob[i]) - torch.outer(prob[i], prob[i])) @ jac[i] for i in range(5))
    torch.testing.assert_close(rows.T @ rows, expected, rtol=1e-10, atol=1e-12)
    # the squared loss's Hessian in the logits is the identity
    torch.testing.assert_close(weighted_rows(jac, logits, "mse", "ggn"), jac.reshape(-1, 7))
    with pytest.raises(ConfigError, match="unknown NTK weighting"):
        weighted_rows(jac, logits, "ce", "fisher")


def _logistic_problem(seed=0, n=30, d=4, c=3):
    torch.manual_seed(seed)
    model = nn.Linear(d, c).double()
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():  # "fine-tuned" weights somewhere away from w0 (not a minimiser)
        for p in model.parameters():
            p.add_(0.7 * torch.randn_like(p))
    return model, w0, torch.randn(n, d, dtype=F64), torch.randint(0, c, (n,))


def _newton_step(model, w0, x, y, lam):
    """-H^-1 grad of sum CE + lam/2 ||w - w0||^2 at the model's weights, by autograd (exact)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    flat0, anchor = flatten_parameters(params), flatten_parameters(w0)

    def objective(flat):
        out = torch.func.functional_call(model, unflatten_parameters(flat, params), (x,))
        return nn.functional.cross_entropy(out, y, reduction="sum") + 0.5 * lam * ((flat - anchor) ** 2).sum()

    grad = torch.func.grad(objective)(flat0)
    hessian = torch.func.hessian(objective)(flat0)
    return -torch.linalg.solve(hessian, grad)


@pytest.mark.parametrize("lambda_scaling", ["per-set", "fixed"])
def test_ggn_step_at_trained_weights_is_the_difference_of_two_newton_steps(lambda_scaling):
    # For multinomial logistic regression the Gauss-Newton matrix J^T (diag p - p p^T) J is the
    # exact Hessian of the cross-entropy, so at w* the NTK step delta_r - delta_D is
    # (Newton step on the D_r objective) - (Newton step on the D objective), exactly.
    model, w0, x, y = _logistic_problem()
    wd, n_f = 0.02, 6
    point = {k: v.detach().clone() for k, v in model.named_parameters()}
    _, info = ntk_unlearn(model, w0, x[n_f:], y[n_f:], x[:n_f], y[:n_f], weight_decay=wd, loss="ce",
                          linearise_at=point, weighting="ggn", lambda_scaling=lambda_scaling)
    lam_full = len(x) * wd
    lam_retain = (len(x) - n_f) * wd if lambda_scaling == "per-set" else lam_full
    expected = (_newton_step(model, w0, x[n_f:], y[n_f:], lam_retain)
                - _newton_step(model, w0, x, y, lam_full))
    got = flatten_parameters(info["delta"], F64)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    assert expected.abs().max() > 1e-2
    # the identity weighting is a different (smaller-curvature-blind) step
    _, ident = ntk_unlearn(model, w0, x[n_f:], y[n_f:], x[:n_f], y[:n_f], weight_decay=wd, loss="ce",
                           linearise_at=point, lambda_scaling=lambda_scaling)
    assert (flatten_parameters(ident["delta"], F64) - expected).abs().max() > 1e-3


def test_ggn_weighting_refuses_the_dual_solver():
    model, w0, x, y = _logistic_problem()
    with pytest.raises(ConfigError, match="needs solver='primal'"):
        ntk_unlearn(model, w0, x[5:], y[5:], x[:5], y[:5], weighting="ggn", solver="dual")


def _bn_cnn(seed=0):
    return bn_cnn(seed)


@pytest.mark.parametrize("method", ["woodbury", "cholesky"])
def test_state_at_trained_weights_with_ggn_equals_one_shot_and_survives_save(method, tmp_path):
    model, w0, x, y = _bn_cnn()
    point = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = NTKState(params="bn", weight_decay=0.01, weighting="ggn", chunk_size=7).fit(
        model, w0, x, y, linearise_at=point)
    step1, info = state.forget(model, x[:2], y[:2], method=method)
    assert info["downdate"] == method and info["weighting"] == "ggn"
    _, fresh = ntk_unlearn(model, w0, x[2:], y[2:], x[:2], y[:2], params="bn", weight_decay=0.01,
                           linearise_at=point, weighting="ggn")
    for name in fresh["delta"]:
        torch.testing.assert_close(info["delta"][name], fresh["delta"][name], rtol=1e-5, atol=1e-7)
    # chained through save/load: the state keeps w* as its linearisation point and w0 as anchor
    reloaded = NTKState.load(state.save(tmp_path / "state.safetensors"))
    assert reloaded.weighting == "ggn" and torch.equal(reloaded.point_, state.point_)
    assert not torch.equal(reloaded.point_, reloaded.w0_)
    step2, _ = reloaded.forget(step1, x[2:5], y[2:5], method=method)
    at_once, _ = ntk_unlearn(model, w0, x[5:], y[5:], x[:5], y[:5], params="bn", weight_decay=0.01,
                             linearise_at=point, weighting="ggn")
    for (name, a), b in zip(step2.named_parameters(), at_once.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_version_1_state_loads_as_linearised_at_w0(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, w0, x, y = _bn_cnn()
    state = NTKState(params="bn", weight_decay=0.01).fit(model, w0, x, y)
    path = state.save(tmp_path / "v2.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[NTKState._METADATA_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "point"}
    meta["format"] = "privkit.ntk_state/1"
    del meta["hyperparameters"]["weighting"]
    save_file(tensors, str(tmp_path / "v1.safetensors"),
              metadata={NTKState._METADATA_KEY: json.dumps(meta)})
    old = NTKState.load(tmp_path / "v1.safetensors")
    assert old.weighting == "identity" and torch.equal(old.point_, old.w0_)
    a, _ = old.forget(model, x[:3], y[:3])
    b, _ = state.forget(model, x[:3], y[:3])
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_forget_rows_are_taken_at_the_state_point_not_the_model_passed_in():
    # A chained request passes the already-unlearned model; the state's linear model lives at w*,
    # so moving the selected (BN + head) weights of the model passed in must not change the step.
    model, w0, x, y = _bn_cnn()
    point = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = NTKState(params="bn", weight_decay=0.01, weighting="ggn").fit(model, w0, x, y, linearise_at=point)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if not name.startswith("0."):  # BN affine and head: the selected parameters
                p.add_(0.3)
    _, from_moved = state.forget(moved, x[:3], y[:3], commit=False)
    _, from_trained = state.forget(model, x[:3], y[:3], commit=False)
    assert from_trained["delta_norm"] > 1e-4
    for name in from_trained["delta"]:
        torch.testing.assert_close(from_moved["delta"][name], from_trained["delta"][name])


def test_peft_training_penalty_matches_lambda_n_times_weight_decay():
    # The fine-tuning loss of `privkit train --peft` is mean CE + (wd/2)||w - w0||^2 over a batch;
    # times N it is the objective sum CE + (lambda/2)||w - w0||^2 the NTK step linearises, with
    # lambda = N wd (the state's lambda over N samples). Checked on a full batch, penalty applied once.
    from privkit.train import ClassifierConfig
    from privkit.unlearn.peft import PeftClassifierTask

    model, w0, x, y = _bn_cnn()
    names = ["1.weight", "1.bias", "4.weight", "4.bias"]
    wd = 3e-3
    with torch.no_grad():  # the task anchors at the weights it is built with: make them w0
        for name, p in model.named_parameters():
            p.copy_(w0[name])
    task = PeftClassifierTask(model, 0, ClassifierConfig(lr=1e-2, weight_decay=wd, anchor_penalty=wd,
                                                         trainable=names))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    logits = model(x)
    train_loss = task.loss(logits, y)
    state = NTKState(params="bn", weight_decay=wd)
    state.n_fit_samples_ = len(x)
    lam = state._lambda(len(x))
    shift = sum(((dict(model.named_parameters())[n] - w0[n]) ** 2).sum() for n in names)
    objective = nn.functional.cross_entropy(logits, y, reduction="sum") + 0.5 * lam * shift
    assert lam == pytest.approx(len(x) * wd)
    torch.testing.assert_close(len(x) * train_loss, objective, rtol=1e-6, atol=1e-6)
