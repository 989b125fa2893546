"""Gradient inversion of a VQNN from a shared parameter-shift gradient.

Threat model (Papadopoulos et al., 2025, arXiv 2504.12806): an honest-but-curious server knows
the circuit, the parameters ``theta``, the loss and the labels of the client batch, and receives
``g = sum_b grad_theta L(x_b, y_b; theta)`` (``M`` numbers). It searches a batch ``x'`` of ``B``
inputs whose gradient matches:

    L(x') = (1/M) sum_m (g'_m(x') - g_m)^2 / ((1/M) sum_m g_m^2)

(the normalisation by ``||g||^2 / M`` only makes one learning rate fit every model). The landscape
of ``L`` is full of narrow local minima, so ``dL/dx'_j`` is estimated by central finite
differences averaged over ``N`` step sizes ``h, 2h, ..., N h``

    D_j(x') = (1/N) sum_{k=1}^{N} [L(x' + k h e_j) - L(x' - k h e_j)] / (2 k h),

a moving-average low-pass filter of the derivative. ``N`` is halved whenever the loss plateaus,
sharpening the estimate near the end. ``x'`` follows SGD ``x' <- clip(x' - eta D(x'))`` on the
known feature range (or another step rule registered in :data:`STEP_RULES`, e.g. a damped
Gauss-Newton step from the same finite differences), optionally smoothed per dimension by a
Kalman filter, from ``R`` restarts (each from a random point, or the lowest-loss of ``K`` random
points). All ``R (1 + 2 N B n)`` candidate inputs of one iteration go through the simulator in
one batched call (per-sample ``g'`` by the adjoint method of
:meth:`privkit.attacks.quantum.models.VQNN.per_sample_gradients`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from privkit.attacks.quantum.models import VQNN


STEP_RULES: dict[str, type] = {}


def register_step_rule(name: str):
    """Register a step rule class under ``name``: ``rule = cls(shape, dtype, **options)``, then
    ``rule(estimate, learning_rate) -> step`` once per iteration; the iterate moves to
    ``x' - step`` (before the optional Kalman filter and the projection onto the feature range)."""

    def decorator(cls):
        STEP_RULES[name] = cls
        return cls

    return decorator


@register_step_rule("sgd")
class SGDStep:
    """The paper's plain step ``eta D(x')``."""

    def __init__(self, shape, dtype, **_options):
        pass

    def __call__(self, estimate: torch.Tensor, learning_rate: float) -> torch.Tensor:
        return learning_rate * estimate


@register_step_rule("normalized")
class NormalizedStep:
    """``eta D / ||D||`` per restart (norm over the ``B n`` coordinates of one restart): a step of
    fixed length ``eta``, invariant to the scale of the loss, so flat valleys are crossed at the
    same speed as steep slopes (plateau-driven shrinking of ``N`` and the projection are unchanged)."""

    def __init__(self, shape, dtype, eps: float = 1e-12, **_options):
        self.eps = eps

    def __call__(self, estimate: torch.Tensor, learning_rate: float) -> torch.Tensor:
        norm = estimate.flatten(1).norm(dim=1).clamp_min(self.eps)
        return learning_rate * estimate / norm.reshape(-1, *([1] * (estimate.dim() - 1)))


@register_step_rule("adam")
class AdamStep:
    """Per-dimension scaled step with momentum (Adam, Kingma & Ba 2015) on the finite-difference
    estimate ``D``:

        m <- b1 m + (1 - b1) D,   v <- b2 v + (1 - b2) D^2,
        step = eta (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).

    Each coordinate moves by about ``eta`` per iteration whatever the curvature along it (aimed at
    the ill-conditioned valley of a batch); the step is invariant to a rescaling of the loss (up
    to ``eps``). On the batch of 3 of docs/benchmarks.md it did worse than SGD when combined with
    the Kalman filter; :class:`GaussNewtonStep` is the rule that helps there.
    """

    def __init__(self, shape, dtype, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-12,
                 **_options):
        self.m = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.beta1, self.beta2, self.eps, self.t = beta1, beta2, eps, 0

    def __call__(self, estimate: torch.Tensor, learning_rate: float) -> torch.Tensor:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * estimate
        self.v = self.beta2 * self.v + (1 - self.beta2) * estimate.pow(2)
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return learning_rate * m_hat / (v_hat.sqrt() + self.eps)


