"""Fast-NTK requests with only the Gauss-Newton directions that matter (``rank_tol``).

References: the full per-sample Jacobian from the per-sample loop (projected rows must be V_i J_i),
the dense Gauss-Newton matrix diag(p) - pp^T (the factor must reproduce it), and the exact downdate
(``rank_tol=0``, every direction) for the truncated one, whose change must stay within the proven
bound and, at the default tolerance, within 1e-6 relative.
"""

from __future__ import annotations

import pytest
import torch

from privkit.errors import ConfigError
from privkit.unlearn.jacobian import (
    flatten_parameters,
    iter_jacobian_chunks,
    per_sample_loop_jacobian,
    select_parameters,
)
from privkit.unlearn.ntk import DEFAULT_GGN_RANK_TOL, WEIGHTING_FACTORS, NTKState, ntk_unlearn
from bn_cnn import bn_cnn

F64 = torch.float64


def _bn_cnn(seed: int = 0, n_classes: int = 6, dtype: torch.dtype = F64):
    return bn_cnn(seed, n_classes=n_classes, n=30, dtype=dtype, head_scale=6.0)


@pytest.mark.parametrize("mode", ["hooks", "rev"])
def test_projected_rows_are_vector_jacobian_products(mode):
    model, _, x, _ = _bn_cnn()
    params = {k: v.detach() for k, v in select_parameters(model, "bn").items()}
    vectors = torch.randn(len(x), 3, 6, dtype=F64, generator=torch.Generator().manual_seed(4))
    rows = torch.cat([chunk for _, chunk, _ in iter_jacobian_chunks(
        model, x, params, chunk_size=7, mode=mode,
        project=lambda logits, start: vectors[start:start + logits.shape[0]])])
    full = per_sample_loop_jacobian(model, x, params)
    torch.testing.assert_close(rows, torch.einsum("nkc,ncp->nkp", vectors, full), rtol=1e-10, atol=1e-10)


def test_projection_of_the_wrong_shape_is_a_config_error():
    model, _, x, _ = _bn_cnn()
    with pytest.raises(ConfigError, match="project returned shape"):
        list(iter_jacobian_chunks(model, x, select_parameters(model, "bn"), chunk_size=7,
                                  project=lambda logits, start: logits))


def test_gauss_newton_factor_reproduces_the_softmax_hessian_and_respects_the_budget():
    logits = torch.randn(9, 7, dtype=F64, generator=torch.Generator().manual_seed(1)) * 4
    prob = torch.softmax(logits, 1)
    hessian = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    factor = WEIGHTING_FACTORS["ggn"]
    exact = factor(logits, "ce", torch.zeros(9, dtype=F64))
    torch.testing.assert_close(exact.transpose(1, 2) @ exact, hessian, rtol=0, atol=1e-14)
    assert exact.shape[1] <= 7
    budget = torch.full((9,), 1e-3, dtype=F64)
    cut = factor(logits, "ce", budget)
    assert cut.shape[1] < exact.shape[1]
    remainder = hessian - cut.transpose(1, 2) @ cut
    eig = torch.linalg.eigvalsh(remainder)
    assert float(eig.min()) > -1e-14                              # what is dropped is PSD
    assert bool((eig.clamp(min=0).sum(1) <= budget + 1e-14).all())  # and sums to within the budget


def _state(model, w0, x, y):
    point = {k: v.detach().clone() for k, v in model.named_parameters()}
    return NTKState(params="bn", weight_decay=0.01, weighting="ggn", chunk_size=8).fit(
        model, w0, x, y, linearise_at=point), point


def test_rank_tol_zero_is_the_exact_ggn_downdate_of_the_one_shot_step():
    model, w0, x, y = _bn_cnn()
    state, point = _state(model, w0, x, y)
    assert state.jacobian_sq_norm_ > 0
    _, info = state.forget(model, x[:5], y[:5], commit=False, rank_tol=0.0)
    assert info["rank_tol"] == 0.0 and info["update_change_bound"] == 0.0
    _, fresh = ntk_unlearn(model, w0, x[5:], y[5:], x[:5], y[:5], params="bn", weight_decay=0.01,
                           linearise_at=point, weighting="ggn")
    torch.testing.assert_close(flatten_parameters(info["delta"], F64), flatten_parameters(fresh["delta"], F64),
                               rtol=1e-9, atol=1e-12)


def test_dropped_directions_stay_within_the_bound_and_the_default_within_1e_6():
    model, w0, x, y = _bn_cnn()
    state, _ = _state(model, w0, x, y)
    _, exact = state.forget(model, x[:6], y[:6], commit=False, rank_tol=0.0)
    reference = flatten_parameters(exact["delta"], F64)
    changes = {}
    for tol in (DEFAULT_GGN_RANK_TOL, 1e-2, 0.3):
        _, info = state.forget(model, x[:6], y[:6], commit=False, rank_tol=tol)
        change = float((flatten_parameters(info["delta"], F64) - reference).norm() / reference.norm())
        assert change <= info["update_change_bound"]
        changes[tol] = (change, info["rows"])
    assert changes[DEFAULT_GGN_RANK_TOL][0] < 1e-6
    # a loose tolerance really drops rows (fewer backward passes and a smaller downdate)
    assert changes[0.3][1] < exact["rows"] <= exact["rows_full"]
    assert changes[0.3][0] > 0


def test_rank_tol_is_validated_and_survives_save(tmp_path):
    model, w0, x, y = _bn_cnn()
    state, _ = _state(model, w0, x, y)
    with pytest.raises(ConfigError, match="rank_tol"):
        state.forget(model, x[:2], y[:2], rank_tol=-1.0)
    reloaded = NTKState.load(state.save(tmp_path / "state.safetensors"))
    assert reloaded.jacobian_sq_norm_ == pytest.approx(state.jacobian_sq_norm_)
    _, a = state.forget(model, x[:4], y[:4], commit=False, rank_tol=1e-2)
    _, b = reloaded.forget(model, x[:4], y[:4], commit=False, rank_tol=1e-2)
    assert a["rows"] == b["rows"]
    torch.testing.assert_close(flatten_parameters(a["delta"], F64), flatten_parameters(b["delta"], F64))



def test_conjugate_gradient_downdate_equals_the_direct_solves_also_after_a_committed_request():
    model, w0, x, y = _bn_cnn()  # float64, so the steps compare at float64 precision
    state, _ = _state(model, w0, x, y)
    state.forget(model, x[:3], y[:3], commit=True, rank_tol=0.0)  # rows removed since the factorisation
    steps = {}
    for method in ("cg", "woodbury", "cholesky"):
        _, info = state.forget(model, x[3:9], y[3:9], method=method, commit=False, rank_tol=0.0)
        assert info["downdate"] == method
        steps[method] = flatten_parameters(info["delta"], F64)
        if method == "cg":
            # at most m + 1 distinct eigenvalues in the preconditioned system: m rows removed in all
            assert 0 < info["cg_iterations"] <= state.removed_jacobian_.shape[0] + info["rows"] + 3
    assert steps["cholesky"].abs().max() > 1e-4
    torch.testing.assert_close(steps["cg"], steps["cholesky"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(steps["woodbury"], steps["cholesky"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [-0.1, 1.0, "small", True])
def test_fast_ntk_refuses_a_bad_ggn_rank_tol_before_it_runs(bad):
    from privkit.unlearn import get_unlearner

    model, _, _, _ = _bn_cnn()
    with pytest.raises(ConfigError, match="ggn_rank_tol"):
        get_unlearner("fast-ntk", ggn_rank_tol=bad).check(model, None)
