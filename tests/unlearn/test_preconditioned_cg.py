"""The one preconditioned-CG loop (kept-state downdates and linearised Newton steps) against a direct solve."""

from __future__ import annotations

import pytest
import torch

from privkit.unlearn.ntk import preconditioned_cg


def _system(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    matrix = a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)
    return matrix, torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("preconditioned_norm", [False, True])
@pytest.mark.parametrize("with_start", [False, True])
def test_converges_to_the_direct_solution(preconditioned_norm, with_start):
    matrix, rhs = _system()
    diag = matrix.diagonal()
    start = rhs / diag if with_start else None
    solution, iterations, converged = preconditioned_cg(lambda v: matrix @ v, rhs, lambda r: r / diag, 1e-12, 200,
                                                        start=start, preconditioned_norm=preconditioned_norm)
    assert converged and 0 < iterations <= 200
    torch.testing.assert_close(solution, torch.linalg.solve(matrix, rhs), rtol=1e-8, atol=1e-10)


def test_an_exact_preconditioner_needs_one_step_and_a_short_budget_is_reported_unconverged():
    matrix, rhs = _system()
    inverse = torch.linalg.inv(matrix)
    _, iterations, converged = preconditioned_cg(lambda v: matrix @ v, rhs, lambda r: inverse @ r, 1e-10, 50)
    assert converged and iterations == 1
    _, iterations, converged = preconditioned_cg(lambda v: matrix @ v, rhs, lambda r: r, 1e-14, 3)
    assert not converged and iterations == 3
