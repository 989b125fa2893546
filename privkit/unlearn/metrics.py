r"""Unlearning metrics of the SalUn protocol (Fan et al., 2024; Jia et al., 2023).

With :math:`\mathrm{Acc}_S` the accuracy (in %) of the unlearned model on set :math:`S`:

* ``UA`` (unlearning accuracy) :math:`= 100 - \mathrm{Acc}_{D_f}`;
* ``RA`` (remaining accuracy) :math:`= \mathrm{Acc}_{D_r}`; ``TA`` (test accuracy) :math:`= \mathrm{Acc}_{D_{test}}`;
* ``MIA_efficacy``: a membership-inference classifier (an RBF SVC on the true-class confidence
  :math:`p(y \mid x)`) is trained to separate members :math:`D_r` from non-members
  :math:`D_{test}` (balanced by subsampling the larger set) and applied to :math:`D_f`;
  ``MIA_efficacy`` is the percentage of forget samples it calls *non-members* (higher = more
  forgotten; retraining gives the reference value);
* ``MIA_auc``, ``MIA_tpr_at_1fpr``: the confidence score :math:`p(y \mid x)` as a membership
  score, forget samples as positives and test samples as negatives: ROC AUC and the true-positive
  rate at 1% false positives (0.5 and about 0.01 when the forget set looks like unseen data);
* ``RTE``: seconds of the unlearning call;
* ``avg_gap`` :math:`= \tfrac14 \sum_{m \in \{UA, RA, TA, MIA\_efficacy\}} |m - m_{retrain}|`
  (points), ``None`` without a retrained reference.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privkit.errors import ConfigError

__all__ = ["METRIC_KEYS", "GAP_KEYS", "accuracy_percent", "true_class_confidence", "mia_efficacy", "mia_scores",
           "avg_gap", "unlearning_metrics"]

METRIC_KEYS = ("UA", "RA", "TA", "MIA_efficacy", "MIA_auc", "MIA_tpr_at_1fpr", "RTE", "avg_gap")
GAP_KEYS = ("UA", "RA", "TA", "MIA_efficacy")


def accuracy_percent(pred: np.ndarray, y: np.ndarray) -> float:
    """Accuracy in percent (points)."""
    pred, y = np.asarray(pred), np.asarray(y)
    if y.size == 0:
        raise ConfigError("cannot measure accuracy on an empty set")
    return float(100.0 * (pred == y).mean())


@torch.no_grad()
def _predict(model: nn.Module, dataset, target_index: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels of every sample (eval mode)."""
    model.eval()
    probs, labels = [], []
    for _, x, a in dataset.batches(batch_size):
        probs.append(F.softmax(model(x).double(), dim=1))
        labels.append(a[:, target_index])
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def true_class_confidence(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:math:`p(y_i \\mid x_i)` for every row."""
    return np.asarray(probs)[np.arange(len(y)), np.asarray(y)]


def mia_efficacy(conf_members: np.ndarray, conf_nonmembers: np.ndarray, conf_forget: np.ndarray,
                 seed: int = 0) -> float:
    """Percentage of forget samples an SVC (members vs non-members on confidence) calls non-members.

    The SVC (RBF kernel, ``C=3``, ``gamma="auto"`` as in SalUn's ``SVC_MIA``) is trained on
    balanced classes: the larger of the two reference sets is subsampled (``seed``).
    """
    from sklearn.svm import SVC

    members = np.asarray(conf_members, float).reshape(-1)
    non = np.asarray(conf_nonmembers, float).reshape(-1)
    forget = np.asarray(conf_forget, float).reshape(-1)
    if members.size == 0 or non.size == 0 or forget.size == 0:
        raise ConfigError("MIA efficacy needs non-empty retain, test and forget sets")
    rng = np.random.default_rng(seed)
    n = min(members.size, non.size)
    members = members[rng.choice(members.size, n, replace=False)] if members.size > n else members
    non = non[rng.choice(non.size, n, replace=False)] if non.size > n else non
    features = np.concatenate([members, non])[:, None]
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(features, labels)
    return float(100.0 * (clf.predict(forget[:, None]) == 0).mean())


def mia_scores(conf_forget: np.ndarray, conf_test: np.ndarray) -> dict[str, float]:
    """``MIA_auc`` and ``MIA_tpr_at_1fpr``: confidence as membership score, forget = positives, test = negatives."""
    from privkit.evaluate.metrics import roc_auc, tpr_at_fpr

    return {"MIA_auc": roc_auc(conf_forget, conf_test), "MIA_tpr_at_1fpr": tpr_at_fpr(conf_forget, conf_test, 0.01)}


def avg_gap(metrics: Mapping[str, float], reference: Mapping[str, float] | None) -> float | None:
    """Mean of :math:`|m - m_{retrain}|` over UA, RA, TA, MIA_efficacy (points); ``None`` without reference."""
    if reference is None:
        return None
    return float(np.mean([abs(float(metrics[k]) - float(reference[k])) for k in GAP_KEYS]))


def unlearning_metrics(model: nn.Module, retain, forget, test, target: str, rte: float,
                       reference: Mapping[str, float] | None = None, seed: int = 0) -> dict[str, float | None]:
    """Every key of :data:`METRIC_KEYS` for ``model`` (``avg_gap`` needs ``reference``, the retrain metrics)."""
    t = retain.schema.index(target)
    p_r, y_r = _predict(model, retain, t)
    p_f, y_f = _predict(model, forget, t)
    p_t, y_t = _predict(model, test, t)
    c_r, c_f, c_t = (true_class_confidence(p, y) for p, y in ((p_r, y_r), (p_f, y_f), (p_t, y_t)))
    out: dict[str, float | None] = {
        "UA": 100.0 - accuracy_percent(p_f.argmax(1), y_f),
        "RA": accuracy_percent(p_r.argmax(1), y_r),
        "TA": accuracy_percent(p_t.argmax(1), y_t),
        "MIA_efficacy": mia_efficacy(c_r, c_t, c_f, seed=seed),
    }
    out.update(mia_scores(c_f, c_t))
    out["RTE"] = float(rte)
    out["avg_gap"] = avg_gap(out, reference)
    return out
