"""I2I unlearning: the forget target, the method's effect on embeddings, every baseline, the metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_models import blobs  # noqa: E402

from privkit.errors import ConfigError
from privkit.generative.metrics import cosine_similarity, frechet_distance, inception_score
from privkit.generative.models import create_i2i, flatten_embedding
from privkit.generative.tasks import create_operator
from privkit.generative.train import I2IConfig, train_i2i
from privkit.generative.unlearn import (I2IUnlearnContext, I2IRecipe, forget_target, gaussian_like, get_i2i_unlearner,
                                        list_i2i_unlearners)
from privkit.train import LoopConfig


@pytest.fixture(scope="module")
def trained():
    ds = blobs(160, seed=1)
    op = create_operator("center-crop", 0.5)
    torch.manual_seed(0)
    model, _ = train_i2i(create_i2i("unet", ds.schema.input_shape), ds, op, I2IConfig(lr=5e-3),
                         LoopConfig(epochs=6, batch_size=32, seed=0, progress=False))
    y = ds.attr("shape")
    forget, retain = ds.subset(np.nonzero(y == 1)[0]), ds.subset(np.nonzero(y == 0)[0])
    return model, op, ds, forget, retain


def context(op, seed=0):
    return I2IUnlearnContext(target="shape", operator=op, i2i_recipe=I2IRecipe(epochs=2, batch_size=32, lr=5e-3),
                             seed=seed, progress=False)


def test_gaussian_noise_uses_batch_mean_and_variance_and_is_clipped():
    torch.manual_seed(0)
    x = torch.rand(200, 2, 8, 8) * 0.4 + torch.tensor([0.1, 0.5]).view(1, 2, 1, 1)
    n = gaussian_like(x, torch.Generator().manual_seed(1))
    assert n.shape == x.shape and n.min() >= 0 and n.max() <= 1
    for c in range(2):
        assert abs(float(n[:, c].mean() - x[:, c].mean())) < 0.01
        assert abs(float(n[:, c].std() - x[:, c].std())) < 0.02
    clipped = gaussian_like(torch.tensor([[[[0.0, 1.0]]], [[[0.0, 1.0]]]]) * 3 - 1, torch.Generator().manual_seed(0))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_forget_target_is_the_frozen_encoder_embedding_of_clipped_noise_by_hand():
    # tiny case: a linear "encoder" (1x1 conv over the 2 input channels), checked against hand arithmetic
    enc = torch.nn.Conv2d(2, 1, 1)
    with torch.no_grad():
        enc.weight[:] = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
        enc.bias[:] = 0.5
    op = create_operator("center-crop", 2)  # 2x2 hidden centre of a 4x4 image
    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).repeat_interleave(4).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    noise, emb = forget_target(enc, op, x, g1)
    mu, sd = x.mean(), x.std()
    z = torch.randn(x.shape, generator=g2)
    expected_noise = (mu + sd * z).clamp(0, 1)
    assert torch.allclose(noise, expected_noise)
    m = torch.zeros(4, 4)
    m[1:3, 1:3] = 1
    by_hand = 2.0 * expected_noise[:, 0] * (1 - m) - 1.0 * m + 0.5
    assert torch.allclose(emb, by_hand.flatten(1))


def test_unlearning_moves_forget_embeddings_toward_noise_and_keeps_retain(trained):
    model, op, ds, forget, retain = trained
    xf, _ = forget.materialize()
    xr, _ = retain.materialize()
    with torch.no_grad():
        # the expected forget target: mean frozen embedding over many noise draws
        g = torch.Generator().manual_seed(11)
        target = torch.stack([forget_target(model.encoder, op, xf, g)[1] for _ in range(8)]).mean(0)
        before_f = ((model.embed(op(xf)) - target) ** 2).mean()
        r0 = model.embed(op(xr))
    out = get_i2i_unlearner("li2024", alpha=1.0, epochs=4).unlearn(model, retain, forget, None, context=context(op))
    with torch.no_grad():
        after_f = ((out.embed(op(xf)) - target) ** 2).mean()
        drift_r = ((out.embed(op(xr)) - r0) ** 2).mean()
        moved_f = ((out.embed(op(xf)) - model.embed(op(xf))) ** 2).mean()
    assert after_f < 0.6 * before_f, (before_f, after_f)
    assert drift_r < 0.25 * moved_f, (drift_r, moved_f)
    # the given model is untouched and the decoder is frozen
    assert all(torch.equal(a, b) for a, b in zip(out.decoder.state_dict().values(), model.decoder.state_dict().values()))
    assert not torch.equal(out.encoder.levels[0][0].weight, model.encoder.levels[0][0].weight)


def test_alpha_zero_keeps_the_encoder_nearly_fixed(trained):
    model, op, ds, forget, retain = trained
    xf, _ = forget.materialize()
    out = get_i2i_unlearner("li2024", alpha=0.0, epochs=1).unlearn(model, retain, forget, None, context=context(op))
    out1 = get_i2i_unlearner("li2024", alpha=1.0, epochs=1).unlearn(model, retain, forget, None, context=context(op))
    with torch.no_grad():
        d0 = ((out.embed(op(xf)) - model.embed(op(xf))) ** 2).mean()
        d1 = ((out1.embed(op(xf)) - model.embed(op(xf))) ** 2).mean()
    assert d0 < 0.2 * d1


@pytest.mark.parametrize("name", ["max-loss", "noisy-label", "retain-label", "random-encoder", "retrain"])
def test_every_baseline_runs_under_the_api_and_changes_forget_outputs(trained, name):
    model, op, ds, forget, retain = trained
    xf, _ = forget.materialize()
    params = {"epochs": 1} if name != "retrain" else {}
    ctx = context(op)
    out = get_i2i_unlearner(name, **params).unlearn(model, retain, forget, None, context=ctx)
    assert out is not model and hasattr(out, "privkit_spec") and "history" in ctx.info
    with torch.no_grad():
        assert not torch.allclose(out(op(xf)), model(op(xf)))
        assert out(op(xf)).shape == xf.shape


def test_registry_is_separate_from_the_classifier_registry():
    from privkit.unlearn.base import list_unlearners

    assert list_i2i_unlearners() == ["li2024", "max-loss", "noisy-label", "retain-label", "random-encoder", "retrain"]
    assert not set(list_unlearners()) & {"li2024", "max-loss", "noisy-label", "retain-label", "random-encoder"}
    with pytest.raises(ConfigError, match="unknown I2I unlearning method"):
        get_i2i_unlearner("finetune")
    with pytest.raises(ConfigError, match="alpha"):
        get_i2i_unlearner("li2024", alpha=-0.1)


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_the_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    for s, fd in zip((0.5, 1.0, 2.0), shifts):
        assert fd == pytest.approx(6 * s * s, rel=1e-6)  # ||mu_a - mu_b||^2, covariances equal
    # against the closed form for diagonal covariances: sum (s_a - s_b)^2
    b = rng.normal(size=(20000, 2)) * np.array([1.0, 3.0])
    c = rng.normal(size=(20000, 2)) * np.array([2.0, 1.0])
    assert frechet_distance(b, c) == pytest.approx((1 - 2) ** 2 + (3 - 1) ** 2, rel=0.05)


def test_inception_score_and_cosine():
    onehot = np.eye(4)[np.arange(40) % 4]
    assert inception_score(onehot) == pytest.approx(4.0, rel=1e-6)
    assert inception_score(np.full((10, 4), 0.25)) == pytest.approx(1.0)
    a = np.random.default_rng(0).normal(size=(5, 3))
    assert cosine_similarity(a, 2 * a) == pytest.approx(1.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)


def test_li2024_terms_match_a_direct_computation_and_retain_term_starts_at_zero(trained):
    # the paper's two terms, written out: retain = mean ||E(T(x_r)) - E0(T(x_r))||^2 (0 at theta = theta0),
    # forget = mean ||E(T(x_f)) - E0(T(n))||^2 with the same noise draw; the decoder gets no gradient
    import copy

    from privkit.generative.unlearn import Li2024, _EncoderUnlearnTask

    model, op, ds, forget, retain = trained
    xf, _ = forget.materialize()
    xr, _ = retain.materialize()
    out = copy.deepcopy(model)
    enc0 = copy.deepcopy(model.encoder).eval()
    method = Li2024(alpha=0.15)
    task = _EncoderUnlearnTask(method, out, enc0, xf, None, op, I2IRecipe(), seed=0)
    with torch.no_grad():  # perturb the trainable encoder so both terms are non-trivial
        for p in out.encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    r_term, f_term = method.terms(task, xr[:16], xf[:16], 0, 0)
    with torch.no_grad():
        want_r = ((flatten_embedding(out.encoder(op(xr[:16]))) - flatten_embedding(model.encoder(op(xr[:16])))) ** 2).mean()
        _, noise_emb = forget_target(model.encoder, op, xf[:16], task.generator(0, 0))
        want_f = ((flatten_embedding(out.encoder(op(xf[:16]))) - noise_emb) ** 2).mean()
    assert float(r_term.detach()) == pytest.approx(float(want_r), rel=1e-5) and float(want_r) > 0
    assert float(f_term.detach()) == pytest.approx(float(want_f), rel=1e-5)
    (r_term + 0.15 * f_term).backward()
    assert all(p.grad is None for p in out.decoder.parameters())
    assert all(p.grad is not None for p in out.encoder.parameters())
    fresh = _EncoderUnlearnTask(method, copy.deepcopy(model), enc0, xf, None, op, I2IRecipe(), seed=0)
    r0, _ = method.terms(fresh, xr[:16], xf[:16], 0, 0)
    assert float(r0.detach()) == pytest.approx(0.0, abs=1e-10)


def test_completion_metrics_report_the_classifier_ceiling_on_ground_truth():
    # truth_accuracy is the metric classifier on the real images: equal to `accuracy` when the completion is
    # perfect, unchanged when the completion is wrecked (while `accuracy` then drops to a constant guess)
    from privkit.generative.metrics import FeatureClassifier, completion_metrics

    ds = blobs(160, seed=3)
    evaluator = FeatureClassifier("shape", epochs=4, seed=0).fit(ds)
    x, attrs = ds.materialize()
    labels = attrs[:, 0].numpy()
    perfect = completion_metrics(x.clone(), x, labels, evaluator)
    assert perfect["truth_accuracy"] == perfect["accuracy"] > 0.9
    assert perfect["fd"] == pytest.approx(0.0, abs=1e-6) and perfect["cosine"] == pytest.approx(1.0)
    blank = completion_metrics(torch.zeros_like(x), x, labels, evaluator)
    assert blank["truth_accuracy"] == perfect["truth_accuracy"]
    # every blank image gets the same prediction, so accuracy is that class's share of the labels
    assert blank["accuracy"] in {float((labels == k).mean()) for k in (0, 1)}
    assert blank["fd"] > 0.1


def test_metric_classifier_trained_on_completions_reads_them_and_keeps_the_real_prior():
    # completions that look unlike real images (here: inverted) are misread by a classifier of real images only;
    # fitting with completions= (same labels) teaches it to read them, without changing the class prior (chance)
    from privkit.generative.metrics import FeatureClassifier

    ds = blobs(200, seed=4)
    x, attrs = ds.materialize()
    labels = attrs[:, 0].numpy()
    inverted = 1 - x
    real_only = FeatureClassifier("shape", epochs=5, seed=0).fit(ds)
    with_completions = FeatureClassifier("shape", epochs=5, seed=0).fit(ds, completions=inverted)
    acc = lambda ev, imgs: float((ev.features_and_probs(imgs)[1].argmax(1) == labels).mean())  # noqa: E731
    assert acc(with_completions, inverted) > 0.95 and acc(with_completions, x) > 0.95
    assert acc(real_only, inverted) < 0.8
    np.testing.assert_allclose(with_completions.class_prior_, np.bincount(labels, minlength=2) / len(labels))
    with pytest.raises(ConfigError, match="one completion per image"):
        FeatureClassifier("shape", epochs=1).fit(ds, completions=inverted[:10])


@pytest.mark.parametrize("name", ["unet", "mae-tiny"])
def test_encoder_stages_partition_the_encoder_parameters_input_side_first(name):
    model = create_i2i(name, (1, 8, 8))
    stages = model.encoder_stages()
    ids = [id(p) for stage in stages for p in stage]
    assert sorted(ids) == sorted(id(p) for p in model.encoder.parameters()) and len(set(ids)) == len(ids)
    # the first stage reads the input: the U-Net's full-resolution level, the MAE patch embedding
    first = model.encoder.levels[0] if name == "unet" else model.encoder.embed
    assert {id(p) for p in first.parameters()} <= {id(p) for p in stages[0]}


def test_frozen_stages_keep_the_first_encoder_stages_at_theta0_and_train_the_rest(trained):
    model, op, ds, forget, retain = trained
    xf, _ = forget.materialize()
    out = get_i2i_unlearner("li2024", alpha=1.0, epochs=2, frozen_stages=1).unlearn(model, retain, forget, None,
                                                                                   context=context(op))
    frozen, rest = out.encoder_stages()[0], [p for s in out.encoder_stages()[1:] for p in s]
    orig_frozen, orig_rest = model.encoder_stages()[0], [p for s in model.encoder_stages()[1:] for p in s]
    assert all(torch.equal(a, b) for a, b in zip(frozen, orig_frozen))
    assert any(not torch.equal(a, b) for a, b in zip(rest, orig_rest))
    # the full-resolution skip (read by the decoder) is unchanged, the deeper level moved the forget embedding
    with torch.no_grad():
        z0, z1 = model.encoder(op(xf)), out.encoder(op(xf))
    assert torch.equal(z0[0], z1[0]) and not torch.allclose(z0[1], z1[1])
    # the returned model trains normally again (nothing left frozen), the given model is untouched
    assert all(p.requires_grad for p in out.parameters()) and all(p.requires_grad for p in model.parameters())


def test_frozen_stages_bad_values_are_config_errors(trained):
    model, op, ds, forget, retain = trained
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="frozen-stages"):
            get_i2i_unlearner("li2024", frozen_stages=bad)
    with pytest.raises(ConfigError, match="leaves nothing to train: this encoder has 2 stages"):
        get_i2i_unlearner("li2024", epochs=1, frozen_stages=2).unlearn(model, retain, forget, None, context=context(op))


def test_method_params_pass_frozen_stages_to_encoder_methods_only():
    from privkit.generative.run import method_params

    assert method_params("li2024", alpha=0.3, frozen_stages=1) == {"alpha": 0.3, "frozen_stages": 1}
    assert method_params("max-loss", frozen_stages=2) == {"frozen_stages": 2}
    assert method_params("retrain", alpha=0.3, frozen_stages=1, epochs=2) == {"epochs": 2}


def test_encoders_without_stages_still_unlearn_at_frozen_stages_0_and_refuse_more():
    from privkit.generative.unlearn import freeze_encoder_stages

    model = create_i2i("unet", (1, 8, 8))
    model.encoder.stages = None  # an encoder that does not define stages()
    freeze_encoder_stages(model, 0)  # the default must not need stages()
    assert all(p.requires_grad for p in model.encoder.parameters())
    with pytest.raises(ConfigError, match="does not define stages"):
        freeze_encoder_stages(model, 1)
