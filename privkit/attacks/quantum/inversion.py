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
known feature range, optionally smoothed per dimension by a Kalman filter, from ``R`` random
restarts. All ``R (1 + 2 N B n)`` candidate inputs of one iteration go through the simulator in
one batched call (per-sample ``g'`` by the adjoint method of
:meth:`privkit.attacks.quantum.models.VQNN.per_sample_gradients`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from privkit.attacks.quantum.models import VQNN


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
    n_cand, batch, n_features = candidates.shape
    rows = candidates.reshape(-1, n_features)
    per_sample = model.per_sample_gradients(rows, labels.repeat(n_cand), theta, method=method)
    grads = per_sample.reshape(n_cand, batch, -1).sum(dim=1)
    scale = target_gradient.pow(2).mean().clamp_min(1e-30)
    return (grads - target_gradient).pow(2).mean(dim=1) / scale


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
        SGD step ``eta`` on the normalised loss.
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
                 learning_rate: float = 0.05, fd_step: float = 0.01, fd_points: int = 16,
                 plateau_patience: int = 10, plateau_tol: float = 1e-3, kalman: bool = False,
                 kalman_process_var: float = 1e-2, kalman_measurement_var: float = 1e-2,
                 kalman_velocity_decay: float = 0.9, fd_points_by_loss: bool = True,
                 feature_range: tuple[float, float] = (0.0, math.pi), success_mse: float = 0.005,
                 gradient_method: str = "adjoint", boundary: str = "reflect", seed: int = 0):
        self.model = model
        self.theta = theta
        self.restarts = restarts
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.fd_step = fd_step
        self.fd_points = fd_points
        self.plateau_patience = plateau_patience
        self.plateau_tol = plateau_tol
        self.kalman = kalman
        self.kalman_process_var = kalman_process_var
        self.kalman_measurement_var = kalman_measurement_var
        self.kalman_velocity_decay = kalman_velocity_decay
        self.fd_points_by_loss = fd_points_by_loss
        self.feature_range = feature_range
        self.success_mse = success_mse
        self.gradient_method = gradient_method
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

    def step_losses(self, current: torch.Tensor, fd_points: torch.Tensor, target_gradient, labels):
        """One batched evaluation: base losses ``(R,)`` and the finite-difference gradient
        estimate ``(R, B, n)`` with per-restart ``N`` in ``fd_points``."""
        n_restarts, batch, n_features = current.shape
        dims = batch * n_features
        max_points = int(fd_points.max())
        with torch.no_grad():
            losses = gradient_matching_loss(self.model, self.theta, target_gradient, labels,
                                            self._candidates(current, max_points),
                                            method=self.gradient_method)
        losses = losses.reshape(n_restarts, -1)
        base = losses[:, 0]
        pm = losses[:, 1:].reshape(n_restarts, dims, max_points, 2)
        k = torch.arange(1, max_points + 1, dtype=current.dtype)
        quotients = (pm[..., 0] - pm[..., 1]) / (2 * k * self.fd_step)  # (R, D, K)
        mask = (k[None, :] <= fd_points[:, None]).to(current.dtype)  # (R, K)
        estimate = (quotients * mask[:, None, :]).sum(dim=2) / fd_points[:, None].to(current.dtype)
        return base, estimate.reshape(n_restarts, batch, n_features)

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
        fd_points = torch.full((self.restarts,), self.fd_points, dtype=torch.long)
        best = torch.full((self.restarts,), float("inf"), dtype=dtype)
        waited = torch.zeros(self.restarts, dtype=torch.long)
        smoother = (_KalmanSmoother(current, self.kalman_process_var, self.kalman_measurement_var,
                                    self.kalman_velocity_decay) if self.kalman else None)
        truth = None if true_inputs is None else np.asarray(true_inputs, dtype=float).reshape(batch, n_features)

        losses, mses, points_hist = [], [], []
        for it in range(self.iterations + 1):
            # with the filter, the loss and the finite-difference gradient are taken at the
            # predicted (look-ahead) position, the point the measurement model refers to
            point = current if smoother is None else self._project(smoother.predict())
            base, estimate = self.step_losses(point, fd_points, target_gradient, labels)
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
                reference0 = base.clamp_min(1e-30)
            window_done = waited >= self.plateau_patience
            plateau = window_done & (best > reference * (1 - self.plateau_tol))
            fd_points = torch.where(plateau, torch.clamp(fd_points // 2, min=1), fd_points)
            if self.fd_points_by_loss:
                # the window N h need not exceed the distance to the minimum, which near it
                # scales as sqrt(L): cap N at N_0 sqrt(L / L_0) (halving-only: never grows)
                cap = torch.clamp(torch.ceil(self.fd_points * torch.sqrt(base / reference0)), min=1).long()
                fd_points = torch.minimum(fd_points, cap)
            reference = torch.where(window_done, best, reference)
            waited = torch.where(window_done, torch.zeros_like(waited), waited)

            proposal = self._project(point - self.learning_rate * estimate)
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
