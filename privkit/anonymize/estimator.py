"""Model-agnostic biometric anonymization (Chen et al., 2024, arXiv 2405.15062).

Each record ``x_i`` (a fixed-length representation in ``R^d``) is replaced by a *selective weighted
mean* over a *random set* ``R_i`` of ``k`` records, guided by *feature-relevance scores* ``r`` for
the attribute to keep:

.. math::

    x'_i[j] = w_j \\, x_i[j] + (1 - w_j) \\, \\frac{1}{k} \\sum_{l \\in R_i} x_l[j],

with ``w_j = w`` for the top-``p`` fraction of features by relevance ``r_j`` and ``w_j = 0`` for the
others (``weighting="hard"``), or ``w_j = w * min(1, r_j / r_(p))`` growing with ``r_j``
(``weighting="soft"``; ``r_(p)`` is the smallest relevance among the top-``p``). ``R_i`` holds
``i`` itself and ``k - 1`` records of the reference pool drawn anew for every record, from the same
kept-attribute class and from ``k`` distinct identities. The paper's code is not public; every
choice made where its text is silent is listed in ``docs/anonymize.md``.

Randomness is *counter based*: the uniform number behind slot ``s`` of record ``i`` is a hash of
``(seed, i, s)``. The sets therefore depend only on the seed and the record's row, not on the batch
size or the order of processing, and a plain per-record loop reproduces them exactly.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator

from privkit.anonymize.representations import Representation, get_representation, representation_from_dict
from privkit.errors import ArtifactError, ConfigError, SchemaError

FORMAT_NAME = "privkit.anonymize.BiometricAnonymizer"
FORMAT_VERSION = 1
ARRAYS_FILE = "anonymizer.safetensors"
META_FILE = "anonymizer.json"

# ---------------------------------------------------------------------------------------------
# counter-based uniform numbers (splitmix64)
# ---------------------------------------------------------------------------------------------
_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN
    z = (z ^ (z >> _U64(30))) * _MIX1
    z = (z ^ (z >> _U64(27))) * _MIX2
    return z ^ (z >> _U64(31))


def counter_uniform(seed: int, rows: np.ndarray, slot: int, stream: int) -> np.ndarray:
    """Uniform numbers in ``[0, 1)`` that depend only on ``(seed, row, slot, stream)``.

    ``u = splitmix64(splitmix64(splitmix64(seed) ^ row) ^ (2 slot + stream)) / 2^64`` (top 53 bits).
    ``stream`` 0 picks the identity of a slot and 1 the record of that identity.
    """
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.asarray([seed], dtype=np.uint64))
        h = _splitmix64(key ^ rows)
        h = _splitmix64(h ^ _U64(2 * int(slot) + int(stream)))
    return (h >> _U64(11)).astype(np.float64) * (2.0 ** -53)


# ---------------------------------------------------------------------------------------------
# relevance scorers and feature weightings (registries)
# ---------------------------------------------------------------------------------------------
_RELEVANCE: dict[str, Callable[..., np.ndarray]] = {}
_WEIGHTING: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {}


def register_relevance(name: str):
    """Register ``f(x_std, y, n_classes, keep_model) -> r`` as relevance scorer ``name``."""

    def decorate(fn):
        _RELEVANCE[name] = fn
        return fn

    return decorate


def register_weighting(name: str):
    """Register ``f(relevance, relevant_mask, weight) -> w`` (per-feature weights) as ``name``."""

    def decorate(fn):
        _WEIGHTING[name] = fn
        return fn

    return decorate


@register_relevance("linear")
def linear_relevance(x_std: np.ndarray, y: np.ndarray, n_classes: int, keep_model) -> np.ndarray:
    """``r_j = mean_c |beta_{c j}|``: absolute coefficients of a logistic regression on standardised
    features, averaged over classes (one coefficient row for two classes)."""
    return np.abs(np.asarray(keep_model.coef_, dtype=np.float64)).mean(axis=0)


@register_relevance("mutual_info")
def mutual_info_relevance(x_std: np.ndarray, y: np.ndarray, n_classes: int, keep_model,
                          n_bins: int = 16) -> np.ndarray:
    """``r_j = I(X_j; Y)`` in nats, plug-in estimate on equal-frequency bins of each feature.

    All features share the number of bins and of samples, so the plug-in bias is the same for
    every feature and the ranking is unaffected by it.
    """
    n, d = x_std.shape
    n_bins = int(max(2, min(n_bins, n // 4 if n >= 8 else 2)))
    quantiles = np.linspace(0, 1, n_bins + 1)[1:-1]
    edges = np.quantile(x_std, quantiles, axis=0)  # (n_bins - 1, d)
    bins = np.empty((n, d), dtype=np.int64)
    for j in range(d):  # searchsorted per feature: O(n log n_bins) each, no (n, d, n_bins) temporary
        bins[:, j] = np.searchsorted(edges[:, j], x_std[:, j], side="right")
    cells = n_bins * n_classes
    flat = (np.arange(d, dtype=np.int64)[None, :] * cells + bins * n_classes + y[:, None]).ravel()
    joint = np.bincount(flat, minlength=d * cells).reshape(d, n_bins, n_classes) / n
    p_bin = joint.sum(axis=2, keepdims=True)
    p_cls = np.bincount(y, minlength=n_classes)[None, None, :] / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / (p_bin * p_cls)), 0.0)
    return terms.sum(axis=(1, 2))


@register_weighting("hard")
def hard_weights(relevance: np.ndarray, relevant_mask: np.ndarray, weight: float) -> np.ndarray:
    """``w_j = w`` on relevant features, 0 elsewhere."""
    return np.where(relevant_mask, float(weight), 0.0)


@register_weighting("soft")
def soft_weights(relevance: np.ndarray, relevant_mask: np.ndarray, weight: float) -> np.ndarray:
    """``w_j = w * min(1, r_j / r_(p))``: ``w`` on relevant features, shrinking in proportion to the
    relevance below the top-``p`` cut ``r_(p)``."""
    cut = float(relevance[relevant_mask].min()) if relevant_mask.any() else 0.0
    if cut <= 0:
        return np.where(relevant_mask, float(weight), 0.0)
    return float(weight) * np.clip(relevance / cut, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _stratified_subsample(keep_codes: np.ndarray, identity_codes: np.ndarray, size: int | None,
                          rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` records, kept classes in proportion, identities spread evenly.

    Each class gets a largest-remainder share of ``size``; inside a class, records are taken one
    per identity first (in random order), then a second per identity, and so on, so the subsample
    keeps as many distinct identities per class as it can.
    """
    n = len(keep_codes)
    if size is None or size >= n:
        return np.arange(n)
    n_classes = int(keep_codes.max()) + 1
    counts = np.bincount(keep_codes, minlength=n_classes)
    exact = size * counts / n
    quota = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - quota), kind="stable")[: size - int(quota.sum())]:
        quota[c] += 1
    quota = np.minimum(quota, counts)
    perm = rng.permutation(n)
    n_ident = int(identity_codes.max()) + 1
    group = keep_codes[perm].astype(np.int64) * n_ident + identity_codes[perm]
    by_group = np.argsort(group, kind="stable")  # stable: random order inside each group
    sorted_group = group[by_group]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[by_group] = np.arange(n) - group_start  # rank of the record inside its (class, identity)
    order = np.lexsort((np.arange(n), rank, keep_codes[perm]))  # class, then rank, then random
    cls_sorted = keep_codes[perm][order]
    cls_start = np.searchsorted(cls_sorted, np.arange(n_classes))
    chosen = np.concatenate([order[cls_start[c]: cls_start[c] + quota[c]] for c in range(n_classes)])
    return np.sort(perm[chosen])


