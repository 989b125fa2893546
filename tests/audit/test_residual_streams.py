"""Random streams of the residual-knowledge audit: the counter-based SplitMix64 words behind the
16-bit L-inf draws, and the bootstrap's narrow resampling indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import privkit.audit.residual as residual
from privkit.audit.residual import (NoiseStreams, bootstrap_ci, bootstrap_index_dtype, splitmix64_keys,
                                    splitmix64_words)

MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15


def _mix(z: int) -> int:
    """SplitMix64's output mixer in Python integers (the obviously-correct reference)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _words(keys, width: int) -> np.ndarray:
    out = torch.empty((len(keys), width), dtype=torch.int64)
    splitmix64_words(np.asarray(keys, dtype=np.uint64), out)
    return out.numpy().view(np.uint64)


def test_words_are_the_splitmix64_generator():
    # the published first outputs of SplitMix64 seeded with 1234567 (Vigna's reference implementation)
    assert _words([1234567], 5)[0].tolist() == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                                4593380528125082431, 16408922859458223821]
    # and word j of key k is mix(k + (j + 1) gamma) modulo 2^64 for keys near the wrap-around too
    keys = [0, 1, 2**63, MASK, 0xDEADBEEFCAFEF00D]
    expected = [[_mix((k + (j + 1) * GAMMA) & MASK) for j in range(40)] for k in keys]
    assert _words(keys, 40).tolist() == expected
    # keys are the first output of each seed's own stream
    seeds = [0, 7, 2**62 + 3]
    assert splitmix64_keys(seeds).tolist() == [_mix((s + GAMMA) & MASK) for s in seeds]


def test_torch_words_equal_the_numpy_words():
    # the path taken on a GPU (torch int64 operations), checked here on the CPU: bit for bit the same
    keys = splitmix64_keys(range(0, 3000, 97))
    width = 333
    via_torch = torch.empty((len(keys), width), dtype=torch.int64)
    residual._splitmix64_words_torch(keys, via_torch, torch.empty_like(via_torch))
    assert np.array_equal(via_torch.numpy().view(np.uint64), _words(keys, width))


def test_a_samples_draws_do_not_depend_on_its_chunk_or_the_word_blocks(monkeypatch):
    alone = NoiseStreams.for_samples(5, [7]).unit_cube((3, 7))[0].clone()
    in_chunk = NoiseStreams.for_samples(5, range(12)).unit_cube((3, 7))
    assert torch.equal(in_chunk[7], alone)
    # one row per block of words (the blocks bound the mixer's scratch for large inputs)
    monkeypatch.setattr(residual, "_WORD_BLOCK_BYTES", 8)
    assert torch.equal(NoiseStreams.for_samples(5, range(12)).unit_cube((3, 7)), in_chunk)


def test_neighbouring_samples_draw_unrelated_values():
    # the per-sample seeds are an arithmetic progression in the sample index; keyed through the mixer,
    # the streams of samples i and i + 1 (and of the same audit seed's neighbour) must be uncorrelated
    unit = NoiseStreams.for_samples(4, range(201)).unit_cube((400,)).double().numpy()
    n = unit[:-1].size
    assert abs(np.corrcoef(unit[:-1].ravel(), unit[1:].ravel())[0, 1]) < 5 / np.sqrt(n)
    other_seed = NoiseStreams.for_samples(5, range(201)).unit_cube((400,)).double().numpy()
    assert abs(np.corrcoef(unit.ravel(), other_seed.ravel())[0, 1]) < 5 / np.sqrt(unit.size)
    # the pooled values of all samples are uniform on the 16-bit grid of [-1, 1]
    assert stats.kstest(unit.ravel(), stats.uniform(loc=-1.0, scale=2.0).cdf).pvalue > 1e-3


@pytest.mark.parametrize("n, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                      (65537, np.uint32)])
def test_bootstrap_index_dtype_is_the_narrowest_that_holds_every_index(n, dtype):
    assert bootstrap_index_dtype(n) == np.dtype(dtype)


@pytest.mark.parametrize("n", [256, 300])
@pytest.mark.parametrize("position", [0, -1])
def test_bootstrap_resamples_reach_the_first_and_last_sample(n, position):
    # one sample is 1, the others 0: a resample holds it k ~ Binomial(n, 1/n) times, so its means
    # are 0, 1/n, 2/n, ... and the interval spans the mean 1/n; index draws that never reached that
    # sample (an off-by-one, a too narrow type) would make every resample mean 0
    values = np.zeros(n)
    values[position] = 1.0
    low, high = bootstrap_ci(values, 0.95, np.random.default_rng(0))
    assert low < 1.0 / n < high


@pytest.mark.parametrize("n", [40, 300])
def test_bootstrap_interval_covers_the_true_mean_at_about_its_level(n):
    # 300 normal data sets: the 90% percentile interval of the mean covers 0 in about 90% of them
    # (binomial standard error 1.7 points; the percentile bootstrap runs slightly narrow at small n)
    rng = np.random.default_rng(n)
    covered = 0
    for _ in range(300):
        low, high = bootstrap_ci(rng.normal(size=n), 0.90, rng, resamples=1000)
        covered += low <= 0.0 <= high
    assert 0.83 <= covered / 300 <= 0.96
