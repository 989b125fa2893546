"""Fresh attackers: the shared yardstick for suppression and anonymization.

Given any (released) dataset, train attackers **from scratch** for each attribute on its train
split and report held-out accuracy against chance. Three attackers per attribute, registered by
decorator: ``linear`` (softmax regression), ``mlp`` and ``cnn`` (the modality's default
classifier); audio attackers see log-mel spectrograms. The verdict uses the best of them.

Splits: an identity attribute (person, speaker, subject) is audited **closed-set** — the same
people in train and test, disjoint samples — because that is how re-identification works and any
other split would hide leakage. Every other attribute is split by identity (no person in both
train and test) so an attacker cannot shortcut through recognising people.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from privkit.data.datasets import AttributeDataset
from privkit.data.schema import Schema
from privkit.errors import ConfigError
from privkit.evaluate.metrics import accuracy_with_ci, majority_chance

_ATTACKERS: dict[str, Callable[[Schema, int], nn.Module]] = {}
ATTACKER_EPOCHS = {"linear": 40, "mlp": 40, "cnn": 15}


def register_attacker(name: str):
    def deco(fn):
        _ATTACKERS[name] = fn
        return fn

    return deco


def list_attackers() -> list[str]:
    return list(_ATTACKERS)


class _Flat(nn.Module):
    """Flatten (audio: log-mel first), standardise with statistics fixed at fit time, then a head."""

    def __init__(self, schema: Schema, body: Callable[[int], nn.Module]):
        super().__init__()
        from privkit.models.classifiers import LogMel

        self.frontend = LogMel(schema.sample_rate or 8000) if schema.modality == "audio" else nn.Identity()
        with torch.no_grad():
            d = self.frontend(torch.zeros(1, *schema.input_shape)).numel()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.body = body(d)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.frontend(x).flatten(1)

    def fit_scaler(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            f = self.features(x)
            self.mean.copy_(f.mean(0))
            self.std.copy_(f.std(0) + 1e-4)

    def forward(self, x):
        return self.body((self.features(x) - self.mean) / self.std)


@register_attacker("linear")
def _linear(schema: Schema, k: int) -> nn.Module:
    return _Flat(schema, lambda d: nn.Linear(d, k))


@register_attacker("mlp")
def _mlp(schema: Schema, k: int) -> nn.Module:
    return _Flat(schema, lambda d: nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, k)))


@register_attacker("cnn")
def _cnn(schema: Schema, k: int) -> nn.Module:
    from privkit.models import create

    if schema.modality == "features":
        return _mlp(schema, k)
    return create(None, schema, k)


@dataclass
class AttackSplit:
    train: np.ndarray
    test: np.ndarray


def attack_split(dataset: AttributeDataset, attribute: str, seed: int = 0, test_fraction: float = 0.3) -> AttackSplit:
    """Closed-set split for an identity attribute, identity-grouped split for the others."""
    from privkit.data.splits import split_dataset

    identity = dataset.schema.identity_attribute
    if attribute == identity or identity is None:
        s = split_dataset(dataset, val=0.0, test=test_fraction, seed=seed, group_by=None, stratify=attribute)
    else:
        s = split_dataset(dataset, val=0.0, test=test_fraction, seed=seed, group_by="auto", stratify=None)
    return AttackSplit(np.asarray(s.train), np.asarray(s.test))


# the fresh attackers' recipe (Adam); MaSS's refitted adversaries train with it too
ATTACKER_LR = {"linear": 3e-3, "mlp": 3e-3, "cnn": 2e-3}
ATTACKER_WEIGHT_DECAY = {"linear": 1e-4}


def fit_attacker(model: nn.Module, x_tr: torch.Tensor, y_tr: torch.Tensor, kind: str, epochs: int, seed: int,
                 description: str | None = None) -> nn.Module:
    """Train ``model`` (built, scaler fitted) on ``(x_tr, y_tr)`` with the fresh attackers' recipe.

    Adam at ``ATTACKER_LR[kind]``, weight decay ``ATTACKER_WEIGHT_DECAY`` (linear only), ``epochs``
    passes at batch 64 (32 under 256 samples), through the shared :func:`privkit.train.run_training`.
    """
    from privkit.train import ClassifierConfig, ClassifierTask, LoopConfig, run_training

    cfg = ClassifierConfig(lr=ATTACKER_LR[kind], weight_decay=ATTACKER_WEIGHT_DECAY.get(kind, 0.0))
    data = torch.utils.data.TensorDataset(x_tr, torch.as_tensor(y_tr, dtype=torch.long))
    task = ClassifierTask(model, 0, cfg)  # labels are 1-D here: the task takes them as they are
    batch = 64 if len(data) >= 256 else 32
    run_training(task, data, LoopConfig(epochs=int(epochs), batch_size=batch, seed=seed, progress=False,
                                        description=description or f"{kind} attacker"))
    return model


def _train_attacker(kind: str, schema: Schema, x_tr, y_tr, epochs: int, seed: int) -> nn.Module:
    k = int(max(int(y_tr.max()) + 1, 2))
    torch.manual_seed(seed)
    model = _ATTACKERS[kind](schema, k)
    if isinstance(model, _Flat):
        model.fit_scaler(x_tr)
    fit_attacker(model, x_tr, y_tr, kind, epochs, seed)
    model.eval()
    return model


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


def fresh_attackers(dataset: AttributeDataset, attributes: Sequence[str] | None = None,
                    kinds: Sequence[str] = ("linear", "mlp", "cnn"), epochs: dict[str, int] | None = None,
                    seed: int = 0, test_fraction: float = 0.3, splits: dict[str, AttackSplit] | None = None) -> dict:
    """Train fresh attackers on ``dataset`` and return held-out accuracy per attribute.

    Parameters
    ----------
    dataset : AttributeDataset
        Released (or original) data. Samples are read once into memory for training; use a
        subset for very large releases.
    attributes : attribute names (default: all)
    kinds : attackers to train (``linear``, ``mlp``, ``cnn``)
    epochs : per-kind epochs (defaults: linear 40, mlp 40, cnn 15)
    splits : per-attribute precomputed splits (default :func:`attack_split` with ``seed``)

    Returns
    -------
    dict
        ``{attr: {"chance", "<kind>", "best", "best_attacker", "best_ci_low", "best_ci_high", "n_train", "n_test"}}``.
        ``chance`` is the majority-class fraction of the test split.
    """
    attributes = dataset.schema.check_attributes(attributes or dataset.schema.attribute_names)
    for k in kinds:
        if k not in _ATTACKERS:
            raise ConfigError(f"unknown attacker {k!r}; known attackers: {', '.join(_ATTACKERS)}")
    epochs = {**ATTACKER_EPOCHS, **(epochs or {})}
    x_all, a_all = dataset.materialize()
    results = {}
    for attr in attributes:
        j = dataset.schema.index(attr)
        split = (splits or {}).get(attr) or attack_split(dataset, attr, seed, test_fraction)
        x_tr, x_te = x_all[split.train], x_all[split.test]
        y_tr, y_te = a_all[split.train, j], a_all[split.test, j]
        num_classes = dataset.schema.attribute(attr).num_classes
        row: dict = {"chance": majority_chance(y_te.numpy(), num_classes), "n_train": int(len(y_tr)), "n_test": int(len(y_te))}
        best = (-1.0, None, None)
        for kind in kinds:
            model = _train_attacker(kind, dataset.schema, x_tr, y_tr, epochs[kind], seed)
            pred = _predict(model, x_te)
            acc = accuracy_with_ci(pred, y_te.numpy())
            row[kind] = acc["accuracy"]
            if acc["accuracy"] > best[0]:
                best = (acc["accuracy"], kind, acc)
        row["best"] = best[0]
        row["best_attacker"] = best[1]
        row["best_ci_low"], row["best_ci_high"] = best[2]["ci_low"], best[2]["ci_high"]
        results[attr] = row
    return results


def attacker_table(results: dict, original: dict | None = None) -> tuple[list[str], list[list]]:
    """Headers and rows for a report table (optionally beside accuracies on the original data)."""
    kinds = [k for k in _ATTACKERS if any(k in r for r in results.values())]
    headers = ["attribute", "chance"] + (["original (best)"] if original else []) + kinds + ["best"]
    rows = []
    for attr, r in results.items():
        row = [attr, r["chance"]] + ([original[attr]["best"]] if original and attr in original else ([math.nan] if original else []))
        row += [r.get(k, math.nan) for k in kinds] + [r["best"]]
        rows.append(row)
    return headers, rows
