"""Properties of the individual baselines (beyond the registry contract in test_base.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from privkit.unlearn import TrainingRecipe, UnlearnContext, get_unlearner
from privkit.unlearn.baselines import _random_label_loss, index_batches, saliency_mask


@pytest.fixture(scope="module")
def setup():
    from privkit.classify import classifier_split
    from privkit.data import load_dataset
    from privkit.data.splits import select_forget
    from privkit.models import create
    from privkit.train import LoopConfig, train_classifier

    ds = load_dataset("digits", size=300)
    split = classifier_split(ds, "digit", 0)
    train = ds.subset(split.train)
    forget_idx, retain_idx = select_forget(train, "class=3", target="digit", seed=0)
    recipe = TrainingRecipe(epochs=2, batch_size=32, lr=0.02, seed=0)
    torch.manual_seed(0)
    model = create("cnn", ds.schema, 10, width=8)
    model, _ = train_classifier(model, train, "digit", recipe.classifier_config(),
                                LoopConfig(epochs=6, batch_size=32, seed=0, progress=False))
    return dict(model=model.eval(), retain=train.subset(retain_idx), forget=train.subset(forget_idx),
                val=ds.subset(split.val), recipe=recipe)


def _forget_ce(model, data) -> float:
    from privkit.train import predict_logits

    logits, attrs = predict_logits(model, data)
    return float(F.cross_entropy(logits, attrs[:, 0]))


def test_index_batches_deterministic_permutation():
    a = index_batches(23, 5, seed=1, epoch=2)
    assert [len(b) for b in a] == [5, 5, 5, 5, 3]
    assert sorted(np.concatenate(a).tolist()) == list(range(23))
    assert all((x == y).all() for x, y in zip(a, index_batches(23, 5, seed=1, epoch=2)))
    assert any((x != y).any() for x, y in zip(a, index_batches(23, 5, seed=1, epoch=3)))


def test_random_labels_are_always_wrong():
    loss = _random_label_loss(num_classes=4, seed=0)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            return x

    y = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(1))
    flag = torch.arange(200) % 2 == 0
    original = F.cross_entropy
    try:
        F.cross_entropy = lambda logits, target: seen.append(target) or original(logits, target)
        loss(Spy(), (torch.zeros(200, 4), y, flag))
    finally:
        F.cross_entropy = original
    target = seen[0]
    assert (target[flag] != y[flag]).all() and (target[~flag] == y[~flag]).all()
    assert len(torch.unique(target[flag] - y[flag])) > 1  # random, not a fixed shift


def test_saliency_mask_keeps_the_requested_fraction(setup):
    mask = saliency_mask(setup["model"], setup["forget"], 0, 0.3, None)
    kept = sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert float(kept) == pytest.approx(0.3, abs=0.02)
    assert set(mask) == {n for n, _ in setup["model"].named_parameters()}


def test_salun_moves_only_salient_weights(setup):
    context = UnlearnContext(target="digit", recipe=setup["recipe"], seed=0)
    out = get_unlearner("salun", fraction=0.2).unlearn(setup["model"], setup["retain"], setup["forget"], setup["val"],
                                                        context=context)
    mask = saliency_mask(setup["model"], setup["forget"], 0, 0.2, None)
    before = dict(setup["model"].named_parameters())
    for n, p in out.named_parameters():
        frozen = mask[n] == 0
        assert torch.equal(p.detach()[frozen], before[n].detach()[frozen]), n


@pytest.mark.parametrize("name", ["neggrad", "neggrad-plus", "random-label", "scrub"])
def test_forget_oriented_methods_raise_forget_loss(setup, name):
    context = UnlearnContext(target="digit", recipe=setup["recipe"], seed=0)
    out = get_unlearner(name).unlearn(setup["model"], setup["retain"], setup["forget"], setup["val"], context=context)
    assert _forget_ce(out, setup["forget"]) > _forget_ce(setup["model"], setup["forget"]) + 0.05


def test_peft_recipe_trains_only_its_parameters(setup):
    names = ["head.weight", "head.bias"]
    recipe = TrainingRecipe(epochs=2, batch_size=32, lr=0.02, seed=0, trainable=names, peft="bn")
    context = UnlearnContext(target="digit", recipe=recipe, seed=0)
    before = {k: v.clone() for k, v in setup["model"].state_dict().items()}
    out = get_unlearner("finetune").unlearn(setup["model"], setup["retain"], setup["forget"], setup["val"],
                                            context=context)
    changed = {k for k, v in out.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(names)  # BatchNorm running statistics frozen too
