"""Variational quantum neural networks (VQNN) and their gradients.

The model output is a Pauli-Z expectation of the circuit state ``|psi(x, theta)>``:
``f(x; theta) = (1/n) sum_w <Z_w>`` (readout ``"mean-z"``, the default, so every feature reaches
the output even in product circuits) or ``f(x; theta) = <Z_0>`` (readout ``"z0"``). The loss of a
sample is the squared error ``L(x, y; theta) = (f(x; theta) - y)^2`` and a federated client shares

    g = sum_{b in batch} grad_theta L(x_b, y_b; theta),

with ``d f / d theta_k`` computed by the parameter-shift rule
``[f(theta + pi/2 e_k) - f(theta - pi/2 e_k)] / 2`` (exact for Pauli rotations) and the chain rule
``d L / d theta_k = 2 (f - y) d f / d theta_k``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privkit.attacks.quantum.circuits import (ANSATZE, CircuitSpec, build_circuit, compile_layered, expval_z_all,
                                             expval_z_grid)

SHIFT = math.pi / 2

READOUTS = {
    "mean-z": lambda z: z.mean(dim=-1),
    "z0": lambda z: z[..., 0],
}

# the same readouts as weights on the qubits, f = sum_w weights_w <Z_w> (for the adjoint gradient)
READOUT_WEIGHTS = {
    "mean-z": lambda n: torch.full((n,), 1.0 / n, dtype=torch.float64),
    "z0": lambda n: torch.eye(n, dtype=torch.float64)[0],
}

GRADIENT_METHODS = ("parameter-shift", "autodiff", "adjoint")


class VQNN:
    """A variational quantum neural network with angle (or ZZ) encoding, one qubit per feature.

    Parameters
    ----------
    n_qubits : int
        Number of qubits, equal to the number of input features.
    ansatz : str
        A registered ansatz (see :data:`privkit.attacks.quantum.circuits.ANSATZE`).
    layers : int
        Number of ansatz layers ``L``.
    readout : {"mean-z", "z0"}
    dtype : torch.dtype
        Real dtype of inputs and parameters (float64 by default; states are complex128).

    Attributes
    ----------
    theta_ : tensor ``(P,)``
        Parameters after :meth:`fit`.
    loss_curve_ : list of float
        Training loss per epoch after :meth:`fit`.
    """

    def __init__(self, n_qubits: int = 2, ansatz: str = "complex", layers: int = 2,
                 readout: str = "mean-z", dtype: torch.dtype = torch.float64):
        self.n_qubits = n_qubits
        self.ansatz = ansatz
        self.layers = layers
        self.readout = readout
        self.dtype = dtype

    # -- structure -----------------------------------------------------------------------------
    @property
    def spec(self) -> CircuitSpec:
        """The built circuit (cached)."""
        key = (self.ansatz, self.n_qubits, self.layers)
        if getattr(self, "_spec_key", None) != key:
            self._spec = build_circuit(*key)
            self._spec_key = key
        return self._spec

    @property
    def n_params(self) -> int:
        return self.spec.n_params

    def init_params(self, seed: int = 0) -> torch.Tensor:
        """Random parameters ``theta ~ U[0, 2 pi)`` (a fresh federated model)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(self.n_params, generator=gen, dtype=self.dtype) * 2 * math.pi

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``f(x; theta)`` for a batch: ``x (B, n)``, ``theta (P,)`` or ``(B, P)`` -> ``(B,)``."""
        x = torch.as_tensor(x, dtype=self.dtype)
        theta = torch.as_tensor(theta, dtype=self.dtype)
        return READOUTS[self.readout](expval_z_all(self.spec, x, theta))

    def loss_per_sample(self, x, y, theta) -> torch.Tensor:
        """``L_b = (f(x_b; theta) - y_b)^2``, shape ``(B,)``."""
        y = torch.as_tensor(y, dtype=self.dtype)
        return (self.forward(x, theta) - y) ** 2

    # -- gradients wrt theta -------------------------------------------------------------------
    def per_sample_gradients(self, x, y, theta, *, method: str = "parameter-shift",
                             create_graph: bool = False) -> torch.Tensor:
        """``grad_theta L(x_b, y_b; theta)`` for every row ``b``, shape ``(B, P)``.

        ``method="parameter-shift"`` evaluates the ``2P + 1`` parameter sets
        ``theta, theta +- pi/2 e_k`` on every row in one batched simulator call (one
        ``(2P + 1, 2^n, 2^n)`` product per layer on the fast path); ``method="autodiff"`` gives
        every row its own copy of ``theta`` and backpropagates ``sum_b L_b`` once (row ``b`` only
        depends on copy ``b``, so the gradient wrt the copies is the per-sample gradient);
        ``method="adjoint"`` runs the adjoint method per layer with one shared ``theta``
        (:meth:`~privkit.attacks.quantum.circuits._LayeredProgram.readout_and_jacobian`; cheapest,
        differentiable wrt ``x`` by autodiff; circuits without the layered structure fall back to
        autodiff). ``create_graph=True`` (autodiff only) keeps the graph for second-order
        derivatives (DLG).
        """
        x = torch.as_tensor(x, dtype=self.dtype)
        y = torch.as_tensor(y, dtype=self.dtype)
        theta = torch.as_tensor(theta, dtype=self.dtype)
        batch, n_params = x.shape[0], self.n_params
        if method not in GRADIENT_METHODS:
            raise ValueError(f"unknown gradient method {method!r}; use one of {', '.join(GRADIENT_METHODS)}")
        layered = compile_layered(self.spec)
        if method == "adjoint" and layered is not None and theta.dim() == 1 and self.readout in READOUT_WEIGHTS:
            weights = READOUT_WEIGHTS[self.readout](self.n_qubits).to(self.dtype)
            f, jacobian = layered.readout_and_jacobian(x, theta, weights)
            return 2 * (f - y)[:, None] * jacobian
        if method in ("autodiff", "adjoint"):
            with torch.enable_grad():
                rows = theta.expand(batch, n_params).clone().requires_grad_(True)
                loss = self.loss_per_sample(x, y, rows).sum()
                (grad,) = torch.autograd.grad(loss, rows, create_graph=create_graph)
            return grad
        shifts = SHIFT * torch.cat([torch.eye(n_params, dtype=self.dtype),
                                    -torch.eye(n_params, dtype=self.dtype)])  # (2P, P)
        thetas = torch.cat([theta[None, :], theta[None, :] + shifts])  # (2P + 1, P)
        f = READOUTS[self.readout](expval_z_grid(self.spec, x, thetas))  # (2P + 1, B)
        df = (f[1:1 + n_params] - f[1 + n_params:]).T / 2  # (B, P)
        return 2 * (f[0] - y)[:, None] * df

    def client_gradient(self, x, y, theta, *, method: str = "parameter-shift") -> torch.Tensor:
        """What a client shares: ``g = sum_b grad_theta L(x_b, y_b; theta)``, shape ``(P,)``."""
        return self.per_sample_gradients(x, y, theta, method=method).sum(dim=0)

    # -- gradients wrt x -------------------------------------------------------------------------
    def input_gradient(self, x, theta, *, method: str = "parameter-shift") -> torch.Tensor:
        """``d f / d x_j`` for every row, shape ``(B, n)``.

        With angle encoding ``x_j`` enters one ``R_X(x_j)``, so the shift rule is exact; for the ZZ
        feature map use ``method="autodiff"``.
        """
        x = torch.as_tensor(x, dtype=self.dtype)
        theta = torch.as_tensor(theta, dtype=self.dtype)
        if method == "autodiff":
            with torch.enable_grad():
                xr = x.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.forward(xr, theta).sum(), xr)
            return grad
        if not self.spec.angle_encoded:
            raise ValueError(f"the parameter-shift rule for x needs angle encoding; ansatz {self.ansatz!r} "
                             "uses a ZZ feature map, use method='autodiff'")
        batch, n = x.shape
        shifts = SHIFT * torch.cat([torch.eye(n, dtype=self.dtype), -torch.eye(n, dtype=self.dtype)])
        xs = (x[:, None, :] + shifts[None]).reshape(-1, n)
        f = self.forward(xs, theta).reshape(batch, 2 * n)
        return (f[:, :n] - f[:, n:]) / 2

    # -- training ------------------------------------------------------------------------------
    def fit(self, X, y, *, epochs: int = 60, lr: float = 0.05, batch_size: int = 32, seed: int = 0):
        """Fit ``theta`` by Adam on the MSE loss (autodiff); returns ``self``."""
        X = torch.as_tensor(np.asarray(X), dtype=self.dtype)
        y = torch.as_tensor(np.asarray(y), dtype=self.dtype)
        theta = self.init_params(seed).requires_grad_(True)
        optimizer = torch.optim.Adam([theta], lr=lr)
        gen = torch.Generator().manual_seed(seed)
        self.loss_curve_ = []
        for _ in range(epochs):
            order = torch.randperm(X.shape[0], generator=gen)
            total = 0.0
            for start in range(0, X.shape[0], batch_size):
                idx = order[start:start + batch_size]
                loss = self.loss_per_sample(X[idx], y[idx], theta).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * idx.numel()
            self.loss_curve_.append(total / X.shape[0])
        self.theta_ = theta.detach()
        return self

    def predict(self, X) -> np.ndarray:
        """``f(x; theta_)`` for each row of ``X``."""
        with torch.no_grad():
            return self.forward(torch.as_tensor(np.asarray(X), dtype=self.dtype), self.theta_).numpy()


def known_ansatze() -> list[str]:
    """Registered ansatz names, sorted."""
    return sorted(ANSATZE)
