"""Offline learning tasks for VQNNs (registry by decorator).

Every task returns features scaled to the angle range ``[0, pi]`` (one feature per qubit) and
real targets in ``[-1, 1]`` (the range of a Pauli-Z expectation). Nothing is downloaded: the
digits and breast-cancer data ship with scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

FEATURE_RANGE = (0.0, math.pi)


@dataclass(frozen=True)
class TaskData:
    """Features ``X (N, n)`` in ``feature_range``, targets ``y (N,)`` and what they mean."""

    X: np.ndarray
    y: np.ndarray
    feature_range: tuple[float, float]
    description: str


@dataclass(frozen=True)
class TaskInfo:
    build: Callable[[int, int], TaskData]
    max_features: int


TASKS: dict[str, TaskInfo] = {}


def register_task(name: str, *, max_features: int):
    """Register ``build(n_features, seed) -> TaskData`` under ``name``."""

    def decorator(fn):
        TASKS[name] = TaskInfo(fn, max_features)
        return fn

    return decorator


def _scale_to_angles(X: np.ndarray) -> np.ndarray:
    low, high = FEATURE_RANGE
    span = X.max(axis=0) - X.min(axis=0)
    return low + (high - low) * (X - X.min(axis=0)) / np.where(span > 0, span, 1.0)


def _pca(X: np.ndarray, n_features: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    return PCA(n_components=n_features, random_state=seed).fit_transform(StandardScaler().fit_transform(X))


@register_task("cos", max_features=20)
def cos_regression(n_features: int, seed: int, n_samples: int = 200) -> TaskData:
    """``y = 0.7 * mean_j cos(x_j)`` with ``x ~ U[0, pi]^n`` (``y = 0.7 cos x`` for one feature)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(*FEATURE_RANGE, size=(n_samples, n_features))
    return TaskData(X, 0.7 * np.cos(X).mean(axis=1), FEATURE_RANGE, "cos regression y = 0.7 mean_j cos(x_j)")


@register_task("digits", max_features=64)
def digits(n_features: int, seed: int) -> TaskData:
    """sklearn digits, PCA to ``n`` features; target ``2 d / 9 - 1`` (digit scaled to [-1, 1])."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = _scale_to_angles(_pca(data.data, n_features, seed))
    return TaskData(X, 2 * data.target / 9.0 - 1, FEATURE_RANGE, "digits PCA, scaled digit target")


@register_task("digits-binary", max_features=64)
def digits_binary(n_features: int, seed: int) -> TaskData:
    """sklearn digits 0 vs 1, PCA to ``n`` features; targets ``+1`` (0) / ``-1`` (1)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = data.target < 2
    X = _scale_to_angles(_pca(data.data[keep], n_features, seed))
    return TaskData(X, 1.0 - 2.0 * data.target[keep], FEATURE_RANGE, "digits 0 vs 1 PCA, +-1 target")


@register_task("breast-cancer", max_features=30)
def breast_cancer(n_features: int, seed: int) -> TaskData:
    """Imbalanced binary (fraud-like): sklearn breast cancer, PCA to ``n`` features, malignant
    (37 %) subsampled to 10 % of the data; targets ``-1`` (malignant, the rare class) / ``+1``."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(seed)
    benign = np.flatnonzero(data.target == 1)
    malignant = np.flatnonzero(data.target == 0)
    n_rare = int(round(len(benign) / 9))  # 10 % of the kept samples
    keep = np.sort(np.concatenate([benign, rng.choice(malignant, n_rare, replace=False)]))
    X = _scale_to_angles(_pca(data.data[keep], n_features, seed))
    return TaskData(X, 2.0 * data.target[keep] - 1.0, FEATURE_RANGE, "breast cancer PCA, 10 % rare class")


def known_tasks() -> list[str]:
    return sorted(TASKS)


def load_task(name: str, n_features: int, seed: int = 0) -> TaskData:
    """Build a registered task (validate ``name`` and ``n_features`` first)."""
    return TASKS[name].build(n_features, seed)
