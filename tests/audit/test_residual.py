"""Residual-knowledge estimator: batched vs plain loop, null and positive cases, samplers, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privkit.audit.residual import (SAMPLERS, NoiseStreams, bootstrap_ci, residual_knowledge,
                                    residual_knowledge_loop)
from privkit.errors import ConfigError

from digits_mlp import fit as _fit
from digits_mlp import shuffled_digits
from digits_mlp import mlp as _mlp


# ---------------------------------------------------------------------------------------------
# tiny digits set-up: 64 features in [0, 1], MLPs trained full-batch in well under a second
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    x, y, perm = shuffled_digits()
    test, train = perm[:300], perm[300:]
    forget, retain = train[:60], train[60:]
    # "memorised" forget set: labels swapped to another class, learnable only by memorising them
    y_mem = y.clone()
    y_mem[forget] = (y[forget] + 1 + torch.tensor(np.random.default_rng(1).integers(0, 9, len(forget)))) % 10
    ref = _fit(x[retain], y[retain], seed=1)                      # retrained without the forget set
    indep = _fit(x[retain], y[retain], seed=2)                    # another retrain: no residual knowledge
    with_forget = _fit(x[train], y[train], seed=3)                # trained on the forget set too
    memorised = _fit(x[train], y_mem[train], seed=4, steps=400)   # memorised swapped labels
    return dict(x=x, y=y, y_mem=y_mem, test=test, forget=forget, retain=retain, ref=ref, indep=indep,
                with_forget=with_forget, memorised=memorised)


@pytest.mark.parametrize("sampler", ["uniform", "gaussian", "pgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_batched_estimator_matches_plain_loop(digits, sampler, norm):
    # the memorised model on its swapped labels: recognition is partial, so the counts are informative
    x, y, f = digits["x"], digits["y_mem"], digits["forget"][:11]
    taus = (0.05, 0.3) if norm == "linf" else (0.3, 1.5)
    # batch_size 40 with 16 samples -> chunks of 2 forget samples, the last one partial
    batched = residual_knowledge(digits["memorised"], digits["ref"], x[f], y[f], taus, norm=norm, sampler=sampler,
                                 samples=16, batch_size=40, seed=7)
    loop = residual_knowledge_loop(digits["memorised"], digits["ref"], x[f], y[f], taus, norm=norm,
                                   sampler=sampler, samples=16, seed=7)
    np.testing.assert_array_equal(batched.k_unlearned, loop.k_unlearned)
    np.testing.assert_array_equal(batched.k_reference, loop.k_reference)
    assert batched.summary == loop.summary
    # not degenerate: some neighbourhoods are recognised in part, so every perturbation's verdict counts
    counts = np.concatenate([batched.k_unlearned, batched.k_reference])
    assert ((counts > 0) & (counts < 16)).any()


def test_iterable_of_batches_gives_the_same_result_as_a_tensor(digits):
    x, y, f = digits["x"], digits["y"], digits["forget"]
    whole = residual_knowledge(digits["with_forget"], digits["ref"], x[f], y[f], (0.1, 0.3), samples=8, seed=3)
    cuts = [0, 7, 8, 30, len(f)]
    batches = [(np.arange(a, b), x[f[a:b]], y[f[a:b]][:, None]) for a, b in zip(cuts, cuts[1:])]
    streamed = residual_knowledge(digits["with_forget"], digits["ref"], iter(batches), None, (0.1, 0.3), samples=8,
                                  seed=3, batch_size=24)
    np.testing.assert_array_equal(whole.k_unlearned, streamed.k_unlearned)
    np.testing.assert_array_equal(whole.labels, streamed.labels)
    # a different seed gives different perturbations
    other = residual_knowledge(digits["with_forget"], digits["ref"], x[f], y[f], (0.1, 0.3), samples=8, seed=4)
    assert not np.array_equal(whole.k_unlearned, other.k_unlearned) or not np.array_equal(whole.k_reference,
                                                                                          other.k_reference)


def test_independent_retrain_ci_covers_one(digits):
    x, y, f = digits["x"], digits["y"], digits["forget"]
    # On the CLI's default grid the band covers 1 for every audit seed tried. At the wider radii 0.2
    # and 0.3 the two retrains' robustness really differs: over audit seeds 0-23 the mean r_tau at
    # tau = 0.2 is 0.988 +- 0.004 and the band lies just below 1 for 15 of the 24 seeds with the
    # earlier float draws (seed 0 happened to cover it) and 8 of 24 with the 16-bit draws (seed 0:
    # [0.954, 0.9998]). The interval covers the forget samples and the perturbations, not the
    # training runs, so there the test asserts what must always hold: never a false detection.
    grid = (0.01, 0.02, 0.03, 0.05, 0.1)
    wider = (0.2, 0.3, 0.4, 0.6)
    for seed in range(4):
        for ci in ("bootstrap", "t"):
            res = residual_knowledge(digits["indep"], digits["ref"], x[f], y[f], grid + wider, samples=64, seed=seed,
                                     ci_method=ci)
            for row in res.summary[:len(grid)]:
                assert row["ci_low"] <= 1.0 <= row["ci_high"], (seed, ci, row)
            assert all(row["ci_low"] <= 1.0 for row in res.summary), (seed, ci)
            assert res.verdict(0.1).startswith("No evidence of residual knowledge")
            # not trivially 1: the two retrains disagree on some neighbourhoods
            wide = res.summary[len(grid) + 1]  # tau = 0.3
            assert wide["ci_high"] - wide["ci_low"] > 0.01
            assert 0 < wide["frac_above_1"] < 0.5


def test_model_trained_with_forget_set_shows_residual_knowledge(digits):
    x, y, f = digits["x"], digits["y"], digits["forget"]
    # forget samples the model trained on, against the retrain that never saw them
    clean = residual_knowledge(digits["with_forget"], digits["ref"], x[f], y[f], (0.05,), samples=64)
    r = clean.r_tau[0]
    assert clean.summary[0]["mean_r_tau"] > 1.0
    assert (r > 1).sum() > (r < 1).sum()
    # memorised (swapped) labels: overwhelming evidence, and the verdict says so
    mem = residual_knowledge(digits["memorised"], digits["ref"], x[f], digits["y_mem"][f], (0.05, 0.1), samples=64)
    m = mem.to_metrics(0.05)
    assert m["ci_low"] > 1.0 and m["frac_above_1"] > 0.8
    assert m["recognition_unlearned"] > 5 * m["recognition_reference"]
    assert mem.verdict(0.05).startswith("Residual knowledge detected")


def test_pgd_recognises_at_least_as_many_perturbations_as_uniform(digits):
    x, y_mem, f = digits["x"], digits["y_mem"], digits["forget"]
    kw = dict(taus=(0.1, 0.2), samples=16, seed=0)
    uni = residual_knowledge(digits["memorised"], digits["ref"], x[f], y_mem[f], sampler="uniform", **kw)
    pgd = residual_knowledge(digits["memorised"], digits["ref"], x[f], y_mem[f], sampler="pgd", **kw)
    assert (pgd.k_unlearned >= uni.k_unlearned).all()
    assert pgd.k_unlearned.sum() > uni.k_unlearned.sum()


def test_heldout_tier(digits):
    x, y, f, test = digits["x"], digits["y"], digits["forget"], digits["test"]
    kw = dict(taus=(0.2, 0.3), samples=32, heldout_x=x[test], heldout_y=y[test])
    # the retrain saw neither the forget nor the held-out samples: no evidence either way
    null = residual_knowledge(digits["ref"], None, x[f], y[f], **kw)
    assert null.tier == "heldout"
    for row in null.summary:
        assert row["ci_low"] <= 1.0 <= row["ci_high"], row
    assert "held-out tier" in null.verdict()
    # the denominator is K times m's recognition rate on held-out neighbourhoods of the same class
    rate = null.k_reference / null.samples
    for c in np.unique(null.labels):
        same = null.labels == c
        assert np.allclose(rate[:, same], rate[:, same][:, :1])
    # the forget-neighbourhood counts are the reference tier's counts (same perturbation streams)
    full = residual_knowledge(digits["ref"], digits["indep"], x[f], y[f], taus=kw["taus"], samples=32)
    np.testing.assert_array_equal(null.k_unlearned, full.k_unlearned)
    # a model trained on the forget samples recognises their neighbourhoods more than held-out ones
    seen = residual_knowledge(digits["with_forget"], None, x[f], y[f], **kw)
    assert seen.summary[0]["mean_r_tau"] > null.summary[0]["mean_r_tau"]


def test_metrics_top_samples_and_verdict(digits):
    x, y_mem, f = digits["x"], digits["y_mem"], digits["forget"]
    res = residual_knowledge(digits["memorised"], digits["ref"], x[f], y_mem[f], (0.05, 0.1, 0.2), samples=16)
    m = res.to_metrics(0.1)
    assert {"mean_r_tau", "ci_low", "ci_high", "frac_above_1", "recognition_unlearned", "recognition_reference",
            "tau", "per_tau"} <= set(m)
    assert m["tau"] == 0.1 and len(m["per_tau"]) == 3
    assert m["ci_low"] <= m["mean_r_tau"] <= m["ci_high"]
    assert m["mean_r_tau"] == pytest.approx(res.r_tau[1].mean())
    assert m["frac_above_1"] == pytest.approx((res.r_tau[1] > 1).mean())
    top = res.top_samples(5, tau=0.1)
    r = res.r_tau[1]
    assert len(top) == 5 and np.all(np.diff(r[top]) <= 0)
    assert r[top[-1]] >= np.delete(r, top).max()
    with pytest.raises(ConfigError, match="0.07"):
        res.to_metrics(0.07)


# ---------------------------------------------------------------------------------------------
# samplers: inside the ball and the clip range
# ---------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), tau=st.floats(1e-3, 2.0), norm=st.sampled_from(["linf", "l2"]),
       sampler=st.sampled_from(["uniform", "pgd", "gaussian"]), dim=st.integers(1, 20),
       clip=st.sampled_from([(0.0, 1.0), (-1.0, 2.0), None]))
def test_samplers_stay_in_ball_and_clip_range(seed, tau, norm, sampler, dim, clip):
    g = torch.Generator().manual_seed(seed)
    lo, hi = clip if clip is not None else (0.0, 1.0)
    x = lo + (hi - lo) * torch.rand((3, dim), generator=g)
    y = torch.randint(0, 4, (3,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, 4))
    out = SAMPLERS[sampler](x, y, tau=tau, norm=norm, samples=5, streams=NoiseStreams.for_samples(seed, range(3)),
                            clip=clip, model=model, steps=3)
    assert out.shape == (3, 5, dim)
    if clip is not None:
        assert out.min() >= clip[0] and out.max() <= clip[1]
    if sampler == "gaussian":
        return  # Gaussian draws are deliberately not confined to the ball
    delta = out - x[:, None]
    size = delta.abs().amax(dim=-1) if norm == "linf" else delta.norm(dim=-1)
    assert (size <= tau * (1 + 1e-5) + 1e-6).all()


def test_uniform_l2_radius_law():
    # uniform in a d-ball: (|delta| / tau)^d is U(0, 1), so its mean is 1/2 and its spread matches
    d, n, tau = 10, 4000, 0.5
    x = torch.zeros((1, d))
    out = SAMPLERS["uniform"](x, None, tau=tau, norm="l2", samples=n, streams=NoiseStreams.for_samples(0, [0]),
                              clip=None)
    u = ((out[0].norm(dim=-1) / tau) ** d).numpy()
    assert abs(u.mean() - 0.5) < 0.03 and abs(u.var() - 1 / 12) < 0.01
    # directions are isotropic: the mean draw is near the centre
    assert out[0].mean(dim=0).abs().max() < 0.03


@pytest.mark.parametrize("n, resamples", [(2, 7), (37, 500), (300, 2000)])
def test_bootstrap_counts_match_gathered_resamples(n, resamples):
    # the fast bootstrap (count matrix x values) against the obvious one: the same index draws
    # (the narrowest unsigned integers holding 0..n-1: 8 bits up to 256 samples, then 16),
    # each row resampled by gathering and averaged
    values = np.random.default_rng(n).gamma(2.0, size=(3, n))
    low, high = bootstrap_ci(values, 0.9, np.random.default_rng(5), resamples=resamples)
    rng = np.random.default_rng(5)
    block = max(1, min(resamples, 2_000_000 // n))
    index_dtype = np.uint8 if n <= 256 else np.uint16
    means = np.empty((3, resamples))
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        index = rng.integers(0, n, size=(stop - start, n), dtype=index_dtype)
        means[:, start:stop] = values[:, index].mean(axis=-1)
    ref_low, ref_high = np.quantile(means, [0.05, 0.95], axis=1)
    np.testing.assert_allclose(low, ref_low, rtol=1e-12)
    np.testing.assert_allclose(high, ref_high, rtol=1e-12)
    if n > 2:  # with 2 values and 7 resamples the mean can be an end of the interval
        assert (low < values.mean(axis=1)).all() and (values.mean(axis=1) < high).all()


def test_unit_draws_are_the_streams_numbers_and_the_buffer_changes_nothing():
    # exact mode: W = 2U - 1 drawn directly on [-1, 1) is bit for bit 2 * rand - 1 of each sample's stream
    exact = NoiseStreams.for_samples(3, [0, 5, 9], exact=True)
    for row, seed in zip(exact.unit_cube((4, 6)), exact.seeds):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(row, torch.rand((4, 6), generator=g) * 2 - 1)
    # default: the sample's SplitMix64 words (key mix(seed + gamma), word j = mix(key + (j + 1) gamma),
    # here in Python integers) read as little-endian 16-bit integers I, W = (2I + 1) / 2^16;
    # 4 x 7 = 28 values need 7 words exactly, 4 x 6 = 24 need 6, and 5 x 5 = 25 leave 3 lanes unused
    mask, gamma = 2**64 - 1, 0x9E3779B97F4A7C15

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for shape in ((4, 7), (4, 6), (5, 5)):
        streams = NoiseStreams.for_samples(3, [0, 5, 9])
        count = int(np.prod(shape))
        for row, seed in zip(streams.unit_cube(shape), streams.seeds):
            key = mix((seed + gamma) & mask)
            words = np.array([mix((key + (j + 1) * gamma) & mask) for j in range(-(-count // 4))], dtype=np.uint64)
            lanes = words.view("<i2")[:count].astype(np.float64)
            np.testing.assert_array_equal(row.numpy().ravel(), (2 * lanes + 1) / 2**16)
    x = torch.rand((3, 6), generator=torch.Generator().manual_seed(1))
    for sampler, is_exact in (("uniform", False), ("uniform", True), ("gaussian", False)):
        kw = dict(tau=0.2, norm="linf", samples=4, clip=(0.0, 1.0))
        plain = SAMPLERS[sampler](x, None, streams=NoiseStreams.for_samples(3, [0, 5, 9], exact=is_exact), **kw)
        buffer = torch.full((3, 4, 6), float("nan"))
        into = SAMPLERS[sampler](x, None, streams=NoiseStreams.for_samples(3, [0, 5, 9], exact=is_exact), out=buffer,
                                 **kw)
        assert into.data_ptr() == buffer.data_ptr() and torch.equal(into, plain)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(taus=(0.1, 0.0)), "tau=0"),
    (dict(taus=(-0.1,)), "tau=-0.1"),
    (dict(samples=0), "samples=0"),
    (dict(norm="l1"), "'l1'"),
    (dict(sampler="fgsm"), "'fgsm'"),
    (dict(ci_method="jackknife"), "'jackknife'"),
    (dict(confidence=1.5), "confidence=1.5"),
])
def test_bad_configuration_is_a_config_error(digits, kwargs, fragment):
    x, y, f = digits["x"], digits["y"], digits["forget"][:4]
    args = dict(taus=(0.1,), samples=4)
    args.update(kwargs)
    with pytest.raises(ConfigError) as err:
        residual_knowledge(digits["indep"], digits["ref"], x[f], y[f], **args)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_empty_forget_set_and_missing_heldout_class(digits):
    x, y = digits["x"], digits["y"]
    with pytest.raises(ConfigError, match="forget set is empty"):
        residual_knowledge(digits["indep"], digits["ref"], x[:0], y[:0], (0.1,))
    with pytest.raises(ConfigError, match="forget set is empty"):
        residual_knowledge(digits["indep"], digits["ref"], iter([]), None, (0.1,))
    with pytest.raises(ConfigError, match="held-out"):
        residual_knowledge(digits["indep"], None, x[:4], y[:4], (0.1,))
    nines = (y == 9).nonzero().flatten()[:5]
    zeros = (y == 0).nonzero().flatten()[:5]
    with pytest.raises(ConfigError, match=r"class\(es\) \[0\]"):
        residual_knowledge(digits["indep"], None, x[zeros], y[zeros], (0.1,), samples=4, heldout_x=x[nines],
                           heldout_y=y[nines])
