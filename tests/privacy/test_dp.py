"""DP-SGD through Opacus: the accountant's epsilon reaches the target; BatchNorm is replaced."""

import numpy as np
import pytest
import torch

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError
from privkit.models import create
from privkit.models.registry import model_entry
from privkit.privacy.dp import DPClassifierTask, DPConfig, dp_model_kwargs, validate_for_dp
from privkit.train import ClassifierConfig, LoopConfig, run_training


def _data(n=400):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 8)) + 1.5 * y[:, None]).astype(np.float32)
    return ArrayDataset(Schema("features", (Attribute("y", ("a", "b")),), (8,)), x, y[:, None])


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_dp_training_spends_the_requested_epsilon_and_learns(target):
    ds = _data()
    torch.manual_seed(0)
    model = create("mlp", ds.schema, 2, hidden=16)
    task = DPClassifierTask(model, ds, 0, ClassifierConfig(lr=0.05, optimizer="sgd"), DPConfig(target, 1e-4, 1.0),
                            epochs=3, batch_size=50, seed=0)
    hist = run_training(task, None, LoopConfig(epochs=3, batch_size=50, seed=0, progress=False))
    eps = task.epsilon()
    assert eps == pytest.approx(target, rel=0.05)
    assert eps <= target * 1.001
    assert hist[-1]["acc"] > 0.7


def test_batchnorm_models_are_rebuilt_with_groupnorm_for_dp():
    schema = Schema("image", (Attribute("y", ("a", "b")),), (1, 8, 8))
    with pytest.raises(ConfigError, match="not DP-compatible"):
        validate_for_dp(create("cnn", schema, 2))
    kwargs, note = dp_model_kwargs(model_entry("cnn").factory)
    assert kwargs == {"norm": "group"} and "GroupNorm" in note
    validate_for_dp(create("cnn", schema, 2, **kwargs))


def test_invalid_dp_options():
    with pytest.raises(ConfigError, match="--delta"):
        DPConfig(1.0, 2.0).validate(100)
    with pytest.raises(ConfigError, match="--target-epsilon"):
        DPConfig(0.0, 1e-5).validate(100)


def test_empty_poisson_batches_still_take_a_noisy_counted_step():
    """With batch size 1 on 40 samples, many Poisson batches are empty; each must still be a DP step."""
    ds = _data(40)
    torch.manual_seed(0)
    model = create("mlp", ds.schema, 2, hidden=8)
    task = DPClassifierTask(model, ds, 0, ClassifierConfig(lr=0.1, optimizer="sgd"), DPConfig(5.0, 1e-3, 1.0),
                            epochs=1, batch_size=1, seed=0)
    batches = list(task.batch_source(0))
    assert any(len(x) == 0 for x, _ in batches)
    before = [p.detach().clone() for p in model.parameters()]
    for b in batches:
        task.step(b, 0, 0)
    assert len(task.engine.accountant.history) >= 1
    steps = sum(h[2] for h in task.engine.accountant.history)
    assert steps == len(batches)  # every step, empty or not, is accounted
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_infeasible_epsilon_is_a_config_error():
    ds = _data(100)
    with pytest.raises(ConfigError, match="--target-epsilon"):
        DPClassifierTask(create("mlp", ds.schema, 2, hidden=8), ds, 0, ClassifierConfig(), DPConfig(1e-4, 1e-5, 1.0),
                         epochs=50, batch_size=50, seed=0)


def test_dp_resume_gives_the_weights_and_epsilon_of_an_uninterrupted_run(tmp_path):
    ds = _data(200)

    def run(epochs, resume, ckpt):
        torch.manual_seed(0)
        model = create("mlp", ds.schema, 2, hidden=8)
        task = DPClassifierTask(model, ds, 0, ClassifierConfig(lr=0.05, optimizer="sgd"), DPConfig(3.0, 1e-4, 1.0),
                                epochs=3, batch_size=40, seed=0)
        run_training(task, None, LoopConfig(epochs=epochs, batch_size=40, seed=0, progress=False),
                     checkpoint_dir=ckpt, resume=resume)
        from privkit.train import unwrap

        return unwrap(task.nets["model"]).state_dict(), task.epsilon()

    full, eps_full = run(3, False, None)
    run(1, False, tmp_path / "ck")                      # "interrupted" after one epoch
    resumed, eps_resumed = run(3, True, tmp_path / "ck")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert eps_resumed == pytest.approx(eps_full)


def test_smallest_reachable_epsilon_matches_the_accountant_at_huge_noise():
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants import RDPAccountant

    from privkit.privacy.dp import smallest_reachable_epsilon

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=0.5, noise_multiplier=1e4, steps=10, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert smallest_reachable_epsilon(1e-5) == pytest.approx(eps, rel=1e-3)
    assert smallest_reachable_epsilon(1e-3) < smallest_reachable_epsilon(1e-5)
