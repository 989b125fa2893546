"""NTK / Fast-NTK forgetting: exactness on linear models, solver equivalences, cached downdates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import privkit.unlearn.ntk as ntk
from privkit.errors import ConfigError, ResourceError
from privkit.unlearn.jacobian import flatten_parameters, parameter_jacobian, unflatten_parameters
from privkit.unlearn.ntk import (
    NTKState,
    activation_footprint,
    estimate_memory,
    forget_delta_block,
    forget_delta_two_solve,
    ntk_unlearn,
    residual,
    ridge_delta_dual,
    ridge_delta_primal,
    trapezium_scale,
)

F64 = torch.float64


def exact_ridge(x: torch.Tensor, y: torch.Tensor, w0: dict, lam: float, bias: bool):
    """Ridge toward w0 by least squares on the augmented system (no normal equations).

    argmin_W ||A W^T - Y||^2 + lam ||W - W0||^2  =  lstsq([A; sqrt(lam) I], [Y; sqrt(lam) W0^T])
    where A = [x, 1] when the layer has a bias (the bias is penalised toward w0 too).
    """
    a = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1) if bias else x
    w_init = torch.cat([w0["weight"], w0["bias"][:, None]], 1) if bias else w0["weight"]
    k = a.shape[1]
    lhs = np.vstack([a.numpy(), np.sqrt(lam) * np.eye(k)])
    rhs = np.vstack([y.numpy(), np.sqrt(lam) * w_init.numpy().T])
    w = torch.from_numpy(np.linalg.lstsq(lhs, rhs, rcond=None)[0].T)
    return (w[:, :-1], w[:, -1]) if bias else (w, None)


def linear_problem(bias: bool, seed: int = 0, n=40, n_forget=7, d=5, c=3):
    torch.manual_seed(seed)
    x = torch.randn(n, d, dtype=F64)
    y = torch.randn(n, c, dtype=F64)
    model = nn.Linear(d, c, bias=bias).double()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, w0, x, y, n_forget


@pytest.mark.parametrize("solver", ["primal", "dual"])
@pytest.mark.parametrize("bias", [False, True])
def test_ntk_on_linear_model_equals_exact_ridge_retraining(bias, solver):
    # A linear model is its own linearisation, so with the squared loss the trained model IS
    # w_lin(D) and the NTK step lands exactly on ridge retraining over D_r (lambda_r = N_r wd).
    model, w0, x, y, n_f = linear_problem(bias)
    wd = 0.03
    trained_w, trained_b = exact_ridge(x, y, w0, len(x) * wd, bias)
    with torch.no_grad():
        model.weight.copy_(trained_w)
        if bias:
            model.bias.copy_(trained_b)
    unlearned, info = ntk_unlearn(model, w0, x[n_f:], y[n_f:], x[:n_f], y[:n_f],
                                  weight_decay=wd, loss="mse", solver=solver)
    retrained_w, retrained_b = exact_ridge(x[n_f:], y[n_f:], w0, (len(x) - n_f) * wd, bias)
    assert info["solver"] == solver
    torch.testing.assert_close(unlearned.weight.detach(), retrained_w, rtol=0, atol=1e-6)
    if bias:
        torch.testing.assert_close(unlearned.bias.detach(), retrained_b, rtol=0, atol=1e-6)
    # The forget set actually mattered: retraining moved the weights by much more than 1e-6.
    assert (retrained_w - trained_w).abs().max() > 1e-3
    # The original model is untouched (inplace=False).
    torch.testing.assert_close(model.weight.detach(), trained_w)


def cnn(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 6, 6))
    return model


def cnn_problem(seed=0):
    model = cnn(seed)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # "fine-tuning": move away from w0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(24, 1, 6, 6)
    y = torch.randint(0, 4, (24,))
    return model, w0, x, y


@pytest.mark.parametrize("params", ["all", "bn"])
def test_primal_equals_dual_on_cnn_with_cross_entropy(params):
    model, w0, x, y = cnn_problem()
    common = dict(params=params, weight_decay=0.01, loss="ce", chunk_size=5)
    _, primal = ntk_unlearn(model, w0, x[4:], y[4:], x[:4], y[:4], solver="primal", **common)
    _, dual = ntk_unlearn(model, w0, x[4:], y[4:], x[:4], y[:4], solver="dual", **common)
    for name in primal["delta"]:
        torch.testing.assert_close(primal["delta"][name], dual["delta"][name],
                                   rtol=1e-5, atol=1e-7)
    assert primal["delta_norm"] > 1e-3


def test_auto_solver_picks_the_smaller_system():
    model, w0, x, y = cnn_problem()
    _, info_all = ntk_unlearn(model, w0, x[4:], y[4:], x[:4], y[:4], params="all")
    _, info_bn = ntk_unlearn(model, w0, x[4:], y[4:], x[:4], y[:4], params="bn")
    # all: P = 30 + 6 + 436 = 472 > N C = 24 * 4 = 96 -> the NC x NC dual system.
    assert info_all["P"] > info_all["N"] * info_all["C"] and info_all["solver"] == "dual"
    # bn with N C = 150 * 4 = 600 >= P = 6 + 436 = 442 -> the P x P primal system.
    big_x = torch.randn(150, 1, 6, 6)
    big_y = torch.randint(0, 4, (150,))
    _, info_big = ntk_unlearn(model, w0, big_x[10:], big_y[10:], big_x[:10], big_y[:10],
                              params="bn")
    assert info_big["P"] <= info_big["N"] * info_big["C"] and info_big["solver"] == "primal"
    assert info_bn["method"] == "fast-ntk"


def test_fast_ntk_only_moves_bn_and_head_parameters():
    model, w0, x, y = cnn_problem()
    unlearned, info = ntk_unlearn(model, w0, x[4:], y[4:], x[:4], y[:4], params="bn")
    before, after = dict(model.named_parameters()), dict(unlearned.named_parameters())
    assert torch.equal(before["0.weight"], after["0.weight"])
    assert torch.equal(before["0.bias"], after["0.bias"])
    for name in ("1.weight", "1.bias", "4.weight", "4.bias"):
        assert not torch.equal(before[name], after[name]), name
    assert set(info["delta"]) == {"1.weight", "1.bias", "4.weight", "4.bias"}


def test_block_form_equals_two_solve_form_through_ntk_unlearn():
    model, w0, x, y = cnn_problem()
    kwargs = dict(weight_decay=0.02, lambda_scaling="fixed", chunk_size=6)
    _, block = ntk_unlearn(model, w0, x[5:], y[5:], x[:5], y[:5], solver="block", **kwargs)
    _, two = ntk_unlearn(model, w0, x[5:], y[5:], x[:5], y[:5], solver="dual", **kwargs)
    for name in block["delta"]:
        torch.testing.assert_close(block["delta"][name], two["delta"][name], rtol=1e-5,
                                   atol=1e-7)


def test_block_form_needs_a_shared_lambda():
    model, w0, x, y = cnn_problem()
    with pytest.raises(ConfigError, match="lambda_scaling='fixed'"):
        ntk_unlearn(model, w0, x[5:], y[5:], x[:5], y[:5], solver="block")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), n_params=st.integers(1, 12), n_forget_rows=st.integers(1, 6),
       log_lam=st.floats(-2, 2), seed=st.integers(0, 2**16))
def test_primal_dual_and_block_agree_on_random_shapes(rows, n_params, n_forget_rows, log_lam,
                                                      seed):
    gen = torch.Generator().manual_seed(seed)
    jac_r = torch.randn(rows, n_params, generator=gen, dtype=F64)
    jac_f = torch.randn(n_forget_rows, n_params, generator=gen, dtype=F64)
    res_r = torch.randn(rows, generator=gen, dtype=F64)
    res_f = torch.randn(n_forget_rows, generator=gen, dtype=F64)
    lam = 10.0**log_lam
    primal = ridge_delta_primal(jac_r, res_r, lam)
    torch.testing.assert_close(primal, ridge_delta_dual(jac_r, res_r, lam), rtol=1e-7,
                               atol=1e-9)
    two, _ = forget_delta_two_solve(jac_r, res_r, jac_f, res_f, lam, lam, "primal")
    block, block_retain = forget_delta_block(jac_r, res_r, jac_f, res_f, lam)
    torch.testing.assert_close(block, two, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(block_retain, primal, rtol=1e-6, atol=1e-8)


def test_ridge_delta_primal_solves_the_regularised_least_squares():
    # Independent check of the closed form: the gradient of
    # 1/2 ||J d - r||^2 + lam/2 ||d||^2 vanishes at d = (J^T J + lam I)^-1 J^T r.
    gen = torch.Generator().manual_seed(3)
    jac, res, lam = torch.randn(9, 4, generator=gen, dtype=F64), torch.randn(9, generator=gen,
                                                                            dtype=F64), 0.7
    d = ridge_delta_primal(jac, res, lam)
    torch.testing.assert_close(jac.T @ (jac @ d - res) + lam * d, torch.zeros(4, dtype=F64),
                               atol=1e-12, rtol=0)


def test_cross_entropy_residual_moves_the_linear_model_toward_the_labels():
    model, w0, x, y = cnn_problem()
    point = {k: v for k, v in w0.items() if k in dict(model.named_parameters())}
    jac, logits = parameter_jacobian(model, x, point, return_logits=True)
    res = residual(logits, y, "ce")
    torch.testing.assert_close(res.sum(dim=1), torch.zeros(len(x), dtype=F64), atol=1e-6,
                               rtol=0)  # onehot - softmax sums to zero per sample
    assert torch.all(res[torch.arange(len(y)), y] > 0)  # true class pushed up
    rows = jac.reshape(-1, jac.shape[2]).to(F64)
    delta = ridge_delta_primal(rows, res.reshape(-1), 0.5)
    step = (rows @ delta).reshape(logits.shape)

    def ce(z):
        return torch.nn.functional.cross_entropy(z, y).item()

    base = ce(logits.to(F64))
    assert ce(logits.to(F64) + 1e-2 * step) < base  # toward the labels
    assert ce(logits.to(F64) - 1e-2 * step) > base  # the opposite sign would move away


def test_trapezium_scale_matches_its_closed_form_and_is_three_on_a_linear_model():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        delta, trained, lin_retain = (torch.randn(7, generator=gen, dtype=F64) for _ in range(3))
        error = trained - lin_retain
        closed = 1 + 2 * abs(float(delta @ error)) / float(delta @ delta)
        assert trapezium_scale(delta, trained, lin_retain) == pytest.approx(closed, rel=1e-12)
    # Exactly linear: w(D) = w_lin(D), so e = w(D) - w_lin(D_r) = -delta and s = 3.
    w_lin_full = torch.randn(7, generator=gen, dtype=F64)
    assert trapezium_scale(delta, w_lin_full, w_lin_full + delta) == pytest.approx(3.0)


# ------------------------------------------------------------------------------ NTKState ----


@pytest.mark.parametrize("method", ["woodbury", "cholesky"])
def test_state_downdate_equals_fresh_computation_on_retain_set(method):
    model, w0, x, y = cnn_problem()
    state = NTKState(params="bn", weight_decay=0.01, chunk_size=7).fit(model, w0, x, y)
    unlearned, info = state.forget(model, x[:3], y[:3], method=method)
    assert info["downdate"] == method
    _, fresh = ntk_unlearn(model, w0, x[3:], y[3:], x[:3], y[:3], params="bn",
                           weight_decay=0.01, solver="primal")
    for name in fresh["delta"]:
        torch.testing.assert_close(info["delta"][name], fresh["delta"][name], rtol=1e-5,
                                   atol=1e-7)
    assert set(info["timings"]) == {"one_off", "per_request"}
    assert info["timings"]["one_off"]["total"] > 0 and info["timings"]["per_request"]["total"] > 0


def test_sequential_requests_and_save_load_equal_one_shot_forgetting(tmp_path):
    model, w0, x, y = cnn_problem()
    state = NTKState(params="bn", weight_decay=0.01).fit(model, w0, x, y)
    step1, _ = state.forget(model, x[:2], y[:2], method="woodbury")
    path = state.save(tmp_path / "ntk_state.safetensors")
    reloaded = NTKState.load(path)
    assert reloaded.n_samples_ == len(x) - 2 and reloaded.removed_jacobian_.shape[0] == 2 * 4
    step2, _ = reloaded.forget(step1, x[2:5], y[2:5], method="woodbury")
    # Two requests ({0,1} then {2,3,4}) land where one request for {0..4} lands.
    one_shot, _ = ntk_unlearn(model, w0, x[5:], y[5:], x[:5], y[:5], params="bn",
                              weight_decay=0.01, solver="primal")
    for (name, a), b in zip(step2.named_parameters(), one_shot.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_state_load_rejects_a_foreign_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ntk.ArtifactError, match="not a privkit NTK state"):
        NTKState.load(path)


def test_state_refuses_to_forget_everything():
    model, w0, x, y = cnn_problem()
    state = NTKState(params="bn", weight_decay=0.01).fit(model, w0, x[:4], y[:4])
    with pytest.raises(ConfigError, match="all the data"):
        state.forget(model, x[:4], y[:4])


# --------------------------------------------------------------------------- memory guard ----


def test_memory_estimate_of_dual_includes_the_analytic_jacobian_bound():
    est = estimate_memory(100, 10, 5000, "dual", chunk_size=8)
    assert est["jacobian_full"] == 100 * 10 * 5000 * 8
    assert est["total"] == est["jacobian_chunk"] + est["jacobian_full"] + est["system"]
    assert estimate_memory(100, 10, 5000, "primal", 8)["jacobian_full"] == 0


def test_memory_guard_refuses_before_allocating_and_offers_the_dual(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 60), nn.ReLU(), nn.Linear(60, 3))  # P = 3243
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(20, 50), torch.randint(0, 3, (20,))

    def no_jacobians(*args, **kwargs):
        raise AssertionError("the guard must refuse before any Jacobian is computed")

    monkeypatch.setattr(ntk, "iter_jacobian_chunks", no_jacobians)
    budget = 50 * 1024**2  # primal needs 5 P^2 * 8 ~ 400 MiB; dual ~ 2 MiB
    with pytest.raises(ResourceError, match=r"--solver primal.*would fit: --solver dual"):
        ntk_unlearn(model, w0, x[3:], y[3:], x[:3], y[:3], solver="primal",
                    max_memory_bytes=budget)


def test_memory_guard_suggests_fewer_parameters_when_no_solver_fits():
    model, w0, x, y = cnn_problem()
    # Full parameters: P = 472, N C = 96; budget below both solvers but above --params bn's.
    p_all = sum(p.numel() for p in model.parameters())
    n, c = len(x), 4
    # the guard sizes the layer outputs from one sample; the advice for fewer parameters reuses them
    act = activation_footprint(model, dict(model.named_parameters()), x)
    assert act["total"] >= act["largest"] > 0 and act["selected"] > 0
    need_all = min(estimate_memory(n, c, p_all, s, 4, activations=act)["total"] for s in ("primal", "dual"))
    need_bn = min(estimate_memory(n, c, 442, s, 4, activations=act)["total"] for s in ("primal", "dual"))
    assert need_bn < need_all
    with pytest.raises(ResourceError, match=r"--params bn --solver dual \(P=442"):
        ntk_unlearn(model, w0, x[4:], y[4:], x[:4], y[:4], params="all", chunk_size=4,
                    max_memory_bytes=(need_bn + need_all) // 2)


# ----------------------------------------------------------------------------- bad input ----


def test_bad_inputs_are_one_line_config_errors():
    model, w0, x, y = cnn_problem()
    with pytest.raises(ConfigError, match="forget set is empty"):
        ntk_unlearn(model, w0, x, y, x[:0], y[:0])
    with pytest.raises(ConfigError, match="retain set empty"):
        ntk_unlearn(model, w0, x[:0], y[:0], x, y)
    with pytest.raises(ConfigError, match="weight_decay must be > 0"):
        ntk_unlearn(model, w0, x[4:], y[4:], x[:4], y[:4], weight_decay=0.0)
    with pytest.raises(ConfigError, match="w0 has no entry"):
        ntk_unlearn(model, {}, x[4:], y[4:], x[:4], y[:4])
    with pytest.raises(ConfigError, match="outside the model's 4 classes"):
        ntk_unlearn(model, w0, x[4:], y[4:] + 10, x[:4], y[:4])
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    mlp_w0 = {k: v.detach().clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ConfigError, match="has no BN or prompt parameters"):
        ntk_unlearn(mlp, mlp_w0, x[4:], y[4:], x[:4], y[:4], params="bn")


def test_flat_parameter_order_matches_the_jacobian_columns():
    # The update is unflattened in the order of the Jacobian's P axis: a finite-difference
    # step on flat entry p (via unflatten_parameters) changes the logits by J[:, :, p] * eps.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=F64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac, logits = parameter_jacobian(model, x, params, return_logits=True)
    flat = flatten_parameters(params)
    eps = 1e-6
    for p in (0, 7, 20, 27, 40):
        bumped = flat.clone()
        bumped[p] += eps
        point = unflatten_parameters(bumped, params)
        moved = torch.func.functional_call(model, point, (x,))
        torch.testing.assert_close((moved - logits) / eps, jac[:, :, p], rtol=1e-4, atol=1e-6)
