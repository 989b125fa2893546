import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privkit.evaluate import metrics as M


def test_wilson_interval_contains_estimate_and_shrinks():
    lo, hi = M.wilson_interval(50, 100)
    assert lo < 0.5 < hi
    lo2, hi2 = M.wilson_interval(500, 1000)
    assert hi2 - lo2 < hi - lo
    assert M.wilson_interval(0, 10)[0] == 0.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=30), st.lists(st.floats(-5, 5), min_size=1, max_size=30))
def test_auc_matches_pairwise_definition(pos, neg):
    p, n = np.array(pos), np.array(neg)
    ref = np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n])
    assert M.roc_auc(p, n) == pytest.approx(ref)


def test_tpr_at_fpr_and_chance():
    assert M.tpr_at_fpr(np.array([5.0, 6.0]), np.arange(100.0) / 100, 0.01) == 1.0
    assert M.majority_chance(np.array([0, 0, 1])) == pytest.approx(2 / 3)


def test_fidelity_metrics():
    a = np.random.default_rng(0).random((1, 16, 16))
    assert M.ssim(a, a) == pytest.approx(1.0)
    assert M.psnr(a, a + 0.1) == pytest.approx(20.0)
    assert M.ssim(a, np.random.default_rng(1).random((1, 16, 16))) < 0.3
    assert M.snr_db(np.ones(10), np.ones(10) * 1.1) == pytest.approx(20.0)


def test_confusion_matrix():
    c = M.confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    assert c.tolist() == [[1, 1], [0, 1]]
