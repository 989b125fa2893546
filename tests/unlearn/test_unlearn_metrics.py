"""Unlearning metrics on hand-made cases, and the erasure receipt's hashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.unlearn.metrics import METRIC_KEYS, avg_gap, mia_efficacy, mia_scores, unlearning_metrics
from privkit.unlearn.receipt import build_receipt, erasure_verdict, forget_ids_sha256, model_sha256, write_receipt

SCHEMA = Schema("features", (Attribute("y", ("a", "b", "c")),), (3,))


class Passthrough(nn.Module):
    """Logits = the input: predictions and confidences are fixed by the data."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


def logits_dataset(rows: list[list[float]], labels: list[int]) -> ArrayDataset:
    return ArrayDataset(SCHEMA, np.asarray(rows, np.float32), np.asarray(labels)[:, None])


def test_ua_ra_ta_exact():
    hot = lambda c: [10.0 if i == c else 0.0 for i in range(3)]  # noqa: E731
    # forget: 1 of 4 right -> UA 75; retain: 3 of 4 right -> RA 75; test: 1 of 2 right -> TA 50
    forget = logits_dataset([hot(0), hot(1), hot(1), hot(2)], [0, 0, 0, 0])
    retain = logits_dataset([hot(0), hot(1), hot(2), hot(2)], [0, 1, 2, 0])
    test = logits_dataset([hot(1), hot(1)], [1, 2])
    m = unlearning_metrics(Passthrough(), retain, forget, test, "y", rte=1.5)
    assert set(m) == set(METRIC_KEYS)
    assert (m["UA"], m["RA"], m["TA"], m["RTE"]) == (75.0, 75.0, 50.0, 1.5)
    assert m["avg_gap"] is None
    ref = {"UA": 70.0, "RA": 80.0, "TA": 50.0, "MIA_efficacy": m["MIA_efficacy"] + 2.0}
    assert unlearning_metrics(Passthrough(), retain, forget, test, "y", 1.5, reference=ref)["avg_gap"] == \
        pytest.approx((5 + 5 + 0 + 2) / 4)


def test_mia_auc_of_separable_scores_is_one():
    forget = np.linspace(0.9, 1.0, 20)
    test = np.linspace(0.1, 0.5, 30)
    s = mia_scores(forget, test)
    assert s["MIA_auc"] == 1.0 and s["MIA_tpr_at_1fpr"] == 1.0
    s = mia_scores(test, forget)
    assert s["MIA_auc"] == 0.0 and s["MIA_tpr_at_1fpr"] == 0.0


def test_mia_efficacy_calls_members_members():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.9, 1.0, 200)
    non = rng.uniform(0.0, 0.3, 100)
    assert mia_efficacy(members, non, rng.uniform(0.92, 0.98, 50)) == 0.0  # look like training data
    assert mia_efficacy(members, non, rng.uniform(0.05, 0.25, 50)) == 100.0  # look unseen: forgotten


def test_avg_gap():
    a = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA_efficacy": 20.0}
    b = {"UA": 14.0, "RA": 88.0, "TA": 80.0, "MIA_efficacy": 10.0}
    assert avg_gap(a, b) == pytest.approx(4.0) and avg_gap(a, None) is None


def test_receipt_hashes(tmp_path):
    model = Passthrough()
    h0 = model_sha256(model)
    assert h0 == model_sha256(model.state_dict())
    with torch.no_grad():
        model.scale.add_(1e-3)
    assert model_sha256(model) != h0
    assert forget_ids_sha256([3, 1, 2, 2]) == forget_ids_sha256([1, 2, 3])
    import hashlib

    assert forget_ids_sha256([10, 2]) == hashlib.sha256(b"2\n10\n").hexdigest()
    assert forget_ids_sha256([1, 2]) != forget_ids_sha256([1, 3])
    metrics = {"UA": 50.0, "RA": 99.0, "TA": 95.0, "MIA_efficacy": 60.0}
    verdict = erasure_verdict(metrics, {"UA": 52.0, "RA": 99.0, "TA": 95.0, "MIA_efficacy": 70.0}, tolerance=5)
    assert verdict["ok"] is False and "MIA_efficacy" in verdict["text"]
    assert erasure_verdict(metrics, dict(metrics), tolerance=5)["ok"] is True
    assert erasure_verdict(metrics, None)["ok"] is None
    receipt = build_receipt(forget_ids=[4, 2], model_before={"w": torch.zeros(2)}, model_after=model,
                            config={"method": "x"}, metrics=metrics, verdict=verdict)
    path = write_receipt(tmp_path, receipt)
    back = json.loads(path.read_text())
    assert back["model_after_sha256"] == model_sha256(model) != back["model_before_sha256"]
    assert back["n_forget"] == 2 and back["metrics"] == metrics
    assert not [p for p in tmp_path.iterdir() if p.name != "receipt.json"]  # atomic: no temporary left