@register_step_rule("gauss-newton")
class GaussNewtonStep:
    """Damped Gauss-Newton (Levenberg-Marquardt) step from the same finite differences.

    The loss is a sum of squares, ``L = ||r||^2`` with residual ``r = (g'(x') - g) / sqrt(M s)``
    (``s = ||g||^2 / M``). The moving-average differences of the *residual vector*, taken from the
    very candidates whose losses give ``D`` (no extra simulation), estimate its Jacobian
    ``J_j = (1/N) sum_k [r(x' + k h e_j) - r(x' - k h e_j)] / (2 k h)``, and the step is

        step = eta (J^T J + mu I)^{-1} J^T r,   mu = damping * tr(J^T J) / (B n),

    shortened to length ``max_step`` (a trust radius, rad). ``D`` only sees ``2 J^T r``: along a
    valley whose curvature is ``1e-4`` of the steepest one plain SGD crawls, while the
    Gauss-Newton step rescales every direction by its own curvature (Nocedal & Wright 2006,
    ch. 10). Like the other rules it is invariant to a rescaling of the loss.
    """

    needs_jacobian = True

    def __init__(self, shape, dtype, damping: float = 1e-3, max_step: float = 0.5, **_options):
        self.damping, self.max_step = damping, max_step

    def __call__(self, estimate: torch.Tensor, learning_rate: float, *, jacobian: torch.Tensor,
                 residual: torch.Tensor) -> torch.Tensor:
        # jacobian (R, M, D), residual (R, M)
        normal = jacobian.transpose(1, 2) @ jacobian  # (R, D, D)
        dims = normal.shape[-1]
        mu = self.damping * normal.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30) / dims
        eye = torch.eye(dims, dtype=normal.dtype)
        rhs = (jacobian.transpose(1, 2) @ residual[..., None])[..., 0]
        step = learning_rate * torch.linalg.solve(normal + mu[:, None, None] * eye, rhs)
        length = step.norm(dim=1, keepdim=True)
        step = step * torch.clamp(self.max_step / length.clamp_min(1e-30), max=1.0)
        return step.reshape(estimate.shape)


def gradient_matching_loss(model: VQNN, theta: torch.Tensor, target_gradient: torch.Tensor,
                           labels: torch.Tensor, candidates: torch.Tensor, *,
                           method: str = "adjoint") -> torch.Tensor:
    """``L(x')`` for many candidate batches at once.

    Parameters
    ----------
    candidates : tensor ``(C, B, n)``
        ``C`` candidate batches of ``B`` inputs each.
    labels : tensor ``(B,)``
    target_gradient : tensor ``(M,)``

    Returns
    -------
    tensor ``(C,)``
    """
    grads = candidate_gradients(model, theta, labels, candidates, method=method)
    scale = target_gradient.pow(2).mean().clamp_min(1e-30)
    return (grads - target_gradient).pow(2).mean(dim=1) / scale


def candidate_gradients(model: VQNN, theta: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor, *,
                        method: str = "adjoint") -> torch.Tensor:
    """The shared gradient ``g'(x') = sum_b grad_theta L(x'_b, y_b)`` of every candidate batch,
    ``(C, M)``, in one batched simulator call."""
    n_cand, batch, n_features = candidates.shape
    rows = candidates.reshape(-1, n_features)
    per_sample = model.per_sample_gradients(rows, labels.repeat(n_cand), theta, method=method)
    return per_sample.reshape(n_cand, batch, -1).sum(dim=1)


