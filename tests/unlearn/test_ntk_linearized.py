"""The exact minimiser of the linearised cross-entropy (privkit.unlearn.ntk_linearized).

References are independent: L-BFGS (torch.optim) on the same objective written with autograd, the
gradient and Hessian-vector product from autograd, and the one-step Fast-NTK update of
privkit.unlearn.ntk (the first Newton step of the same objective).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from privkit.errors import ConfigError
from privkit.unlearn.jacobian import flatten_parameters
from privkit.unlearn.ntk import ntk_unlearn
from privkit.unlearn.ntk_linearized import (LinearisedCE, linearised_forget_delta, minimise_linearised_ce,
                                            one_step_preconditioner)
from bn_cnn import bn_cnn

F64 = torch.float64


def _problem(seed=0, n=30, c=4, p=12, lam=0.3, scale=2.0):
    """A linear-softmax model z_i + J_i delta with random J, logits, labels and penalty offset."""
    g = torch.Generator().manual_seed(seed)
    jac = scale * torch.randn(n, c, p, generator=g, dtype=F64)
    logits = torch.randn(n, c, generator=g, dtype=F64)
    y = torch.randint(0, c, (n,), generator=g)
    offset = 0.5 * torch.randn(p, generator=g, dtype=F64)
    return LinearisedCE(jac, logits, y, offset, lam)


def _autograd_value(problem, delta):
    z = problem.logits + torch.einsum("ncp,p->nc", problem.jac, delta)
    return F.cross_entropy(z, problem.y, reduction="sum") + 0.5 * problem.lam * ((problem.offset + delta) ** 2).sum()


def _lbfgs(problem):
    delta = torch.zeros(problem.n_params, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([delta], lr=1, max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = _autograd_value(problem, delta)
        value.backward()
        return value

    opt.step(closure)
    return delta.detach()


def test_gradient_and_hessian_vector_product_match_autograd():
    problem = _problem()
    delta = 0.1 * torch.randn(problem.n_params, dtype=F64)
    v = torch.randn(problem.n_params, dtype=F64)
    prob = torch.softmax(problem.logits + problem.jvp(delta), dim=1)
    d = delta.clone().requires_grad_(True)
    grad = torch.autograd.grad(_autograd_value(problem, d), d, create_graph=True)[0]
    hv = torch.autograd.grad(grad @ v, d)[0]
    assert torch.allclose(problem.gradient(delta, prob), grad.detach(), rtol=1e-10, atol=1e-10)
    assert torch.allclose(problem.hessian_vector(prob, v), hv, rtol=1e-10, atol=1e-10)
    assert problem.value(delta) == pytest.approx(float(_autograd_value(problem, delta)), rel=1e-12)


@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_newton_cg_reaches_the_lbfgs_optimum_of_a_linear_softmax_model(seed, preconditioned):
    # Phi is strictly convex, so both solvers must find the same unique minimiser; scale=2 makes the
    # logits move far (probabilities re-weight a lot), where one Newton step is clearly not enough.
    problem = _problem(seed)
    reference = _lbfgs(problem)
    solution = minimise_linearised_ce(problem, one_step_preconditioner(problem) if preconditioned else None,
                                      grad_tol=1e-12)
    assert solution.converged
    assert torch.allclose(solution.delta, reference, rtol=0, atol=1e-6)
    assert solution.value == pytest.approx(float(_autograd_value(problem, reference)), rel=1e-10)
    assert solution.values == sorted(solution.values, reverse=True)  # monotone (line search)
    one_step = minimise_linearised_ce(problem, max_newton=1)
    assert float((one_step.delta - reference).norm()) > 1e-2 * float(reference.norm())


def test_the_preconditioner_is_the_one_step_system():
    # (J^T W(0) J + lam I) applied to its preconditioner's output gives the input back
    problem = _problem(3)
    precondition = one_step_preconditioner(problem)
    prob = torch.softmax(problem.logits, dim=1)
    v = torch.randn(problem.n_params, dtype=F64)
    assert torch.allclose(problem.hessian_vector(prob, precondition(v)), v, rtol=1e-10, atol=1e-10)


def test_first_exact_newton_step_is_the_fast_ntk_step_on_a_bn_cnn():
    # On a real network (BN-affine + head, linearised at w*) the first Newton step of Phi_S with an
    # exact inner solve is the one-step Fast-NTK delta_S of privkit.unlearn.ntk, so with a single
    # Newton iteration on both sets the update equals ntk_unlearn's (GGN weighting, at w*).
    model, w0, x, y = bn_cnn(seed=0, n=24, dtype=F64)
    wd = 0.02
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, info = ntk_unlearn(model, w0, x[6:], y[6:], x[:6], y[:6], params="bn", weight_decay=wd,
                          linearise_at=trained, weighting="ggn")
    one_step, lin_info = linearised_forget_delta(model, w0, x[6:], y[6:], x[:6], y[:6], params="bn",
                                                 weight_decay=wd, linearise_at=trained, max_newton=1,
                                                 grad_tol=0.0)
    expected = flatten_parameters(info["delta"], F64)
    got = flatten_parameters(one_step, F64)
    assert lin_info["newton_iterations"] == {"retain": 1, "full": 1}
    # the preconditioner is the exact one-step inverse, so one CG iteration is exact
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9)
    # the converged update goes further than the one step, and solves the linearised problem
    full, full_info = linearised_forget_delta(model, w0, x[6:], y[6:], x[:6], y[:6], params="bn",
                                              weight_decay=wd, linearise_at=trained, grad_tol=1e-10)
    assert full_info["converged"]
    assert float((flatten_parameters(full, F64) - expected).norm()) > 1e-3 * float(expected.norm())


def test_bad_inputs_raise_config_errors():
    problem = _problem()
    with pytest.raises(ConfigError, match="lam must be > 0"):
        LinearisedCE(problem.jac, problem.logits, problem.y, problem.offset, 0.0)
    with pytest.raises(ConfigError, match="labels"):
        LinearisedCE(problem.jac, problem.logits, problem.y[:-1], problem.offset, 1.0)
    with pytest.raises(ConfigError, match=r"lie in \[0, 3\]"):
        LinearisedCE(problem.jac, problem.logits, problem.y + 10, problem.offset, 1.0)
    with pytest.raises(ConfigError, match="offset"):
        LinearisedCE(problem.jac, problem.logits, problem.y, problem.offset[:-1], 1.0)
    with pytest.raises(ConfigError, match="max_newton"):
        minimise_linearised_ce(problem, max_newton=0)


def _state_setup():
    model, w0, x, y = bn_cnn(seed=1, n=30, dtype=torch.float32)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, w0, x, y, trained, torch.arange(100, 130)


def test_kept_state_request_equals_the_one_shot_update_and_chains(tmp_path):
    from privkit.unlearn.ntk_linearized import LinearisedState

    model, w0, x, y, trained, ids = _state_setup()
    wd = 0.02
    state = LinearisedState("bn", wd, grad_tol=1e-6).fit(model, w0, x, y, ids, linearise_at=trained)
    state.save(tmp_path / "lin.safetensors")
    state = LinearisedState.load(tmp_path / "lin.safetensors")
    first, second = [0, 3, 4], [10, 11]
    keep = torch.ones(30, dtype=torch.bool)
    keep[first] = False
    expected, _ = linearised_forget_delta(model, w0, x[keep], y[keep], x[~keep], y[~keep], params="bn",
                                          weight_decay=wd, linearise_at=trained, grad_tol=1e-9)
    got, info = state.forget(ids[first].numpy(), commit=True)
    assert info["converged"]
    # float32 Jacobian products in the state, float64 in the one-shot reference
    assert torch.allclose(got, flatten_parameters(expected, F64), rtol=1e-4, atol=1e-5)
    # after commit the state is over D_r: the next request equals one request for the union
    union = LinearisedState("bn", wd, grad_tol=1e-6).fit(model, w0, x, y, ids, linearise_at=trained)
    both, _ = union.forget(ids[first + second].numpy())
    chained, _ = state.forget(ids[second].numpy())
    assert torch.allclose(got + chained, both, rtol=1e-6, atol=1e-7)


def test_kept_state_refuses_bad_requests_and_foreign_files(tmp_path):
    from privkit.errors import ArtifactError
    from privkit.unlearn.ntk_linearized import LinearisedState

    model, w0, x, y, trained, ids = _state_setup()
    state = LinearisedState("bn", 0.02).fit(model, w0, x, y, ids, linearise_at=trained)
    with pytest.raises(ConfigError, match="empty"):
        state.forget([])
    with pytest.raises(ConfigError, match=r"forget ids \[7\] are not samples"):
        state.forget([7, 100])
    with pytest.raises(ConfigError, match="all the data"):
        state.forget(ids.numpy())
    with pytest.raises(ConfigError, match="repeat"):
        LinearisedState("bn", 0.02).fit(model, w0, x, y, torch.zeros(30, dtype=torch.long))
    (tmp_path / "junk.safetensors").write_bytes(b"not a state")
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        LinearisedState.load(tmp_path / "junk.safetensors")
    # the right format name but a metadata block missing its keys, or a Jacobian that is not 3-D
    import json

    from safetensors.torch import save_file

    good = {"w0", "point", "delta", "loss_gradient"}
    tensors = {k: torch.zeros(4) for k in good} | {"jac": torch.zeros(2, 3, 4), "logits": torch.zeros(2, 3),
                                                  "y": torch.zeros(2), "ids": torch.zeros(2)}
    metadata = {LinearisedState._METADATA_KEY: json.dumps({"format": LinearisedState.FORMAT})}
    save_file(tensors, str(tmp_path / "keys.safetensors"), metadata=metadata)
    with pytest.raises(ArtifactError, match="malformed linearised NTK state"):
        LinearisedState.load(tmp_path / "keys.safetensors")
    save_file(tensors | {"jac": torch.zeros(6, 4)}, str(tmp_path / "flat.safetensors"), metadata=metadata)
    with pytest.raises(ArtifactError, match="malformed linearised NTK state"):
        LinearisedState.load(tmp_path / "flat.safetensors")


def test_run_folder_state_is_checksum_verified(tmp_path):
    from privkit.errors import ArtifactError
    from privkit.unlearn.ntk_linearized import LinearisedState, load_linearised_state, save_linearised_state

    model, w0, x, y, trained, ids = _state_setup()
    state = LinearisedState("bn", 0.02).fit(model, w0, x, y, ids, linearise_at=trained)
    meta = save_linearised_state(tmp_path, state)
    assert load_linearised_state(tmp_path, {}) is None
    loaded = load_linearised_state(tmp_path, meta)
    assert torch.equal(loaded.jac_, state.jac_) and torch.equal(loaded.delta_, state.delta_)
    path = tmp_path / meta["ntk_linearised_file"]
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte in the data
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="does not match the checksum"):
        load_linearised_state(tmp_path, meta)


def test_one_step_plus_full_subspace_newton_equals_the_exact_minimiser(tmp_path):
    # With every eigenvector of G kept (subspace_tol=0) the subspace is all of R^P, so "one step +
    # subspace Newton" must land on the exact minimiser; the one step itself, from the kept NTK state
    # with the forget rows of the stored Jacobian, must be the Fast-NTK step of ntk_unlearn.
    from privkit.unlearn.ntk import NTKState
    from privkit.unlearn.ntk_linearized import LinearisedState, one_step_from_ntk_state

    model, w0, x, y, trained, ids = _state_setup()
    wd = 0.02
    ntk_state = NTKState(params="bn", weight_decay=wd, weighting="ggn").fit(model, w0, x, y, linearise_at=trained)
    lin = LinearisedState("bn", wd, grad_tol=1e-6, subspace_tol=0.0).fit(
        model, w0, x, y, ids, linearise_at=trained, eigvals=ntk_state.eigvals_, eigvecs=ntk_state.eigvecs_)
    lin.save(tmp_path / "lin.safetensors")
    lin = LinearisedState.load(tmp_path / "lin.safetensors")
    assert lin.basis_.shape[1] == lin.point_.numel()
    first = [2, 7, 8, 20]
    keep = torch.ones(30, dtype=torch.bool)
    keep[first] = False
    one_step = one_step_from_ntk_state(ntk_state, lin, ids[first].numpy())
    _, info = ntk_unlearn(model, w0, x[keep], y[keep], x[~keep], y[~keep], params="bn", weight_decay=wd,
                          linearise_at=trained, weighting="ggn")
    # float32 stored Jacobian rows against the float32 network's own
    assert torch.allclose(one_step - ntk_state.delta_, flatten_parameters(info["delta"], F64), rtol=1e-4, atol=1e-6)
    exact, exact_info = lin.forget(ids[first].numpy())
    sub, sub_info = lin.forget(ids[first].numpy(), one_step=one_step)
    assert exact_info["solve"] == "exact" and sub_info["solve"] == "one step + subspace Newton"
    assert sub_info["converged"] and exact_info["converged"]
    assert torch.allclose(sub, exact, rtol=1e-5, atol=1e-6)
    assert sub_info["subspace_gradient_ratio"] <= 1e-6  # accepted without the exact polish
    # a subspace too small for this request fails the a-posteriori check and is finished by the
    # exact solve: same answer as the exact minimiser, and the info says so
    small = LinearisedState("bn", wd, grad_tol=1e-6, subspace_tol=0.5).fit(
        model, w0, x, y, ids, linearise_at=trained, eigvals=ntk_state.eigvals_, eigvecs=ntk_state.eigvecs_)
    polished, small_info = small.forget(ids[first].numpy(), one_step=one_step)
    assert small.basis_.shape[1] < lin.basis_.shape[1]
    assert small_info["subspace_gradient_ratio"] > 1e-6
    assert small_info["solve"] == "one step + subspace Newton + exact Newton-CG" and small_info["converged"]
    assert torch.allclose(polished, exact, rtol=1e-5, atol=1e-6)
