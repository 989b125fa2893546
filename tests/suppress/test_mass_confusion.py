"""The ``confusion`` suppression penalty: MaSS's gate and weight, a gradient that does not saturate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError
from privkit.suppress import MaSS
from privkit.suppress.mass import SUPPRESSION_PENALTIES, _SUPPRESSION_PENALTIES, prior_divergence

PRIOR = torch.tensor([0.5, 0.5])
H = math.log(2)


def _penalty(name: str, logits: torch.Tensor, target: torch.Tensor, m: float = 0.0):
    """The generator-step term of one suppressed attribute, as MaSSTask builds it."""
    ce = torch.nn.functional.cross_entropy(logits, target)
    v = torch.clamp(ce - H + m, max=0.0)
    return _SUPPRESSION_PENALTIES[name](v, logits, PRIOR)


def test_registry_has_mass_own_and_confusion():
    assert SUPPRESSION_PENALTIES == ("ce", "confusion")


def test_confusion_has_the_value_of_mass_penalty_and_a_gradient_where_ce_saturates():
    target = torch.tensor([0, 1, 0, 1])
    # a confidently right adversary: CE ~ 4.5e-5, so MaSS's own term is ~ (H)^2 + H but flat in the logits
    base = torch.tensor([[10.0, -10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, 10.0]])
    grads, values = {}, {}
    for name in ("ce", "confusion"):
        logits = base.clone().requires_grad_(True)
        out = _penalty(name, logits, target)
        out.backward()
        grads[name], values[name] = logits.grad.abs().max().item(), float(out.detach())
    assert values["confusion"] == pytest.approx(values["ce"], abs=1e-6)
    assert values["ce"] == pytest.approx(H ** 2 + H, abs=1e-3)
    assert grads["ce"] < 1e-6  # the saturation the option exists for
    # d KL(p||q)/d logits = (q - p) / B: |1 - 0.5| / 4 times the weight 1 + 2|v| ~ 2.39
    assert grads["confusion"] == pytest.approx(0.125 * (1 + 2 * H), rel=1e-3)


def test_confusion_is_off_once_the_budget_is_met():
    target = torch.tensor([0, 1, 0, 1])
    # an adversary no better than chance (CE >= H): v = 0, no value and no gradient
    logits = torch.tensor([[0.2, -0.2], [0.3, -0.3], [-0.1, 0.1], [0.0, 0.0]], requires_grad=True)
    out = _penalty("confusion", logits, target)
    out.backward()
    assert float(out.detach()) == 0.0 and float(logits.grad.abs().max()) == 0.0
    # with an allowed leakage m the same gate applies at CE = H - m
    logits = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]], requires_grad=True)
    ce = float(torch.nn.functional.cross_entropy(logits.detach(), target))
    out = _penalty("confusion", logits, target, m=H - ce + 0.01)
    out.backward()
    assert float(logits.grad.abs().max()) == 0.0


def test_descending_the_confusion_penalty_reaches_the_prior_from_a_saturated_start():
    target = torch.tensor([0, 1, 0, 1])
    results = {}
    for name in ("ce", "confusion"):
        logits = torch.tensor([[9.0, -9.0], [-9.0, 9.0], [9.0, -9.0], [-9.0, 9.0]], requires_grad=True)
        opt = torch.optim.SGD([logits], lr=2.0)
        for _ in range(200):
            opt.zero_grad()
            _penalty(name, logits, target).backward()
            opt.step()
        results[name] = float(torch.nn.functional.cross_entropy(logits.detach(), target))
    assert results["ce"] < 0.01  # stuck where it started
    assert results["confusion"] == pytest.approx(H, abs=0.02)  # the adversary now predicts the prior
    q = torch.softmax(logits.detach(), 1)
    assert float(prior_divergence(logits.detach(), PRIOR)) == pytest.approx(0.0, abs=1e-3)
    assert torch.allclose(q, PRIOR.expand_as(q), atol=0.05)


def test_unknown_penalty_is_a_config_error_before_training():
    schema = Schema("features", (Attribute("gender", ("f", "m")),), (4,))
    ds = ArrayDataset(schema, np.zeros((8, 4), np.float32), np.array([[0], [1]] * 4))
    with pytest.raises(ConfigError, match="suppression_penalty='kl' is not known; use one of ce, confusion"):
        MaSS(suppress=["gender"], suppression_penalty="kl", epochs=1).fit(ds)


def test_mass_with_confusion_suppresses_a_linearly_readable_attribute():
    """gender shifts feature 0 by +-1.5 (about 93 % readable); the useful attribute moves feature 1."""
    from privkit.evaluate.attackers import AttackSplit, fresh_attackers

    rng = np.random.default_rng(0)
    n, d = 600, 8
    gender, useful = rng.integers(0, 2, n), rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 1.5 * (2 * gender - 1)
    x[:, 1] += 3.0 * (useful - 1)
    schema = Schema("features", (Attribute("gender", ("f", "m")), Attribute("useful", ("a", "b", "c"))), (d,))
    data = ArrayDataset(schema, x, np.stack([gender, useful], 1))
    mass = MaSS(suppress=["gender"], preserve=["useful"], seed=0, epochs=30, batch_size=32, classifier_steps=3,
                nce_weight=0.3, pretrain_epochs=2, suppression_penalty="confusion").fit(data.subset(np.arange(400)))
    split = {a: AttackSplit(np.arange(400), np.arange(400, n)) for a in ("gender", "useful")}
    kinds, epochs = ("linear", "mlp"), {"linear": 20, "mlp": 20}
    before = fresh_attackers(data, ["gender", "useful"], kinds=kinds, epochs=epochs, splits=split)
    released = ArrayDataset(schema, mass.transform(torch.as_tensor(x)).numpy(), data.labels)
    after = fresh_attackers(released, ["gender", "useful"], kinds=kinds, epochs=epochs, splits=split)
    assert before["gender"]["best"] > before["gender"]["chance"] + 0.25
    assert after["gender"]["best"] <= after["gender"]["chance"] + 0.07
    assert after["useful"]["best"] >= before["useful"]["best"] - 0.05
    assert mass.get_params()["suppression_penalty"] == "confusion"


def _toy(n: int = 160, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    gender, useful = rng.integers(0, 2, n), rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 1.5 * (2 * gender - 1)
    x[:, 1] += 3.0 * (useful - 1)
    schema = Schema("features", (Attribute("gender", ("f", "m")), Attribute("useful", ("a", "b", "c"))), (6,))
    return ArrayDataset(schema, x, np.stack([gender, useful], 1))


def test_frozen_guards_are_fitted_on_the_original_data_and_never_move():
    from privkit.suppress.mass import is_frozen

    data = _toy()
    options = dict(suppress=["gender"], preserve=["useful"], adversaries=["linear"], batch_size=32, seed=0,
                   preserve_adversaries=["linear", "frozen-linear"], cross_fit=True, calibrate=True,
                   track_scaler=True, refit_adversaries="epoch", refit_epochs=3, suppression_penalty="confusion")
    short = MaSS(epochs=1, **options).fit(data)
    long = MaSS(epochs=3, **options).fit(data)
    x, labels = data.materialize()
    for fold in (0, 1):
        name = f"useful-frozen-linear@{fold}"
        a, b = short.classifiers_[name], long.classifiers_[name]
        assert is_frozen(a) and not any(p.requires_grad for p in a.parameters())
        # no classifier step, no refit and no scaler tracking touched it: same state after 1 or 3 epochs
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
        # fitted on the original data with the audit's recipe (40 passes; on 80 samples that is 80
        # Adam steps, short of convergence): it reads `useful` (3 classes, chance ~0.36)
        with torch.no_grad():
            acc = float((a(x).argmax(1) == labels[:, 1]).float().mean())
        assert acc > 0.55
    # the online guard of the same attribute did train on (and refit to) the release
    online_a, online_b = short.classifiers_["useful-linear@0"], long.classifiers_["useful-linear@0"]
    assert not torch.equal(online_a.body.weight, online_b.body.weight)


def test_frozen_kinds_only_guard_preserved_attributes():
    data = _toy(n=40)
    with pytest.raises(ConfigError, match="can only guard a preserved attribute"):
        MaSS(suppress=["gender"], adversaries=["linear", "frozen-mlp"], epochs=1).fit(data)
    # preserve_adversaries=None reuses the suppression families, so a frozen kind cannot sneak in there either
    with pytest.raises(ConfigError, match="unknown adversary 'frozen'"):
        MaSS(suppress=["gender"], preserve=["useful"], preserve_adversaries=["frozen"], epochs=1).fit(data)