def gradient_input_jacobian(model: VQNN, theta: torch.Tensor, inputs, labels) -> torch.Tensor:
    """Jacobian ``J = d g / d x`` of the shared gradient ``g = sum_b grad_theta L(x_b, y_b)``
    with respect to the ``B n`` inputs, shape ``(M, B n)`` (exact, second-order autodiff).

    At the true batch it decides local identifiability: the inputs are locally determined by
    ``g`` iff ``rank J = B n``; near the truth the normalised attack loss is
    ``L(x + d) ~ d^T H d`` with ``H = J^T J / ||g||^2``, so its smallest eigenvalue
    ``lambda_min`` sets how flat the valley is (gradient descent with step ``eta`` needs about
    ``1 / (eta lambda_min)`` iterations along it).
    """
    inputs = torch.as_tensor(np.asarray(inputs), dtype=model.dtype)
    labels = torch.as_tensor(np.asarray(labels), dtype=model.dtype).reshape(-1)
    theta = torch.as_tensor(theta, dtype=model.dtype)
    shape = inputs.shape

    def shared_gradient(flat):
        return model.per_sample_gradients(flat.reshape(shape), labels, theta, method="autodiff",
                                          create_graph=True).sum(dim=0)

    with torch.enable_grad():
        return torch.autograd.functional.jacobian(shared_gradient, inputs.reshape(-1))


