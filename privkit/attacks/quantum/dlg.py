"""Deep Leakage from Gradients (DLG; Zhu et al., 2019) with exact second-order autodiff.

DLG optimises the dummy inputs ``x'`` directly on the gradient-matching loss

    L(x') = || sum_b grad_theta l(x'_b, y_b; theta) - g ||^2,

differentiating through the gradient (``create_graph=True``). It is the baseline the
finite-difference attack is compared with: on a VQNN the landscape of ``L`` has many local
minima; on a classical MLP of similar size DLG usually recovers the input.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privkit.attacks.quantum.inversion import matched_mse
from privkit.attacks.quantum.models import VQNN


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


def dlg_attack(model, params, target_gradient, labels, *, true_inputs=None, restarts: int = 5,
               iterations: int = 300, learning_rate: float = 0.05,
               feature_range: tuple[float, float] = (0.0, math.pi), success_mse: float = 0.005,
               seed: int = 0) -> dict:
    """Run DLG (Adam on ``x'``) from ``restarts`` random starts against a VQNN or a
    :class:`TanhMLP`.

    Returns
    -------
    dict with ``reconstructed`` ``(R, B, n)``, ``loss_history`` ``(R, T)``, ``final_mse`` and
    ``success`` per restart (when ``true_inputs`` is given) and ``success_rate``.
    """
    dtype = model.dtype
    target_gradient = torch.as_tensor(np.asarray(target_gradient), dtype=dtype)
    labels = torch.as_tensor(np.asarray(labels), dtype=dtype).reshape(-1)
    params = torch.as_tensor(params, dtype=dtype)
    n_features = model.n_qubits if isinstance(model, VQNN) else model.n_features
    low, high = feature_range
    gen = torch.Generator().manual_seed(seed)
    scale = target_gradient.pow(2).sum().clamp_min(1e-30)
    results, histories = [], []
    for _ in range(restarts):
        x = (low + (high - low) * torch.rand(labels.shape[0], n_features, generator=gen, dtype=dtype))
        x.requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=learning_rate)
        history = []
        for _ in range(iterations):
            if isinstance(model, VQNN):
                grad = _vqnn_gradient(model, x, labels, params, True)
            else:
                grad = model.client_gradient(x, labels, params, create_graph=True)
            loss = (grad - target_gradient).pow(2).sum() / scale
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
        results.append(x.detach().numpy())
        histories.append(history)
    out = {"reconstructed": np.stack(results), "loss_history": np.asarray(histories)}
    if true_inputs is not None:
        truth = np.asarray(true_inputs, dtype=float)
        final = np.array([matched_mse(r, truth) for r in out["reconstructed"]])
        out["final_mse"] = final
        out["success"] = final <= success_mse
        out["success_rate"] = float(out["success"].mean())
    return out
