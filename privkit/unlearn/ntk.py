"""NTK forgetting (Golatkar et al., ECCV 2020) and Fast-NTK (Li et al., arXiv 2312.14923).

Linearise the network at the weights :math:`w_0` it was fine-tuned from,

.. math::

    f_{lin}(x; w) = f_0(x) + J(x)\\,(w - w_0), \\qquad f_0(x) = f(x; w_0),

and fit the linear model to a data set :math:`D` with the squared loss plus the
:math:`w_0`-penalty of the fine-tuning recipe,
:math:`\\tfrac12\\sum_{i\\in D}\\lVert f_{lin}(x_i; w) - y_i\\rVert^2 + \\tfrac\\lambda2\\lVert w-w_0\\rVert^2`.
With :math:`J_D \\in \\mathbb{R}^{NC\\times P}` the stacked Jacobians and :math:`r_D` the stacked
residuals this is ridge regression with the closed form

.. math::

    w_{lin}(D) - w_0 = (J_D^T J_D + \\lambda I_P)^{-1} J_D^T r_D
                     = J_D^T (J_D J_D^T + \\lambda I_{NC})^{-1} r_D,

the *primal* (:math:`P\\times P`) and *dual* (:math:`NC\\times NC`) forms; this module solves
whichever is smaller. Forgetting :math:`D_f \\subset D` (retain set :math:`D_r = D\\setminus D_f`)
moves the trained weights by the change the linear model predicts,

.. math::

    w \\leftarrow w(D) + s\\,[\\,w_{lin}(D_r) - w_{lin}(D)\\,].

Recipe choices (documented because the paper, the notebook and the issue differ in notation):

* **Residual.** ``loss="mse"``: :math:`r = y - f_0(x)` with :math:`y` one-hot (or the float
  targets given). ``loss="ce"``: :math:`r = \\mathrm{onehot}(y) - \\mathrm{softmax}(f_0(x))`,
  the notebook's ``-(f0_minus_y)``. The sign makes the linear model move *toward* the labels:
  the first-order change of the cross-entropy along :math:`\\delta = w_{lin} - w_0` is
  :math:`(\\mathrm{softmax} - \\mathrm{onehot})^T J\\delta = -r^T J (J^TJ+\\lambda I)^{-1} J^T r \\le 0`.
* **Regulariser.** :math:`\\lambda = |S|\\cdot\\mathrm{weight\\_decay}` for the set :math:`S` being
  fitted (``lambda_scaling="per-set"``, as in the notebook: :math:`\\lambda_D = N\\,wd`,
  :math:`\\lambda_{D_r} = N_r\\,wd`), which is what a mean-loss fine-tuning recipe with penalty
  :math:`\\tfrac{wd}2\\lVert w-w_0\\rVert^2` retrained on :math:`D_r` gives. ``"fixed"`` uses
  :math:`\\lambda = N\\,wd` for both sets (needed by the dual Schur/block form).
* **Linearisation point.** By default Jacobians and :math:`f_0` are taken at :math:`w_0` for the
  selected parameters; the others (frozen in PEFT) and the buffers (BatchNorm statistics) are the
  model's. ``linearise_at=a`` takes them at another point, typically the trained weights
  :math:`w^* = w(D)` (the notebook, in practice, passes the trained model to its Jacobian loop).
  The penalty stays centred at :math:`w_0`, so the ridge problem in :math:`\\delta = w - a` is

  .. math::

      \\delta_S = w_{lin}(S) - a = (J_S^TWJ_S + \\lambda_S I)^{-1}\\,[\\,J_S^Tr_S(a) - \\lambda_S(a - w_0)\\,].

  At :math:`a = w^*` the bracket is minus the gradient of
  :math:`L_S(w) = \\sum_{i\\in S}\\ell_i(w) + \\tfrac{\\lambda_S}2\\lVert w-w_0\\rVert^2`, so
  :math:`\\delta_S` is one Gauss-Newton step on :math:`L_S` from :math:`w^*`;
  :math:`\\delta_D \\approx 0` when training reached the stationary point of :math:`L_D`, and the
  update :math:`\\delta_{D_r} - \\delta_D` is then the Newton/influence step toward retraining,
  exact for a linear model with the squared loss from any :math:`a` (see the tests).
* **Weighting** :math:`W` (``weighting``). ``"identity"``: the Gram matrix :math:`J^TJ` of the
  squared loss on the logits (the paper's form). ``"ggn"``: the generalised Gauss-Newton matrix
  :math:`J^TWJ` with :math:`W = \\mathrm{diag}(p) - pp^T`, the Hessian of the cross-entropy in
  the logits (:func:`weighted_rows`). With the CE residual only ``"ggn"`` is the curvature of the
  loss the model was trained with: for confidently classified samples :math:`W \\approx 0`,
  while the identity weighting overstates their curvature and shrinks the step.
* **Scale** :math:`s`: ``1.0`` or ``"trapezium"`` (:func:`trapezium_scale`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from privkit.errors import ArtifactError, ConfigError, ResourceError
from privkit.unlearn.jacobian import (
    DEFAULT_CHUNK_SIZE,
    flatten_parameters,
    iter_jacobian_chunks,
    select_parameters,
    unflatten_parameters,
)

__all__ = [
    "preconditioned_cg",
    "RESIDUALS",
    "SOLVERS",
    "register_residual",
    "register_solver",
    "residual",
    "weighted_rows",
    "WEIGHTING_FACTORS",
    "register_weighting_factor",
    "DEFAULT_GGN_RANK_TOL",
    "ridge_delta_primal",
    "ridge_delta_dual",
    "choose_solver",
    "forget_delta_two_solve",
    "forget_delta_block",
    "trapezium_scale",
    "available_memory_bytes",
    "estimate_memory",
    "activation_footprint",
    "check_memory",
    "ntk_unlearn",
    "NTKState",
]

SOLVE_DTYPE = torch.float64
#: Default ``rank_tol`` of :meth:`NTKState.forget`: the bound on the relative change of the
#: retain-set step :math:`\\delta_r` from dropping small Gauss-Newton directions (see there).
DEFAULT_GGN_RANK_TOL = 1e-6
_GIB = 1024.0**3

# --------------------------------------------------------------------------------------------
# Residuals r(f_0, y)
# --------------------------------------------------------------------------------------------

ResidualFn = Callable[[Tensor, Tensor], Tensor]
RESIDUALS: dict[str, ResidualFn] = {}


def register_residual(name: str) -> Callable[[ResidualFn], ResidualFn]:
    """Register ``fn(logits (N, C) float64, y) -> r (N, C)`` as the residual of loss ``name``."""

    def decorate(fn: ResidualFn) -> ResidualFn:
        RESIDUALS[name] = fn
        return fn

    return decorate


def _targets(logits: Tensor, y: Tensor) -> Tensor:
    """One-hot targets for integer labels, or the given ``(N, C)`` float targets."""
    n, n_classes = logits.shape
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        y = y.reshape(-1).long()
        if y.numel() != n:
            raise ConfigError(f"got {y.numel()} labels for {n} samples; pass one label per sample")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise ConfigError(
                f"label {int(y.max()) if int(y.max()) >= n_classes else int(y.min())} is outside "
                f"the model's {n_classes} classes; pass labels in [0, {n_classes - 1}]"
            )
        return torch.nn.functional.one_hot(y, n_classes).to(logits.dtype)
    if tuple(y.shape) != (n, n_classes):
        raise ConfigError(
            f"float targets have shape {tuple(y.shape)} but the logits have {(n, n_classes)}; "
            "pass integer labels or (N, C) targets"
        )
    return y.to(logits.dtype)


@register_residual("ce")
def _residual_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """:math:`r = \\mathrm{onehot}(y) - \\mathrm{softmax}(f_0)`: minus the CE gradient in logits."""
    return _targets(logits, y) - torch.softmax(logits, dim=1)


@register_residual("mse")
def _residual_squared(logits: Tensor, y: Tensor) -> Tensor:
    """:math:`r = y - f_0`: the squared-loss residual the linear model fits exactly."""
    return _targets(logits, y) - logits


def residual(logits: Tensor, y: Tensor, loss: str = "ce") -> Tensor:
    """Residual :math:`r` of ``loss`` at logits :math:`f_0` (float64, shape ``(N, C)``)."""
    try:
        fn = RESIDUALS[loss]
    except KeyError:
        raise ConfigError(f"unknown NTK loss {loss!r}; choose one of {sorted(RESIDUALS)}") from None
    return fn(logits.to(SOLVE_DTYPE), y)


# --------------------------------------------------------------------------------------------
# Curvature weighting W of the linearised loss: J^T W J = (M^T J)^T (M^T J) with M M^T = W
# --------------------------------------------------------------------------------------------

# One registry of weightings, in factor form: a weighting gives per sample V_i (K x C) with
# V_i^T V_i = W_i, and its rows of the Gram matrix are V_i J_i. Formed from a full Jacobian
# (weighted_rows) or without one, as K vector-Jacobian products per sample, so a weighting of
# low rank needs fewer backward passes (jacobian.iter_jacobian_chunks(project=...)).

FactorFn = Callable[[Tensor, str, Tensor], Tensor]
WEIGHTING_FACTORS: dict[str, FactorFn] = {}


def register_weighting_factor(name: str) -> Callable[[FactorFn], FactorFn]:
    """Register ``fn(logits (n, C) float64, loss, drop_budget (n,)) -> V (n, K, C)`` for ``name``.

    ``V_i`` has rows :math:`v_{ik}` with :math:`\\sum_k v_{ik}v_{ik}^T = W_i` up to directions
    whose eigenvalues of :math:`W_i` sum to at most ``drop_budget[i]``; zero rows pad samples
    that keep fewer than K directions.
    """

    def decorate(fn: FactorFn) -> FactorFn:
        WEIGHTING_FACTORS[name] = fn
        return fn

    return decorate


@register_weighting_factor("identity")
def _identity_factor(logits: Tensor, loss: str, drop_budget: Tensor) -> Tensor:
    """:math:`V_i = I_C`: every logit's row (nothing to drop: W = I has no small eigenvalues)."""
    n, n_classes = logits.shape
    return torch.eye(n_classes, dtype=logits.dtype, device=logits.device).expand(n, n_classes, n_classes)


@register_weighting_factor("ggn")
def _gauss_newton_factor(logits: Tensor, loss: str, drop_budget: Tensor) -> Tensor:
    """:math:`V_i = \\Lambda_i^{1/2}U_i^T` of :math:`W_i = U_i\\Lambda_iU_i^T = \\mathrm{diag}(p_i) - p_ip_i^T`.

    :math:`W_i` is PSD of rank at most :math:`C-1` (its null vector is :math:`\\mathbf 1`).
    Eigenvalues are dropped from the smallest up while their sum stays within
    ``drop_budget[i]`` (a budget of 0 keeps every positive one); the rest are kept, largest
    first. The rows :math:`V_iJ_i` then satisfy
    :math:`J_i^TW_iJ_i - (V_iJ_i)^T(V_iJ_i) = \\sum_{dropped} \\lambda_k J_i^Tu_ku_k^TJ_i`,
    whose norm is at most :math:`\\lVert J_i\\rVert_2^2` times the dropped sum.
    """
    if loss == "mse":
        return _identity_factor(logits, loss, drop_budget)
    prob = torch.softmax(logits, dim=1)
    weight = torch.diag_embed(prob) - prob.unsqueeze(2) * prob.unsqueeze(1)
    eigvals, eigvecs = torch.linalg.eigh(weight)                    # ascending
    eigvals = eigvals.clamp(min=0.0)                                # PSD; round-off can go below 0
    dropped = torch.cumsum(eigvals, dim=1) <= drop_budget.unsqueeze(1)
    scale = torch.where(dropped, torch.zeros_like(eigvals), eigvals.sqrt())
    factor = (scale.unsqueeze(2) * eigvecs.transpose(1, 2)).flip(1)  # largest first
    n_kept = max(int((~dropped).sum(dim=1).max()), 1)
    return factor[:, :n_kept]


