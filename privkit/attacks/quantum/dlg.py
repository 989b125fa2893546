"""Deep Leakage from Gradients (DLG; Zhu et al., 2019) with exact second-order autodiff.

DLG optimises the dummy inputs ``x'`` directly on the gradient-matching loss

    L(x') = || sum_b grad_theta l(x'_b, y_b; theta) - g ||^2,

differentiating through the gradient (``create_graph=True``). Zhu et al. minimise it with
L-BFGS (``lr = 1``) from one random start (``optimizer="lbfgs"``); ``optimizer="adam"`` is a
first-order alternative on the normalised loss. It is the baseline the
finite-difference attack is compared with: on a VQNN the landscape of ``L`` has many local
minima; on a classical MLP of similar size DLG usually recovers the input.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privkit.attacks.quantum.inversion import matched_mse
from privkit.attacks.quantum.models import VQNN
from privkit.errors import ConfigError


class TanhMLP:
    """A small classical regressor ``f(x) = w2 . tanh(W1 x + b1) + b2`` (smooth, so DLG's second
    derivatives exist everywhere).

    Parameters
    ----------
    n_features, hidden : int
    """

    def __init__(self, n_features: int = 2, hidden: int = 4, dtype: torch.dtype = torch.float64):
        self.n_features = n_features
        self.hidden = hidden
        self.dtype = dtype

    @property
    def n_params(self) -> int:
        return self.hidden * (self.n_features + 2) + 1

    def init_params(self, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(self.n_params, generator=gen, dtype=self.dtype) / math.sqrt(self.n_features)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        h, n = self.hidden, self.n_features
        w1 = params[: h * n].reshape(h, n)
        b1 = params[h * n: h * n + h]
        w2 = params[h * n + h: h * n + 2 * h]
        return torch.tanh(x @ w1.T + b1) @ w2 + params[-1]

    def client_gradient(self, x, y, params, *, create_graph: bool = False) -> torch.Tensor:
        """``sum_b grad_params (f(x_b) - y_b)^2``."""
        with torch.enable_grad():
            p = params if params.requires_grad else params.clone().requires_grad_(True)
            loss = ((self.forward(x, p) - y) ** 2).sum()
            (grad,) = torch.autograd.grad(loss, p, create_graph=create_graph)
        return grad


def _vqnn_gradient(model: VQNN, x, y, theta, create_graph):
    return model.per_sample_gradients(x, y, theta, method="autodiff", create_graph=create_graph).sum(dim=0)


# name -> runner(x, loss_fn, iterations, learning_rate) -> loss history (see register_dlg_optimizer)
DLG_OPTIMIZERS: dict = {}

# Zhu et al. (2019) run L-BFGS with PyTorch's defaults: lr 1, up to 20 inner evaluations per
# ``step`` and no line search
LBFGS_MAX_INNER = 20


def register_dlg_optimizer(name: str):
    """Register ``runner(x, loss_fn, iterations, learning_rate) -> list of float`` under ``name``:
    it updates the leaf tensor ``x`` in place to minimise ``loss_fn(x)`` and returns the loss at
    the start of each outer iteration."""

    def decorator(fn):
        DLG_OPTIMIZERS[name] = fn
        return fn

    return decorator


@register_dlg_optimizer("adam")
def _run_adam(x: torch.Tensor, loss_fn, iterations: int, learning_rate: float) -> list[float]:
    """One Adam step on ``x`` per iteration (one loss evaluation each)."""
    optimizer = torch.optim.Adam([x], lr=learning_rate)
    history = []
    for _ in range(iterations):
        loss = loss_fn(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


@register_dlg_optimizer("lbfgs")
def _run_lbfgs(x: torch.Tensor, loss_fn, iterations: int, learning_rate: float) -> list[float]:
    """The canonical DLG optimiser: ``torch.optim.LBFGS`` with its defaults (``max_iter = 20``
    inner evaluations per outer iteration, no line search, tolerances ``1e-7`` / ``1e-9``) at
    ``lr = learning_rate`` (1 in Zhu et al.)."""
    optimizer = torch.optim.LBFGS([x], lr=learning_rate, max_iter=LBFGS_MAX_INNER)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return loss

    # ``step`` returns the loss at the start of the iteration, as recorded for Adam
    return [float(optimizer.step(closure).detach()) for _ in range(iterations)]


# the configurations compared in docs/benchmarks.md: ours (Adam) and Zhu et al.'s
DLG_DEFAULT_LEARNING_RATE = {"adam": 0.05, "lbfgs": 1.0}


def dlg_attack(model, params, target_gradient, labels, *, true_inputs=None, restarts: int = 5,
               iterations: int = 300, learning_rate: float | None = None, optimizer: str = "adam",
               normalise_loss: bool | None = None, input_period: float | None = None,
               feature_range: tuple[float, float] = (0.0, math.pi), success_mse: float = 0.005,
               seed: int = 0) -> dict:
    """Run DLG from ``restarts`` random starts against a VQNN or a :class:`TanhMLP`.

    Each restart draws ``x' ~ U(feature_range)`` and minimises the gradient-matching loss
    ``||g'(x') - g||^2`` (divided by ``||g||^2`` when ``normalise_loss``) over unconstrained
    ``x'`` with the exact derivative (second-order autodiff).

    Parameters
    ----------
    optimizer : {"adam", "lbfgs"}
        ``"lbfgs"`` is the canonical DLG of Zhu et al. (2019): L-BFGS, ``lr = 1``, 20 inner
        evaluations per iteration, unnormalised loss. ``"adam"`` (``lr = 0.05``, normalised loss)
        takes one loss evaluation per iteration.
    learning_rate : float, optional
        Defaults to :data:`DLG_DEFAULT_LEARNING_RATE` of the optimiser.
    normalise_loss : bool, optional
        Default: True for Adam (one learning rate fits every model), False for L-BFGS (as in
        Zhu et al.; L-BFGS's absolute tolerances then refer to the raw loss).
    input_period : float, optional
        Period of the model in every input (``2 pi`` for angle encoding: ``R_X(x + 2 pi) =
        -R_X(x)`` changes no expectation value). When given, the unconstrained ``x'`` is reduced
        modulo the period into ``[low, low + period)`` before the MSE: an attacker who knows the
        encoding does this for free. ``final_mse_unreduced`` keeps the MSE of the raw ``x'``.

    Returns
    -------
    dict with ``reconstructed`` ``(R, B, n)``, ``loss_history`` ``(R, T)`` (loss at the start of
    each iteration), ``evaluations`` (loss evaluations over all restarts), ``final_mse`` and
    ``success`` per restart (when ``true_inputs`` is given) and ``success_rate``.
    """
    if optimizer not in DLG_OPTIMIZERS:
        raise ConfigError(f"unknown DLG optimizer {optimizer!r}; use one of {', '.join(sorted(DLG_OPTIMIZERS))}")
    if learning_rate is None:
        learning_rate = DLG_DEFAULT_LEARNING_RATE.get(optimizer, 0.05)
    if normalise_loss is None:
        normalise_loss = optimizer != "lbfgs"
    dtype = model.dtype
    target_gradient = torch.as_tensor(np.asarray(target_gradient), dtype=dtype)
    labels = torch.as_tensor(np.asarray(labels), dtype=dtype).reshape(-1)
    params = torch.as_tensor(params, dtype=dtype)
    n_features = model.n_qubits if isinstance(model, VQNN) else model.n_features
    low, high = feature_range
    gen = torch.Generator().manual_seed(seed)
    scale = target_gradient.pow(2).sum().clamp_min(1e-30) if normalise_loss else torch.tensor(1.0, dtype=dtype)
    evaluations = 0

    def loss_fn(x):
        nonlocal evaluations
        evaluations += 1
        if isinstance(model, VQNN):
            grad = _vqnn_gradient(model, x, labels, params, True)
        else:
            grad = model.client_gradient(x, labels, params, create_graph=True)
        return (grad - target_gradient).pow(2).sum() / scale

    results, histories = [], []
    for _ in range(restarts):
        x = (low + (high - low) * torch.rand(labels.shape[0], n_features, generator=gen, dtype=dtype))
        x.requires_grad_(True)
        histories.append(DLG_OPTIMIZERS[optimizer](x, loss_fn, iterations, learning_rate))
        results.append(x.detach().numpy().copy())
    raw = np.stack(results)
    reconstructed = raw if input_period is None else low + np.mod(raw - low, input_period)
    out = {"reconstructed": reconstructed, "loss_history": np.asarray(histories),
           "evaluations": evaluations}
    if true_inputs is not None:
        truth = np.asarray(true_inputs, dtype=float)

        def mse_of(batches):
            # a diverged restart (non-finite x') is a failure, not an error
            return np.array([matched_mse(r, truth) if np.isfinite(r).all() else np.inf for r in batches])

        final = mse_of(reconstructed)
        out["final_mse_unreduced"] = mse_of(raw)
        out["final_mse"] = final
        out["success"] = final <= success_mse
        out["success_rate"] = float(out["success"].mean())
    return out
