"""The Unlearner registry: a contract every registered method must meet, and exact retraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privkit.errors import ConfigError
from privkit.unlearn import TrainingRecipe, UnlearnContext, Unlearner, get_unlearner, list_unlearners

EXPECTED = {"retrain", "finetune", "neggrad", "neggrad-plus", "random-label", "l1-sparse", "salun", "scrub", "ntk",
            "fast-ntk", "rurk"}


@pytest.fixture(scope="module")
def setup():
    """A tiny BN CNN trained 2 epochs on 300 digits; a random 10% of its training split to forget."""
    from privkit.classify import classifier_split
    from privkit.data import load_dataset
    from privkit.data.splits import select_forget
    from privkit.models import create
    from privkit.train import LoopConfig, train_classifier

    ds = load_dataset("digits", size=300)
    split = classifier_split(ds, "digit", 0)
    train = ds.subset(split.train)
    forget_idx, retain_idx = select_forget(train, "random=0.1", target="digit", seed=0)
    recipe = TrainingRecipe(epochs=2, batch_size=32, lr=0.02, seed=0)
    torch.manual_seed(0)
    model = create("cnn", ds.schema, 10, width=4)
    model, _ = train_classifier(model, train, "digit", recipe.classifier_config(),
                                LoopConfig(epochs=2, batch_size=32, seed=0, progress=False))
    model.eval()
    return dict(ds=ds, model=model, retain=train.subset(retain_idx), forget=train.subset(forget_idx),
                val=ds.subset(split.val), recipe=recipe)


def _accuracy(model, data) -> float:
    from privkit.train import predict_logits

    logits, attrs = predict_logits(model, data)
    return float((logits.argmax(1) == attrs[:, 0]).float().mean())


def test_registry_holds_every_method():
    assert set(list_unlearners()) == EXPECTED
    for name in EXPECTED:
        assert isinstance(get_unlearner(name), Unlearner)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown unlearning method .*fast-ntk.*rurk"):
        get_unlearner("forgetify")
    with pytest.raises(ConfigError, match="bad options"):
        get_unlearner("ntk", epochs=3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_method_contract(setup, name):
    """Same architecture back, the input model untouched, weights changed, retain accuracy sane."""
    model = setup["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base_acc = _accuracy(model, setup["retain"])
    context = UnlearnContext(target="digit", recipe=setup["recipe"], seed=0)
    params = {"samples": 2} if name == "rurk" else {}
    out = get_unlearner(name, **params).unlearn(model, setup["retain"], setup["forget"], setup["val"], context=context)
    assert type(out) is type(model) and out is not model
    assert {k: v.shape for k, v in out.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items()), "the input model was modified"
    assert any(not torch.equal(out.state_dict()[k], v) for k, v in before.items()), "nothing changed"
    assert all(p.requires_grad for p in out.parameters())
    assert not out.training
    assert _accuracy(out, setup["retain"]) >= min(0.5, base_acc - 0.3), name


def test_retrain_is_training_from_scratch_on_retain(setup):
    """retrain == seed + create + train_classifier on D_r with the recipe, bit for bit, and repeatable."""
    from privkit.models import create
    from privkit.train import LoopConfig, train_classifier

    recipe = setup["recipe"]
    context = UnlearnContext(target="digit", recipe=recipe, seed=7)
    runs = [get_unlearner("retrain").unlearn(setup["model"], setup["retain"], setup["forget"], setup["val"],
                                             context=context) for _ in range(2)]
    torch.manual_seed(7)
    expected = create("cnn", setup["ds"].schema, 10, width=4)
    expected, _ = train_classifier(expected, setup["retain"], "digit", recipe.classifier_config(),
                                   LoopConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, seed=7, progress=False))
    for run in runs:
        for k, v in expected.state_dict().items():
            assert torch.equal(run.state_dict()[k], v), k
    # and it differs from the original model, which also saw the forget set
    assert any(not torch.equal(runs[0].state_dict()[k], v) for k, v in setup["model"].state_dict().items())


def test_fast_ntk_refuses_a_model_without_bn_or_prompts(setup):
    from privkit.models import create

    mlp = create("mlp", setup["ds"].schema, 10, hidden=8)
    context = UnlearnContext(target="digit", recipe=setup["recipe"])
    method = get_unlearner("fast-ntk")
    with pytest.raises(ConfigError, match="BatchNorm or prompt"):
        method.check(mlp, context)
    with pytest.raises(ConfigError):
        method.unlearn(mlp, setup["retain"], setup["forget"], setup["val"], context=context)


def test_recipe_from_meta_config():
    config = {"epochs": 4, "batch_size": 16, "seed": 3, "peft": "bn",
              "optim": {"lr": 0.01, "optimizer": "sgd", "weight_decay": 1e-3, "anchor_penalty": 1e-3,
                        "trainable": ["head.weight"]}}
    r = TrainingRecipe.from_config(config)
    assert (r.epochs, r.batch_size, r.seed, r.lr, r.optimizer, r.peft, r.trainable) == (4, 16, 3, 0.01, "sgd", "bn",
                                                                                         ["head.weight"])
    assert r.ntk_weight_decay == 1e-3
    assert TrainingRecipe.from_config({}).ntk_weight_decay > 0
    cfg = r.classifier_config(lr=0.5)
    assert cfg.lr == 0.5 and cfg.anchor_penalty == 1e-3 and list(cfg.trainable) == ["head.weight"]
