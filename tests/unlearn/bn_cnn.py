"""A tiny BatchNorm CNN perturbed away from its w0: the shared model of the Fast-NTK (PEFT) tests."""

from __future__ import annotations

import torch
from torch import nn


def bn_cnn(seed: int = 0, n_classes: int = 4, n: int = 24, dtype: torch.dtype = torch.float32,
           head_scale: float = 1.0):
    """``(model, w0, x, y)``: eval-mode CNN with non-trivial BN statistics, its w0, ``n`` inputs and labels.

    ``head_scale`` > 1 sharpens the logits (confident predictions: W = diag(p) - pp^T gets small eigenvalues).
    """
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 6 * 6, n_classes)).to(dtype)
    with torch.no_grad():
        model(torch.randn(16, 1, 6, 6, dtype=dtype))  # non-trivial running statistics
    model.eval()
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if head_scale != 1.0:
            model[4].weight.mul_(head_scale)
    return model, w0, torch.randn(n, 1, 6, 6, dtype=dtype), torch.randint(0, n_classes, (n,))
