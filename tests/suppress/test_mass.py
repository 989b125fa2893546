"""MaSS on a synthetic features dataset where gender and a useful attribute live in separate directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError, SchemaError
from privkit.suppress import MaSS
from privkit.suppress.mass import conditional_entropy, info_nce, label_entropy, resolve_budgets


def make_features(n: int = 600, d: int = 8, seed: int = 0, gender_shift: float = 1.5) -> ArrayDataset:
    """gender moves feature 0, ``useful`` (3 classes) moves feature 1; the rest is noise."""
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, n)
    useful = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += gender_shift * (2 * gender - 1)
    x[:, 1] += 3.0 * (useful - 1)
    schema = Schema("features", (Attribute("gender", ("f", "m")), Attribute("useful", ("a", "b", "c"))), (d,))
    return ArrayDataset(schema, x, np.stack([gender, useful], 1))


FAST = dict(epochs=30, batch_size=32, lr=1e-3, classifier_lr=1e-2, classifier_steps=3, nce_weight=0.3, noise_dim=8,
            pretrain_epochs=2)


@pytest.fixture(scope="module")
def data():
    return make_features()


@pytest.fixture(scope="module")
def fitted(data):
    return MaSS(suppress=["gender"], preserve=["useful"], seed=0, **FAST).fit(data.subset(np.arange(400)))


def test_entropies_match_closed_forms():
    assert label_entropy(np.array([0, 1, 0, 1]), 2) == pytest.approx(np.log(2))
    assert label_entropy(np.array([2, 2, 2]), 3) == pytest.approx(0.0)
    # U = S exactly -> H(U|S) = 0; U independent of S (balanced) -> H(U|S) = H(U)
    s = np.array([0, 0, 1, 1])
    assert conditional_entropy(s, s, 2, 2) == pytest.approx(0.0)
    assert conditional_entropy(np.array([0, 1, 0, 1]), s, 2, 2) == pytest.approx(np.log(2))


def test_info_nce_prefers_matched_pairs():
    torch.manual_seed(0)
    f = torch.randn(16, 8)
    assert info_nce(f, f) < info_nce(f, torch.randn(16, 8))


def test_suppressed_near_chance_preserved_kept(data, fitted):
    from privkit.evaluate.attackers import AttackSplit, fresh_attackers

    split = {a: AttackSplit(np.arange(400), np.arange(400, 600)) for a in ("gender", "useful")}
    kinds, epochs = ("linear", "mlp"), {"linear": 20, "mlp": 20}
    before = fresh_attackers(data, ["gender", "useful"], kinds=kinds, epochs=epochs, splits=split)
    x, _ = data.materialize()
    released = ArrayDataset(data.schema, fitted.transform(x).numpy(), data.labels)
    after = fresh_attackers(released, ["gender", "useful"], kinds=kinds, epochs=epochs, splits=split)
    assert before["gender"]["best"] > before["gender"]["chance"] + 0.25  # the attribute really was there
    assert after["gender"]["best"] <= after["gender"]["chance"] + 0.07
    assert after["useful"]["best"] >= before["useful"]["best"] - 0.05


def test_transform_deterministic_and_save_load_identical(data, fitted, tmp_path):
    x = data.materialize(np.arange(64))[0]
    a, b = fitted.transform(x), fitted.transform(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, x)  # it changed something
    fitted.save(tmp_path / "t")
    loaded = MaSS.load(tmp_path / "t")
    assert torch.equal(loaded.transform(x), a)
    assert loaded.schema == data.schema


@torch.no_grad()
def test_generators_start_near_identity_and_stay_in_range():
    from privkit.suppress.generators import create_generator

    torch.manual_seed(0)
    img = Schema("image", (Attribute("y", ("a", "b")),), (3, 16, 16))
    x = torch.rand(4, 3, 16, 16)
    # a small init_scale starts at the identity; the default (0.3) starts further off so G can move
    g = create_generator(None, img, 4, init_scale=0.01)
    y = g(x, torch.randn(4, 4))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert float((y - x).abs().mean()) < 0.02
    y_default = create_generator(None, img, 4)(x * 4 - 2, torch.randn(4, 4))  # out-of-range input is clamped
    assert float(y_default.min()) >= 0 and float(y_default.max()) <= 1
    wav = Schema("audio", (Attribute("y", ("a", "b")),), (1, 1000), sample_rate=8000)
    w = torch.rand(2, 1, 1000) * 1.8 - 0.9
    yw = create_generator(None, wav, 4, init_scale=0.01)(w, torch.randn(2, 4))
    assert yw.shape == w.shape and float(yw.abs().max()) < 1 and float((yw - w).abs().mean()) < 0.05
    assert float(create_generator(None, wav, 4)(w * 3, torch.randn(2, 4)).abs().max()) <= 1
    mot = Schema("motion", (Attribute("y", ("a", "b")),), (6, 50), sample_rate=50)
    m = torch.randn(2, 6, 50)
    assert create_generator(None, mot, 4)(m, torch.randn(2, 4)).shape == m.shape


def test_feasibility_errors(data):
    with pytest.raises(ConfigError, match=">= 0"):
        resolve_budgets(data.schema, data.labels, ["gender"], ["useful"], {"gender": -0.1})
    with pytest.raises(ConfigError, match=r"H\(useful\)"):
        resolve_budgets(data.schema, data.labels, ["gender"], ["useful"], {"useful": 5.0})
    with pytest.raises(ConfigError, match="both suppressed and preserved"):
        resolve_budgets(data.schema, data.labels, ["gender"], ["gender"], {})
    with pytest.raises(SchemaError, match="unknown attribute"):
        MaSS(suppress=["age"]).check_budgets(data)
    # useful fully determined by gender: keeping > m + H(U|S) = 0 nats about it is infeasible
    tied = ArrayDataset(data.schema, data.x, np.stack([data.labels[:, 0], data.labels[:, 0]], 1))
    with pytest.raises(ConfigError, match=r"H\(useful\|gender\)"):
        resolve_budgets(tied.schema, tied.labels, ["gender"], ["useful"], {"useful": 0.5})
    ok = resolve_budgets(data.schema, data.labels, ["gender"], ["useful"], {})
    assert ok["m"]["gender"] == 0.0 and 0 < ok["n"]["useful"] <= ok["entropy"]["useful"]


def test_suppressed_attribute_faces_every_adversary_family(fitted, data):
    # the leakage bound H - CE holds per classifier; the generator must face linear and MLP models too,
    # while a kept attribute is guarded by the preserve_adversaries (default: the modality's model)
    assert {"gender", "gender-linear", "gender-mlp", "useful"} == set(fitted.classifiers_)
    assert "ce_gender_linear" in fitted.history_[-1] and "ce_gender_mlp" in fitted.history_[-1]
    with pytest.raises(ConfigError, match="unknown adversary"):
        MaSS(suppress=["gender"], adversaries=["svm"]).fit(data)
    with pytest.raises(ConfigError, match="unknown adversary"):
        MaSS(suppress=["gender"], preserve=["useful"], preserve_adversaries=["svm"]).fit(data)


def test_preserved_attribute_can_face_every_family(data):
    # preserve_adversaries=None: the kept attribute is guarded against the same families as the suppressed one
    mass = MaSS(suppress=["gender"], preserve=["useful"], epochs=1, pretrain_epochs=1, adversaries=["linear", "mlp"],
                preserve_adversaries=None, batch_size=32).fit(data)
    assert {"gender-linear", "gender-mlp", "useful-linear", "useful-mlp"} == set(mass.classifiers_)



def test_pretraining_runs_at_least_min_steps(data, monkeypatch):
    import privkit.train as train
    from privkit.suppress.mass import MIN_PRETRAIN_STEPS

    seen = []
    real = train.train_classifier

    def recording(model, dataset, attr, config, loop, **kw):
        seen.append((len(dataset), loop.epochs, loop.batch_size))
        return real(model, dataset, attr, config, loop, **kw)

    monkeypatch.setattr(train, "train_classifier", recording)
    small = data.subset(np.arange(64))
    MaSS(suppress=["gender"], preserve=["useful"], epochs=1, batch_size=32, pretrain_epochs=1,
         adversaries=["linear"]).fit(small)
    assert len(seen) == 2
    for n, epochs, batch in seen:
        assert epochs * int(np.ceil(n / batch)) >= MIN_PRETRAIN_STEPS
