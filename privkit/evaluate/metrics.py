"""Metrics shared by every evaluator: accuracy with confidence intervals, chance, confusion,
membership inference, unlearning scores and signal fidelity."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1).

    .. math:: \\frac{\\hat p + z^2/2n \\pm z\\sqrt{\\hat p(1-\\hat p)/n + z^2/4n^2}}{1 + z^2/n}
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_with_ci(pred: np.ndarray, true: np.ndarray, confidence: float = 0.95) -> dict:
    """``{"accuracy", "ci_low", "ci_high", "n"}`` for predicted vs true labels."""
    pred, true = np.asarray(pred), np.asarray(true)
    n = int(true.size)
    k = int((pred == true).sum())
    lo, hi = wilson_interval(k, n, confidence)
    return {"accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "n": n}


def majority_chance(labels: np.ndarray, num_classes: int | None = None) -> float:
    """Accuracy of always predicting the most frequent class of ``labels``."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    counts = np.bincount(labels, minlength=num_classes or 0)
    return float(counts.max() / counts.sum())


def confusion_matrix(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(true), np.asarray(pred)), 1)
    return m


def roc_auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative) (ties count half)."""
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def tpr_at_fpr(scores_pos: np.ndarray, scores_neg: np.ndarray, fpr: float = 0.01) -> float:
    """True-positive rate at the threshold whose false-positive rate is at most ``fpr``."""
    pos, neg = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    thresholds = np.sort(neg)[::-1]
    k = int(math.floor(fpr * neg.size))
    thr = thresholds[k] if k < neg.size else -np.inf
    return float((pos > thr).mean())


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: :math:`10\\log_{10}(R^2 / \\mathrm{MSE})`."""
    mse = float(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two greyscale/colour images ``(C, H, W)`` (Gaussian window 7x7).

    .. math:: \\mathrm{SSIM} = \\frac{(2\\mu_a\\mu_b + c_1)(2\\sigma_{ab} + c_2)}{(\\mu_a^2+\\mu_b^2+c_1)(\\sigma_a^2+\\sigma_b^2+c_2)}
    """
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim == 2:
        a, b = a[None], b[None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ca, cb in zip(a, b):
        f = lambda z: gaussian_filter(z, 1.5, truncate=2.0)  # noqa: E731
        mu_a, mu_b = f(ca), f(cb)
        saa, sbb, sab = f(ca * ca) - mu_a ** 2, f(cb * cb) - mu_b ** 2, f(ca * cb) - mu_a * mu_b
        vals.append(((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2)))
    return float(np.mean(vals))


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of ``estimate`` against ``reference``."""
    ref, est = np.asarray(reference, float), np.asarray(estimate, float)
    noise = float(np.sum((ref - est) ** 2))
    return float("inf") if noise == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / noise)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