def _check_finite(x: np.ndarray | torch.Tensor, what: str) -> None:
    finite = torch.isfinite(x).all().item() if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not finite:
        raise ConfigError(f"{what} contains NaN or Inf values; remove or impute them before anonymizing")


def _to_json_values(values: np.ndarray) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values]


class _SetSampler:
    """Draws the ``k - 1`` reference-pool members of each record's set ``R_i``.

    Units are identities (``distinct_identities=True``) or pool records. Pool records are grouped
    by *group* (the kept class, or one group holding everything) and sorted by ``(group, unit)``;
    every ``(group, unit)`` pair owns a contiguous run of pool records. Slot ``s`` of a record with
    own class ``c`` draws from group ``slot_groups[c, s]`` one unit uniformly among those not used
    by the record or its earlier slots (the ``j``-th free unit, found by skipping used ones in
    sorted order), then one record of that unit uniformly.
    """

    def __init__(self, pool_group: np.ndarray, pool_unit: np.ndarray, n_groups: int, n_units: int,
                 slot_groups: np.ndarray, seed: int):
        self.n_units, self.slot_groups, self.seed = int(n_units), slot_groups, int(seed)
        key = pool_group.astype(np.int64) * self.n_units + pool_unit
        self.record_order = np.argsort(key, kind="stable")
        sorted_key = key[self.record_order]
        self.pair_key, self.pair_start, self.pair_count = np.unique(sorted_key, return_index=True, return_counts=True)
        self.pair_unit = self.pair_key % self.n_units
        pair_group = self.pair_key // self.n_units
        self.group_pair_start = np.searchsorted(pair_group, np.arange(n_groups))
        self.group_n_units = np.bincount(pair_group, minlength=n_groups)

    def sample(self, rows: np.ndarray, own_class: np.ndarray, own_unit: np.ndarray) -> np.ndarray:
        """Pool indices ``(B, k - 1)`` of the other members of each set."""
        n_slots = self.slot_groups.shape[1]
        batch = len(rows)
        units = np.empty((batch, n_slots), dtype=np.int64)
        members = np.empty((batch, n_slots), dtype=np.int64)
        far = np.iinfo(np.int64).max // 4
        for s in range(n_slots):
            group = self.slot_groups[own_class, s]
            n_in_group = self.group_n_units[group]
            first_pair = self.group_pair_start[group]
            used = np.concatenate([own_unit[:, None], units[:, :s]], axis=1)
            key = group[:, None] * self.n_units + used
            pos = np.minimum(np.searchsorted(self.pair_key, key), len(self.pair_key) - 1)
            present = (used >= 0) & (self.pair_key[pos] == key)
            local_used = np.sort(np.where(present, pos - first_pair[:, None], far), axis=1)
            # a unit repeated only after an exhausted group (see below) must be skipped once
            repeated = np.zeros_like(present)
            repeated[:, 1:] = (local_used[:, 1:] == local_used[:, :-1]) & (local_used[:, 1:] < far)
            local_used = np.sort(np.where(repeated, far, local_used), axis=1)
            n_free = n_in_group - (local_used < far).sum(axis=1)
            # Every unit of the group already used (possible only in cross-class modes that the
            # fit-time checks could not rule out): draw among all, accepting a repeated identity;
            # achieved_k_ reports the shortfall.
            exhausted = n_free <= 0
            n_draw = np.where(exhausted, n_in_group, n_free)
            u = counter_uniform(self.seed, rows, s, 0)
            j = np.minimum((u * n_draw).astype(np.int64), n_draw - 1)
            skip = np.where(exhausted[:, None], far, local_used)
            for t in range(skip.shape[1]):  # j-th free unit: step over used units in sorted order
                j += skip[:, t] <= j
            pair = first_pair + j
            units[:, s] = self.pair_unit[pair]
            u_record = counter_uniform(self.seed, rows, s, 1)
            offset = np.minimum((u_record * self.pair_count[pair]).astype(np.int64), self.pair_count[pair] - 1)
            members[:, s] = self.record_order[self.pair_start[pair] + offset]
        return members


