"""The small digits MLPs the audit tests train: the same architecture and recipe everywhere.

Imported by the test modules beside it (pytest puts this folder on ``sys.path``; no ``__init__``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