def weighted_rows(jac: Tensor, logits: Tensor, loss: str = "ce", weighting: str = "identity") -> Tensor:
    """Rows :math:`V_iJ_i` (stacked, ``(n K, P)``) of the weighted Gram matrix :math:`\\sum_i J_i^TW_iJ_i`.

    ``jac`` is ``(n, C, P)``; the weighting is the registered factor (:func:`register_weighting_factor`)
    with nothing dropped, so ``rows.T @ rows`` equals :math:`\\sum_i J_i^TW_iJ_i` to round-off.
    """
    try:
        factor_fn = WEIGHTING_FACTORS[weighting]
    except KeyError:
        raise ConfigError(f"unknown NTK weighting {weighting!r}; choose one of {sorted(WEIGHTING_FACTORS)}") from None
    jac64, logits64 = jac.to(SOLVE_DTYPE), logits.to(SOLVE_DTYPE)
    if weighting == "identity":  # V_i = I: the rows are J itself (no product with an identity)
        return jac64.reshape(-1, jac64.shape[-1])
    factor = factor_fn(logits64, loss, torch.zeros(logits64.shape[0], dtype=SOLVE_DTYPE, device=logits64.device))
    return torch.einsum("nkc,ncp->nkp", factor, jac64).reshape(-1, jac64.shape[-1])


# --------------------------------------------------------------------------------------------
# Linear algebra (float64)
# --------------------------------------------------------------------------------------------

SolverFn = Callable[[Tensor, Tensor, float], Tensor]
SOLVERS: dict[str, SolverFn] = {}


def register_solver(name: str) -> Callable[[SolverFn], SolverFn]:
    """Register ``fn(J (M, P), r (M,), lam) -> w_lin - w_0 (P,)`` as ridge solver ``name``."""

    def decorate(fn: SolverFn) -> SolverFn:
        SOLVERS[name] = fn
        return fn

    return decorate


def preconditioned_cg(apply: Callable[[Tensor], Tensor], rhs: Tensor, precondition: Callable[[Tensor], Tensor],
                      tol: float, max_iter: int, start: Tensor | None = None,
                      preconditioned_norm: bool = False) -> tuple[Tensor, int, bool]:
    r"""Preconditioned conjugate gradients for an SPD operator; ``(solution, iterations, converged)``.

    Solves ``apply(z) = rhs`` from ``start`` (default 0) with the preconditioner :math:`M^{-1}` =
    ``precondition``. Stops once :math:`\lVert r\rVert \le` ``tol`` :math:`\lVert b\rVert`, or with
    ``preconditioned_norm`` once :math:`r^TM^{-1}r \le` ``tol``:math:`^2\, b^TM^{-1}b`. A direction
    of non-positive curvature (round-off on an SPD system) or ``max_iter`` products end it unconverged,
    with the best solution found so far.
    """
    solution = torch.zeros_like(rhs) if start is None else start.clone()
    res = rhs.clone() if start is None else rhs - apply(solution)
    pre = precondition(res)
    direction = pre.clone()
    res_pre = float(res @ pre)
    if preconditioned_norm:
        stop = tol ** 2 * float(rhs @ precondition(rhs))
    else:
        stop = tol * float(rhs.norm())
    for iteration in range(max_iter + 1):
        if (res_pre if preconditioned_norm else float(res.norm())) <= stop:
            return solution, iteration, True
        if iteration == max_iter:
            break
        applied = apply(direction)
        curvature = float(direction @ applied)
        if not curvature > 0:
            break
        step = res_pre / curvature
        solution.add_(direction, alpha=step)
        res.sub_(applied, alpha=step)
        pre = precondition(res)
        res_pre, previous = float(res @ pre), res_pre
        direction = pre + (res_pre / previous) * direction
    return solution, iteration, False


def _spd_solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``matrix @ z = rhs`` for symmetric positive definite ``matrix`` by Cholesky."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        # lambda > 0 makes the system positive definite in exact arithmetic; only severe
        # round-off gets here, and an LU solve is then the robust fallback.
        return torch.linalg.solve(matrix, rhs)
    if rhs.dim() == 1:
        return torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
    return torch.cholesky_solve(rhs, factor)


def _with_ridge(matrix: Tensor, lam: float) -> Tensor:
    out = matrix.clone()
    out.diagonal().add_(lam)
    return out


@register_solver("primal")
def ridge_delta_primal(jac: Tensor, res: Tensor, lam: float) -> Tensor:
    """:math:`w_{lin}-w_0 = (J^TJ+\\lambda I_P)^{-1}J^Tr`; cost :math:`O(MP^2 + P^3)`."""
    jac = jac.to(SOLVE_DTYPE)
    return _spd_solve(_with_ridge(jac.T @ jac, lam), jac.T @ res.to(SOLVE_DTYPE))


@register_solver("dual")
def ridge_delta_dual(jac: Tensor, res: Tensor, lam: float) -> Tensor:
    """:math:`w_{lin}-w_0 = J^T(JJ^T+\\lambda I_M)^{-1}r`; cost :math:`O(M^2P + M^3)`."""
    jac = jac.to(SOLVE_DTYPE)
    return jac.T @ _spd_solve(_with_ridge(jac @ jac.T, lam), res.to(SOLVE_DTYPE))


def choose_solver(n_rows: int, n_params: int, solver: str = "auto") -> str:
    """Pick ``primal`` (P x P system) when ``P <= NC`` else ``dual`` (NC x NC); validate names."""
    if solver == "auto":
        return "primal" if n_params <= n_rows else "dual"
    if solver not in SOLVERS and solver != "block":
        raise ConfigError(
            f"unknown NTK solver {solver!r}; choose 'auto', 'block' or one of {sorted(SOLVERS)}"
        )
    return solver


def _lambdas(weight_decay: float, n_total: int, n_retain: int, lambda_scaling: str
             ) -> tuple[float, float]:
    if lambda_scaling == "per-set":
        return weight_decay * n_total, weight_decay * n_retain
    if lambda_scaling == "fixed":
        return weight_decay * n_total, weight_decay * n_total
    raise ConfigError(f"unknown lambda_scaling {lambda_scaling!r}; choose 'per-set' or 'fixed'")


def forget_delta_two_solve(
    jac_retain: Tensor, res_retain: Tensor, jac_forget: Tensor, res_forget: Tensor,
    lam_full: float, lam_retain: float, solver: str = "auto",
) -> tuple[Tensor, Tensor]:
    """:math:`w_{lin}(D_r) - w_{lin}(D)` from two independent ridge solves.

    Returns ``(delta, w_lin(D_r) - w_0)``; rows of ``jac_*`` are (sample, logit) pairs.
    """
    n_rows = jac_retain.shape[0] + jac_forget.shape[0]
    name = choose_solver(n_rows, jac_retain.shape[1], solver)
    if name == "block":
        raise ConfigError("solver='block' is forget_delta_block; pick 'primal' or 'dual' here")
    solve = SOLVERS[name]
    full = solve(torch.cat([jac_retain, jac_forget]), torch.cat([res_retain, res_forget]),
                 lam_full)
    retain_only = solve(jac_retain, res_retain, lam_retain)
    return retain_only - full, retain_only


def forget_delta_block(
    jac_retain: Tensor, res_retain: Tensor, jac_forget: Tensor, res_forget: Tensor, lam: float,
) -> tuple[Tensor, Tensor]:
    """:math:`w_{lin}(D_r) - w_{lin}(D)` from the full-D dual system by eliminating the forget block.

    With :math:`K = J_DJ_D^T + \\lambda I`, :math:`M = K^{-1}` and :math:`\\alpha = M r_D`
    (so :math:`w_{lin}(D) - w_0 = J_D^T\\alpha`), the block-inverse identity
    :math:`(K_{rr})^{-1} = M_{rr} - M_{rf} M_{ff}^{-1} M_{fr}` gives the retain-only
    coefficients :math:`\\alpha'_r = \\alpha_r - M_{rf}M_{ff}^{-1}\\alpha_f` (and
    :math:`\\alpha'_f = 0`), hence

    .. math::

        w_{lin}(D_r) - w_{lin}(D) = -J_D^T\\, M_{:,f}\\, M_{ff}^{-1}\\, \\alpha_f .

    Only the forget columns of :math:`M` are needed: one factorisation of :math:`K` serves
    every forget set. Both systems must share :math:`\\lambda` (``lambda_scaling="fixed"``).
    Returns ``(delta, w_lin(D_r) - w_0)``.
    """
    jac = torch.cat([jac_retain, jac_forget]).to(SOLVE_DTYPE)
    res = torch.cat([res_retain, res_forget]).to(SOLVE_DTYPE)
    n_retain_rows = jac_retain.shape[0]
    kernel = _with_ridge(jac @ jac.T, lam)
    factor = torch.linalg.cholesky(kernel)
    alpha = torch.cholesky_solve(res.unsqueeze(1), factor).squeeze(1)
    selector = torch.zeros(kernel.shape[0], kernel.shape[0] - n_retain_rows, dtype=SOLVE_DTYPE)
    selector[n_retain_rows:] = torch.eye(kernel.shape[0] - n_retain_rows, dtype=SOLVE_DTYPE)
    inverse_forget_columns = torch.cholesky_solve(selector, factor)          # M[:, f]
    inverse_forget_block = inverse_forget_columns[n_retain_rows:]            # M[f, f]
    coefficient_change = -inverse_forget_columns @ _spd_solve(inverse_forget_block,
                                                              alpha[n_retain_rows:])
    delta = jac.T @ coefficient_change
    return delta, jac.T @ (alpha + coefficient_change)


def trapezium_scale(delta: Tensor, w_trained: Tensor, w_lin_retain: Tensor) -> float:
    """The reference notebook's "trapezium" correction of the step length.

    With :math:`\\Delta = w_{lin}(D_r) - w_{lin}(D)` and the prediction error
    :math:`e = w(D) - w_{lin}(D_r)` (notebook: ``m_pred_error``), the notebook sets
    :math:`\\cos\\theta = \\langle\\hat\\Delta, \\hat e\\rangle` and predicts the length of the
    real step as :math:`\\lVert\\Delta\\rVert + 2\\sin(\\theta - \\pi/2)\\lVert e\\rVert` when
    :math:`\\cos\\theta < 0` and :math:`\\lVert\\Delta\\rVert + 2\\cos\\theta\\lVert e\\rVert`
    otherwise. Both branches equal :math:`\\lVert\\Delta\\rVert + 2|\\langle\\hat\\Delta, e\\rangle|`,
    so

    .. math::

        s = 1 + 2\\,|\\langle \\Delta, e\\rangle| / \\lVert\\Delta\\rVert^2 \\ \\ge 1 .

    Our reading: :math:`w(D)`, :math:`w_{lin}(D)`, :math:`w_{lin}(D_r)` and the unknown
    :math:`w(D_r)` are taken as the corners of a trapezium whose parallel sides lie along
    :math:`\\Delta`; the part of the non-linear error along :math:`\\Delta`, counted on both
    sides, lengthens the step. It is a heuristic for non-linear networks: for an exactly
    linear model :math:`e = -\\Delta` and it gives :math:`s = 3`, so use ``scale=1`` there.
    """
    delta = delta.to(SOLVE_DTYPE)
    error = (w_trained.to(SOLVE_DTYPE) - w_lin_retain.to(SOLVE_DTYPE))
    delta_norm = float(torch.linalg.vector_norm(delta))
    error_norm = float(torch.linalg.vector_norm(error))
    if delta_norm == 0.0 or error_norm == 0.0:
        return 1.0
    inner = float(torch.dot(delta, error)) / (delta_norm * error_norm)
    inner = min(1.0, max(-1.0, inner))
    if inner < 0:
        angle = math.acos(inner) - math.pi / 2
        predicted_norm = delta_norm + 2 * math.sin(angle) * error_norm
    else:
        angle = math.acos(inner)
        predicted_norm = delta_norm + 2 * math.cos(angle) * error_norm
    return predicted_norm / delta_norm