def _distinct_counts(own_identity: np.ndarray, member_identity: np.ndarray) -> np.ndarray:
    """Distinct identities in each set: the record (own code, -1 when not in the pool) + members."""
    both = np.sort(np.concatenate([own_identity[:, None], member_identity], axis=1), axis=1)
    return 1 + (np.diff(both, axis=1) != 0).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------------
class BiometricAnonymizer(BaseEstimator):
    """Selective weighted mean over random ``k``-identity sets (Chen et al., 2024).

    Parameters
    ----------
    k : int, default 5
        Size of each set ``R_i`` (the record and ``k - 1`` others of distinct identities).
    weight : float in [0, 1], default 0.5
        ``w``: share of the record's own value kept in relevant features.
    top_features : float in (0, 1], default 0.2
        ``p``: fraction of features, by relevance, treated as relevant to the kept attribute.
    relevance : {"linear", "mutual_info"}, default "linear"
        How ``r`` is scored (absolute standardised logistic-regression coefficients averaged over
        classes, or binned mutual information).
    weighting : {"hard", "soft"}, default "hard"
        Per-feature weights ``w_j``: ``w`` on relevant features and 0 elsewhere, or
        ``w * min(1, r_j / r_(p))``.
    same_class : bool, default True
        Draw every member of ``R_i`` from the record's kept-attribute class.
    distinct_identities : bool, default True
        Members of ``R_i`` have ``k`` distinct identities (else: ``k - 1`` distinct pool records).
    t_close : float, optional
        With ``same_class=False``: allot the ``k`` slots to kept classes so that the label mix of
        ``R_i`` is within total-variation distance ``t_close`` of the data's label mix.
    pool_size : int, optional
        Size of the stored reference pool (stratified subsample of the fitted data); all of it
        when None.
    seed : int, default 0
    representation : "auto", "none" or Representation, default "auto"
        How samples become rows: "auto" takes a 2-D array as is and flattens higher-dimensional
        arrays (reshaping back on output); a :class:`Representation` encodes raw samples (for
        example log-mel spectrograms of audio) and decodes the output back to samples.
    relevance_samples : int, default 20000
        At most this many records (stratified) are used to score relevance, bounding fit memory.

    Attributes
    ----------
    relevance_ : ndarray (d,)
        ``r``.
    relevant_mask_ : ndarray of bool (d,)
        The top-``p`` features.
    feature_weights_ : ndarray (d,)
        ``w_j``.
    classes_ : ndarray
        Kept-attribute classes (label values as given).
    pool_x_, pool_keep_, pool_identity_ : ndarray
        The reference pool: rows, kept labels and identity labels (values as given).
    achieved_k_ : dict
        Distinct identities per set over the fitted records: ``requested``, ``min``, ``mean``,
        ``max``, ``fraction_below_k`` -- the k-anonymity actually achieved.
    t_closeness_ : float
        With ``t_close``: the largest total-variation distance between a set's label mix and the
        data's (the ``t`` actually achieved).
    slot_groups_ : ndarray (n_classes, k - 1)
        Group (kept class, or 0 for the whole pool) each slot draws from, per own class.
    representation_ : Representation or None
    n_features_in_ : int
    """

    def __init__(self, k: int = 5, weight: float = 0.5, top_features: float = 0.2, relevance: str = "linear",
                 weighting: str = "hard", same_class: bool = True, distinct_identities: bool = True,
                 t_close: float | None = None, pool_size: int | None = None, seed: int = 0,
                 representation: Any = "auto", relevance_samples: int = 20000):
        self.k = k
        self.weight = weight
        self.top_features = top_features
        self.relevance = relevance
        self.weighting = weighting
        self.same_class = same_class
        self.distinct_identities = distinct_identities
        self.t_close = t_close
        self.pool_size = pool_size
        self.seed = seed
        self.representation = representation
        self.relevance_samples = relevance_samples

    # -- validation ------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ConfigError(f"k={self.k!r} is not a set size; use an integer k >= 1 (k=1 releases records unchanged)")
        if not isinstance(self.weight, (int, float, np.floating)) or not (0.0 <= float(self.weight) <= 1.0):
            raise ConfigError(f"weight={self.weight!r} is outside [0, 1]; use a weight between 0 (pure set mean) and 1")
        if not isinstance(self.top_features, (int, float, np.floating)) or not (0.0 < float(self.top_features) <= 1.0):
            raise ConfigError(f"top_features={self.top_features!r} is outside (0, 1]; use the fraction of features to keep, e.g. 0.2")
        if self.relevance not in _RELEVANCE:
            raise ConfigError(f"relevance={self.relevance!r} is unknown; use one of {', '.join(sorted(_RELEVANCE))}")
        if self.weighting not in _WEIGHTING:
            raise ConfigError(f"weighting={self.weighting!r} is unknown; use one of {', '.join(sorted(_WEIGHTING))}")
        if self.t_close is not None:
            if not (0.0 <= float(self.t_close) <= 1.0):
                raise ConfigError(f"t_close={self.t_close!r} is outside [0, 1]; use a total-variation bound such as 0.2")
            if self.same_class:
                raise ConfigError("t_close needs same_class=False (same-class sets hold a single label); set same_class=False or drop t_close")
        if self.pool_size is not None and (not isinstance(self.pool_size, (int, np.integer)) or self.pool_size < 1):
            raise ConfigError(f"pool_size={self.pool_size!r} is not a positive integer; use e.g. 10000 or None for all records")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} is not a non-negative integer; use e.g. seed=0")
        if not isinstance(self.relevance_samples, (int, np.integer)) or self.relevance_samples < 2:
            raise ConfigError(f"relevance_samples={self.relevance_samples!r} is too small; use at least a few hundred")

    @staticmethod
    def _check_labels(labels, n: int, what: str) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise ConfigError(f"{what} has {labels.shape[0] if labels.ndim else 0} entries but X has {n} records; pass one label per record")
        return labels

    def _resolve_representation(self, x) -> Representation | None:
        rep = self.representation
        if isinstance(rep, Representation):
            return rep
        if rep in ("auto", "none", None):
            ndim = len(x.shape)
            if ndim == 2:
                return None
            if rep == "auto" and ndim > 2:
                return get_representation("flatten", tuple(x.shape[1:]))
            raise ConfigError(f"X has shape {list(x.shape)}; pass a 2-D (records, features) array or representation='auto'")
        raise ConfigError(f"representation={rep!r} is not understood; use 'auto', 'none' or a Representation from get_representation")

    def _rows(self, x, index) -> np.ndarray:
        """Fixed-length rows of the records ``x[index]`` (encoded when there is a representation)."""
        part = x[index]
        if self.representation_ is not None:
            return self.representation_.encode(part)
        return np.asarray(part)

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, X, keep_labels, identity_labels) -> "BiometricAnonymizer":
        """Score relevance and store the reference pool.

        Parameters
        ----------
        X : array-like (N, d), or (N, *sample_shape) with a representation
        keep_labels : array (N,)
            Labels of the attribute to keep (ints or class names).
        identity_labels : array (N,)
            Identity of each record (the attribute to hide).
        """
        self._check_params()
        n = len(X) if not hasattr(X, "shape") else int(X.shape[0])
        if n == 0:
            raise ConfigError("X is empty; pass at least k records of each kept class")
        if isinstance(X, (list, tuple)):
            X = np.asarray(X, dtype=np.float64)
        if len(getattr(X, "shape", ())) < 2:
            raise ConfigError(f"X has shape {list(np.shape(X))}; pass a 2-D array with one row per record")
        keep_labels = self._check_labels(keep_labels, n, "keep_labels")
        identity_labels = self._check_labels(identity_labels, n, "identity_labels")
        for start in range(0, n, 8192):
            _check_finite(X[start:start + 8192], "X")
        self.representation_ = self._resolve_representation(X)

        self.classes_, keep_codes = np.unique(keep_labels, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ConfigError(f"the kept attribute has a single class {_to_json_values(self.classes_)}; keep an attribute with at least 2 classes")
        identity_values, identity_codes = np.unique(identity_labels, return_inverse=True)
        rng = np.random.default_rng(int(self.seed))

        # relevance on a stratified subsample, standardised first so coefficients are comparable
        rel_index = _stratified_subsample(keep_codes, identity_codes, int(self.relevance_samples), rng)
        x_rel = self._rows(X, rel_index).astype(np.float64)
        self.n_features_in_ = int(x_rel.shape[1])
        self.feature_mean_ = x_rel.mean(axis=0)
        scale = x_rel.std(axis=0)
        self.feature_scale_ = np.where(scale > 1e-12, scale, 1.0)
        x_std = (x_rel - self.feature_mean_) / self.feature_scale_
        y_rel = keep_codes[rel_index]
        keep_model = self._fit_keep_model(x_std, y_rel)
        self.relevance_ = np.asarray(_RELEVANCE[self.relevance](x_std, y_rel, n_classes, keep_model), dtype=np.float64)
        del x_rel, x_std
        d = self.n_features_in_
        n_relevant = max(1, int(round(float(self.top_features) * d)))
        top = np.argsort(-self.relevance_, kind="stable")[:n_relevant]
        self.relevant_mask_ = np.zeros(d, dtype=bool)
        self.relevant_mask_[top] = True
        self.feature_weights_ = np.asarray(_WEIGHTING[self.weighting](self.relevance_, self.relevant_mask_, float(self.weight)), dtype=np.float64)

        # reference pool
        pool_index = _stratified_subsample(keep_codes, identity_codes, self.pool_size, rng)
        self.pool_x_ = self._rows(X, pool_index)
        if self.pool_x_.dtype not in (np.float32, np.float64):
            self.pool_x_ = self.pool_x_.astype(np.float64)
        self._pool_keep_codes = keep_codes[pool_index].astype(np.int64)
        self._pool_identity_values, self._pool_identity_codes = np.unique(identity_labels[pool_index], return_inverse=True)
        self._pool_identity_codes = self._pool_identity_codes.astype(np.int64)
        self.slot_groups_ = self._plan_slots(keep_codes, identity_codes)
        self._build_sampler()

        # k actually achieved on the fitted records (the sets transform(X) will draw)
        full_to_pool = np.full(len(identity_values), -1, dtype=np.int64)
        full_to_pool[np.searchsorted(identity_values, self._pool_identity_values)] = np.arange(len(self._pool_identity_values))
        distinct = np.empty(n, dtype=np.int64)
        for start in range(0, n, 65536):
            stop = min(n, start + 65536)
            own = full_to_pool[identity_codes[start:stop]]
            members = self._sample_members(np.arange(start, stop), keep_codes[start:stop], own)
            distinct[start:stop] = _distinct_counts(own, self._pool_identity_codes[members])
        self.achieved_k_ = self._summarise_k(distinct)
        return self

    def _fit_keep_model(self, x_std: np.ndarray, y: np.ndarray):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, max_iter=300)
        with warnings.catch_warnings():
            # the ranking of |coefficients| settles long before lbfgs meets its tolerance
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_std, y)
        self.keep_coef_ = np.asarray(model.coef_, dtype=np.float64)
        self.keep_intercept_ = np.asarray(model.intercept_, dtype=np.float64)
        return model

    def _plan_slots(self, keep_codes: np.ndarray, identity_codes: np.ndarray) -> np.ndarray:
        """Group drawn from by each of the ``k - 1`` slots, per own kept class; checks feasibility."""
        k, n_classes = int(self.k), len(self.classes_)
        pool_units = self._pool_unit_codes()
        if self.same_class or self.t_close is not None:
            units_per_class = np.array([len(np.unique(pool_units[self._pool_keep_codes == c])) for c in range(n_classes)])
        else:
            units_per_class = np.array([len(np.unique(pool_units))])
        what = "distinct identities" if self.distinct_identities else "records"
        if self.same_class:
            for c in range(n_classes):
                if units_per_class[c] < k:
                    full = len(np.unique(identity_codes[keep_codes == c])) if self.distinct_identities else int((keep_codes == c).sum())
                    hint = f", or raise pool_size (the data has {full} there)" if full >= k else ""
                    raise ConfigError(
                        f"k={k} is larger than the {units_per_class[c]} {what} in kept class "
                        f"{_to_json_values(self.classes_[c:c + 1])[0]!r}; lower k to at most {units_per_class[c]}, "
                        f"or set same_class=False{hint}"
                    )
            return np.repeat(np.arange(n_classes)[:, None], k - 1, axis=1)
        if self.t_close is None:
            if units_per_class[0] < k:
                raise ConfigError(f"k={k} is larger than the {units_per_class[0]} {what} in the reference pool; lower k to at most {units_per_class[0]} or raise pool_size")
            return np.zeros((n_classes, k - 1), dtype=np.int64)
        # t-closeness: slots allotted to classes greedily towards k * p_c (optimal for the L1 gap)
        share = np.bincount(keep_codes, minlength=n_classes) / len(keep_codes)
        plan = np.empty((n_classes, k - 1), dtype=np.int64)
        worst = 0.0
        for c in range(n_classes):
            counts = np.zeros(n_classes, dtype=np.int64)
            counts[c] = 1  # the record itself
            for _ in range(k - 1):
                counts[np.argmax(k * share - counts)] += 1
            worst = max(worst, 0.5 * float(np.abs(counts / k - share).sum()))
            if np.any(counts > units_per_class):
                bad = int(np.argmax(counts - units_per_class))
                raise ConfigError(
                    f"t_close sets need {counts[bad]} {what} of kept class {_to_json_values(self.classes_[bad:bad + 1])[0]!r} "
                    f"but the pool has {units_per_class[bad]}; lower k or raise pool_size"
                )
            counts[c] -= 1
            plan[c] = np.repeat(np.arange(n_classes), counts)
        if worst > float(self.t_close) + 1e-12:
            raise ConfigError(
                f"t_close={self.t_close} cannot be met with k={k}: the closest label mix is {worst:.3f} away "
                f"in total variation; raise t_close to at least {worst:.3f} or raise k"
            )
        self.t_closeness_ = worst
        return plan

    def _pool_unit_codes(self) -> np.ndarray:
        if self.distinct_identities:
            return self._pool_identity_codes
        return np.arange(len(self._pool_keep_codes), dtype=np.int64)

    def _build_sampler(self) -> None:
        n_classes = len(self.classes_)
        by_class = self.same_class or self.t_close is not None
        pool_group = self._pool_keep_codes if by_class else np.zeros_like(self._pool_keep_codes)
        units = self._pool_unit_codes()
        n_units = int(units.max()) + 1 if len(units) else 1
        self._sampler = _SetSampler(pool_group, units, n_classes if by_class else 1, n_units,
                                    self.slot_groups_, int(self.seed))

    def _sample_members(self, rows: np.ndarray, keep_codes: np.ndarray, own_identity: np.ndarray) -> np.ndarray:
        own_unit = own_identity if self.distinct_identities else np.full_like(own_identity, -1)
        return self._sampler.sample(rows, keep_codes, own_unit)

    def _summarise_k(self, distinct: np.ndarray) -> dict:
        return {
            "requested": int(self.k),
            "min": int(distinct.min()),
            "mean": float(distinct.mean()),
            "max": int(distinct.max()),
            "fraction_below_k": float((distinct < int(self.k)).mean()),
            "n_records": int(len(distinct)),
        }

    # -- learned state exposed with original label values ----------------------------------------
    @property
    def pool_keep_(self) -> np.ndarray:
        return self.classes_[self._pool_keep_codes]

    @property
    def pool_identity_(self) -> np.ndarray:
        return self._pool_identity_values[self._pool_identity_codes]

    def _check_fitted(self) -> None:
        if not hasattr(self, "pool_x_"):
            raise ConfigError("this BiometricAnonymizer is not fitted; call fit(X, keep_labels, identity_labels) or load a saved one")

    # -- transforming ----------------------------------------------------------------------------
    def _keep_codes(self, keep_labels, rows_x: np.ndarray | None) -> np.ndarray:
        if keep_labels is None:
            # same-class sets need a class: predict it with the kept-attribute model from fit
            z = (rows_x.astype(np.float64) - self.feature_mean_) / self.feature_scale_
            scores = z @ self.keep_coef_.T + self.keep_intercept_
            return (scores[:, 0] > 0).astype(np.int64) if scores.shape[1] == 1 else scores.argmax(axis=1)
        keep_labels = np.asarray(keep_labels)
        pos = np.minimum(np.searchsorted(self.classes_, keep_labels), len(self.classes_) - 1)
        unknown = self.classes_[pos] != keep_labels
        if unknown.any():
            raise SchemaError(
                f"kept-attribute value {keep_labels[unknown][0]!r} was not seen at fit; known values: "
                f"{', '.join(map(str, _to_json_values(self.classes_[:20])))}"
            )
        return pos.astype(np.int64)

    def _own_identity(self, identity_labels, n: int) -> np.ndarray:
        if identity_labels is None:
            return np.full(n, -1, dtype=np.int64)
        identity_labels = np.asarray(identity_labels)
        values = self._pool_identity_values
        pos = np.minimum(np.searchsorted(values, identity_labels), len(values) - 1)
        return np.where(values[pos] == identity_labels, pos, -1).astype(np.int64)

    def _anonymize_rows(self, x: np.ndarray, members: np.ndarray) -> np.ndarray:
        """``x'_i = w x_i + (1 - w) (x_i + sum of members) / k`` per feature, in float64."""
        total = x.astype(np.float64, copy=True)
        for s in range(members.shape[1]):  # one (B, d) gather at a time: no (B, k, d) temporary
            total += self.pool_x_[members[:, s]]
        mean = total / int(self.k)
        return self.feature_weights_ * x + (1.0 - self.feature_weights_) * mean

    def transform(self, X, keep_labels=None, identity_labels=None, batch_size: int = 4096, start_row: int = 0):
        """Anonymize ``X`` batch by batch against the stored reference pool.

        Parameters
        ----------
        X : array-like (N, d), or samples when the anonymizer has a representation
        keep_labels : array (N,), optional
            Kept-attribute labels; predicted by the fitted linear model when omitted.
        identity_labels : array (N,), optional
            When given, members never share the record's identity (needed for the full ``k``
            guarantee on records whose person is in the pool).
        batch_size : int
            Records per batch; memory is the pool plus one batch.
        start_row : int
            Row number of ``X[0]`` for the counter-based draws (to continue a stream of batches).

        Returns
        -------
        Anonymized records: an array of the same shape as ``X`` (a tensor for tensor input).
        """
        self._check_fitted()
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} is not a positive integer; use e.g. 4096")
        if isinstance(X, (list, tuple)):
            X = np.asarray(X, dtype=np.float64)
        n = int(X.shape[0])
        if n == 0:
            raise ConfigError("X is empty; pass at least one record to transform")
        if keep_labels is not None:
            keep_labels = self._check_labels(keep_labels, n, "keep_labels")
        if identity_labels is not None:
            identity_labels = self._check_labels(identity_labels, n, "identity_labels")
        expected = self.representation_.input_shape if self.representation_ is not None else (self.n_features_in_,)
        if tuple(X.shape[1:]) != tuple(expected):
            raise SchemaError(f"X has records of shape {list(X.shape[1:])} but the anonymizer was fitted on {list(expected)}; pass data of the fitted shape")
        needs_class = self.same_class or self.t_close is not None
        out = None
        for start in range(0, n, int(batch_size)):
            stop = min(n, start + int(batch_size))
            _check_finite(X[start:stop], "X")
            rows_x = self._rows(X, slice(start, stop))
            if needs_class:
                codes = self._keep_codes(None if keep_labels is None else keep_labels[start:stop], rows_x)
            else:  # one group: the class is not used to draw
                codes = np.zeros(stop - start, dtype=np.int64)
            own = self._own_identity(None if identity_labels is None else identity_labels[start:stop], stop - start)
            members = self._sample_members(np.arange(start_row + start, start_row + stop), codes, own)
            released = self._anonymize_rows(rows_x, members)
            if self.representation_ is not None:
                released = self.representation_.decode(released)
                if not isinstance(X, torch.Tensor):
                    released = released.numpy()
            if out is None:
                if isinstance(X, torch.Tensor):
                    dtype = X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float32
                    out = torch.empty((n, *released.shape[1:]), dtype=dtype)
                else:
                    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
                    out = np.empty((n, *released.shape[1:]), dtype=dtype)
            out[start:stop] = torch.as_tensor(released, dtype=out.dtype) if isinstance(out, torch.Tensor) else released
        return out

    def fit_transform(self, X, keep_labels, identity_labels, batch_size: int = 4096):
        """``fit(X, keep_labels, identity_labels).transform(X, keep_labels, identity_labels)``."""
        return self.fit(X, keep_labels, identity_labels).transform(X, keep_labels, identity_labels, batch_size=batch_size)

    def reference_sets(self, keep_labels, identity_labels=None, X=None, start_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The pool members ``(N, k - 1)`` of each record's set and its distinct-identity count.

        ``keep_labels`` may be None when ``X`` is given (the class is then predicted). Records
        without an identity label count as one identity not in the pool.
        """
        self._check_fitted()
        n = len(keep_labels) if keep_labels is not None else int(X.shape[0])
        codes = self._keep_codes(keep_labels, None if keep_labels is not None else self._rows(X, slice(0, n)))
        own = self._own_identity(identity_labels, n)
        members = self._sample_members(np.arange(start_row, start_row + n), codes, own)
        return members, _distinct_counts(own, self._pool_identity_codes[members])

    # -- persistence -----------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Learned state as ``(arrays, meta)``: named arrays and a JSON-safe dict.

        :meth:`save` writes them as ``anonymizer.safetensors`` + ``anonymizer.json``; other
        containers (a privkit run-folder artifact) can store them their own way and rebuild the
        estimator with :meth:`from_state`.
        """
        self._check_fitted()
        arrays = {
            "relevance": self.relevance_, "relevant_mask": self.relevant_mask_.astype(np.uint8),
            "feature_weights": self.feature_weights_, "feature_mean": self.feature_mean_,
            "feature_scale": self.feature_scale_, "keep_coef": self.keep_coef_, "keep_intercept": self.keep_intercept_,
            "pool_x": self.pool_x_, "pool_keep_codes": self._pool_keep_codes,
            "pool_identity_codes": self._pool_identity_codes, "slot_groups": self.slot_groups_.astype(np.int64),
        }
        params = self.get_params()
        params["representation"] = "auto" if isinstance(params["representation"], Representation) else params["representation"]
        meta = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "params": params,
            "classes": _to_json_values(self.classes_), "pool_identity_values": _to_json_values(self._pool_identity_values),
            "achieved_k": self.achieved_k_, "n_features_in": self.n_features_in_,
            "t_closeness": getattr(self, "t_closeness_", None),
            "representation": None if self.representation_ is None else self.representation_.to_dict(),
        }
        return {name: np.ascontiguousarray(a) for name, a in arrays.items()}, meta

    def save(self, path: str | os.PathLike) -> None:
        """Write ``anonymizer.safetensors`` (arrays) and ``anonymizer.json`` (the rest) into ``path``."""
        from safetensors.numpy import save_file

        arrays, meta = self.get_state()
        os.makedirs(path, exist_ok=True)
        save_file(arrays, os.path.join(path, ARRAYS_FILE))
        with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BiometricAnonymizer":
        """Read an anonymizer written by :meth:`save`."""
        from safetensors.numpy import load_file

        meta_path, arrays_path = os.path.join(path, META_FILE), os.path.join(path, ARRAYS_FILE)
        for p in (meta_path, arrays_path):
            if not os.path.isfile(p):
                raise ArtifactError(f"{p} is missing; point at a folder written by BiometricAnonymizer.save / privkit anonymize")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            arrays = load_file(arrays_path)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read the anonymizer in {path} ({e}); re-run privkit anonymize to rewrite it") from None
        return cls.from_state(arrays, meta, where=str(path))

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict, where: str = "the saved state") -> "BiometricAnonymizer":
        """Rebuild a fitted anonymizer from :meth:`get_state`'s ``(arrays, meta)``."""
        path = meta_path = where  # named in the error messages below
        arrays = {name: np.asarray(a) for name, a in arrays.items()}
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ArtifactError(f"{meta_path} is not a version-{FORMAT_VERSION} {FORMAT_NAME}; re-run privkit anonymize with this privkit")
        try:
            est = cls(**meta["params"])
            if meta["representation"] is not None:
                est.representation_ = representation_from_dict(meta["representation"])
                if meta["representation"]["modality"] != "flatten":
                    est.representation = est.representation_
            else:
                est.representation_ = None
            est.classes_ = np.asarray(meta["classes"])
            est._pool_identity_values = np.asarray(meta["pool_identity_values"])
            est.achieved_k_ = dict(meta["achieved_k"])
            est.n_features_in_ = int(meta["n_features_in"])
            if meta.get("t_closeness") is not None:
                est.t_closeness_ = float(meta["t_closeness"])
            est.relevance_ = arrays["relevance"]
            est.relevant_mask_ = arrays["relevant_mask"].astype(bool)
            est.feature_weights_ = arrays["feature_weights"]
            est.feature_mean_, est.feature_scale_ = arrays["feature_mean"], arrays["feature_scale"]
            est.keep_coef_, est.keep_intercept_ = arrays["keep_coef"], arrays["keep_intercept"]
            est.pool_x_ = arrays["pool_x"]
            est._pool_keep_codes, est._pool_identity_codes = arrays["pool_keep_codes"], arrays["pool_identity_codes"]
            est.slot_groups_ = arrays["slot_groups"]
        except KeyError as e:
            raise ArtifactError(f"the anonymizer in {path} lacks {e}; it is incomplete, re-run privkit anonymize") from None
        d = est.n_features_in_
        if est.pool_x_.ndim != 2 or est.pool_x_.shape[1] != d or len(est.relevance_) != d \
                or len(est._pool_keep_codes) != len(est.pool_x_) or len(est._pool_identity_codes) != len(est.pool_x_):
            raise ArtifactError(f"the anonymizer in {path} has inconsistent array shapes; it is corrupt, re-run privkit anonymize")
        est._check_params()
        est._build_sampler()
        return est
