"""The small digits MLPs the audit tests train: the same architecture and recipe everywhere.

Imported by the test modules beside it (pytest puts this folder on ``sys.path``; no ``__init__``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def mlp(seed: int) -> nn.Module:
    """A 64-64-10 ReLU MLP initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def fit(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int = 250) -> nn.Module:
    """Full-batch Adam (lr 1e-2) on cross-entropy for ``steps`` steps; returned in eval mode."""
    model = mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def shuffled_digits() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """scikit-learn's digits as ``(x in [0, 1] (1797, 64), y, a fixed permutation of the indices)``."""
    torch.set_num_threads(1)
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    return x, y, np.random.default_rng(0).permutation(len(x))