def matched_mse(reconstructed: np.ndarray, true: np.ndarray) -> float:
    """``MSE(x', x)`` after the best one-to-one matching of the ``B`` reconstructed rows to the
    true rows (the summed gradient does not say which sample is which)."""
    reconstructed = np.asarray(reconstructed, dtype=float)
    true = np.asarray(true, dtype=float)
    if reconstructed.shape[0] == 1:
        return float(((reconstructed - true) ** 2).mean())
    cost = ((reconstructed[:, None, :] - true[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


class _KalmanSmoother:
    """Per-dimension Kalman filter on the SGD iterates with a damped-velocity motion model.

    State ``s = (p, v)`` per input dimension, transition ``p <- p + v``, ``v <- rho v`` (``F =
    [[1, 1], [0, rho]]``), process noise ``Q = diag(q, q)``; measurement ``z = p + noise(r)``
    where ``z`` is the SGD iterate taken *from the predicted position*,
    ``z = p_pred - eta D(p_pred)``. The filtered position is the next iterate. In steady state
    this is ``v <- rho v - k_2 eta D(p_pred)``, ``p <- p_pred - k_1 eta D(p_pred)``: the gains
    ``k_1, k_2`` (set by ``q / r``) damp noisy finite-difference steps while consistent descent
    directions build up velocity (a look-ahead momentum), which is what crosses the flat valleys
    of the batch landscape. Measuring from the previous position instead would make ``v`` a mere
    average of the steps (no speed-up at all), and ``rho = 1`` gives an undamped oscillator.
    """

    def __init__(self, initial: torch.Tensor, process_var: float, measurement_var: float,
                 velocity_decay: float = 0.9):
        self.p = initial.clone()
        self.v = torch.zeros_like(initial)
        self.p11 = torch.full_like(initial, measurement_var)
        self.p12 = torch.zeros_like(initial)
        self.p22 = torch.full_like(initial, measurement_var)
        self.q, self.r, self.rho = process_var, measurement_var, velocity_decay

    def predict(self) -> torch.Tensor:
        """Advance the state by one step; returns the predicted position."""
        rho = self.rho
        self.p = self.p + self.v
        self.v = rho * self.v
        p11, p12, p22 = self.p11, self.p12, self.p22
        self.p11 = p11 + 2 * p12 + p22 + self.q
        self.p12 = rho * (p12 + p22)
        self.p22 = rho * rho * p22 + self.q
        return self.p

    def update(self, measurement: torch.Tensor) -> torch.Tensor:
        """Fuse a measurement; returns the filtered position."""
        innovation = measurement - self.p
        s = self.p11 + self.r
        k1, k2 = self.p11 / s, self.p12 / s
        self.p = self.p + k1 * innovation
        self.v = self.v + k2 * innovation
        p11, p12, p22 = self.p11, self.p12, self.p22
        self.p11 = (1 - k1) * p11
        self.p12 = (1 - k1) * p12
        self.p22 = p22 - k2 * p12
        return self.p


class FiniteDifferenceInversion:
    """The moving-average finite-difference gradient inversion attack.

    Parameters
    ----------
    model : VQNN
    theta : tensor ``(P,)``
        The parameters at which the client computed its gradient.
    restarts : int
        Independent random starting points ``R``.
    iterations : int
        SGD iterations per restart.
    learning_rate : float
        Step size ``eta`` on the normalised loss (for ``step_rule="sgd"``: ``x' <- x' - eta D``).
    step_rule : str
        A key of :data:`STEP_RULES`: ``"sgd"`` (the paper's step, default), ``"normalized"``
        (``eta D / ||D||``), ``"adam"`` (per-dimension scaled step with momentum) or
        ``"gauss-newton"`` (damped Gauss-Newton step from the finite-difference Jacobian of the
        residual ``g' - g``, see :class:`GaussNewtonStep`).
    step_options : dict, optional
        Keyword options of the step rule (``beta1``, ``beta2``, ``eps`` for ``"adam"``;
        ``damping``, ``max_step`` for ``"gauss-newton"``).
    fd_step : float
        Finite-difference step ``h``.
    fd_points : int
        Initial number ``N`` of steps averaged (``h ... N h``); halved on each plateau.
    plateau_patience : int
        Length of the plateau window: every ``plateau_patience`` iterations ``N`` halves unless
        the best loss fell by at least the fraction ``plateau_tol`` during the window.
    plateau_tol : float
    fd_points_by_loss : bool
        Also cap ``N <= ceil(N_0 sqrt(L(x') / L(x'_0)))``: the paper shrinks the window ``N h``
        as the loss approaches the global minimum; near a minimum the distance to it scales as
        ``sqrt(L)``, and a window much wider than that distance biases the smoothed derivative
        (its zero is not the true minimum), which left batch restarts stuck at MSE ~0.03 with
        the plateau rule alone. Default True (measured in docs/benchmarks.md).
    window_reference_loss : float, optional
        The loss ``L_ref`` of that cap, ``N <= ceil(N_0 sqrt(L(x') / L_ref))``. None (the old
        behaviour): each restart's starting loss ``L(x'_0)``. A random start often has
        ``L(x'_0) ~ 10-50``, so the cap cut the window to ``N ~ 3`` as soon as the loss fell to
        ~1, far from any minimum, and the smoothing was gone before it could help. ``1.0`` is the
        normalised loss of a zero gradient ``g' = 0`` (nothing matched): the full window is kept
        until ``L < 1`` and shrinks as ``sqrt(L)`` below it (on the 6-qubit tuning targets this
        did not change the success rate: the failed restarts sit in minima wider than the window).
    kalman : bool
        Smooth the iterates with a per-dimension Kalman filter (see :class:`_KalmanSmoother`).
    kalman_process_var, kalman_measurement_var : float
        ``q`` and ``r`` of the Kalman filter; their ratio sets the steady-state gains (``q / r =
        1``: ``k_1 = 0.81``, ``k_2 = 0.36``). Default ``q = r = 1e-2``: ``q = 1e-3`` (``k_2 =
        0.16``) built up too little velocity and gained nothing over SGD; ``q = 1e-1`` gave the
        same 6-qubit success as ``1e-2``.
    kalman_velocity_decay : float
        ``rho`` of the damped-velocity motion model (``rho = 1``: undamped, oscillates).
    feature_range : (float, float)
        Known range of the (scaled) inputs; iterates are kept inside it.
    boundary : {"reflect", "clip"}
        How iterates leaving ``feature_range`` are brought back.
    start_candidates : int
        Each restart starts from the lowest-loss of ``K`` independent uniform draws in
        ``feature_range`` (one batched loss evaluation of ``R K`` candidates). ``1`` (default):
        the first draw, the paper's random start.
    success_mse : float
        A restart succeeds when ``MSE(x', x) <= success_mse``.
    gradient_method : {"adjoint", "autodiff", "parameter-shift"}
        How the attacker's simulator computes ``g'(x')``; all three are exact (tested against
        each other); the adjoint method (one shared ``theta``, ``2 L`` dense products per
        candidate batch) is the cheapest.
    seed : int

    Attributes
    ----------
    reconstructions_ : ndarray ``(R, B, n)``
    loss_history_ : ndarray ``(R, T + 1)``
    mse_history_ : ndarray ``(R, T + 1)`` or None
        Only when ``true_inputs`` is given to :meth:`fit`.
    final_mse_ : ndarray ``(R,)`` or None
    success_ : ndarray of bool ``(R,)`` or None
    fd_points_history_ : ndarray ``(R, T + 1)``
    """

    def __init__(self, model: VQNN, theta, *, restarts: int = 10, iterations: int = 300,
                 learning_rate: float = 0.05, step_rule: str = "sgd", step_options: dict | None = None,
                 fd_step: float = 0.01, fd_points: int = 16,
                 plateau_patience: int = 10, plateau_tol: float = 1e-3, kalman: bool = False,
                 kalman_process_var: float = 1e-2, kalman_measurement_var: float = 1e-2,
                 kalman_velocity_decay: float = 0.9, fd_points_by_loss: bool = True,
                 window_reference_loss: float | None = None, start_candidates: int = 1,
                 feature_range: tuple[float, float] = (0.0, math.pi), success_mse: float = 0.005,
                 gradient_method: str = "adjoint", boundary: str = "reflect", seed: int = 0):
        self.model = model
        self.theta = theta
        self.restarts = restarts
        self.iterations = iterations
        self.learning_rate = learning_rate
        if step_rule not in STEP_RULES:
            raise ValueError(f"unknown step_rule {step_rule!r}; use one of {', '.join(sorted(STEP_RULES))}")
        self.step_rule = step_rule
        self.step_options = dict(step_options or {})
        self.fd_step = fd_step
        self.fd_points = fd_points
        self.plateau_patience = plateau_patience
        self.plateau_tol = plateau_tol
        self.kalman = kalman
        self.kalman_process_var = kalman_process_var
        self.kalman_measurement_var = kalman_measurement_var
        self.kalman_velocity_decay = kalman_velocity_decay
        self.fd_points_by_loss = fd_points_by_loss
        if window_reference_loss is not None and not window_reference_loss > 0:
            raise ValueError(f"window_reference_loss={window_reference_loss!r} must be > 0 (or None)")
        self.window_reference_loss = window_reference_loss
        if not isinstance(start_candidates, int) or start_candidates < 1:
            raise ValueError(f"start_candidates={start_candidates!r} must be a positive integer")
        self.start_candidates = start_candidates
        self.feature_range = feature_range
        self.success_mse = success_mse
        self.gradient_method = gradient_method
        if boundary not in ("reflect", "clip"):
            raise ValueError(f"unknown boundary {boundary!r}; use reflect or clip")
        self.boundary = boundary
        self.seed = seed

    def _candidates(self, current: torch.Tensor, max_points: int) -> torch.Tensor:
        """All finite-difference points of all restarts: ``(R (1 + 2 K D), B, n)``."""
        n_restarts, batch, n_features = current.shape
        dims = batch * n_features
        dtype = current.dtype
        steps = self.fd_step * torch.arange(1, max_points + 1, dtype=dtype)  # (K,)
        signs = torch.tensor([1.0, -1.0], dtype=dtype)
        # offsets[d, k, s] = s * k h * e_d, shape (D, K, 2, D)
        eye = torch.eye(dims, dtype=dtype)
        offsets = eye[:, None, None, :] * (steps[None, :, None, None] * signs[None, None, :, None])
        flat = current.reshape(n_restarts, 1, dims)
        shifted = flat[:, None, None, None, 0, :] + offsets[None]  # (R, D, K, 2, D)
        points = torch.cat([flat, shifted.reshape(n_restarts, -1, dims)], dim=1)
        return points.reshape(-1, batch, n_features)

    def step_losses(self, current: torch.Tensor, fd_points: torch.Tensor, target_gradient, labels, *,
                    with_jacobian: bool = False):
        """One batched evaluation: base losses ``(R,)`` and the finite-difference gradient
        estimate ``(R, B, n)`` with per-restart ``N`` in ``fd_points``. With ``with_jacobian``
        also the base residuals ``r = (g' - g) / sqrt(M s)`` ``(R, M)`` and their moving-average
        finite-difference Jacobian ``(R, M, B n)`` from the same candidates."""
        n_restarts, batch, n_features = current.shape
        dims = batch * n_features
        max_points = int(fd_points.max())
        with torch.no_grad():
            grads = candidate_gradients(self.model, self.theta, labels, self._candidates(current, max_points),
                                        method=self.gradient_method)
        scale = target_gradient.pow(2).mean().clamp_min(1e-30)
        losses = ((grads - target_gradient).pow(2).mean(dim=1) / scale).reshape(n_restarts, -1)
        base = losses[:, 0]
        k = torch.arange(1, max_points + 1, dtype=current.dtype)
        mask = (k[None, :] <= fd_points[:, None]).to(current.dtype)  # (R, K)
        weights = mask / (2 * k * self.fd_step * fd_points[:, None].to(current.dtype))  # (R, K)
        pm = losses[:, 1:].reshape(n_restarts, dims, max_points, 2)
        quotients = (pm[..., 0] - pm[..., 1]) / (2 * k * self.fd_step)  # (R, D, K)
        estimate = (quotients * mask[:, None, :]).sum(dim=2) / fd_points[:, None].to(current.dtype)
        if not with_jacobian:
            return base, estimate.reshape(n_restarts, batch, n_features)
        n_grad = grads.shape[1]
        residuals = ((grads - target_gradient) / torch.sqrt(n_grad * scale)).reshape(n_restarts, -1, n_grad)
        rpm = residuals[:, 1:].reshape(n_restarts, dims, max_points, 2, n_grad)
        jacobian = torch.einsum("rdkm,rk->rmd", rpm[..., 0, :] - rpm[..., 1, :], weights)
        return base, estimate.reshape(n_restarts, batch, n_features), residuals[:, 0], jacobian

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.feature_range
        if self.boundary == "clip":
            return x.clamp(low, high)
        # reflect at the box walls: an iterate pushed out bounces back instead of sticking to a
        # corner, which is where plain clipping parks most failed restarts
        width = high - low
        folded = torch.remainder(x - low, 2 * width)
        return low + torch.where(folded > width, 2 * width - folded, folded)

    def fit(self, target_gradient, labels, true_inputs=None, progress=None):
        """Run all restarts; returns ``self``.

        Parameters
        ----------
        target_gradient : array ``(M,)``
            The shared gradient ``g``.
        labels : array ``(B,)``
            Labels of the client batch (known to the server in this threat model).
        true_inputs : array ``(B, n)``, optional
            Only used to record ``MSE(x', x)`` per iteration and success.
        progress : callable ``(iteration, total)``, optional
        """
        dtype = self.model.dtype
        target_gradient = torch.as_tensor(np.asarray(target_gradient), dtype=dtype)
        labels = torch.as_tensor(np.asarray(labels), dtype=dtype).reshape(-1)
        batch, n_features = labels.shape[0], self.model.n_qubits
        low, high = self.feature_range
        gen = torch.Generator().manual_seed(self.seed)
        current = low + (high - low) * torch.rand(self.restarts, batch, n_features, generator=gen, dtype=dtype)
        if self.start_candidates > 1:
            # best of K uniform draws per restart (K - 1 more draws; the first draw is the old start)
            more = low + (high - low) * torch.rand(self.restarts, self.start_candidates - 1, batch, n_features,
                                                   generator=gen, dtype=dtype)
            pool = torch.cat([current[:, None], more], dim=1)  # (R, K, B, n)
            # in chunks no larger than one iteration's candidates: same peak memory as an iteration
            flat_pool = pool.reshape(-1, batch, n_features)
            chunk = self.restarts * (1 + 2 * self.fd_points * batch * n_features)
            with torch.no_grad():
                pool_loss = torch.cat([
                    gradient_matching_loss(self.model, self.theta, target_gradient, labels,
                                           flat_pool[i:i + chunk], method=self.gradient_method)
                    for i in range(0, flat_pool.shape[0], chunk)]).reshape(self.restarts, -1)
            current = pool[torch.arange(self.restarts), pool_loss.argmin(dim=1)]
        fd_points = torch.full((self.restarts,), self.fd_points, dtype=torch.long)
        best = torch.full((self.restarts,), float("inf"), dtype=dtype)
        waited = torch.zeros(self.restarts, dtype=torch.long)
        smoother = (_KalmanSmoother(current, self.kalman_process_var, self.kalman_measurement_var,
                                    self.kalman_velocity_decay) if self.kalman else None)
        stepper = STEP_RULES[self.step_rule](current.shape, dtype, **self.step_options)
        needs_jacobian = getattr(stepper, "needs_jacobian", False)
        truth = None if true_inputs is None else np.asarray(true_inputs, dtype=float).reshape(batch, n_features)

        losses, mses, points_hist = [], [], []
        for it in range(self.iterations + 1):
            # with the filter, the loss and the finite-difference gradient are taken at the
            # predicted (look-ahead) position, the point the measurement model refers to
            point = current if smoother is None else self._project(smoother.predict())
            if needs_jacobian:
                base, estimate, residual, jacobian = self.step_losses(point, fd_points, target_gradient, labels,
                                                                      with_jacobian=True)
                extra = {"jacobian": jacobian, "residual": residual}
            else:
                base, estimate = self.step_losses(point, fd_points, target_gradient, labels)
                extra = {}
            losses.append(base.numpy().copy())
            points_hist.append(fd_points.numpy().copy())
            if truth is not None:
                mses.append([matched_mse(c, truth) for c in point.numpy()])
            if progress is not None:
                progress(it, self.iterations)
            if it == self.iterations:
                current = point
                break
            # plateau: every `patience` iterations compare the best loss with the best loss at the
            # start of that window; halve N where it fell by less than the fraction plateau_tol.
            # (A per-iteration test against the running best resets on any tiny gain, so a slow
            # steady descent never sharpens the estimate and stalls at a smoothed, biased point.)
            best = torch.minimum(best, base)
            waited = waited + 1
            if it == 0:
                reference = base.clone()
                reference0 = (base.clamp_min(1e-30) if self.window_reference_loss is None
                              else torch.full_like(base, self.window_reference_loss))
            window_done = waited >= self.plateau_patience
            plateau = window_done & (best > reference * (1 - self.plateau_tol))
            fd_points = torch.where(plateau, torch.clamp(fd_points // 2, min=1), fd_points)
            if self.fd_points_by_loss:
                # the window N h need not exceed the distance to the minimum, which near it
                # scales as sqrt(L): cap N at N_0 sqrt(L / L_ref) (halving-only: never grows)
                cap = torch.clamp(torch.ceil(self.fd_points * torch.sqrt(base / reference0)), min=1).long()
                fd_points = torch.minimum(fd_points, cap)
            reference = torch.where(window_done, best, reference)
            waited = torch.where(window_done, torch.zeros_like(waited), waited)

            proposal = self._project(point - stepper(estimate, self.learning_rate, **extra))
            if smoother is not None:
                smoother.p = point
                proposal = self._project(smoother.update(proposal))
                smoother.p = proposal
            current = proposal

        self.reconstructions_ = current.numpy()
        self.loss_history_ = np.stack(losses, axis=1)
        self.fd_points_history_ = np.stack(points_hist, axis=1)
        if truth is not None:
            self.mse_history_ = np.asarray(mses).T
            self.final_mse_ = self.mse_history_[:, -1]
            self.success_ = self.final_mse_ <= self.success_mse
        else:
            self.mse_history_ = self.final_mse_ = self.success_ = None
        return self