# --------------------------------------------------------------------------------------------
# Memory guard
# --------------------------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation: ``MemAvailable`` from /proc/meminfo, else sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass  # not Linux or unreadable: fall through to sysconf
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def activation_footprint(model: nn.Module, point: Mapping[str, Tensor], sample: Tensor) -> dict[str, int]:
    """Bytes of layer outputs per sample, from one forward pass of one sample at ``point``.

    Returns ``total`` (every leaf module's output: what autograd keeps for the backward passes),
    ``largest`` (the biggest single output: a backward pass's transient buffer) and ``selected``
    (outputs of the modules that own the parameters in ``point``: the per-logit gradients the
    Jacobian holds for each of them). :func:`estimate_memory` turns these into the activation
    part of the working set.
    """
    from torch.func import functional_call

    owners = {name.rpartition(".")[0] for name in point}
    sizes = {"total": 0, "largest": 0, "selected": 0}
    handles = []

    def record(module_name):
        def hook(_module, _inputs, output):
            if isinstance(output, Tensor):
                n_bytes = output.numel() * output.element_size()
                sizes["total"] += n_bytes
                sizes["largest"] = max(sizes["largest"], n_bytes)
                if module_name in owners:
                    sizes["selected"] += n_bytes
        return hook

    for module_name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(record(module_name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            functional_call(model, {k: v.detach() for k, v in point.items()}, (sample[:1],))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


def estimate_memory(
    n_samples: int, n_classes: int, n_params: int, solver: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE, dtype: torch.dtype = torch.float32,
    activations: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Peak bytes of one NTK forgetting run, by component.

    Parameters
    ----------
    n_samples, n_classes, n_params : int
        :math:`N = |D|`, :math:`C`, :math:`P`.
    solver : {"primal", "dual", "block", "state"}
        ``primal`` streams Jacobian chunks into :math:`J^TJ` (never holds all of :math:`J`) and
        keeps about five :math:`P\\times P` float64 matrices (two accumulators, the system and its
        factor). ``dual``/``block`` hold the full float64 :math:`J` (:math:`NCP\\cdot 8` bytes, the
        analytic bound) and about four / three :math:`NC\\times NC` matrices. ``state``
        (:class:`NTKState`) keeps :math:`J^TJ`, its eigenvectors and one work matrix.
    chunk_size : int
        Samples per Jacobian chunk. A chunk entry costs about ``6 * itemsize + 16`` bytes:
        vmap's per-sample intermediates, the per-parameter and concatenated Jacobians in
        ``dtype``, the float64 copy and the transposed operand of the accumulation. The factor
        was calibrated against peak-RSS measurements in ``benchmarks/bench_ntk.py`` and errs
        on the high side, as a guard should.
    dtype : torch.dtype
        The model's dtype.
    activations : dict, optional
        Per-sample layer-output bytes from :func:`activation_footprint`. The Jacobian of a chunk of
        :math:`n` samples keeps the forward graph (:math:`n \\cdot` ``total``), the C per-logit
        gradients of the selected layers' outputs (:math:`nC \\cdot` ``selected``) and the
        transient buffers of C batched backward passes (:math:`2nC \\cdot` ``largest``). Without it
        the activation term is 0, which underestimates convolutional models with many classes.

    Returns
    -------
    dict
        ``jacobian_chunk``, ``activations``, ``jacobian_full``, ``system`` and ``total`` in bytes.
    """
    item = torch.empty((), dtype=dtype).element_size()
    rows = n_samples * n_classes
    chunk = min(chunk_size, n_samples) * n_classes * n_params * (6 * item + 16)
    if solver == "primal":
        # five, not four: the measured peak of a P = 3818 request was 4.9 P^2 * 8 bytes (the solve's
        # right-hand sides and transposed copies), and a guard must err on the high side
        full, system = 0, 5 * n_params * n_params * 8
    elif solver == "state":
        full, system = 0, 3 * n_params * n_params * 8
    elif solver == "dual":
        full, system = rows * n_params * 8, 4 * rows * rows * 8
    elif solver == "block":
        full, system = rows * n_params * 8, 3 * rows * rows * 8
    else:
        raise ConfigError(f"unknown NTK solver {solver!r}; choose 'primal', 'dual' or 'block'")
    n_chunk = min(chunk_size, n_samples)
    act = 0
    if activations:
        act = n_chunk * (int(activations.get("total", 0))
                         + n_classes * (int(activations.get("selected", 0)) + 2 * int(activations.get("largest", 0))))
    return {"jacobian_chunk": chunk, "activations": act, "jacobian_full": full, "system": system,
            "total": chunk + act + full + system}


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / _GIB:.2f} GiB"


def check_memory(
    n_samples: int, n_classes: int, n_params: int, solver: str, chunk_size: int,
    dtype: torch.dtype = torch.float32, max_memory_bytes: int | None = None,
    fewer_params: Mapping[str, int] | None = None, activations: Mapping[str, int] | None = None,
) -> dict[str, int | None]:
    """Refuse, before anything is allocated, a configuration whose estimate does not fit.

    ``max_memory_bytes`` caps the budget (default: :func:`available_memory_bytes`);
    ``fewer_params`` maps alternative ``--params`` names to their P so the message can offer
    them. Returns the estimate plus ``available``; raises :class:`ResourceError` naming the
    options (the other solver, a smaller chunk, fewer parameters) that would fit.
    """
    estimate = dict(estimate_memory(n_samples, n_classes, n_params, solver, chunk_size, dtype, activations))
    budget = max_memory_bytes if max_memory_bytes is not None else available_memory_bytes()
    estimate["available"] = budget
    if budget is None or estimate["total"] <= budget:
        return estimate

    def fits(p: int, name: str, chunk: int) -> int | None:
        need = estimate_memory(n_samples, n_classes, p, name, chunk, dtype, activations)["total"]
        return need if need <= budget else None

    options: list[str] = []
    for other in ("primal", "dual"):
        if other != solver and (need := fits(n_params, other, chunk_size)) is not None:
            options.append(f"--solver {other} ({_gib(need)})")
    chunk = chunk_size // 2
    while chunk >= 1:
        if (need := fits(n_params, solver, chunk)) is not None:
            options.append(f"--chunk-size {chunk} ({_gib(need)})")
            break
        chunk //= 2
    for kind, p in (fewer_params or {}).items():
        best = min(("primal", "dual"),
                   key=lambda s: estimate_memory(n_samples, n_classes, p, s, chunk_size,
                                                 dtype, activations)["total"])
        if (need := fits(p, best, chunk_size)) is not None:
            options.append(f"--params {kind} --solver {best} (P={p}, {_gib(need)})")
    advice = ("would fit: " + "; ".join(options)) if options else (
        "no solver or chunk size fits; train with --peft bn and use --params bn, "
        "or forget from a smaller data set")
    raise ResourceError(
        f"NTK forgetting with --solver {solver} (N={n_samples}, C={n_classes}, P={n_params}, "
        f"chunk {chunk_size}) needs about {_gib(estimate['total'])} but only {_gib(budget)} is "
        f"available; {advice}"
    )


# --------------------------------------------------------------------------------------------
# Jacobian-side helpers
# --------------------------------------------------------------------------------------------


def _linearisation_point(model: nn.Module, selected: Mapping[str, Tensor],
                         w0: Mapping[str, Tensor]) -> dict[str, Tensor]:
    point: dict[str, Tensor] = {}
    for name, param in selected.items():
        if name not in w0:
            raise ConfigError(
                f"w0 has no entry for parameter {name!r}; pass the weights the model was "
                "fine-tuned from (a state dict holding every selected parameter)"
            )
        value = w0[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ConfigError(
                f"w0[{name!r}] has shape {tuple(value.shape)} but the model's parameter has "
                f"{tuple(param.shape)}; pass w0 for this architecture"
            )
        point[name] = value.detach().to(dtype=param.dtype, device=param.device)
    return point


def _count_classes(model: nn.Module, point: Mapping[str, Tensor], x: Tensor) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fixed = {**dict(model.named_parameters()), **dict(model.named_buffers()), **point}
            logits = torch.func.functional_call(model, fixed, (x[:1],))
    finally:
        model.train(was_training)
    if logits.dim() != 2:
        raise ConfigError(
            f"model output has shape {tuple(logits.shape)}; NTK forgetting needs logits of shape "
            "(batch, classes)"
        )
    return int(logits.shape[1])


def _normal_equations(model: nn.Module, point: Mapping[str, Tensor], x: Tensor, y: Tensor,
                      loss: str, chunk_size: int, mode: str, weighting: str = "identity",
                      norm_bound: dict | None = None) -> tuple[Tensor, Tensor]:
    """Stream :math:`J^TWJ` and :math:`J^Tr` over chunks (float64) without storing :math:`J`.

    With ``norm_bound`` (a dict) also record ``norm_bound["value"]`` :math:`=\\max_i\\lVert
    J_i\\rVert_2^2`, the largest squared spectral norm of a sample's (C, P) Jacobian.
    """
    n_params = sum(p.numel() for p in point.values())
    gram = torch.zeros(n_params, n_params, dtype=SOLVE_DTYPE)
    jtr = torch.zeros(n_params, dtype=SOLVE_DTYPE)
    for start, jac, logits in iter_jacobian_chunks(model, x, point, chunk_size, mode=mode):
        rows = jac.reshape(-1, n_params).to(SOLVE_DTYPE)
        res = residual(logits, y[start:start + logits.shape[0]], loss).reshape(-1)
        gram_rows = rows if weighting == "identity" else weighted_rows(jac, logits, loss, weighting)
        gram.addmm_(gram_rows.T, gram_rows)
        jtr.addmv_(rows.T, res)
        if norm_bound is not None:
            jac64 = jac.to(SOLVE_DTYPE)
            # ||J_i||_2^2 = largest eigenvalue of the C x C matrix J_i J_i^T
            top = torch.linalg.eigvalsh(torch.einsum("ncp,ndp->ncd", jac64, jac64))[:, -1]
            norm_bound["value"] = max(norm_bound.get("value", 0.0), float(top.max()))
    return gram, jtr


def _forget_rows(model: nn.Module, point: Mapping[str, Tensor], x: Tensor, y: Tensor,
                 loss: str, chunk_size: int, mode: str, weighting: str, drop_budget: float = 0.0
                 ) -> tuple[Tensor, Tensor, int, torch.dtype]:
    """The forget set's Gram rows by sample, ``(n, K, P)`` float64, :math:`J_f^Tr_f` (P,), C and J's dtype.

    Computed as vector-Jacobian products (:data:`WEIGHTING_FACTORS`): per sample the K kept
    directions of :math:`W_i` plus the residual :math:`r_i` as one more slot, so a weighting of
    rank K costs K + 1 backward passes instead of C. ``drop_budget`` is the per-sample sum of
    eigenvalues of :math:`W_i` that may be dropped (0: exact). Samples that keep fewer than K
    directions are padded with all-zero rows.
    """
    try:
        factor_fn = WEIGHTING_FACTORS[weighting]
    except KeyError:
        raise ConfigError(f"unknown NTK weighting {weighting!r}; choose one of {sorted(WEIGHTING_FACTORS)}") from None
    n_classes = 0

    def project(logits: Tensor, start: int) -> Tensor:
        nonlocal n_classes
        n_classes = logits.shape[1]
        logits64 = logits.to(SOLVE_DTYPE)
        budget = torch.full((logits.shape[0],), float(drop_budget), dtype=SOLVE_DTYPE, device=logits.device)
        directions = factor_fn(logits64, loss, budget)
        res = residual(logits64, y[start:start + logits.shape[0]], loss)
        return torch.cat([directions, res.unsqueeze(1)], dim=1)

    chunks, jtr, source_dtype = [], None, SOLVE_DTYPE
    for _, rows, _ in iter_jacobian_chunks(model, x, point, chunk_size, mode=mode, project=project):
        source_dtype = rows.dtype
        rows = rows.to(SOLVE_DTYPE)
        chunk_jtr = rows[:, -1].sum(dim=0)                      # sum_i r_i^T J_i
        chunks.append(rows[:, :-1])
        jtr = chunk_jtr if jtr is None else jtr + chunk_jtr
    assert jtr is not None  # callers refuse empty forget sets
    width = max(c.shape[1] for c in chunks)                     # chunks may keep different K
    rows = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) for c in chunks])
    return rows, jtr, n_classes, source_dtype


def _nonzero_rows(rows: Tensor) -> Tensor:
    """Mask of the rows of ``rows`` (m, P) that are not all zero (padding); NaN rows are kept."""
    return (rows != 0).any(dim=1)


#: A rank-one block must match its factors to this many units of the Jacobian dtype's round-off.
RANK_ONE_ULPS = 64


def _rank_one_factors(block: Tensor, source_dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """``(c (n, R), a (n, I))`` with ``block[i] = c[i] a[i]^T`` for every sample, or ``None``.

    ``block`` is ``(n, R, I)``. Per sample, ``a`` is the row of largest norm and ``c`` the
    least-squares coefficients on it; the factorisation is accepted only when it reproduces every
    entry to within ``RANK_ONE_ULPS`` round-off units of ``source_dtype`` (the dtype the Jacobian was
    computed in) times the sample's largest entry: the factored rows then differ from the computed
    ones by no more than the rounding those already carry, scaled to the block. A NaN refuses it.
    """
    n = block.shape[0]
    scale = block.abs().amax(dim=(1, 2))                                       # (n,)
    pick = torch.linalg.vector_norm(block, dim=2).argmax(dim=1)                # (n,)
    vec = block[torch.arange(n), pick]                                         # (n, I)
    norm_sq = (vec * vec).sum(dim=1)
    safe = torch.where(norm_sq > 0, norm_sq, torch.ones_like(norm_sq))
    coeff = torch.where(norm_sq[:, None] > 0, (block @ vec.unsqueeze(2)).squeeze(2) / safe[:, None],
                        torch.zeros_like(block[:, :, 0]))
    error = (block - coeff.unsqueeze(2) * vec.unsqueeze(1)).abs().amax(dim=(1, 2))
    tol = RANK_ONE_ULPS * torch.finfo(source_dtype).eps * scale
    if not bool((error <= tol).all()):
        return None
    return coeff, vec


def _rotate_rows(rows: Tensor, basis: Tensor, shapes: list[list[int]], source_dtype: torch.dtype) -> Tensor:
    """:math:`UQ` for the forget rows ``rows`` (n, K, P) and the kept eigenvectors ``basis`` Q (P, P).

    This product is what a downdate against the kept factor costs: :math:`2mP^2` flops for
    :math:`m = nK` rows. A linear layer applied once per sample, :math:`y = Wa_i + b`, has the
    per-sample gradient :math:`\\partial(v^Ty)/\\partial W = v a_i^T`, so sample i's K rows restricted to
    :math:`W`'s block (``out x in``) are :math:`\\mathrm{vec}(g_{ik}a_i^T)` and

    .. math::

        (UQ)_{ik} \\mathrel{+}= \\sum_{o,j} g_{ik,o}\\,a_{i,j}\\,Q_{(o,j),:} = g_{ik}^T T_i,
        \\qquad T_i = \\sum_j a_{i,j}\\,Q_{(\\cdot,j),:} \\in \\mathbb{R}^{out\\times P},

    which costs :math:`2\\,out\\,(in + K)P` flops per sample instead of :math:`2K\\,out\\,in\\,P`
    (the classifier head is most of P for a BN-affine + head selection). Every 2-D block is
    tested for this structure (:func:`_rank_one_factors`); a block without it (a convolution,
    a linear layer over several tokens) is multiplied densely. Returns ``(nK, P)``.
    """
    n, k, n_params = rows.shape
    flat = rows.reshape(n * k, n_params)
    rotated = torch.zeros(n * k, basis.shape[1], dtype=rows.dtype, device=rows.device)
    dense: list[tuple[int, int]] = []
    offset = 0
    for shape in shapes:
        size = math.prod(shape)
        factors = None
        if len(shape) == 2 and k > 1 and min(shape) > 1:
            out_dim, in_dim = shape
            factors = _rank_one_factors(rows[:, :, offset:offset + size].reshape(n, k * out_dim, in_dim),
                                        source_dtype)
        if factors is None:
            if dense and dense[-1][1] == offset:
                dense[-1] = (dense[-1][0], offset + size)       # one product per contiguous run
            else:
                dense.append((offset, offset + size))
        else:
            coeff, vec = factors
            block_basis = basis[offset:offset + size].reshape(out_dim, in_dim, -1)   # a view: (out, in, P)
            per_sample = torch.matmul(vec, block_basis).transpose(0, 1)           # T_i: (n, out, P)
            rotated += torch.bmm(coeff.reshape(n, k, out_dim), per_sample).reshape(n * k, -1)
        offset += size
    for start, stop in dense:
        rotated.addmm_(flat[:, start:stop], basis[start:stop])
    return rotated


def _stacked_jacobian(model: nn.Module, point: Mapping[str, Tensor], x: Tensor, y: Tensor,
                      loss: str, chunk_size: int, mode: str) -> tuple[Tensor, Tensor]:
    """Full float64 :math:`J` of shape (N*C, P) and residual (N*C,), rows sample-major."""
    jac_full: Tensor | None = None
    res_full: Tensor | None = None
    for start, jac, logits in iter_jacobian_chunks(model, x, point, chunk_size, mode=mode):
        n, n_classes, n_params = jac.shape
        if jac_full is None:
            jac_full = torch.empty(x.shape[0] * n_classes, n_params, dtype=SOLVE_DTYPE)
            res_full = torch.empty(x.shape[0] * n_classes, dtype=SOLVE_DTYPE)
        rows = slice(start * n_classes, (start + n) * n_classes)
        jac_full[rows] = jac.reshape(-1, n_params)
        res_full[rows] = residual(logits, y[start:start + n], loss).reshape(-1)
    assert jac_full is not None and res_full is not None  # callers check for empty sets
    return jac_full, res_full


def _check_sets(retain_x: Tensor, retain_y: Tensor, forget_x: Tensor, forget_y: Tensor) -> None:
    if forget_x.shape[0] == 0:
        raise ConfigError("the forget set is empty; select at least one sample to forget")
    if retain_x.shape[0] == 0:
        raise ConfigError("the forget set is all the data (retain set empty); "
                          "forgetting everything is retraining from w0, not unlearning")
    for name, xs, ys in (("retain", retain_x, retain_y), ("forget", forget_x, forget_y)):
        if xs.shape[0] != ys.shape[0]:
            raise ConfigError(f"{name} set has {xs.shape[0]} inputs but {ys.shape[0]} labels; "
                              "pass one label per input")


def _check_weight_decay(weight_decay: float) -> None:
    if not weight_decay > 0:
        raise ConfigError(f"weight_decay must be > 0 (lambda = N * weight_decay), got "
                          f"{weight_decay}; use the w0-penalty of the training recipe")


def _fewer_params(model: nn.Module, params: str) -> dict[str, int]:
    """P of the Fast-NTK selections that exist for this model (for the memory-guard advice)."""
    out: dict[str, int] = {}
    if params != "all":
        return out
    for kind in ("bn", "prompt"):
        try:
            out[kind] = sum(p.numel() for p in select_parameters(model, kind).values())
        except ConfigError:
            continue  # this model has no such parameters; nothing to suggest
    return out


def _apply_delta(model: nn.Module, names: list[str], delta: Mapping[str, Tensor]) -> None:
    live = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            live[name].add_(delta[name].to(live[name].device))


# --------------------------------------------------------------------------------------------
# One-shot NTK forgetting
# --------------------------------------------------------------------------------------------


def ntk_unlearn(
    model: nn.Module,
    w0: Mapping[str, Tensor],
    retain_x: Tensor,
    retain_y: Tensor,
    forget_x: Tensor,
    forget_y: Tensor,
    params: str = "all",
    weight_decay: float = 5e-4,
    scale: float | str = 1.0,
    solver: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    loss: str = "ce",
    lambda_scaling: str = "per-set",
    max_memory_bytes: int | None = None,
    jacobian_mode: str = "auto",
    inplace: bool = False,
    linearise_at: Mapping[str, Tensor] | None = None,
    weighting: str = "identity",
) -> tuple[nn.Module, dict]:
    """Forget ``forget_*`` from ``model`` with the NTK step :math:`w \\leftarrow w(D) + s\\Delta`.

    Parameters
    ----------
    model : nn.Module
        The trained classifier :math:`w(D)`, fine-tuned from ``w0`` on :math:`D = D_r \\cup D_f`.
    w0 : dict of str to Tensor
        Centre of the penalty :math:`\\tfrac\\lambda2\\lVert w-w_0\\rVert^2` and, unless
        ``linearise_at`` is given, the linearisation point: must hold every selected parameter.
    retain_x, retain_y, forget_x, forget_y : Tensor
        :math:`D_r` and :math:`D_f`; ``y`` are integer labels or ``(N, C)`` float targets.
    params : {"all", "bn", "prompt"}
        ``all`` is NTK (Golatkar et al.); ``bn``/``prompt`` is Fast-NTK (Li et al.).
    weight_decay : float
        :math:`wd` of the recipe; :math:`\\lambda = |S|\\,wd` (see ``lambda_scaling``).
    scale : float or "trapezium"
        Step length :math:`s` (see :func:`trapezium_scale`).
    solver : {"auto", "primal", "dual", "block"}
        ``auto`` solves the smaller of the :math:`P\\times P` and :math:`NC\\times NC` systems;
        ``block`` is the dual Schur form (:func:`forget_delta_block`, needs ``"fixed"``).
    chunk_size : int
        Samples per vmapped Jacobian call.
    loss : {"ce", "mse"}
        Residual definition (module docstring).
    lambda_scaling : {"per-set", "fixed"}
        :math:`\\lambda_{D_r} = N_r\\,wd` (notebook, retraining recipe) or :math:`N\\,wd`.
    max_memory_bytes : int, optional
        Memory budget for the guard (default: memory available now).
    jacobian_mode : {"auto", "hooks", "rev", "fwd"}
        Passed to :func:`~privkit.unlearn.jacobian.parameter_jacobian`: ``hooks`` (one forward, C
        backward passes to the layer outputs, per-sample gradients in closed form per layer; ``auto``
        picks it whenever every selected parameter sits in a supported layer) or ``vmap`` of
        ``jacrev``/``jacfwd``.
    inplace : bool
        Update ``model`` itself instead of a deep copy.
    linearise_at : dict of str to Tensor, optional
        Linearisation point :math:`a` when it is not :math:`w_0` (e.g. the trained weights
        :math:`w^*`); then :math:`\\delta_S = w_{lin}(S) - a = (J_S^TWJ_S + \\lambda_S I)^{-1}
        (J_S^Tr_S - \\lambda_S(a - w_0))` (module docstring, "Linearisation point").
    weighting : {"identity", "ggn"}
        :math:`W` of the Gram matrix :math:`J^TWJ`: ``identity`` (squared loss on the logits, the
        paper's form) or ``ggn`` (the loss's Hessian in the logits, :math:`\\mathrm{diag}(p)-pp^T`
        for cross-entropy; primal solver only).

    Returns
    -------
    model : nn.Module
        The updated model (a copy unless ``inplace``).
    info : dict
        ``solver``, ``P``, ``N``, ``N_retain``, ``N_forget``, ``C``, ``lambda_full``,
        ``lambda_retain``, ``scale``, ``delta_norm``, ``delta`` (the applied update by name),
        ``timings`` (seconds: ``jacobian``, ``solve``, ``total``) and ``memory`` (estimate and
        budget in bytes).
    """
    t_start = time.perf_counter()
    _check_sets(retain_x, retain_y, forget_x, forget_y)
    _check_weight_decay(weight_decay)
    if not (isinstance(scale, (int, float)) or scale == "trapezium"):
        raise ConfigError(f"scale must be a number or 'trapezium', got {scale!r}")
    selected = select_parameters(model, params)
    names = list(selected)
    anchor = _linearisation_point(model, selected, w0)
    point = anchor if linearise_at is None else _linearisation_point(model, selected, linearise_at)
    # a - w0: zero when linearising at w0, the fine-tuning displacement when linearising at w*
    offset = flatten_parameters(point, SOLVE_DTYPE) - flatten_parameters(anchor, SOLVE_DTYPE)
    n_params = sum(p.numel() for p in point.values())
    n_retain, n_forget = retain_x.shape[0], forget_x.shape[0]
    n_total = n_retain + n_forget
    n_classes = _count_classes(model, point, retain_x)
    if weighting not in WEIGHTING_FACTORS:
        raise ConfigError(f"unknown NTK weighting {weighting!r}; choose one of {sorted(WEIGHTING_FACTORS)}")
    if weighting != "identity" and solver == "auto":
        solver = "primal"  # the weighted Gram is formed in the primal only
    chosen = choose_solver(n_total * n_classes, n_params, solver)
    if weighting != "identity" and chosen != "primal":
        raise ConfigError(f"weighting={weighting!r} needs solver='primal' (got {chosen!r}); pass "
                          "solver='primal' or weighting='identity'")
    lam_full, lam_retain = _lambdas(weight_decay, n_total, n_retain, lambda_scaling)
    if chosen == "block" and lam_full != lam_retain:
        raise ConfigError("solver='block' eliminates the forget block of one system and needs "
                          "one lambda for D and D_r; pass lambda_scaling='fixed'")
    dtype = next(iter(point.values())).dtype
    memory = check_memory(n_total, n_classes, n_params, chosen, chunk_size, dtype,
                          max_memory_bytes, _fewer_params(model, params),
                          activation_footprint(model, point, retain_x if n_retain else forget_x))

    t_jac = time.perf_counter()
    if chosen == "primal":
        gram, jtr_r = _normal_equations(model, point, retain_x, retain_y, loss, chunk_size,
                                        jacobian_mode, weighting)
        gram_f, jtr_f = _normal_equations(model, point, forget_x, forget_y, loss, chunk_size,
                                          jacobian_mode, weighting)
        t_solve = time.perf_counter()
        delta_retain = _spd_solve(_with_ridge(gram, lam_retain), jtr_r - lam_retain * offset)
        gram.add_(gram_f)  # reuse the buffer: J_D^T J_D = J_r^T J_r + J_f^T J_f
        del gram_f
        delta_full = _spd_solve(_with_ridge(gram, lam_full), jtr_r + jtr_f - lam_full * offset)
        del gram
        delta = delta_retain - delta_full
    else:
        jac_r, res_r = _stacked_jacobian(model, point, retain_x, retain_y, loss, chunk_size,
                                         jacobian_mode)
        jac_f, res_f = _stacked_jacobian(model, point, forget_x, forget_y, loss, chunk_size,
                                         jacobian_mode)
        # (G + lam I)(w - a) = J^T r - lam (a - w0) is solved by w - a = -o + J^T (JJ^T + lam I)^-1
        # (r + J o), o = a - w0: the dual forms take the shifted residual and give back -o after
        res_r = res_r + jac_r @ offset
        res_f = res_f + jac_f @ offset
        t_solve = time.perf_counter()
        if chosen == "block":
            delta, delta_retain = forget_delta_block(jac_r, res_r, jac_f, res_f, lam_full)
        else:
            delta, delta_retain = forget_delta_two_solve(jac_r, res_r, jac_f, res_f, lam_full,
                                                         lam_retain, "dual")
        delta_retain = delta_retain - offset  # delta = delta_retain - delta_full: the -o cancels
        del jac_r, jac_f
    t_done_solve = time.perf_counter()

    w_trained = flatten_parameters(selected, SOLVE_DTYPE)
    w0_flat = flatten_parameters(point, SOLVE_DTYPE)
    step = (trapezium_scale(delta, w_trained, w0_flat + delta_retain)
            if scale == "trapezium" else float(scale))
    applied = unflatten_parameters(step * delta, selected)
    updated = model if inplace else copy.deepcopy(model)
    _apply_delta(updated, names, applied)
    t_end = time.perf_counter()
    info = {
        "method": "ntk" if params == "all" else "fast-ntk",
        "params": params,
        "solver": chosen,
        "P": n_params,
        "N": n_total,
        "N_retain": n_retain,
        "N_forget": n_forget,
        "C": n_classes,
        "lambda_full": lam_full,
        "lambda_retain": lam_retain,
        "weighting": weighting,
        "linearised_at": "w0" if linearise_at is None else "given point",
        "scale": step,
        "delta_norm": float(torch.linalg.vector_norm(delta)),
        "delta": applied,
        "timings": {
            "jacobian": t_solve - t_jac,
            "solve": t_done_solve - t_solve,
            "total": t_end - t_start,
        },
        "memory": memory,
    }
    return updated, info


# --------------------------------------------------------------------------------------------
# Cached state for repeated deletion requests
# --------------------------------------------------------------------------------------------


#: safetensors dtype names of the tensors a state file holds.
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "I64": torch.int64}


def _tensor_sha256(tensor: Tensor) -> str:
    """SHA-256 of a CPU tensor's bytes as safetensors stores them (C order, little-endian)."""
    data = tensor.detach().cpu().contiguous()
    if data.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(memoryview(data.numpy()).cast("B")).hexdigest()


def read_safetensors_header(path: str | os.PathLike) -> tuple[bytes, dict]:
    """``(raw header, parsed header)`` of a safetensors file: its 8-byte length and JSON header.

    The raw bytes are what a state's checksum in ``meta.json`` covers (format 3): the JSON holds
    every tensor's offsets, dtype, shape and, in the metadata, its SHA-256.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 1 < length <= 100 * 2**20:
                raise ValueError("bad header length")
            body = handle.read(length)
        header = json.loads(body.decode("utf-8"))
        if not isinstance(header, dict) or len(body) != length:
            raise ValueError("truncated header")
    except FileNotFoundError:
        raise ArtifactError(f"NTK state {path} does not exist; run the NTK fit step first") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"NTK state {path} is not a readable safetensors file ({exc}); "
                            "rebuild it with NTKState.fit") from exc
    return prefix + body, header


class _StateFile:
    """The tensors of a format-3 state file, each read and checked against its SHA-256 when first used.

    The header (offsets, shapes, checksums) was verified by whoever opened the file, so a tensor whose
    bytes changed since is refused with an ArtifactError; a request reads only what it uses. A tensor
    is read into memory the process owns and hashed there, so the bytes used are the bytes checked
    (a view of a memory-mapped file would show later writes to the file, and a truncation would end
    the process with SIGBUS instead of an error).
    """

    def __init__(self, path: Path, header_length: int, header: dict, digests: dict[str, str]):
        self.path = path
        self.data_start = 8 + header_length
        self.entries = {k: v for k, v in header.items() if k != "__metadata__"}
        self.digests = digests

    def _read_into(self, out: Tensor, offset: int) -> memoryview:
        """Fill ``out`` (contiguous) with the file's bytes at ``offset``; the filled bytes as a view."""
        data = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        try:
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(offset)
                filled = 0
                while filled < len(data):
                    got = handle.readinto(data[filled:])
                    if not got:
                        raise ArtifactError(f"NTK state {self.path} is truncated; rebuild it")
                    filled += got
        except OSError as exc:
            raise ArtifactError(f"cannot read NTK state {self.path}: {exc}") from exc
        return data

    def read(self, name: str) -> Tensor:
        entry = self.entries[name]
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = [int(v) for v in entry["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"NTK state {self.path} has a malformed entry {name!r} ({exc}); rebuild it") from None
        item = torch.empty((), dtype=dtype).element_size() if dtype is not None else 0
        if (dtype is None or min(shape, default=0) < 0 or begin < 0 or end - begin != math.prod(shape) * item):
            raise ArtifactError(f"NTK state {self.path} has a malformed entry {name!r}; rebuild it")
        if begin == end:
            out, data = torch.zeros(shape, dtype=dtype), b""
        else:
            out = torch.empty(shape, dtype=dtype)
            data = self._read_into(out, self.data_start + begin)
        if hashlib.sha256(data).hexdigest() != self.digests.get(name):
            raise ArtifactError(f"{self.path} does not match the checksum in meta.json (tensor {name!r}); the "
                                f"artifact was modified or is corrupt (delete ntk_state_* from meta.json to fall "
                                f"back to one-shot fast-ntk)")
        return out


def _lazy_tensor(name: str, doc: str) -> property:
    """A tensor attribute of :class:`NTKState` that a state opened from a file reads on first use."""
    slot = f"_{name}_tensor"

    def get(self) -> Tensor:
        value = self.__dict__.get(slot)
        if value is None:
            source = self.__dict__.get("_source")
            if source is None or name not in source.entries:
                derive = getattr(self, f"_derive_{name}", None)
                if derive is None or "w0_" not in self.__dict__:
                    raise AttributeError(f"{name}_")
                value = derive()
            else:
                value = source.read(name)
            self.__dict__[slot] = value
        return value

    def set_(self, value: Tensor) -> None:
        self.__dict__[slot] = value

    return property(get, set_, doc=doc)


class NTKState:
    """The primal NTK system over :math:`D`, kept so deletion requests are cheap.

    ``fit`` pays the one-off cost: Jacobians over all of :math:`D`,
    :math:`G = J_D^TJ_D`, :math:`b = J_D^Tr_D`, the eigendecomposition
    :math:`G = Q\\Lambda Q^T` and :math:`\\delta_D = w_{lin}(D) - w_0 = (G+\\lambda_D I)^{-1}b`.
    A request for :math:`D_f` then needs only the forget set's Jacobians :math:`J_f` and a
    downdate,

    .. math::

        A_r = G - J_f^TJ_f + \\lambda_r I, \\qquad b_r = b - J_f^Tr_f, \\qquad
        \\delta_r = A_r^{-1} b_r,

    solved either by Woodbury against the cached factor, with :math:`B = G + \\lambda_r I`
    (inverted through :math:`Q`, so any :math:`\\lambda_r` works) and :math:`U = J_f`,

    .. math::

        A_r^{-1} = B^{-1} + B^{-1}U^T (I - U B^{-1} U^T)^{-1} U B^{-1}
        \\quad (O(mP^2 + m^3),\\ m = |D_f|\\,C),

    or by a Cholesky factorisation of the downdated :math:`A_r` (:math:`O(P^3)`, used when
    :math:`m` is not small next to :math:`P`). Before either, ``method="auto"`` runs preconditioned
    conjugate gradients with :math:`B^{-1}` as the preconditioner (:meth:`_solve_cg`), for at most
    half the flops of the direct solve, and falls back to it when CG has not converged by then. A
    request with :math:`Q` too large for the cache first forms :math:`E = UQ` once, most of it cheaply
    (:func:`_rotate_rows`: the head's rows are Kronecker products), and iterates on :math:`E`
    (:math:`O(mP)` per iteration); otherwise each iteration applies :math:`Q` and :math:`Q^T` around
    the rows (:math:`O(P^2 + mP)`). The update is
    :math:`w \\leftarrow w + s(\\delta_r - \\delta_D)`. With ``commit=True`` the state becomes the
    state of :math:`D_r`, so requests can follow one another; rows removed since the last
    factorisation are kept and folded into :math:`U`, and the factor is refreshed once they
    reach a third of :math:`P`.

    Linearised at a point :math:`a \\ne w_0` (``fit(..., linearise_at=w*)``) every solve takes
    the right-hand side :math:`b_S - \\lambda_S(a - w_0)` and :math:`\\delta_S = w_{lin}(S) - a`;
    with ``weighting="ggn"`` the Gram matrix is :math:`J^TWJ` and the downdated rows are
    :math:`M^TJ_f` (:func:`weighted_rows`). Neither changes the cost of a request.

    Saved (:meth:`save`) as one safetensors file whose header lists every tensor's SHA-256; a state
    opened from it (:meth:`open`) reads its P x P tensors (``gram_``, ``eigvecs_``) and the removed
    rows only when they are first used, checking each against its checksum then, so a request reads
    :math:`Q` but not :math:`G`.

    Parameters
    ----------
    params, weight_decay, loss, lambda_scaling, chunk_size, jacobian_mode, max_memory_bytes, weighting
        As in :func:`ntk_unlearn`.

    Attributes
    ----------
    param_names_, param_shapes_ : list
        The selected parameters, in the order of the P axis.
    w0_ : Tensor
        Flattened centre of the penalty :math:`w_0` (float64, shape ``(P,)``).
    point_ : Tensor
        Flattened linearisation point :math:`a` (``w0_`` unless ``linearise_at`` was given).
    gram_, jtr_ : Tensor
        :math:`J^TWJ` and :math:`J^Tr` over the current data set.
    eigvals_, eigvecs_ : Tensor
        Eigendecomposition of the Gram matrix at the last factorisation.
    removed_jacobian_ : Tensor
        Jacobian rows removed since that factorisation, shape ``(m_total, P)``.
    removed_eig_ : Tensor
        The same rows in the eigenbasis, ``removed_jacobian_ @ eigvecs_`` (kept, so a request after
        committed ones does not form it again).
    delta_ : Tensor
        :math:`w_{lin}(D) - w_0` for the current :math:`D`.
    n_samples_, n_fit_samples_, n_classes_ : int
        Current and original :math:`|D|`, and :math:`C`.
    one_off_seconds_ : dict
        ``jacobian``, ``factor`` and ``total`` seconds of ``fit``.
    jacobian_sq_norm_ : float or None
        :math:`c = \\max_{i\\in D}\\lVert J_i\\rVert_2^2` at the linearisation point, recorded by ``fit``;
        bounds what ``forget(rank_tol=...)`` may drop (``None`` for states saved without it).
    """

    FORMAT = "privkit.ntk_state/3"
    #: Relative preconditioned residual at which :meth:`_solve_cg` stops (float64 solves).
    CG_TOL = 1e-13
    #: ``auto`` tries CG only when half the direct solve's cost buys this many iterations (the
    #: benchmark requests needed 9-17; fewer allowed would mostly waste them before the fallback).
    CG_MIN_ITERATIONS = 30
    #: Bytes of the largest layer output per Jacobian chunk of a request, times its C vector-Jacobian
    #: slots: small enough to stay in cache while the slots' backward passes sweep over it (on the
    #: 32x32 synthetic-faces CNN, 8 samples x 40 slots per chunk took 1.3x the CPU time of 1-2 samples).
    FORGET_CHUNK_BYTES = 8 * 2**20
    #: A P x P float64 factor up to this size stays in cache across CG iterations: a request then runs
    #: CG with Q and Q^T around its rows; a larger one is streamed from memory by every product, so the
    #: request forms :math:`E = UQ` once (:func:`_rotate_rows`) and iterates on it.
    CG_CACHE_BYTES = 16 * 2**20
    #: Formats :meth:`load` reads (version 1: linearised at w0, identity weighting; version 2: one
    #: checksum over the whole file; version 3: a checksum per tensor, so a request reads what it uses).
    _READABLE_FORMATS = ("privkit.ntk_state/1", "privkit.ntk_state/2", FORMAT)
    _METADATA_KEY = "privkit_ntk_state"
    #: Tensors a request does not need (``gram``: the upkeep and the Cholesky path; ``removed_jacobian``:
    #: the upkeep) or that are P x P: read from the file on first use, not when it is opened.
    _LAZY_TENSORS = ("gram", "eigvecs", "removed_jacobian", "removed_eig")

    gram_ = _lazy_tensor("gram", "The Gram matrix :math:`J^TWJ` over the current data set.")
    eigvecs_ = _lazy_tensor("eigvecs", "Eigenvectors Q of the Gram matrix at the last factorisation.")
    removed_jacobian_ = _lazy_tensor("removed_jacobian", "Rows removed since the last factorisation (m, P).")
    removed_eig_ = _lazy_tensor("removed_eig", "The removed rows in the eigenbasis, ``removed_jacobian_ @ Q``.")

    def __init__(self, params: str = "all", weight_decay: float = 5e-4, loss: str = "ce",
                 lambda_scaling: str = "per-set", chunk_size: int = DEFAULT_CHUNK_SIZE,
                 jacobian_mode: str = "auto", max_memory_bytes: int | None = None,
                 weighting: str = "identity"):
        self.params = params
        self.weighting = weighting
        self.weight_decay = weight_decay
        self.loss = loss
        self.lambda_scaling = lambda_scaling
        self.chunk_size = chunk_size
        self.jacobian_mode = jacobian_mode
        self.max_memory_bytes = max_memory_bytes

    # ---- one-off ---------------------------------------------------------------------------

    def fit(self, model: nn.Module, w0: Mapping[str, Tensor], x: Tensor, y: Tensor,
            linearise_at: Mapping[str, Tensor] | None = None) -> NTKState:
        """Build the system over :math:`D = (x, y)`, penalised toward ``w0``, linearised at
        ``linearise_at`` (default ``w0``)."""
        t_start = time.perf_counter()
        _check_weight_decay(self.weight_decay)
        _lambdas(self.weight_decay, 2, 1, self.lambda_scaling)  # validates the name
        if self.weighting not in WEIGHTING_FACTORS:
            raise ConfigError(f"unknown NTK weighting {self.weighting!r}; choose one of {sorted(WEIGHTING_FACTORS)}")
        if x.shape[0] == 0:
            raise ConfigError("cannot build an NTK state over zero samples; pass the training set")
        selected = select_parameters(model, self.params)
        anchor = _linearisation_point(model, selected, w0)
        point = anchor if linearise_at is None else _linearisation_point(model, selected, linearise_at)
        n_params = sum(p.numel() for p in point.values())
        n_classes = _count_classes(model, point, x)
        dtype = next(iter(point.values())).dtype
        check_memory(x.shape[0], n_classes, n_params, "state", self.chunk_size, dtype,
                     self.max_memory_bytes, _fewer_params(model, self.params),
                     activation_footprint(model, point, x))
        norm_bound: dict = {}
        gram, jtr = _normal_equations(model, point, x, y, self.loss, self.chunk_size,
                                      self.jacobian_mode, self.weighting, norm_bound)
        t_factor = time.perf_counter()
        self.__dict__.pop("_source", None)
        self.jacobian_sq_norm_ = norm_bound.get("value")
        self.param_names_ = list(point)
        self.param_shapes_ = [list(p.shape) for p in point.values()]
        self.w0_ = flatten_parameters(anchor, SOLVE_DTYPE)
        self.point_ = flatten_parameters(point, SOLVE_DTYPE)
        self.gram_ = gram
        self.jtr_ = jtr
        self.n_samples_ = int(x.shape[0])
        self.n_fit_samples_ = int(x.shape[0])
        self.n_classes_ = n_classes
        self._factor()
        lam = self._lambda(self.n_samples_)
        self.delta_ = self._solve_rotated(self._rhs(self.jtr_, lam), lam, self.removed_eig_, "woodbury")[0]
        t_end = time.perf_counter()
        self.one_off_seconds_ = {"jacobian": t_factor - t_start, "factor": t_end - t_factor,
                                 "total": t_end - t_start}
        self.n_requests_ = 0
        return self

    def _factor(self) -> None:
        self.eigvals_, self.eigvecs_ = torch.linalg.eigh(self.gram_)
        # G is PSD; round-off can make tiny eigenvalues slightly negative.
        self.eigvals_.clamp_(min=0.0)
        self.removed_jacobian_ = torch.zeros(0, self.gram_.shape[0], dtype=SOLVE_DTYPE)
        self.removed_eig_ = torch.zeros(0, self.gram_.shape[0], dtype=SOLVE_DTYPE)

    def _derive_removed_eig(self) -> Tensor:
        """The removed rows in the eigenbasis, for a state saved without them (format 1 or 2)."""
        return self.removed_jacobian_ @ self.eigvecs_

    def refactor(self) -> float:
        """Re-factorise the current Gram matrix (clears the removed rows); returns seconds."""
        self._check_fitted()
        t_start = time.perf_counter()
        self._factor()
        return time.perf_counter() - t_start

    def _lambda(self, n_samples: int) -> float:
        if self.lambda_scaling == "fixed":
            return self.weight_decay * self.n_fit_samples_
        return self.weight_decay * n_samples

    def _rhs(self, jtr: Tensor, lam: float) -> Tensor:
        """:math:`J^Tr - \\lambda(a - w_0)`: the ridge right-hand side at linearisation point a."""
        if torch.equal(self.point_, self.w0_):
            return jtr
        return jtr - lam * (self.point_ - self.w0_)

    def _check_fitted(self) -> None:
        # not hasattr(self, "gram_"): on a state opened from a file that would read G
        if "w0_" not in self.__dict__:
            raise ConfigError("this NTKState is not fitted; call fit(model, w0, x, y) or load()")

    # ---- per request -----------------------------------------------------------------------

    def _solve_cg(self, target: Tensor, lam: float, downdate: Callable[[Tensor], Tensor],
                  max_iter: int) -> tuple[Tensor | None, int]:
        """Preconditioned conjugate gradients in the eigenbasis; ``(z_hat or None, iterations)``.

        Solves :math:`\\hat A\\hat z = \\hat b` for :math:`\\hat b` = ``target`` :math:`= Q^T\\mathrm{rhs}`
        with :math:`\\hat A = (\\Lambda + \\lambda) - E^TE`, :math:`E = UQ`, where ``downdate(v)`` applies
        :math:`E^TEv`; the caller returns :math:`z = Q\\hat z`. The preconditioner is the kept factor
        itself, :math:`B^{-1} = (\\Lambda + \\lambda)^{-1}` (diagonal here). With :math:`E` formed
        (:func:`_rotate_rows`) one product costs :math:`4mP` flops, without it :math:`4P^2 + 4mP`
        (:math:`Q` and :math:`Q^T` around the rows), against :math:`2m^2P` for the Woodbury
        capacitance. The preconditioned matrix is :math:`I - (UB^{-1/2})^T(UB^{-1/2})`, whose
        eigenvalues are 1 except for at most m of them in (0, 1]; forget rows that are small next to
        the rest of the data keep them away from 0, and CG then converges in a few dozen iterations
        (9-19 on the Fast-NTK benchmark requests). Stops when the preconditioned residual
        :math:`\\lVert r\\rVert_{B^{-1}}` is below ``CG_TOL`` times :math:`\\lVert \\hat b\\rVert_{B^{-1}}`;
        returns ``None`` when ``max_iter`` is reached first (the caller then solves directly).
        """
        diag = self.eigvals_ + lam
        # started at B^-1 rhs, the Woodbury start
        solution, iterations, converged = preconditioned_cg(
            lambda v: diag * v - downdate(v), target, lambda r: r / diag, self.CG_TOL, max_iter,
            start=target / diag, preconditioned_norm=True)
        return (solution if converged else None), iterations

    def _solve_rotated(self, rhs: Tensor, lam: float, rotated: Tensor, method: str,
                       pending: Tensor | None = None) -> tuple[Tensor, str]:
        """:meth:`_solve_downdate` for the committed rows plus new ones given as :math:`E = UQ` only."""
        n_committed = self.removed_eig_.shape[0]
        new_rows = pending if pending is not None else rotated.new_zeros(0, rotated.shape[1])
        return self._solve_downdate(rhs, lam, new_rows, rotated[n_committed:], None, method)[:2]

    def _solve_downdate(self, rhs: Tensor, lam: float, new_rows: Tensor, new_rotated: Tensor | None,
                        rotate: Callable[[], Tensor] | None, method: str) -> tuple[Tensor, str, Tensor | None]:
        """Solve :math:`(Q\\Lambda Q^T - U^TU + \\lambda I) z = \\mathrm{rhs}`; ``(z, method used, E or None)``.

        U is the rows committed since the factorisation (kept in the eigenbasis, ``removed_eig_``)
        followed by ``new_rows`` (dense, not yet subtracted from ``gram_``); ``new_rotated`` is
        ``new_rows @ Q`` when the caller formed it, else ``rotate()`` forms it when needed (default: the
        dense product). ``auto`` tries preconditioned CG (:meth:`_solve_cg`) for at most half the cost
        of the direct solve it would otherwise pick (Woodbury when :math:`3m < P`, else Cholesky of the
        downdated system), when that buys at least ``CG_MIN_ITERATIONS``, then falls back to that
        direct solve; ``cg`` always tries it first. The third value is :math:`E` for all of U when it
        was formed (for the caller's commit), else ``None``.
        """
        n_params = rhs.shape[0]
        committed = self.removed_eig_
        n_rows = committed.shape[0] + new_rows.shape[0]
        direct = "woodbury" if 3 * n_rows < n_params else "cholesky"
        if method not in ("auto", "cg", "woodbury", "cholesky"):
            raise ConfigError(f"unknown downdate method {method!r}; choose 'auto', 'cg', 'woodbury' "
                              "or 'cholesky'")
        basis = self.eigvecs_

        def rotated_all() -> Tensor:
            nonlocal new_rotated
            if new_rotated is None:
                new_rotated = rotate() if rotate is not None else new_rows @ basis
            return torch.cat([committed, new_rotated]) if committed.shape[0] else new_rotated

        if method in ("auto", "cg") and n_rows > 0:
            # Woodbury costs its capacitance E B^-1 E^T (and forming E, if not formed yet); Cholesky the
            # P^3 / 3 factorisation of G - U^T U plus the 2 m P^2 product that forms it
            to_form = 0.0 if new_rotated is not None else 2.0 * new_rows.shape[0] * n_params ** 2
            direct_flops = to_form + (2.0 * n_rows ** 2 * n_params + n_rows ** 3 / 3 if direct == "woodbury"
                                      else n_params ** 3 / 3 + 2.0 * new_rows.shape[0] * n_params ** 2)
            if new_rotated is not None:
                everything = rotated_all()
                downdate = lambda v: everything.T @ (everything @ v)  # noqa: E731
                iteration_flops = 4.0 * n_rows * n_params + 6.0 * n_params
            else:
                # without E: Q and Q^T around the new rows, fine while Q stays in cache (the caller's choice)
                downdate = lambda v: (committed.T @ (committed @ v)  # noqa: E731
                                      + basis.T @ (new_rows.T @ (new_rows @ (basis @ v))))
                iteration_flops = 4.0 * n_params ** 2 + 4.0 * n_rows * n_params
            budget = int(0.5 * direct_flops / iteration_flops)
            if budget >= self.CG_MIN_ITERATIONS or method == "cg":
                # in exact arithmetic CG ends within m + 1 iterations: I - (UB^-1/2)^T (UB^-1/2) has at
                # most m + 1 distinct eigenvalues; an explicit "cg" gets that many (plus slack for round-off)
                limit = n_rows + 10 if method == "cg" else min(budget, n_rows + 10)
                solution, iterations = self._solve_cg(basis.T @ rhs, lam, downdate, limit)
                self.last_cg_iterations_ = iterations
                if solution is not None:
                    return basis @ solution, "cg", (rotated_all() if new_rotated is not None else None)
            method = direct
        if method in ("auto", "cg"):
            method = direct
        if method == "cholesky":
            # gram_ is Q Lambda Q^T - (rows already committed); subtract only the new ones
            system = _with_ridge(self.gram_, lam)
            if new_rows.shape[0]:
                system.addmm_(new_rows.T, new_rows, alpha=-1.0)
            return _spd_solve(system, rhs), "cholesky", (rotated_all() if new_rotated is not None else None)
        inv_diag = 1.0 / (self.eigvals_ + lam)
        rhs_eig = basis.T @ rhs
        solution = inv_diag * rhs_eig                                  # B^-1 rhs, in the eigenbasis
        if n_rows == 0:
            return basis @ solution, "woodbury", committed
        everything = rotated_all()
        capacitance = -(everything * inv_diag) @ everything.T          # -(U B^-1 U^T)
        capacitance.diagonal().add_(1.0)                               # I - U B^-1 U^T
        factor, info = torch.linalg.cholesky_ex(capacitance)
        if int(info) != 0:
            # I - U B^-1 U^T is positive definite in exact arithmetic (A_r is); if round-off
            # broke that, the direct factorisation is the safe answer.
            return self._solve_downdate(rhs, lam, new_rows, new_rotated, rotate, "cholesky")
        coeff = torch.cholesky_solve((everything @ solution).unsqueeze(1), factor).squeeze(1)
        return basis @ (solution + inv_diag * (everything.T @ coeff)), "woodbury", everything

    def forget_jacobian(self, jac_forget: Tensor, res_forget: Tensor, n_forget: int,
                        method: str = "auto", commit: bool = True,
                        gram_rows: Tensor | None = None) -> tuple[Tensor, Tensor, dict]:
        """Downdate with precomputed forget rows ``jac_forget`` (m, P) and residuals (m,).

        ``gram_rows`` are the rows :math:`M^TJ_f` the Gram matrix is downdated with (default
        ``jac_forget``, right for ``weighting="identity"``). Returns ``(delta, delta_retain,
        info)`` with ``delta`` :math:`=\\delta_r-\\delta_D` and ``delta_retain``
        :math:`= w_{lin}(D_r) - a`.
        """
        jtr_forget = jac_forget.to(SOLVE_DTYPE).T @ res_forget.to(SOLVE_DTYPE)
        return self._downdate(jac_forget if gram_rows is None else gram_rows, jtr_forget, n_forget,
                              method, commit)

    def _downdate(self, jac_forget: Tensor, jtr_forget: Tensor, n_forget: int, method: str,
                  commit: bool, rotated: Tensor | None = None,
                  rotate: Callable[[], Tensor] | None = None) -> tuple[Tensor, Tensor, dict]:
        """:meth:`forget_jacobian` given the Gram rows, :math:`J_f^Tr_f` and optionally their :math:`UQ`
        (``rotated``, or ``rotate()`` to form it when needed)."""
        self._check_fitted()
        if n_forget < 1:
            raise ConfigError("the forget set is empty; select at least one sample to forget")
        if n_forget >= self.n_samples_:
            raise ConfigError(f"the forget set ({n_forget} samples) is all the data left in the "
                              f"NTK state ({self.n_samples_}); nothing would be retained")
        jac_forget = jac_forget.to(SOLVE_DTYPE)
        t_start = time.perf_counter()
        n_retain = self.n_samples_ - n_forget
        lam_retain = self._lambda(n_retain)
        jtr_retain = self.jtr_ - jtr_forget.to(SOLVE_DTYPE)
        delta_retain, used, rotated_all = self._solve_downdate(self._rhs(jtr_retain, lam_retain), lam_retain,
                                                               jac_forget, rotated, rotate, method)
        delta = delta_retain - self.delta_
        t_solve = time.perf_counter()
        refactor_seconds = 0.0
        n_removed = self.removed_eig_.shape[0] + jac_forget.shape[0]
        if commit:
            if rotated_all is None:
                new = rotate() if rotate is not None else jac_forget @ self.eigvecs_
                rotated_all = torch.cat([self.removed_eig_, new]) if self.removed_eig_.shape[0] else new
            self.gram_.addmm_(jac_forget.T, jac_forget, alpha=-1.0)
            self.jtr_ = jtr_retain
            self.n_samples_ = n_retain
            self.delta_ = delta_retain
            self.removed_jacobian_ = torch.cat([self.removed_jacobian_, jac_forget])
            self.removed_eig_ = rotated_all
            self.n_requests_ += 1
            if 3 * n_removed >= jac_forget.shape[1]:
                refactor_seconds = self.refactor()
        info = {"downdate": used, "cg_iterations": getattr(self, "last_cg_iterations_", None) if used == "cg" else None,
                "solve": t_solve - t_start, "commit": time.perf_counter() -
                t_solve - refactor_seconds, "refactor": refactor_seconds,
                "rows_removed_since_factor": int(n_removed),
                "lambda_full": self._lambda(n_retain + n_forget), "lambda_retain": lam_retain}
        return delta, delta_retain, info

    def _read_request_tensors(self) -> None:
        """Read what a request uses of a state opened from a file: Q and the removed rows in its basis."""
        for name in ("eigvecs_", "removed_eig_"):
            getattr(self, name)

    def _forget_chunk_size(self, model: nn.Module, point: Mapping[str, Tensor], sample: Tensor) -> int:
        """Samples per Jacobian chunk of a request: ``chunk_size`` or fewer (``FORGET_CHUNK_BYTES``)."""
        largest = activation_footprint(model, point, sample[:1])["largest"]
        if largest <= 0:
            return self.chunk_size
        return max(1, min(self.chunk_size, self.FORGET_CHUNK_BYTES // (max(self.n_classes_, 1) * largest)))

    def forget(self, model: nn.Module, forget_x: Tensor, forget_y: Tensor,
               scale: float | str = 1.0, method: str = "auto", commit: bool = True,
               inplace: bool = False, rank_tol: float = DEFAULT_GGN_RANK_TOL) -> tuple[nn.Module, dict]:
        """Serve one deletion request: Jacobians of ``forget_x`` at ``point_``, downdate, update.

        With ``weighting="ggn"`` the forget rows are :math:`\\Lambda_i^{1/2}U_i^TJ_i` for the
        eigen-directions of :math:`W_i = \\mathrm{diag}(p_i) - p_ip_i^T` that matter, each one a
        vector-Jacobian product (:func:`_forget_rows`): :math:`W_i` has rank at most C - 1 and
        directions with small eigenvalues add almost nothing to the downdate. ``rank_tol``
        bounds what dropping them may change. Dropped directions leave a PSD remainder
        :math:`E` in the downdated system, :math:`A_r' = A_r + E`, and
        :math:`\\delta_r - \\delta_r' = A_r^{-1}E\\,\\delta_r'` with :math:`A_r \\succeq \\lambda_r I`, so

        .. math::

            \\lVert \\delta_r - \\delta_r' \\rVert \\le \\frac{\\lVert E\\rVert}{\\lambda_r}\\lVert\\delta_r'\\rVert
            \\le \\mathrm{rank\\_tol}\\,\\lVert\\delta_r'\\rVert
            \\quad\\text{when}\\quad \\lVert E\\rVert \\le \\sum_{i\\in D_f}\\lVert J_i\\rVert_2^2
            \\sum_{k\\,\\mathrm{dropped}}\\lambda_{ik} \\le \\mathrm{rank\\_tol}\\,\\lambda_r .

        Each forget sample may therefore drop eigenvalues summing to
        :math:`\\mathrm{rank\\_tol}\\,\\lambda_r / (|D_f|\\,c)` with
        :math:`c = \\max_{i\\in D}\\lVert J_i\\rVert_2^2` recorded by :meth:`fit` (the forget samples
        are in D and the Jacobians are taken at the same point). ``rank_tol=0`` (or a state
        saved without :math:`c`) keeps every direction with a positive eigenvalue, the exact
        downdate. ``info["update_change_bound"]`` is the resulting a-posteriori bound on the
        relative change of the applied update, :math:`\\mathrm{rank\\_tol}\\lVert\\delta_r'\\rVert /
        \\lVert\\delta_r' - \\delta_D\\rVert`.

        Returns the updated model (a copy unless ``inplace``) and an info dict whose
        ``per_request`` timings (``load``: reading and checking the factor of a state opened from a
        file; ``jacobian``; ``solve``, which includes ``rotate``, forming :math:`UQ` by
        :func:`_rotate_rows`; ``total``) are separate from the ``one_off`` timings of :meth:`fit`.
        """
        self._check_fitted()
        t_start = time.perf_counter()
        if forget_x.shape[0] != forget_y.shape[0]:
            raise ConfigError(f"forget set has {forget_x.shape[0]} inputs but "
                              f"{forget_y.shape[0]} labels; pass one label per input")
        if forget_x.shape[0] == 0:
            raise ConfigError("the forget set is empty; select at least one sample to forget")
        if not (isinstance(rank_tol, (int, float)) and 0 <= rank_tol < 1):
            raise ConfigError(f"rank_tol must be a number in [0, 1), got {rank_tol!r}; 1e-6 keeps the "
                              "retain step within 1e-6 of the exact downdate")
        live = dict(model.named_parameters())
        missing = [n for n in self.param_names_ if n not in live]
        if missing or any(list(live[n].shape) != s
                          for n, s in zip(self.param_names_, self.param_shapes_)):
            raise ArtifactError(
                f"the NTK state was built for other parameters (missing or reshaped: "
                f"{missing[:3] or 'shapes differ'}); rebuild it with NTKState.fit for this model"
            )
        selected = {n: live[n] for n in self.param_names_}
        point = {n: t.to(selected[n].dtype) for n, t in
                 unflatten_parameters(self.point_, selected).items()}
        n_forget = int(forget_x.shape[0])
        # what the downdate reads from a state opened from a file (the factor Q, the rows removed since
        # it, in its basis), read and checked against their checksums here, on the request's clock
        t_load = time.perf_counter()
        self._read_request_tensors()
        t_loaded = time.perf_counter()
        sq_norm = getattr(self, "jacobian_sq_norm_", None)
        drop_budget = 0.0
        if rank_tol > 0 and sq_norm and n_forget < self.n_samples_:
            drop_budget = rank_tol * self._lambda(self.n_samples_ - n_forget) / (n_forget * sq_norm)
        rows, jtr_f, n_classes, source_dtype = _forget_rows(
            model, point, forget_x, forget_y, self.loss, self._forget_chunk_size(model, point, forget_x),
            self.jacobian_mode, self.weighting, drop_budget)
        if n_classes != self.n_classes_:
            raise ArtifactError(f"model has {n_classes} classes but "
                                f"the NTK state has {self.n_classes_}; rebuild the state")
        t_solve = time.perf_counter()
        flat = rows.reshape(-1, rows.shape[-1])
        kept = _nonzero_rows(flat)
        gram_rows = flat[kept]

        def rotate() -> Tensor:
            return _rotate_rows(rows, self.eigvecs_, self.param_shapes_, source_dtype)[kept]

        # E = UQ up front unless Q stays in cache: then CG applies Q and Q^T around the rows per
        # iteration, cheaper than forming E for the few iterations it takes (P = 970: 17 iterations).
        # An explicit Cholesky solve never uses E: a commit forms it afterwards, outside the request
        n_params = flat.shape[1]
        rotated = (rotate() if method != "cholesky" and 8 * n_params * n_params > self.CG_CACHE_BYTES
                   else None)
        t_rotated = time.perf_counter()
        delta, delta_retain, solve_info = self._downdate(gram_rows, jtr_f, forget_x.shape[0],
                                                         method, commit, rotated=rotated, rotate=rotate)
        w_trained = flatten_parameters(selected, SOLVE_DTYPE)
        step = (trapezium_scale(delta, w_trained, self.point_ + delta_retain)
                if scale == "trapezium" else float(scale))
        applied = unflatten_parameters(step * delta, selected)
        updated = model if inplace else copy.deepcopy(model)
        _apply_delta(updated, self.param_names_, applied)
        t_end = time.perf_counter()
        dropped_rows = drop_budget > 0 and int(gram_rows.shape[0]) < n_forget * self.n_classes_
        info = {
            "method": "ntk" if self.params == "all" else "fast-ntk",
            "solver": "state", "downdate": solve_info["downdate"], "cg_iterations": solve_info["cg_iterations"],
            "P": int(self.w0_.numel()), "N_forget": int(forget_x.shape[0]),
            "N_retain": self.n_samples_ if commit else self.n_samples_ - forget_x.shape[0],
            "C": self.n_classes_, "lambda_retain": solve_info["lambda_retain"],
            "weighting": self.weighting,
            "linearised_at": "w0" if torch.equal(self.point_, self.w0_) else "given point",
            "scale": step, "delta_norm": float(torch.linalg.vector_norm(delta)),
            "delta": applied,
            "rows": int(gram_rows.shape[0]), "rows_full": n_forget * self.n_classes_,
            # the bound only means something where rows were actually dropped (W = I drops none)
            "rank_tol": float(rank_tol) if dropped_rows else 0.0,
            "update_change_bound": (float(rank_tol * torch.linalg.vector_norm(delta_retain)
                                          / torch.linalg.vector_norm(delta))
                                    if dropped_rows and float(torch.linalg.vector_norm(delta)) > 0
                                    else 0.0),
            "timings": {
                "one_off": dict(self.one_off_seconds_),
                "per_request": {"load": t_loaded - t_load,
                                "jacobian": t_solve - t_start - (t_loaded - t_load),
                                "rotate": t_rotated - t_solve,
                                "solve": t_rotated - t_solve + solve_info["solve"],
                                "refactor": solve_info["refactor"], "total": t_end - t_start},
            },
        }
        return updated, info

    # ---- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state to one safetensors file; hyperparameters go in its JSON metadata.

        The metadata also lists the SHA-256 of every tensor (``tensor_sha256``), so the file's
        header (:func:`read_safetensors_header`) authenticates all of it and a reader can check just
        the tensors it reads (:meth:`open`).
        """
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        tensors = {"w0": self.w0_, "point": self.point_, "gram": self.gram_, "jtr": self.jtr_,
                   "eigvals": self.eigvals_, "eigvecs": self.eigvecs_,
                   "removed_jacobian": self.removed_jacobian_, "removed_eig": self.removed_eig_,
                   "delta": self.delta_}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format": self.FORMAT,
            "hyperparameters": {"params": self.params, "weight_decay": self.weight_decay,
                                "loss": self.loss, "lambda_scaling": self.lambda_scaling,
                                "chunk_size": self.chunk_size,
                                "jacobian_mode": self.jacobian_mode, "weighting": self.weighting},
            "param_names": self.param_names_, "param_shapes": self.param_shapes_,
            "n_samples": self.n_samples_, "n_fit_samples": self.n_fit_samples_,
            "n_classes": self.n_classes_, "n_requests": self.n_requests_,
            "one_off_seconds": self.one_off_seconds_,
            "jacobian_sq_norm": getattr(self, "jacobian_sq_norm_", None),
            "tensor_sha256": {k: _tensor_sha256(v) for k, v in tensors.items()},
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path), metadata={self._METADATA_KEY: json.dumps(meta)})
        except OSError as exc:
            raise ResourceError(f"cannot write the NTK state to {path}: {exc.strerror}; "
                                "choose a writable --out directory") from exc
        return path

    @classmethod
    def _from_meta(cls, path: Path, meta_text: str | None, tensor_names: set[str]) -> tuple[NTKState, dict]:
        """A state with the hyperparameters and counts of the JSON metadata (tensors not set yet)."""
        try:
            meta = json.loads(meta_text) if meta_text else None
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict) or meta.get("format") not in cls._READABLE_FORMATS:
            raise ArtifactError(f"{path} is not a privkit NTK state (format {cls.FORMAT}); "
                                "rebuild it with NTKState.fit")
        needed = {"w0", "gram", "jtr", "eigvals", "eigvecs", "removed_jacobian", "delta"}
        if meta["format"] != "privkit.ntk_state/1":
            needed.add("point")  # only format 1 may omit it (it was always linearised at w0)
        if meta["format"] == cls.FORMAT:
            needed.add("removed_eig")
        if needed - tensor_names:
            raise ArtifactError(f"NTK state {path} lacks {sorted(needed - tensor_names)}; "
                                "rebuild it with NTKState.fit")
        try:
            state = cls(**meta["hyperparameters"])
            state.param_names_ = list(meta["param_names"])
            state.param_shapes_ = [list(s) for s in meta["param_shapes"]]
            state.n_samples_ = int(meta["n_samples"])
            state.n_fit_samples_ = int(meta["n_fit_samples"])
            state.n_classes_ = int(meta["n_classes"])
            state.n_requests_ = int(meta["n_requests"])
            state.one_off_seconds_ = dict(meta["one_off_seconds"])
        except (KeyError, TypeError, ValueError) as exc:  # the format named, its metadata malformed
            raise ArtifactError(f"NTK state {path} has malformed metadata ({exc!r}); rebuild it with "
                                f"NTKState.fit") from None
        # absent in states saved before it was recorded: their requests keep every direction
        bound = meta.get("jacobian_sq_norm")
        state.jacobian_sq_norm_ = float(bound) if isinstance(bound, (int, float)) and bound > 0 else None
        return state, meta

    def _check_shapes(self, path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
        n_params = math.prod(shapes["w0"])
        square = (n_params, n_params)
        if (len(shapes["w0"]) != 1 or tuple(shapes["gram"]) != square or tuple(shapes["eigvecs"]) != square
                or sum(math.prod(s) for s in self.param_shapes_) != n_params
                or any(tuple(shapes[k]) != (n_params,) for k in ("point", "jtr", "eigvals", "delta") if k in shapes)
                or any(len(shapes[k]) != 2 or shapes[k][1] != n_params
                       for k in ("removed_jacobian", "removed_eig") if k in shapes and math.prod(shapes[k]))):
            raise ArtifactError(f"NTK state {path} has inconsistent shapes; rebuild it")

    @classmethod
    def open(cls, path: str | os.PathLike, header: tuple[bytes, dict] | None = None) -> NTKState:
        """Open a format-3 state: read its P-length tensors now, the rest when first used.

        ``header``: ``(raw, parsed)`` from :func:`read_safetensors_header` when the caller has checked
        the raw header against a checksum (``meta.json``); the header lists every tensor's SHA-256 and
        each tensor is checked against it when it is read (:class:`_StateFile`), so a request reads and
        hashes the P x P factor it uses, not the Gram matrix it does not (which the upkeep reads).
        """
        path = Path(path)
        raw, parsed = header if header is not None else read_safetensors_header(path)
        meta_text = (parsed.get("__metadata__") or {}).get(cls._METADATA_KEY)
        names = {k for k in parsed if k != "__metadata__"}
        state, meta = cls._from_meta(path, meta_text, names)
        digests = meta.get("tensor_sha256")
        if meta["format"] != cls.FORMAT or not isinstance(digests, dict) or set(digests) != names:
            raise ArtifactError(f"NTK state {path} has no checksum per tensor (format {meta['format']}); "
                                "read it with NTKState.load, or refit it with `privkit train --peft`")
        try:
            shapes = {k: tuple(int(d) for d in parsed[k]["shape"]) for k in names}
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"NTK state {path} has a malformed header; rebuild it") from exc
        state._check_shapes(path, shapes)
        source = _StateFile(path, len(raw) - 8, parsed, digests)
        state._source = source
        for name in ("w0", "point", "jtr", "eigvals", "delta"):
            setattr(state, f"{name}_", source.read(name))
        return state

    @classmethod
    def load(cls, path: str | os.PathLike, raw: bytes | None = None) -> NTKState:
        """Read a state written by :meth:`save` (safetensors + JSON metadata; no pickle).

        ``raw``: the file's bytes when the caller has read them already (to check a checksum),
        so a deletion request reads the state once. Without ``raw`` a format-3 file is opened with
        :meth:`open` (tensors read and checked against the header's checksums when used).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load as load_bytes

        from privkit.io.artifacts import safetensors_header

        path = Path(path)
        if raw is None:
            header = read_safetensors_header(path)
            try:
                meta = json.loads((header[1].get("__metadata__") or {}).get(cls._METADATA_KEY) or "null")
            except json.JSONDecodeError:
                meta = None  # _from_meta below refuses it with the usual message
            if isinstance(meta, dict) and meta.get("format") == cls.FORMAT:
                return cls.open(path, header)
            raw = path.read_bytes()
        try:
            header = safetensors_header(raw)
            raw_meta = (header.get("__metadata__") or {}).get(cls._METADATA_KEY)
            tensors = load_bytes(raw)
        except (SafetensorError, OSError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"NTK state {path} is not a readable safetensors file ({exc}); "
                                "rebuild it with NTKState.fit") from exc
        state, _ = cls._from_meta(path, raw_meta, set(tensors))
        if "point" not in tensors:
            tensors["point"] = tensors["w0"].clone()  # format 1 was always linearised at w0
        state._check_shapes(path, {k: tuple(v.shape) for k, v in tensors.items()})
        n_params = tensors["w0"].numel()
        state.w0_, state.gram_, state.jtr_ = tensors["w0"], tensors["gram"], tensors["jtr"]
        state.point_ = tensors["point"]
        state.eigvals_, state.eigvecs_ = tensors["eigvals"], tensors["eigvecs"]
        state.removed_jacobian_ = tensors["removed_jacobian"].reshape(-1, n_params)
        if "removed_eig" in tensors:
            state.removed_eig_ = tensors["removed_eig"].reshape(-1, n_params)
        state.delta_ = tensors["delta"]
        return state
