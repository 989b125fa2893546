"""``image-resnet`` with ``max_logit``: the edit is bounded in logit space, so the release keeps a gradient."""

from __future__ import annotations

import pytest
import torch

from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError
from privkit.suppress.generators import create_generator

SCHEMA = Schema("image", (Attribute("y", ("a", "b")),), (1, 16, 16))


def _blow_up(gen) -> None:
    """Scale the residual head so the unbounded residual is tens of logits."""
    with torch.no_grad():
        gen.net.head.weight.mul_(500.0)
        gen.net.head.bias.fill_(30.0)


def test_bounded_residual_stays_within_max_logit_of_the_input():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16) * 0.8 + 0.1
    z = torch.randn(4, 4)
    bounded = create_generator("image-resnet", SCHEMA, 4, max_logit=3.0)
    unbounded = create_generator("image-resnet", SCHEMA, 4)
    unbounded.load_state_dict(bounded.state_dict())
    _blow_up(bounded)
    _blow_up(unbounded)
    with torch.no_grad():
        yb = bounded(x, z)
    shift = (torch.logit(yb.clamp(1e-6, 1 - 1e-6)) - torch.logit(x)).abs()
    assert float(shift.max()) <= 3.0 + 1e-3
    # the same weights without the bound saturate the sigmoid (most pixels at 0 or 1, zero gradient)
    with torch.no_grad():
        yu = unbounded(x, z)
    assert float(((yu - 0.5).abs() > 0.499).float().mean()) > 0.9
    assert float(((yb - 0.5).abs() > 0.499).float().mean()) == 0.0
    xg = x.clone().requires_grad_(True)
    bounded(xg, z).sum().backward()
    assert float(xg.grad.abs().mean()) > 1e-3


def test_bound_off_by_default_and_validated():
    gen = create_generator("image-resnet", SCHEMA, 4)
    assert gen.max_logit is None
    for bad in (0.0, -1.0, float("inf"), "3", True):
        with pytest.raises(ConfigError, match="max_logit"):
            create_generator("image-resnet", SCHEMA, 4, max_logit=bad)
