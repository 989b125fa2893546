r"""Offline metrics of image completion, with no downloaded network (no Inception, no CLIP).

The paper (Li et al., ICLR 2024) scores generated images with Inception features (FID, IS) and
CLIP embeddings. privkit has no internet access and ships no weights, so the feature network is
**a classifier privkit trains for the purpose on the same data** (:class:`FeatureClassifier`: the
``cnn`` of :mod:`privkit.models`, trained for a few epochs on the I2I model's training split to
predict the forget attribute). Its penultimate features :math:`f(x)` replace Inception/CLIP
features; values are therefore comparable between runs on the same data, not with published
FID/IS numbers.

Frechet distance between feature sets :math:`A, B` with means :math:`\mu` and covariances
:math:`\Sigma`:

.. math:: \mathrm{FD} = \lVert \mu_A - \mu_B\rVert^2 + \mathrm{tr}\big(\Sigma_A + \Sigma_B - 2(\Sigma_A\Sigma_B)^{1/2}\big)

Inception-Score analogue with the classifier's softmax :math:`p(y|x)`:

.. math:: \mathrm{IS} = \exp\big(\mathbb E_x\, \mathrm{KL}(p(y|x)\,\Vert\, p(y))\big),\quad p(y) = \mathbb E_x\, p(y|x)

plus the cosine similarity between :math:`f(\hat x)` and :math:`f(x)` (completed vs ground
truth, the CLIP-similarity analogue), the classifier's accuracy on the completed images (against
the true labels; compare with chance, the accuracy of guessing from the training class
frequencies, :math:`\mathbb E_{y}\,\pi(y)`), and PSNR/SSIM (:mod:`privkit.evaluate.metrics`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.evaluate.metrics import psnr, ssim

__all__ = ["frechet_distance", "inception_score", "cosine_similarity", "FeatureClassifier", "completion_metrics"]


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between two ``(N, d)`` feature sets (Gaussian fit of each; see the module docstring)."""
    from scipy import linalg

    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) if len(a) > 1 else np.zeros((a.shape[1], a.shape[1]))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) if len(b) > 1 else np.zeros((b.shape[1], b.shape[1]))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # singular product (few samples): regularise both covariances slightly, as pytorch-fid does
        eps = 1e-6 * np.eye(a.shape[1])
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
    return max(fd, 0.0)  # rounding can make identical sets slightly negative


def inception_score(probs: np.ndarray) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` of ``(N, K)`` class probabilities."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    marginal = p.mean(0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows of ``a`` and ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


class FeatureClassifier:
    """The evaluation network: a small ``cnn`` trained here to predict ``target`` (see module docstring).

    Parameters
    ----------
    target : str
        Attribute to predict (the forget request's attribute).
    epochs, width, lr, seed :
        Training recipe (a few epochs: the features only need to separate the classes).
    """

    def __init__(self, target: str, epochs: int = 8, width: int = 16, lr: float = 3e-3, seed: int = 0):
        self.target = target
        self.epochs = epochs
        self.width = width
        self.lr = lr
        self.seed = seed

    def fit(self, dataset, progress: bool = False, completions: torch.Tensor | None = None) -> "FeatureClassifier":
        """Train on ``dataset`` (and, if given, on ``completions`` of its images with the same labels).

        ``completions`` (``(N, C, H, W)``, row ``i`` a completion of ``dataset``'s image ``i``,
        e.g. the original I2I model's) teaches the classifier what completed images look like:
        trained on sharp real images only, it can misread every blurry completion as one class
        (seen on 32x32 faces: the original model's retain completions were recognised 0.07 of the
        time against 0.93 for the real images), and then measures nothing. The class prior (chance)
        stays that of ``dataset``.
        """
        from privkit.data.datasets import ArrayDataset
        from privkit.models import create
        from privkit.train import ClassifierConfig, LoopConfig, train_classifier

        torch.manual_seed(self.seed)
        k = dataset.schema.attribute(self.target).num_classes
        train_set = dataset
        if completions is not None:
            x, attrs = dataset.materialize()
            if tuple(completions.shape) != tuple(x.shape):
                raise ConfigError(f"completions have shape {list(completions.shape)} but the dataset's images "
                                 f"{list(x.shape)}; give one completion per image, in order")
            train_set = ArrayDataset(dataset.schema, torch.cat([x, completions]).numpy(),
                                     torch.cat([attrs, attrs]).numpy())
        model = create("cnn", dataset.schema, k, width=self.width)
        model, history = train_classifier(model, train_set, self.target, ClassifierConfig(lr=self.lr),
                                          LoopConfig(epochs=self.epochs, batch_size=64, seed=self.seed,
                                                     progress=progress, description="metric classifier"))
        self.model_ = model.eval()
        self.num_classes_ = k
        counts = np.bincount(dataset.attr(self.target), minlength=k).astype(np.float64)
        self.class_prior_ = counts / counts.sum()
        self.history_ = history
        return self

    @torch.no_grad()
    def features_and_probs(self, x: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        feats, probs = [], []
        for i in range(0, len(x), batch_size):
            f = self.model_.features(x[i:i + batch_size])
            feats.append(f)
            probs.append(torch.softmax(self.model_.head(f), 1))
        return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def completion_metrics(completed: torch.Tensor, truth: torch.Tensor, labels: np.ndarray, evaluator: FeatureClassifier,
                       truth_features: np.ndarray | None = None, truth_probs: np.ndarray | None = None) -> dict:
    """FD, IS, cosine, accuracy (and its chance), PSNR and SSIM of completed images against ground truth.

    ``truth_accuracy`` is the classifier's accuracy on the ground-truth images themselves: the
    ceiling of ``accuracy``, and the check that the metric classifier is good enough to measure
    forgetting at all (near chance there, no completion can show a difference).
    """
    f_hat, p_hat = evaluator.features_and_probs(completed)
    if truth_features is None or truth_probs is None:
        truth_features, truth_probs = evaluator.features_and_probs(truth)
    labels = np.asarray(labels)
    c, t = completed.numpy(), truth.numpy()
    return {
        "fd": frechet_distance(f_hat, truth_features),
        "is": inception_score(p_hat),
        "cosine": cosine_similarity(f_hat, truth_features),
        "accuracy": float((p_hat.argmax(1) == labels).mean()),
        "truth_accuracy": float((np.asarray(truth_probs).argmax(1) == labels).mean()),
        # guessing from the training class frequencies: a forget set of one class has chance = its prior
        "chance": float(np.mean(evaluator.class_prior_[labels])),
        "psnr": float(np.mean([min(psnr(a, b), 100.0) for a, b in zip(c, t)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(c, t)])),
        "n": int(len(completed)),
    }
