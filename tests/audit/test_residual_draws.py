"""16-bit unit-cube draws of the residual-knowledge audit: uniform on the ball, bounds, the workspace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from privkit.audit.residual import (SAMPLERS, NoiseStreams, Workspace, residual_knowledge,
                                    residual_knowledge_loop)


def test_unit_cube_draws_are_uniform_per_coordinate_and_uncorrelated():
    # 40 samples x 500 draws x 12 coordinates: coordinate j of every draw is lane j % 4 of a 64-bit
    # word. A lane with a constant bit (e.g. the sign bit that torch's default random_() leaves 0)
    # or a lane shared between two coordinates would fail the KS test or the correlation bound.
    unit = NoiseStreams.for_samples(11, range(40)).unit_cube((500, 12)).reshape(-1, 12).double().numpy()
    n = unit.shape[0]
    for j in range(12):
        ks = stats.kstest(unit[:, j], stats.uniform(loc=-1.0, scale=2.0).cdf)
        assert ks.pvalue > 1e-3, (j, ks)
    # mean 0 and variance 1/3 of U(-1, 1), within 5 standard errors
    assert np.abs(unit.mean(axis=0)).max() < 5 * np.sqrt(1 / 3 / n)
    assert np.abs(unit.var(axis=0) - 1 / 3).max() < 5 * np.sqrt(4 / 45 / n)
    corr = np.corrcoef(unit, rowvar=False)
    assert np.abs(corr - np.eye(12)).max() < 5 / np.sqrt(n)
    # every value is a cell midpoint (2I + 1) / 2^16 strictly inside (-1, 1)
    grid = unit * 2**15 - 0.5
    assert np.array_equal(grid, np.round(grid)) and grid.min() >= -2**15 and grid.max() <= 2**15 - 1
    # the distribution is the same across samples: the pooled draws of two halves of the samples agree
    half = unit.reshape(40, 500, 12)
    assert stats.ks_2samp(half[:20].ravel(), half[20:].ravel()).pvalue > 1e-3


def test_exact_mode_draws_the_earlier_float_stream():
    streams = NoiseStreams.for_samples(2, [4, 7], exact=True)
    for row, seed in zip(streams.unit_cube((3, 5)), streams.seeds):
        assert torch.equal(row, torch.rand((3, 5), generator=torch.Generator().manual_seed(seed)) * 2 - 1)
    # the two modes draw different numbers from the same seeds
    assert not torch.equal(NoiseStreams.for_samples(2, [4]).unit_cube((3, 5)),
                           NoiseStreams.for_samples(2, [4], exact=True).unit_cube((3, 5)))


@pytest.mark.parametrize("tau", [0.004, 0.01, 0.03, 0.1, 0.5])
def test_linf_draws_stay_in_the_ball_and_the_box_exactly(tau):
    # W is at most 1 - 2^-16 in size, so the float32 rounding of x + tau W cannot leave the ball
    # while tau >= |x| / 2^8 (here x in [0, 1], tau >= 0.004): checked in float64 with no tolerance
    x = torch.rand((30, 25), generator=torch.Generator().manual_seed(5))
    streams = NoiseStreams.for_samples(3, range(30))
    out = SAMPLERS["uniform"](x, None, tau=tau, norm="linf", samples=200, streams=streams, clip=(0.0, 1.0))
    delta = out.double() - x.double()[:, None]
    assert (delta.abs() <= tau).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    # away from the box, the draws fill the ball: the largest step is within two cells of tau;
    # at the widest radius every coordinate is near the box and the clip shows
    inner = ((x > tau) & (x < 1 - tau))[:, None].expand_as(delta)
    if inner.any():
        assert delta[inner].abs().max() >= tau * (1 - 2**-14)
    else:
        assert (out == 0).any() and (out == 1).any()


@pytest.mark.parametrize("tau", [0.004, 0.1, 0.5])
def test_l2_draws_stay_in_the_ball_up_to_float32_rounding(tau):
    # L2 draws (Gaussian direction, radius tau U^(1/d)) are unchanged; their bound holds up to the
    # rounding of the final float32 addition, at most 2^-24 |x'| per coordinate
    d = 25
    x = torch.rand((30, d), generator=torch.Generator().manual_seed(6))
    out = SAMPLERS["uniform"](x, None, tau=tau, norm="l2", samples=200, streams=NoiseStreams.for_samples(4, range(30)),
                              clip=(0.0, 1.0))
    size = (out.double() - x.double()[:, None]).norm(dim=-1)
    assert (size <= tau + np.sqrt(d) * 2.0**-24).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_workspace_reuses_slots_and_spills_beyond_its_reserve():
    ws = Workspace(1024)
    a = ws.get("a", (4, 8))                                  # 128 bytes at 0
    b = ws.get("b", (3,), torch.int64)                       # 24 bytes at 128 (aligned to 64)
    assert b.data_ptr() - a.data_ptr() == 128
    assert ws.get("a", (2, 8)).data_ptr() == a.data_ptr()   # smaller request: the same memory
    big = ws.get("c", (1000,))                               # 4000 bytes do not fit: own allocation
    assert not (a.data_ptr() <= big.data_ptr() < a.data_ptr() + 1024)
    grown = ws.get("a", (10, 8))                             # larger than the slot: new memory
    assert grown.shape == (10, 8) and grown.data_ptr() != a.data_ptr()


@pytest.mark.parametrize("exact", [False, True])
def test_batched_estimator_matches_plain_loop_in_both_draw_modes(exact):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    other = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand((9, 10), generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(dim=-1)
    kw = dict(taus=(0.2, 0.6), samples=12, seed=3, exact_draws=exact)
    # batch 30 with 12 samples: chunks of 2 forget samples, the last one partial, one workspace
    batched = residual_knowledge(model, other, x, y, batch_size=30, **kw)
    loop = residual_knowledge_loop(model, other, x, y, **kw)
    np.testing.assert_array_equal(batched.k_unlearned, loop.k_unlearned)
    np.testing.assert_array_equal(batched.k_reference, loop.k_reference)
    counts = np.concatenate([batched.k_unlearned, batched.k_reference])
    assert ((counts > 0) & (counts < 12)).any()
    # which draws an audit used is part of its result, so it can be reproduced from its seed
    assert batched.to_metrics()["draws"] == loop.to_metrics()["draws"] == ("exact" if exact else "grid16-splitmix64")
