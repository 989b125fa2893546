"""MaSS: multi-attribute selective suppression (Chen et al., ICML 2024, arXiv 2405.14981).

Learn a transform :math:`X' = G(X, Z)` (``Z`` noise) of the data such that

.. math::

    \\max_G\\; I(X'; F) \\quad \\text{s.t.}\\quad I(X'; S_i) \\le m_i,\\qquad I(X'; U_j) \\ge n_j,

with :math:`S_i` the sensitive attributes, :math:`U_j` the annotated useful ones and :math:`F` the
unannotated useful features. Mutual information with an attribute ``A`` is estimated as
:math:`I(X'; A) \\approx H(A) - \\mathrm{CE}_A` where :math:`\\mathrm{CE}_A` is the cross-entropy of a
classifier of ``A`` on ``X'`` (a variational bound) and :math:`H(A)` the label entropy in nats.

Every batch alternates two steps (as the reference implementation, jpmorganchase/MaSS):

1. **generator step** on ``G`` and a contrastive feature net ``F`` together, minimising

   .. math::

      L_G = \\sum_i (v_i^2 + |v_i|) + \\sum_j (w_j^2 + |w_j|) + L_{NCE},\\quad
      v_i = \\min(\\mathrm{CE}_{S_i} - H(S_i) + m_i, 0),\\quad
      w_j = \\max(\\mathrm{CE}_{U_j} - H(U_j) + n_j, 0)

   ``v_i`` is non-zero only while the adversary beats the allowed leakage (``CE < H - m``): the
   generator is pushed until the adversary is no better than the budget allows, never towards
   making it confidently wrong (which would itself leak the attribute). :math:`L_{NCE}` is a
   symmetric InfoNCE (temperature 0.07) between ``F(x)`` and ``F(G(x))`` keeping unannotated
   information.
2. **classifier step**: every attribute classifier (initialised from one pretrained on the
   original data) trains on the detached ``G(x)`` with plain cross-entropy, so the generator
   always faces an adversary adapted to its current output.

Feasibility (checked before training): :math:`m_i \\ge 0`, :math:`n_j \\le H(U_j)` and
:math:`n_j \\le m_i + H(U_j \\mid S_i)` for every pair; otherwise no transform can meet the budget.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from privkit.data.datasets import AttributeDataset
from privkit.data.schema import Schema
from privkit.errors import ArtifactError, ConfigError, SchemaError
from privkit.evaluate.attackers import ATTACKER_EPOCHS
from privkit.train import TrainTask, unwrap

KIND = "mass"
NCE_TEMPERATURE = 0.07
DEFAULT_PRESERVE_FRACTION = 0.9
PRESERVE_REFERENCES = ("entropy", "original")
# classifier pretraining runs at least this many optimiser steps: ``pretrain_epochs`` counts passes,
# and on a small training set (210 images, batch 64) 3 passes were 9 Adam steps, which left the CNN
# at chance on expression, so its w_u gave the generator no useful gradient
MIN_PRETRAIN_STEPS = 100


# -- label statistics -------------------------------------------------------------------------------

def label_entropy(labels: np.ndarray, num_classes: int) -> float:
    """:math:`H(A) = -\\sum_a p(a) \\log p(a)` in nats, from label frequencies."""
    p = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def conditional_entropy(u: np.ndarray, s: np.ndarray, ku: int, ks: int) -> float:
    """:math:`H(U \\mid S) = \\sum_s p(s) H(U \\mid S = s)` in nats, from label co-occurrence."""
    joint = np.zeros((ks, ku))
    np.add.at(joint, (np.asarray(s, dtype=np.int64), np.asarray(u, dtype=np.int64)), 1.0)
    total = joint.sum()
    h = 0.0
    for row in joint:
        n_s = row.sum()
        if n_s > 0:
            h += (n_s / total) * label_entropy(np.repeat(np.arange(ku), row.astype(np.int64)), ku)
    return float(h)


def resolve_budgets(schema: Schema, labels: np.ndarray, suppress: Sequence[str], preserve: Sequence[str],
                    budgets: Mapping[str, float] | None) -> dict[str, Any]:
    """Check attribute names and budgets and return entropies and the resolved budgets.

    Defaults: :math:`m_i = 0` (no leakage allowed beyond chance) and
    :math:`n_j = 0.9 \\min(H(U_j), \\min_i m_i + H(U_j \\mid S_i))` (90 % of what is achievable).

    Raises
    ------
    SchemaError
        An attribute is not in the schema.
    ConfigError
        Nothing to suppress, an attribute both suppressed and preserved, a budget for an attribute
        that is neither, or an infeasible budget (the message states the bound).
    """
    suppress = [str(a).strip() for a in suppress if str(a).strip()]
    preserve = [str(a).strip() for a in preserve if str(a).strip()]
    if not suppress:
        raise ConfigError("no attribute to suppress; name at least one with --attrs, e.g. --attrs gender")
    for name in suppress + preserve:
        schema.attribute(name)  # SchemaError listing the known names
    for group, what in ((suppress, "suppress"), (preserve, "preserve")):
        dup = sorted({a for a in group if group.count(a) > 1})
        if dup:
            raise ConfigError(f"attribute {dup[0]!r} is listed twice in {what}; name each attribute once")
    both = [a for a in suppress if a in preserve]
    if both:
        raise ConfigError(f"attribute {both[0]!r} is both suppressed and preserved; an attribute cannot be both, "
                          f"remove it from one list")
    budgets = dict(budgets or {})
    for name, value in budgets.items():
        if name not in suppress and name not in preserve:
            raise ConfigError(f"budget for {name!r} but {name!r} is neither suppressed nor preserved; budgets apply "
                              f"to: {', '.join(suppress + preserve)}")
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ConfigError(f"budget {name}={value!r} is not a finite number of nats; give e.g. {name}=0.0")
    col = {a.name: j for j, a in enumerate(schema.attributes)}
    k = {a.name: a.num_classes for a in schema.attributes}
    entropy = {a: label_entropy(labels[:, col[a]], k[a]) for a in suppress + preserve}
    cond = {u: {s: conditional_entropy(labels[:, col[u]], labels[:, col[s]], k[u], k[s]) for s in suppress}
            for u in preserve}
    m: dict[str, float] = {}
    for s in suppress:
        m[s] = float(budgets.get(s, 0.0))
        if m[s] < 0:
            raise ConfigError(f"budget {s}={m[s]:g} is infeasible: the allowed leakage m must be >= 0 nats; use {s}=0 "
                              f"for no leakage beyond chance")
    n: dict[str, float] = {}
    for u in preserve:
        bound = min([entropy[u]] + [m[s] + cond[u][s] for s in suppress])
        if u in budgets:
            n[u] = float(budgets[u])
            if n[u] < 0:
                raise ConfigError(f"budget {u}={n[u]:g} must be >= 0 nats (information about {u} to keep)")
            if n[u] > entropy[u] + 1e-9:
                raise ConfigError(f"budget {u}={n[u]:.3g} is infeasible: n must be <= H({u}) = {entropy[u]:.3f} nats; "
                                  f"use {u}<={entropy[u]:.3f}")
            for s in suppress:
                if n[u] > m[s] + cond[u][s] + 1e-9:
                    raise ConfigError(
                        f"budget {u}={n[u]:.3g} is infeasible with {s}={m[s]:g}: n must be <= m + H({u}|{s}) = "
                        f"{m[s] + cond[u][s]:.3f} nats because {u} reveals {s}; lower {u} or raise {s}")
        else:
            n[u] = DEFAULT_PRESERVE_FRACTION * bound
    return {"suppress": suppress, "preserve": preserve, "entropy": entropy, "conditional_entropy": cond,
            "m": m, "n": n}


# -- the training task --------------------------------------------------------------------------------

def info_nce(f1: torch.Tensor, f2: torch.Tensor, temperature: float = NCE_TEMPERATURE) -> torch.Tensor:
    """Symmetric InfoNCE between paired embeddings: row ``i`` of ``f1`` should match row ``i`` of ``f2``.

    .. math:: L_{NCE} = \\tfrac12[\\mathrm{CE}(f_1 f_2^\\top/\\tau, I) + \\mathrm{CE}(f_2 f_1^\\top/\\tau, I)]
    """
    f1 = nn.functional.normalize(f1, dim=-1)
    f2 = nn.functional.normalize(f2, dim=-1)
    logits = f1 @ f2.t() / temperature
    target = torch.arange(len(f1), device=f1.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.t(), target))


PRIOR_MIX_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def calibrated_cross_entropy(logits: torch.Tensor, target: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy of the best mixture of the classifier with the label prior.

    .. math:: \mathrm{CE}^* = \min_{\lambda} -\frac1B \sum_b \log\big((1-\lambda)\, q(s_b \mid x'_b)
              + \lambda\, p(s_b)\big),\quad \lambda \in \{0, 0.02, \dots, 0.9\}

    Every mixture is itself a classifier, so :math:`H(S) - \mathrm{CE}^*` is still a lower bound
    on :math:`I(X'; S)`, and a tighter one for an over-confident classifier: an adversary that beats
    chance on unseen samples but is sometimes confidently wrong has a plain cross-entropy above
    :math:`H(S)` (seen on synthetic-speech for speaker and gender with cross-fitted adversaries),
    so the penalty :math:`v` was 0 and the generator got no gradient to suppress. ``lambda`` is
    picked on the batch without gradient; the gradient flows through ``q`` at that ``lambda``.
    """
    log_q = torch.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)
    log_p = torch.log(prior.clamp_min(1e-8))[target]
    with torch.no_grad():
        scores = [float(-torch.logaddexp(log_q + math.log1p(-lam), log_p + math.log(lam)).mean()) if lam > 0
                  else float(-log_q.mean()) for lam in PRIOR_MIX_GRID]
    lam = PRIOR_MIX_GRID[int(np.argmin(scores))]
    if lam == 0:
        return -log_q.mean()
    return -torch.logaddexp(log_q + math.log1p(-lam), log_p + math.log(lam)).mean()


# -- how the generator is pushed while an adversary beats the budget ---------------------------------

_SUPPRESSION_PENALTIES: dict[str, Any] = {}


def register_suppression_penalty(name: str):
    """Decorator registering ``fn(v, logits, prior) -> loss term`` of one suppressed attribute.

    ``v`` = :math:`\\min(\\mathrm{CE} - H(S) + m, 0)` (with its graph), ``logits`` the adversary's
    on the batch's release, ``prior`` the training label frequencies. Every entry must be 0 with
    no gradient when ``v = 0`` (the budget is met), so the constraint keeps MaSS's meaning.
    """

    def deco(fn):
        if name in _SUPPRESSION_PENALTIES:
            raise ValueError(f"suppression penalty {name!r} registered twice")
        _SUPPRESSION_PENALTIES[name] = fn
        return fn

    return deco


@register_suppression_penalty("ce")
def _ce_penalty(v: torch.Tensor, logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """MaSS's own term :math:`v^2 + |v|`, differentiated through the cross-entropy."""
    return v ** 2 + v.abs()


def prior_divergence(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    r""":math:`\frac1B \sum_b \mathrm{KL}(p \,\|\, q(\cdot \mid x'_b))`: how far the adversary's
    predictions are from the label prior ``p`` (0 iff it predicts the prior on every sample)."""
    log_q = torch.log_softmax(logits, dim=1)
    p = prior.to(logits).clamp_min(1e-8)  # the logits' dtype and device
    return (p * (torch.log(p) - log_q)).sum(1).mean()


@register_suppression_penalty("confusion")
def _confusion_penalty(v: torch.Tensor, logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    r"""The value of :math:`v^2 + |v|`, the gradient of :math:`(1 + 2|v|)\,\mathrm{KL}(p \,\|\, q)`.

    The cross-entropy's gradient with respect to the logits is :math:`q - y`, which vanishes when
    the adversary is confidently right, exactly when suppression is most needed: on synthetic-faces
    with 60 people the linear gender adversary reached CE 0.002 (accuracy 1.00) and the generator
    did not move gender at all (0.983 -> 0.981). :math:`\mathrm{KL}(p \| q)` (the confusion loss of
    Alvi et al., ECCV-W 2018; Roy & Boddeti, CVPR 2019) has gradient :math:`q - p`, large when ``q``
    is confident, and is 0 only when the adversary predicts the prior, where :math:`\mathrm{CE} =
    H(S)` and ``v = 0``. The gate (only while ``v < 0``) and the weight :math:`2|v| + 1 = -\partial
    (v^2 + |v|)/\partial v` are MaSS's; only the direction of the step changes.
    """
    active = (v.detach() < 0).to(v.dtype)
    kl = prior_divergence(logits, prior)
    weight = (1.0 + 2.0 * v.detach().abs()) * active
    # the logged value stays MaSS's penalty; the gradient is the weighted confusion gradient
    return (v ** 2 + v.abs()).detach() + weight * (kl - kl.detach())


SUPPRESSION_PENALTIES = tuple(_SUPPRESSION_PENALTIES)


def _classifier_key(attr: str, kind: str = "model", fold: int | None = None) -> str:
    key = f"clf_{attr}" if kind == "model" else f"adv_{attr}_{kind}"
    return key if fold is None else f"{key}_fold{fold}"


def _classifier_name(attr: str, kind: str, fold: int | None = None) -> str:
    name = attr if kind == "model" else f"{attr}-{kind}"
    return name if fold is None else f"{name}@{fold}"


CROSS_FIT_FOLDS = 2


class _WithFold(torch.utils.data.Dataset):
    """``dataset[i]`` with the sample's cross-fitting fold appended to its label vector."""

    def __init__(self, dataset: AttributeDataset, folds: np.ndarray):
        self.dataset = dataset
        self.folds = torch.as_tensor(np.asarray(folds, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, attrs = self.dataset[i]
        return x, torch.cat([attrs, self.folds[int(i)].view(1)])


def cross_fit_folds(n: int, seed: int, folds: int = CROSS_FIT_FOLDS, groups: np.ndarray | None = None) -> np.ndarray:
    """A seeded, balanced random assignment of ``n`` samples to ``folds`` folds.

    With ``groups`` (e.g. person ids) whole groups are assigned, so no group is in two folds.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        out = np.empty(n, dtype=np.int64)
        out[rng.permutation(n)] = np.arange(n) % folds
        return out
    ids = np.unique(groups)
    fold_of = dict(zip(rng.permutation(ids).tolist(), (np.arange(len(ids)) % folds).tolist()))
    return np.array([fold_of[g] for g in np.asarray(groups).tolist()], dtype=np.int64)


class FlatAdversary(nn.Module):
    """Linear or MLP adversary on flattened, standardised inputs (audio: on log-mel spectrograms).

    The same families as the audit's fresh ``linear`` / ``mlp`` attackers
    (:mod:`privkit.evaluate.attackers`): :math:`I(X'; S) \\ge H(S) - \\mathrm{CE}_S` holds for every
    classifier, so the bound is only as tight as the best family the generator faces. A generator
    trained against one convolutional classifier learns to hide the attribute from that classifier
    while leaving it linearly decodable.
    """

    def __init__(self, schema: Schema, num_classes: int, hidden: int = 0):
        super().__init__()
        if schema.modality == "audio":
            from privkit.models.classifiers import LogMel

            self.frontend: nn.Module = LogMel(schema.sample_rate or 8000)
        else:
            self.frontend = nn.Identity()
        with torch.no_grad():
            d = self.frontend(torch.zeros(1, *schema.input_shape)).numel()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.body = (nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)) if hidden
                     else nn.Linear(d, num_classes))

    @torch.no_grad()
    def fit_scaler(self, x: torch.Tensor) -> None:
        f = self.frontend(x).flatten(1)
        self.mean.copy_(f.mean(0))
        self.std.copy_(f.std(0) + 1e-4)

    @torch.no_grad()
    def track_scaler(self, x: torch.Tensor, momentum: float = 0.05) -> None:
        """Move the standardisation towards the statistics of ``x`` (the current release).

        The audit's attackers standardise with statistics of the *released* training data; an
        adversary that kept the original data's statistics would see a shifted input as the
        generator moves, so during training its scaler follows the release (exponential average).
        """
        if len(x) < 2:
            return
        f = self.frontend(x).flatten(1)
        self.mean.lerp_(f.mean(0), momentum)
        self.std.lerp_(f.std(0) + 1e-4, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((self.frontend(x).flatten(1) - self.mean) / self.std)


ADVERSARY_KINDS = ("model", "linear", "mlp")
# guards of preserved attributes only: fitted once on the original training data, then fixed
FROZEN_GUARD_KINDS = ("frozen-linear", "frozen-mlp")


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` is a frozen guard (no classifier step, no refit, no scaler tracking)."""
    return bool(getattr(unwrap(module), "frozen", False))


def create_adversary(kind: str, schema: Schema, num_classes: int) -> nn.Module:
    """``model``: the modality's default classifier; ``linear`` / ``mlp``: :class:`FlatAdversary`;
    ``frozen-linear`` / ``frozen-mlp``: the same flat classifier, marked to stay fixed once fitted."""
    if kind in FROZEN_GUARD_KINDS:
        guard = create_adversary(kind.split("-", 1)[1], schema, num_classes)
        guard.frozen = True
        return guard
    if kind == "model":
        from privkit.models import create

        return create(None, schema, num_classes)
    if kind == "linear":
        return FlatAdversary(schema, num_classes)
    if kind == "mlp":
        return FlatAdversary(schema, num_classes, hidden=256)
    raise ConfigError(f"unknown adversary {kind!r}; known adversaries: {', '.join(ADVERSARY_KINDS)}")


# refitting adversaries: the recipe of the audit's fresh linear / MLP attackers
# (privkit.evaluate.attackers.fit_attacker), so the generator faces what the audit will train
REFIT_EPOCHS = ATTACKER_EPOCHS["mlp"]  # the audit trains its linear and MLP attackers this long


class _StandardisedHead(nn.Module):
    """A :class:`FlatAdversary` without its front end: trains on precomputed front-end features."""

    def __init__(self, adversary: FlatAdversary):
        super().__init__()
        self.adversary = adversary

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        a = self.adversary
        return a.body((f - a.mean) / a.std)


def fit_flat_adversary(adversary: FlatAdversary, x: torch.Tensor, y: torch.Tensor, kind: str, epochs: int = REFIT_EPOCHS,
                       seed: int = 0) -> FlatAdversary:
    """Re-initialise ``adversary`` and train it from scratch on ``(x, y)``, as the audit trains a fresh attacker.

    Standardisation fitted on ``x``, then the audit's recipe
    (:func:`privkit.evaluate.attackers.fit_attacker`) for ``epochs`` passes. The front end (log-mel for audio) has no parameters, so it
    is computed once and only the head trains. Seeds the global RNG: callers fork it.
    """
    from privkit.evaluate.attackers import fit_attacker

    torch.manual_seed(seed)
    for module in adversary.body.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    with torch.no_grad():
        feats = adversary.frontend(x).flatten(1)
        adversary.mean.copy_(feats.mean(0))
        adversary.std.copy_(feats.std(0) + 1e-4)
    fit_attacker(_StandardisedHead(adversary), feats, y, kind, epochs, seed, description=f"fit {kind} adversary")
    adversary.train()
    return adversary


class AdversaryRefit:
    """What :meth:`MaSSTask.refit_adversaries` needs: when, on what, for how long.

    Parameters
    ----------
    every : "epoch" or int
        Refit at the start of every epoch, or every ``k`` generator steps.
    x, labels : tensors
        The whole training split (inputs and label matrix), released afresh at every refit.
    folds : array or None
        Cross-fitting fold of every training sample (``None``: no cross-fitting).
    epochs, seed : training passes per refit and the base seed.
    """

    def __init__(self, every: str | int, x: torch.Tensor, labels: torch.Tensor, folds: np.ndarray | None,
                 epochs: int = REFIT_EPOCHS, seed: int = 0):
        self.every = every
        self.x = x
        self.labels = labels
        self.folds = folds
        self.epochs = int(epochs)
        self.seed = int(seed)


class MaSSTask(TrainTask):
    """One :class:`privkit.train.TrainTask` whose step alternates the generator and classifier steps.

    ``nets`` holds the generator, the feature net and one classifier per attribute, so the shared
    loop checkpoints, resumes and (under ``torchrun``) data-parallelises all of them together.

    ``classifiers`` maps ``(attribute, kind)`` or, when cross-fitting, ``(attribute, kind, fold)``
    to a module. With folds the batch's label vector carries the sample's fold as its last column:
    the classifier of fold ``k`` trains only on samples of fold ``k``, and in the generator step
    each sample is scored by a classifier of *another* fold, which never trained on it. Its
    cross-entropy then measures leakage that generalises to unseen samples (what the audit's
    fresh attackers measure on held-out data) instead of how well the adversary memorised the
    training samples, which a generator can defeat with sample-specific perturbations that leave
    the attribute readable for a fresh attacker.
    """

    def __init__(self, generator: nn.Module, feature_net: nn.Module, classifiers: dict[tuple, nn.Module],
                 schema: Schema, budgets: dict[str, Any], noise_dim: int, lr: float, classifier_lr: float,
                 nce_weight: float, classifier_steps: int = 1, track_scaler: bool = False,
                 priors: dict[str, np.ndarray] | None = None, refit: "AdversaryRefit | None" = None,
                 suppression_penalty: str = "ce", label_priors: dict[str, np.ndarray] | None = None):
        self.nets = {"generator": generator, "features": feature_net}
        # groups: (attribute, kind) -> [(net key, fold)]; fold None without cross-fitting
        self.groups: dict[tuple[str, str], list[tuple[str, int | None]]] = {}
        for member, clf in classifiers.items():
            attr, kind, fold = (tuple(member) + (None,))[:3]
            key = _classifier_key(attr, kind, fold)
            self.nets[key] = clf
            self.groups.setdefault((attr, kind), []).append((key, fold))
        self.cross_fit = any(fold is not None for g in self.groups.values() for _, fold in g)
        gen_params = list(generator.parameters()) + list(feature_net.parameters())
        clf_params = [p for c in classifiers.values() if not is_frozen(c) for p in c.parameters()]
        self.optimizers = {"generator": torch.optim.Adam(gen_params, lr=lr),
                           "classifiers": torch.optim.Adam(clf_params, lr=classifier_lr)}
        self.columns = {attr: schema.index(attr) for attr, _ in self.groups}
        self.suppress = budgets["suppress"]
        self.preserve = budgets["preserve"]
        self.entropy = budgets["entropy"]
        self.m, self.n = budgets["m"], budgets["n"]
        self.noise_dim = noise_dim
        self.nce_weight = nce_weight
        self.classifier_steps = int(classifier_steps)
        self.track_scaler = bool(track_scaler)
        # label priors: when given, the penalties use the prior-calibrated cross-entropy
        self.priors = {a: torch.as_tensor(np.asarray(p), dtype=torch.float32) for a, p in (priors or {}).items()}
        self.refit = refit
        if suppression_penalty not in _SUPPRESSION_PENALTIES:
            raise ConfigError(f"unknown suppression_penalty {suppression_penalty!r}; known: "
                              f"{', '.join(_SUPPRESSION_PENALTIES)}")
        self.suppression_penalty = _SUPPRESSION_PENALTIES[suppression_penalty]
        # label frequencies for the penalty (the calibration priors when calibrating); uniform otherwise
        label_priors = {**(label_priors or {}), **(priors or {})}
        self.label_priors = {a: torch.as_tensor(np.asarray(p), dtype=torch.float32) for a, p in label_priors.items()}
        self._refit_epoch: int | None = None  # epoch of the last refit ("epoch" mode)
        self._steps_since_refit: int | None = None  # generator steps since the last refit (every-k mode)
        self._refit_stats: dict[str, list[float]] = {}

    def _scored_logits(self, members: list[tuple[str, int | None]], x: torch.Tensor,
                       fold: torch.Tensor | None) -> torch.Tensor:
        """Logits of each sample under a classifier that did not train on it (cross-fitting)."""
        if fold is None or members[0][1] is None:
            return self.nets[members[0][0]](x)
        logits = None
        for key, k in members:
            # fold k's classifier scores the samples of the next fold (k + 1 mod K)
            own = (fold == (k + 1) % len(members)).view(-1, 1)
            out = self.nets[key](x)
            logits = out * own if logits is None else logits + out * own
        return logits

    def _refit_due(self, epoch: int) -> bool:
        """Lazily at the first step of every epoch (or every ``k`` generator steps), and on resume."""
        if self.refit.every == "epoch":
            return self._refit_epoch != epoch
        return self._steps_since_refit is None or self._steps_since_refit >= int(self.refit.every)

    @torch.no_grad()
    def _release_training_split(self, epoch: int) -> torch.Tensor:
        """``G(x, z)`` of every training sample, as the audit releases it (eval mode, fresh noise)."""
        gen = self.nets["generator"]
        was_training = gen.training
        gen.eval()
        noise = torch.Generator().manual_seed(self.refit.seed * 1_000_003 + 7919 * (epoch + 1))
        out = []
        x_all = self.refit.x
        for i in range(0, len(x_all), 256):
            xb = x_all[i:i + 256]
            z = torch.randn(len(xb), self.noise_dim, generator=noise) if self.noise_dim else None
            out.append(gen(xb, z))
        gen.train(was_training)
        return torch.cat(out)

    def refit_adversaries(self, epoch: int) -> dict[str, float]:
        """Re-initialise every flat adversary and train it to convergence on the current release.

        The inner maximisation of the min-max, solved the way the audit's fresh attackers are
        trained (:mod:`privkit.evaluate.attackers`: standardisation fitted on the release, Adam at
        3e-3, weight decay 1e-4 for the linear one, ``refit.epochs`` passes, batch 64 or 32), on
        the adversary's own fold when cross-fitting. The 2 online steps per batch of the classifier
        step keep adversaries near chance on unseen samples while fresh attackers trained to
        convergence still read the attribute; a refitted adversary starts from what they see. The
        online classifier step then keeps updating it lightly until the next refit.
        """
        cfg = self.refit
        x_rel = self._release_training_split(epoch)
        stats: dict[str, float] = {}
        opt_c = self.optimizers["classifiers"]
        # forking the RNG: re-initialising and shuffling must not move the main run's random stream
        with torch.random.fork_rng(devices=[]):
            for n_group, ((attr, kind), members) in enumerate(self.groups.items()):
                col = self.columns[attr]
                suffix = attr if kind == "model" else f"{attr}_{kind}"
                for key, k in members:
                    clf = unwrap(self.nets[key])
                    if not isinstance(clf, FlatAdversary) or is_frozen(clf):
                        continue  # the modality's CNN stays online-only (a refit costs ~6x a flat one)
                    rows = np.arange(len(x_rel)) if k is None else np.flatnonzero(cfg.folds == k)
                    y = cfg.labels[rows, col]
                    seed = cfg.seed + 104_729 * (epoch + 1) + 31 * n_group + (0 if k is None else k + 1)
                    fit_flat_adversary(clf, x_rel[rows], y, kind, int(cfg.epochs), seed)
                    for p in clf.parameters():
                        opt_c.state.pop(p, None)  # Adam moments of the old weights do not apply
                    # how well the refit adversary reads the attribute on the samples it scores
                    # (the next fold when cross-fitting, else its own training samples)
                    scored = rows if k is None else np.flatnonzero(cfg.folds == (k + 1) % len(members))
                    with torch.no_grad():
                        acc = float((clf(x_rel[scored]).argmax(1) == cfg.labels[scored, col]).float().mean())
                    name = f"refit_{'heldout_' if k is not None else ''}acc_{suffix}"
                    stats[name] = stats.get(name, 0.0) + acc / len(members)
        self._refit_epoch = epoch
        self._steps_since_refit = 0
        for name, value in stats.items():
            self._refit_stats.setdefault(name, []).append(value)
        return stats

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Mean over the epoch's refits of the refit adversaries' accuracy (``refit_*``)."""
        out = {k: float(np.mean(v)) for k, v in self._refit_stats.items()}
        self._refit_stats = {}
        return out

    def step(self, batch, epoch: int, step: int) -> dict[str, float]:
        if self.refit is not None and self._refit_due(epoch):
            self.refit_adversaries(epoch)
        x, attrs = batch
        fold = None
        if self.cross_fit:
            attrs, fold = attrs[:, :-1], attrs[:, -1]
        gen, feat = self.nets["generator"], self.nets["features"]
        gen.train()
        feat.train()
        # the loop seeded the global RNG per run and checkpoints its state, so noise replays on --resume
        z = torch.randn(len(x), self.noise_dim) if self.noise_dim else None
        x_rel = gen(x, z)
        stats: dict[str, float] = {}

        # (a) generator step: constraint penalties through the current classifiers + InfoNCE
        loss = x_rel.new_zeros(())
        for (attr, kind), members in self.groups.items():
            for key, _ in members:
                self.nets[key].train()
            col = self.columns[attr]
            logits = self._scored_logits(members, x_rel, fold)
            if attr in self.priors:  # logged as ce_cal_* below
                ce = calibrated_cross_entropy(logits, attrs[:, col], self.priors[attr])
            else:
                ce = nn.functional.cross_entropy(logits, attrs[:, col])
            if attr in self.m:
                # one penalty per adversary family: the leakage bound is the tightest of them
                v = torch.clamp(ce - self.entropy[attr] + self.m[attr], max=0.0)  # v_s = min(CE - H + m, 0)
                prior = self.label_priors.get(attr)
                if prior is None:
                    prior = logits.new_full((logits.shape[1],), 1.0 / logits.shape[1])
                loss = loss + self.suppression_penalty(v, logits, prior)
            else:
                w = torch.clamp(ce - self.entropy[attr] + self.n[attr], min=0.0)  # w_u = max(CE - H + n, 0)
                loss = loss + w ** 2 + w.abs()
            suffix = attr if kind == "model" else f"{attr}_{kind}"
            # a calibrated CE is logged under its own name: it is not comparable with the plain one
            stats[f"{'ce_cal' if attr in self.priors else 'ce'}_{suffix}"] = float(ce.detach())
            if fold is not None:
                stats[f"heldout_acc_{suffix}"] = float((logits.detach().argmax(1) == attrs[:, col]).float().mean())
        if self.nce_weight > 0 and len(x) > 1:
            # one forward over [x; x'] (a DDP module must not run twice before backward)
            f = feat(torch.cat([x, x_rel]))
            nce = info_nce(f[:len(x)], f[len(x):])
            loss = loss + self.nce_weight * nce
            stats["nce"] = float(nce.detach())
        opt_g = self.optimizers["generator"]
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        stats["loss_g"] = float(loss.detach())

        # (b) classifier step: plain cross-entropy on the detached release
        # (several steps approximate the adversary's inner maximisation better than one)
        x_det = x_rel.detach()
        if self.track_scaler:
            for members in self.groups.values():
                for key, k in members:
                    clf = unwrap(self.nets[key])  # under torchrun the adversary is a DDP wrapper
                    if isinstance(clf, FlatAdversary) and not is_frozen(clf):
                        clf.track_scaler(x_det if k is None else x_det[fold == k])
        opt_c = self.optimizers["classifiers"]
        for _ in range(self.classifier_steps):
            opt_c.zero_grad(set_to_none=True)
            loss_c = x_det.new_zeros(())
            for (attr, kind), members in self.groups.items():
                col = self.columns[attr]
                for key, k in members:
                    if is_frozen(self.nets[key]):
                        continue  # a frozen guard keeps the classifier it was fitted as
                    rows = slice(None) if k is None else (fold == k)
                    xs, ys = x_det[rows], attrs[rows, col]
                    if len(ys) < 2:  # BatchNorm needs two samples; this fold is absent from the batch
                        continue
                    logits = self.nets[key](xs)
                    loss_c = loss_c + nn.functional.cross_entropy(logits, ys)
                    if k is None:
                        name = f"acc_{attr}" if kind == "model" else f"acc_{attr}_{kind}"
                        stats[name] = float((logits.argmax(1) == ys).float().mean())
            if loss_c.requires_grad:
                loss_c.backward()
                opt_c.step()
        if self._steps_since_refit is not None:
            self._steps_since_refit += 1
        return stats


# -- the estimator ----------------------------------------------------------------------------------

class MaSS:
    """Multi-attribute selective suppression: a learned transform ``X' = G(X, noise)``.

    Parameters
    ----------
    suppress : list of str
        Sensitive attributes :math:`S_i` to suppress.
    preserve : list of str
        Annotated useful attributes :math:`U_j` to keep.
    budgets : dict, optional
        ``{attribute: nats}``: the allowed leakage :math:`m_i` of a suppressed attribute (default 0)
        or the information :math:`n_j` to keep about a preserved one (default 90 % of the feasible
        maximum).
    epochs : int
        Epochs of alternating MaSS training.
    pretrain_epochs : int
        Epochs of training each attribute classifier on the original data first (raised to at
        least ``MIN_PRETRAIN_STEPS`` = 100 optimiser steps on small data; 0 skips pretraining).
    batch_size, lr, classifier_lr : training options (``lr`` for ``G`` and ``F``).
    classifier_steps : int
        Classifier updates per generator update. With ``classifier_lr`` above ``lr`` this is a
        two-timescale game: the adversary stays close to its best response, so the generator must
        really remove a suppressed attribute instead of chasing a lagging classifier.
    pretrain_lr : float
        Learning rate of the classifiers' pretraining on the original data.
    noise_dim : int
        Size of the noise vector fed to the generator.
    feature_dim : int
        Embedding size of the contrastive feature net ``F``.
    nce_weight : float
        Weight of :math:`L_{NCE}` in :math:`L_G`. Default 0.1: with :math:`\\tau = 0.07` the
        InfoNCE term is minimised by the identity and, at weight 1, outweighs the suppression
        penalties (on synthetic-motion the generator then barely moved).
    adversaries : list of str
        Adversary families every suppressed attribute faces (``model``: the modality's default
        classifier; ``linear``, ``mlp``: on standardised inputs, as the audit's fresh attackers).
        Each gives its own :math:`v_i`; :math:`H(S) - \\mathrm{CE}_S` lower-bounds :math:`I(X'; S)`
        for every classifier, so the constraint is only as tight as the best family faced.
    preserve_adversaries : list of str, optional
        Classifier families whose :math:`w_u` guard each preserved attribute. Default ``("model",)``.
        Guarding with every family keeps a preserved attribute readable for flat attackers too
        (synthetic-faces: glasses 0.79 -> 0.97 for fresh linear/MLP attackers) and keeps the release
        closer to the input (synthetic-motion relative MSE 16 -> 0.8), but on synthetic-motion it let
        the subject through (0.23 against chance 0.14 instead of 0.16): ``None`` means the same
        families as ``adversaries``. Preserved attributes may also be guarded by ``frozen-linear`` /
        ``frozen-mlp``: flat classifiers fitted once on the original training data (the audit's
        recipe; each on its own fold with ``cross_fit``) and never updated. ``H(U) - CE`` of a fixed
        classifier still lower-bounds :math:`I(X'; U)`, and unlike an online guard it keeps pointing
        at the cue when the release drifts (see :meth:`MaSS._fit_frozen_guard`).
    cross_fit : bool
        Cross-fitted adversaries (default ``False``, MaSS's own protocol). When ``True`` the training
        samples are split at random into 2 folds, every adversary is duplicated, each copy trains
        only on its fold, and the generator's penalties score every sample with the copy that never
        trained on it. The penalties then track leakage to *unseen* samples, as the audit's fresh
        attackers measure it, rather than how well an adversary memorised a few hundred training
        samples (which the generator can defeat with sample-specific perturbations that leave the
        attribute readable). Costs twice the adversaries, each on half the data.
    track_scaler : bool
        Let the flat adversaries' input standardisation follow the release during training
        (exponential average, momentum 0.05), as the audit's attackers standardise with statistics
        of the released data. Default ``False`` (statistics of the original data, fixed).
    calibrate : bool
        Estimate :math:`\\mathrm{CE}` in the penalties with the adversary mixed with the label prior
        (:func:`calibrated_cross_entropy`; default ``False``, the plain cross-entropy). Needed with
        ``cross_fit``: held-out adversaries are over-confident, their plain CE exceeds :math:`H(S)`
        while they still beat chance, and :math:`v_i = 0` then gives the generator no gradient.
    refit_adversaries : {None, "epoch"} or int
        Solve the inner maximisation properly (default ``None``: only the online classifier steps,
        MaSS's own protocol). ``"epoch"``: at the start of every epoch (``k``: every ``k`` generator
        steps) re-initialise every ``linear`` / ``mlp`` adversary and train it to convergence on the
        current release of the training split with the audit's fresh-attacker recipe (its own fold
        when ``cross_fit``), then keep updating it online until the next refit. The online steps
        alone (2 Adam steps per batch) leave adversaries near chance while a fresh attacker trained
        to convergence still reads the attribute, so the penalty was off while leakage remained.
        The training split is held in memory; each refit costs ``refit_epochs`` passes per flat
        adversary (the ``model`` CNN is not refitted).
    refit_epochs : int
        Passes of each refit (default 40, the audit's linear / MLP attackers).
    preserve_reference : {"entropy", "original"}
        What the default :math:`n_j` of a preserved attribute without an explicit budget is 90 % of.
        ``"entropy"`` (default): the feasible maximum :math:`\\min(H(U_j), \\min_i m_i + H(U_j\\mid S_i))`.
        ``"original"``: the information flat adversaries find in the *original* data,
        :math:`\\hat I(X; U_j) = H(U_j) - \\min_{\\text{family}} \\mathrm{CE}^*_{U_j}` (calibrated
        cross-entropy of linear / MLP adversaries trained to convergence on one half of the
        training split, scored on the other; capped by the feasible maximum). An attribute that is
        only weakly readable in the original data (synthetic-faces expression: 66 % against 50 %,
        about 0.04 nats) otherwise gets :math:`n_j = 0.62` nats, which no release can meet with
        held-out adversaries, so :math:`w_j` never switches off and outweighs the suppression.
    suppression_penalty : {"ce", "confusion"}
        How a suppressed attribute's penalty pushes the generator while its adversary beats the
        budget (``v_i < 0``). ``"ce"`` (default, MaSS's own): :math:`v_i^2 + |v_i|` differentiated
        through the cross-entropy, whose gradient vanishes once the adversary is confidently right
        (synthetic-faces, 60 people: linear gender adversary at CE 0.002, and the release kept
        gender at 0.98). ``"confusion"``: same gate and weight :math:`1 + 2|v_i|`, but the step
        follows :math:`\\mathrm{KL}(p \\,\\|\\, q)`, which pulls the adversary's predictions towards
        the label prior ``p`` and does not saturate (:func:`_confusion_penalty`).
    generator : str, optional
        Generator architecture (default: the modality's, see :mod:`privkit.suppress.generators`).
    generator_kwargs : dict, optional
    seed : int
        Seeds training and the transform's noise (``transform`` is deterministic given it).
    progress : bool
        Show progress bars.

    Attributes
    ----------
    generator_ : nn.Module
    schema_ : Schema
    budgets_ : dict
        Entropies, conditional entropies and resolved budgets ``m`` and ``n`` (nats).
    history_ : list of dict
        Per-epoch training statistics.

    Examples
    --------
    >>> mass = MaSS(suppress=["gender"], preserve=["expression"], epochs=3)   # doctest: +SKIP
    >>> mass.fit(train_data).transform(x_batch).shape == x_batch.shape        # doctest: +SKIP
    True
    """

    def __init__(self, suppress: Sequence[str] = (), preserve: Sequence[str] = (), budgets: Mapping[str, float] | None = None,
                 epochs: int = 20, pretrain_epochs: int = 3, batch_size: int = 64, lr: float = 1e-3,
                 classifier_lr: float = 1e-2, classifier_steps: int = 5, pretrain_lr: float = 1e-3, noise_dim: int = 8,
                 feature_dim: int = 32, nce_weight: float = 0.1,
                 generator: str | None = None, generator_kwargs: Mapping[str, Any] | None = None,
                 adversaries: Sequence[str] = ADVERSARY_KINDS, preserve_adversaries: Sequence[str] | None = ("model",),
                 cross_fit: bool = False, track_scaler: bool = False, calibrate: bool = False,
                 refit_adversaries: str | int | None = None, refit_epochs: int = REFIT_EPOCHS,
                 preserve_reference: str = "entropy", suppression_penalty: str = "ce", seed: int = 0,
                 progress: bool = False):
        self.suppress = suppress
        self.preserve = preserve
        self.budgets = budgets
        self.epochs = epochs
        self.pretrain_epochs = pretrain_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.classifier_lr = classifier_lr
        self.classifier_steps = classifier_steps
        self.pretrain_lr = pretrain_lr
        self.noise_dim = noise_dim
        self.feature_dim = feature_dim
        self.nce_weight = nce_weight
        self.generator = generator
        self.generator_kwargs = generator_kwargs
        self.adversaries = adversaries
        self.preserve_adversaries = preserve_adversaries
        self.cross_fit = cross_fit
        self.track_scaler = track_scaler
        self.calibrate = calibrate
        self.refit_adversaries = refit_adversaries
        self.refit_epochs = refit_epochs
        self.preserve_reference = preserve_reference
        self.suppression_penalty = suppression_penalty
        self.seed = seed
        self.progress = progress

    # -- scikit-learn plumbing ----------------------------------------------------------------------
    _PARAMS = ("suppress", "preserve", "budgets", "epochs", "pretrain_epochs", "batch_size", "lr", "classifier_lr",
               "classifier_steps", "pretrain_lr",
               "noise_dim", "feature_dim", "nce_weight", "generator", "generator_kwargs", "adversaries", "preserve_adversaries",
               "cross_fit", "track_scaler", "calibrate", "refit_adversaries", "refit_epochs", "preserve_reference",
               "suppression_penalty", "seed")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = {}
        for k in self._PARAMS:
            v = getattr(self, k)
            if isinstance(v, (tuple, list)):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[k] = v
        return out

    def set_params(self, **params: Any) -> "MaSS":
        for k, v in params.items():
            if k not in self._PARAMS and k != "progress":
                raise ConfigError(f"unknown MaSS parameter {k!r}; known: {', '.join(self._PARAMS)}")
            setattr(self, k, v)
        return self

    @property
    def schema(self) -> Schema:
        """Schema of the data the transform was fitted on (for :mod:`privkit.transforms`)."""
        self._check_fitted()
        return self.schema_

    def _check_fitted(self) -> None:
        if not hasattr(self, "generator_"):
            raise ConfigError("this MaSS transform is not fitted yet; call fit(dataset) or MaSS.load(folder) first")

    def check_budgets(self, dataset: AttributeDataset) -> dict[str, Any]:
        """Validate attributes and budgets against ``dataset`` without training (raises on infeasible)."""
        return resolve_budgets(dataset.schema, dataset.labels, list(self.suppress), list(self.preserve), self.budgets)

    def _adversary_kinds(self, preserve: bool = False) -> list[str]:
        chosen = self.adversaries if not preserve or self.preserve_adversaries is None else self.preserve_adversaries
        kinds = [str(k) for k in (chosen or ("model",))]
        known = ADVERSARY_KINDS + FROZEN_GUARD_KINDS if preserve and self.preserve_adversaries is not None else ADVERSARY_KINDS
        for k in kinds:
            if k in FROZEN_GUARD_KINDS and k not in known:
                raise ConfigError(f"adversary {k!r} can only guard a preserved attribute (a generator fools a fixed "
                                  f"classifier without removing the attribute); put it in preserve_adversaries")
            if k not in known:
                raise ConfigError(f"unknown adversary {k!r}; known adversaries: {', '.join(known)}")
        return list(dict.fromkeys(kinds))

    def _validate_options(self) -> None:
        self._adversary_kinds()
        self._adversary_kinds(preserve=True)
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if int(self.classifier_steps) < 1:
            raise ConfigError(f"classifier_steps={self.classifier_steps} must be at least 1")
        if int(self.pretrain_epochs) < 0:
            raise ConfigError(f"pretrain_epochs={self.pretrain_epochs} must be >= 0")
        if not (self.lr > 0 and self.classifier_lr > 0):
            raise ConfigError(f"learning rates must be > 0 (lr={self.lr}, classifier_lr={self.classifier_lr})")
        if int(self.noise_dim) < 0 or int(self.feature_dim) < 1:
            raise ConfigError(f"noise_dim={self.noise_dim} must be >= 0 and feature_dim={self.feature_dim} >= 1")
        self._refit_every()
        if isinstance(self.refit_epochs, bool) or not isinstance(self.refit_epochs, int) or self.refit_epochs < 1:
            raise ConfigError(f"refit_epochs={self.refit_epochs!r} must be a whole number >= 1")
        if self.suppression_penalty not in _SUPPRESSION_PENALTIES:
            raise ConfigError(f"suppression_penalty={self.suppression_penalty!r} is not known; use one of "
                              f"{', '.join(_SUPPRESSION_PENALTIES)}")
        if self.preserve_reference not in PRESERVE_REFERENCES:
            raise ConfigError(f"preserve_reference={self.preserve_reference!r} is not known; use one of "
                              f"{', '.join(PRESERVE_REFERENCES)}")

    def _refit_every(self) -> str | int | None:
        """``None`` (off), ``"epoch"`` or a positive number of generator steps."""
        value = self.refit_adversaries
        text = value.strip().lower() if isinstance(value, str) else None
        if value is None or value is False or text in ("", "none", "off"):
            return None
        if text == "epoch":
            every: str | int = "epoch"
        else:
            try:
                every = int(text if text is not None else value)
            except (TypeError, ValueError):
                every = 0
            if value is True or every < 1 or (text is None and every != value):
                raise ConfigError(f"refit_adversaries={value!r} is not valid; use None, 'epoch' or a number of "
                                  f"generator steps >= 1")
        if not (set(self._adversary_kinds()) | set(self._adversary_kinds(preserve=True))) & {"linear", "mlp"}:
            raise ConfigError("refit_adversaries refits linear / mlp adversaries but none is used; add "
                              "adversaries=linear,mlp or set refit_adversaries=None")
        return every

    # -- fit ----------------------------------------------------------------------------------------
    def fit(self, dataset: AttributeDataset, checkpoint_dir: str | Path | None = None, resume: bool = False) -> "MaSS":
        """Learn ``G`` on ``dataset`` (pretrain classifiers, then alternate generator/classifier steps).

        Parameters
        ----------
        dataset : AttributeDataset
            Training data with every suppressed and preserved attribute labelled.
        checkpoint_dir : path, optional
            Where the shared loop writes checkpoints (per epoch, and on Ctrl-C).
        resume : bool
            Continue from the checkpoints in ``checkpoint_dir``.
        """
        from privkit.models import create
        from privkit.suppress.generators import create_generator, fit_generator_scale
        from privkit.train import ClassifierConfig, LoopConfig, run_training, seed_everything, train_classifier, unwrap

        self._validate_options()
        budgets = self.check_budgets(dataset)
        schema = dataset.schema
        if len(dataset) < 2:
            raise ConfigError(f"MaSS needs at least 2 training samples, got {len(dataset)}")
        seed_everything(self.seed)
        generator = create_generator(self.generator, schema, int(self.noise_dim), **dict(self.generator_kwargs or {}))
        # standardising generators need the data scale: estimated on up to 2048 training samples
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(len(dataset), size=min(2048, len(dataset)), replace=False))
        x_sample = dataset.materialize(sample)[0]
        fit_generator_scale(generator, x_sample)
        feature_net = create(None, schema, int(self.feature_dim))
        attrs = budgets["suppress"] + budgets["preserve"]
        # suppressed attributes face every adversary family; preserved ones the preserve_adversaries
        # (H(U) - CE_U lower-bounds I(X'; U) for each classifier: see the class docstring for the trade-off)
        pairs = [(a, kind) for a in budgets["suppress"] for kind in self._adversary_kinds()]
        pairs += [(a, kind) for a in budgets["preserve"] for kind in self._adversary_kinds(preserve=True)]
        folds = None
        if self.cross_fit:
            # folds mirror the audit's split: closed-set (random samples) when the identity is among
            # the attributes, else whole people per fold, so a held-out adversary cannot read an
            # attribute through recognising a person it trained on (faces: gender via identity)
            identity = schema.identity_attribute
            grouped = identity is not None and identity not in attrs
            groups = dataset.labels[:, schema.index(identity)] if grouped else None
            if grouped and len(np.unique(groups)) < CROSS_FIT_FOLDS:
                groups = None
            folds = cross_fit_folds(len(dataset), int(self.seed), groups=groups)
        fold_ids: list[int | None] = list(range(CROSS_FIT_FOLDS)) if self.cross_fit else [None]
        if folds is not None and np.bincount(folds).min() < 2:
            raise ConfigError(f"cross_fit needs at least {2 * CROSS_FIT_FOLDS} training samples, got {len(dataset)}")
        members = [(a, kind, k) for a, kind in pairs for k in fold_ids]
        classifiers: dict[tuple, nn.Module] = {}
        for a, kind, k in members:
            clf = create_adversary(kind, schema, schema.attribute(a).num_classes)
            if isinstance(clf, FlatAdversary):
                clf.fit_scaler(x_sample)
            classifiers[(a, kind, k)] = clf

        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        main_ckpt = ckpt / "mass" if ckpt is not None else None
        resuming = bool(resume and main_ckpt is not None and (main_ckpt / "latest.json").exists())
        if not resuming:
            # classifiers start from ones trained on the original data: the adversary is strong from step one
            steps_per_epoch = max(1, math.ceil(len(dataset) / int(self.batch_size)))
            pretrain_epochs = int(self.pretrain_epochs)
            if pretrain_epochs > 0:
                pretrain_epochs = max(pretrain_epochs, math.ceil(MIN_PRETRAIN_STEPS / steps_per_epoch))
            for i, (a, kind, k) in enumerate(members):
                # a cross-fitted copy pretrains on its own fold only: it must never see the other fold
                part = dataset if k is None else dataset.subset(np.flatnonzero(folds == k))
                if is_frozen(classifiers[(a, kind, k)]):
                    self._fit_frozen_guard(classifiers[(a, kind, k)], part, a, kind, int(self.seed) + 1 + i)
                    continue
                if pretrain_epochs == 0:
                    continue
                name = _classifier_name(a, kind, k).replace("@", "-fold")
                loop = LoopConfig(epochs=pretrain_epochs, batch_size=int(self.batch_size),
                                  seed=int(self.seed) + 1 + i, progress=self.progress, description=f"pretrain {name}")
                classifiers[(a, kind, k)], _ = train_classifier(
                    classifiers[(a, kind, k)], part, a, ClassifierConfig(lr=self.pretrain_lr), loop,
                    checkpoint_dir=ckpt / f"pretrain-{name}" if ckpt else None, resume=resume)
        if self.preserve_reference == "original":
            budgets = self._budgets_from_original(dataset, budgets, folds)
        refit = None
        every = self._refit_every()
        if every is not None:
            x_train, labels_train = dataset.materialize()
            refit = AdversaryRefit(every, x_train, labels_train, folds, int(self.refit_epochs), int(self.seed))
        task = MaSSTask(generator, feature_net, classifiers, schema, budgets, int(self.noise_dim), float(self.lr),
                        float(self.classifier_lr), float(self.nce_weight), int(self.classifier_steps),
                        track_scaler=bool(self.track_scaler),
                        priors=self._priors(dataset, pairs) if self.calibrate else None, refit=refit,
                        suppression_penalty=str(self.suppression_penalty), label_priors=self._priors(dataset, pairs))
        loop = LoopConfig(epochs=int(self.epochs), batch_size=int(self.batch_size), seed=int(self.seed),
                          drop_last=len(dataset) > int(self.batch_size), progress=self.progress, description="MaSS")
        history = run_training(task, dataset if folds is None else _WithFold(dataset, folds), loop,
                               checkpoint_dir=main_ckpt, resume=resume)
        self.generator_ = unwrap(task.nets["generator"]).eval()
        self.feature_net_ = unwrap(task.nets["features"]).eval()
        self.classifiers_ = {_classifier_name(a, kind, k): unwrap(task.nets[_classifier_key(a, kind, k)]).eval()
                             for a, kind, k in members}
        self.schema_ = schema
        self.budgets_ = budgets
        self.history_ = history
        self.data_fingerprint_ = dataset.fingerprint()
        return self

    def _budgets_from_original(self, dataset: AttributeDataset, budgets: dict[str, Any],
                               folds: np.ndarray | None) -> dict[str, Any]:
        """``n_j = 0.9 * min(I_hat(X; U_j), feasible maximum)`` for preserved attributes without a budget.

        ``I_hat = H(U) - CE*``: the calibrated held-out cross-entropy of the best flat family, each
        fitted to convergence on one fold of the original training data and scored on the other
        (the cross-fitting folds, else 2 random folds), averaged over both directions.
        """
        explicit = set((self.budgets or {}).keys())
        todo = [u for u in budgets["preserve"] if u not in explicit]
        if not todo:
            return budgets
        schema = dataset.schema
        if folds is None:
            folds = cross_fit_folds(len(dataset), int(self.seed))
        x, labels = dataset.materialize()
        kinds = [k for k in self._adversary_kinds(preserve=True) if k in ("linear", "mlp")] or ["linear", "mlp"]
        budgets = {**budgets, "n": dict(budgets["n"]), "information_original": {}}
        with torch.random.fork_rng(devices=[]):
            for u in todo:
                col, k_u = schema.index(u), schema.attribute(u).num_classes
                prior = torch.as_tensor(np.bincount(labels[:, col].numpy(), minlength=k_u) / len(labels),
                                        dtype=torch.float32)
                best = math.inf
                for kind in kinds:
                    ce = []
                    for fold in range(CROSS_FIT_FOLDS):
                        fit_rows = np.flatnonzero(folds == fold)
                        score_rows = np.flatnonzero(folds == (fold + 1) % CROSS_FIT_FOLDS)
                        adv = fit_flat_adversary(create_adversary(kind, schema, k_u), x[fit_rows], labels[fit_rows, col],
                                                 kind, int(self.refit_epochs), int(self.seed) + 17 * fold)
                        with torch.no_grad():
                            ce.append(float(calibrated_cross_entropy(adv(x[score_rows]), labels[score_rows, col], prior)))
                    best = min(best, float(np.mean(ce)))
                info = max(budgets["entropy"][u] - best, 0.0)
                bound = min([budgets["entropy"][u]] + [budgets["m"][s] + budgets["conditional_entropy"][u][s]
                                                       for s in budgets["suppress"]])
                budgets["information_original"][u] = info
                budgets["n"][u] = DEFAULT_PRESERVE_FRACTION * min(info, bound)
        return budgets

    def _fit_frozen_guard(self, guard: FlatAdversary, part: AttributeDataset, attr: str, kind: str, seed: int) -> None:
        r"""Fit a frozen guard to convergence on the original data (the audit's recipe), then fix it.

        :math:`I(X'; U) \ge H(U) - \mathrm{CE}_q(U \mid X')` holds for *any* classifier ``q``, a
        fixed one included, so a frozen guard still certifies the constraint
        :math:`I(X'; U_j) \ge n_j` (loosely: it only sees the cues ``U`` had in the original data).
        Unlike an online guard it keeps its gradient when the release drifts: a held-out online guard
        that has fallen to chance cannot point back to the cue, and on synthetic-faces (60 people,
        ``cross_fit``, ``calibrate``) the generator then erased glasses and expression with gender.
        """
        with torch.random.fork_rng(devices=[]):
            x, labels = part.materialize()
            fit_flat_adversary(guard, x, labels[:, part.schema.index(attr)], kind.split("-", 1)[1], REFIT_EPOCHS, seed)
        guard.eval()
        for p in guard.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _priors(dataset: AttributeDataset, pairs) -> dict[str, np.ndarray]:
        """Training label frequencies of every attribute with a classifier."""
        out = {}
        for a, _ in pairs:
            k = dataset.schema.attribute(a).num_classes
            counts = np.bincount(dataset.labels[:, dataset.schema.index(a)].astype(np.int64), minlength=k)
            out[a] = counts / counts.sum()
        return out

    # -- transform ----------------------------------------------------------------------------------
    @torch.no_grad()
    def transform(self, x: torch.Tensor, indices=None) -> torch.Tensor:
        """Release ``x`` (a batch of shape ``(B, *input_shape)``): ``G(x, z)`` in eval mode.

        Sample ``i``'s noise ``z_i`` comes from a generator seeded with ``(seed, index_i)``, where
        ``indices`` are the samples' indices in the dataset (default: positions in this batch), so
        the release of a sample does not depend on the batch it was processed in, and is the same
        across processes and runs.
        """
        self._check_fitted()
        x = torch.as_tensor(x, dtype=torch.float32)
        if tuple(x.shape[1:]) != tuple(self.schema_.input_shape):
            raise SchemaError(f"the transform expects samples of shape {list(self.schema_.input_shape)} but got "
                              f"{list(x.shape[1:])}; load the data with the same size options")
        self.generator_.eval()
        z = None
        if int(self.noise_dim):
            positions = range(len(x)) if indices is None else [int(i) for i in indices]
            z = torch.stack([torch.randn(int(self.noise_dim), generator=torch.Generator().manual_seed(
                int(self.seed) * 1_000_003 + int(i))) for i in positions]) if len(x) else torch.zeros(0, int(self.noise_dim))
        return self.generator_(x, z)

    def transform_batch(self, x: torch.Tensor, attrs: torch.Tensor | None = None, indices=None, schema=None) -> torch.Tensor:
        """The transform-registry interface (:mod:`privkit.transforms`); labels are not used."""
        return self.transform(x, indices=indices)

    # -- persistence --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``weights.safetensors`` (the generator) + ``meta.json`` (kind ``mass``) into ``folder``."""
        from privkit.io.artifacts import save_artifact

        self._check_fitted()
        spec = self.generator_.privkit_spec
        meta = {
            "kind": KIND,
            "architecture": spec["architecture"],
            "kwargs": spec["kwargs"],
            "generator": dict(spec),
            "schema": self.schema_.to_dict(),
            "config": self.get_params(),
            "budgets": self.budgets_,
            "metrics": {"history": self.history_},
            "data_fingerprint": self.data_fingerprint_,
            "num_parameters": int(sum(p.numel() for p in self.generator_.parameters())),
        }
        return save_artifact(folder, dict(self.generator_.state_dict()), meta)

    @classmethod
    def load(cls, folder: str | Path) -> "MaSS":
        """Rebuild a fitted transform from ``folder`` (safetensors + JSON; never unpickles)."""
        from privkit.io.artifacts import load_artifact
        from privkit.suppress.generators import create_generator

        tensors, meta = load_artifact(folder, expected_kind=KIND)
        try:
            schema = Schema.from_dict(meta["schema"])
            config = dict(meta["config"])
            spec = meta["generator"]
            mass = cls(**{k: v for k, v in config.items() if k in cls._PARAMS})
            gen = create_generator(spec["architecture"], schema, int(spec["noise_dim"]), **dict(spec.get("kwargs", {})))
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"meta.json in {folder} does not describe a MaSS transform; re-create it") from None
        try:
            gen.load_state_dict(tensors, strict=True)
        except RuntimeError:
            raise ArtifactError(f"weights in {folder} do not fit generator {spec['architecture']!r}; the artifact is "
                                f"inconsistent") from None
        mass.generator_ = gen.eval()
        mass.schema_ = schema
        mass.budgets_ = meta.get("budgets", {})
        mass.history_ = list(meta.get("metrics", {}).get("history", []))
        mass.data_fingerprint_ = meta.get("data_fingerprint")
        return mass


__all__ = ["MaSS", "MaSSTask", "AdversaryRefit", "info_nce", "prior_divergence", "register_suppression_penalty",
           "SUPPRESSION_PENALTIES", "calibrated_cross_entropy", "cross_fit_folds", "label_entropy",
           "conditional_entropy", "resolve_budgets", "KIND"]


def _register_kind() -> None:
    from privkit.transforms import register_transform_kind

    register_transform_kind(KIND)(MaSS.load)


_register_kind()
