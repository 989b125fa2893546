"""Chunked vmap Jacobians against the per-sample, per-logit autograd loop; parameter selections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.unlearn.jacobian import (
    PARAMETER_SELECTORS,
    parameter_jacobian,
    per_sample_loop_jacobian,
    select_parameters,
)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
    )
    # Non-trivial running statistics, so eval-mode BN differs from train-mode BN.
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8) * 2 + 1)
    return model


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))


class PromptedClassifier(nn.Module):
    """Minimal stand-in for a ViT with visual prompt tokens."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.prompt_tokens = nn.Parameter(torch.randn(2, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = torch.cat([self.prompt_tokens.expand(x.shape[0], -1, -1),
                            self.embed(x).unsqueeze(1)], dim=1)
        return self.head(self.norm(tokens).mean(dim=1))


@pytest.mark.parametrize("mode", ["rev", "fwd"])
@pytest.mark.parametrize("kind", ["all", "bn"])
def test_chunked_jacobian_matches_loop_on_cnn_with_batchnorm(mode, kind):
    model = small_cnn()
    x = torch.randn(7, 1, 8, 8)
    params = select_parameters(model, kind)
    fast = parameter_jacobian(model, x, params, chunk_size=3, mode=mode)  # 3 does not divide 7
    slow = per_sample_loop_jacobian(model, x, params)
    n_params = sum(p.numel() for p in params.values())
    assert fast.shape == (7, 5, n_params)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_jacobian_leaves_model_mode_and_statistics_untouched():
    model = small_cnn()
    model.train()
    stats_before = {k: v.clone() for k, v in model.state_dict().items()}
    parameter_jacobian(model, torch.randn(4, 1, 8, 8), chunk_size=2)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats_before[key]), key


def test_jacobian_uses_eval_mode_statistics():
    # Eval-mode logits are a per-sample function: the logits returned with J must equal the
    # model's eval-mode output on the batch.
    model = small_cnn()
    x = torch.randn(5, 1, 8, 8)
    _, logits = parameter_jacobian(model, x, chunk_size=2, return_logits=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))


def test_chunked_jacobian_matches_loop_on_mlp_at_another_point():
    model = small_mlp()
    torch.manual_seed(1)
    point = {name: p.detach() + 0.3 * torch.randn_like(p) for name, p in model.named_parameters()}
    x = torch.randn(9, 6)
    fast = parameter_jacobian(model, x, point, chunk_size=4)
    slow = per_sample_loop_jacobian(model, x, point)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    # ...and not the Jacobian at the model's own weights.
    assert not torch.allclose(fast, parameter_jacobian(model, x, chunk_size=4), atol=1e-4)


def test_subset_jacobian_is_the_matching_columns_of_the_full_one():
    model = small_mlp()
    x = torch.randn(5, 6)
    full = parameter_jacobian(model, x, chunk_size=5)
    subset = {"2.weight": model[2].weight, "2.bias": model[2].bias}
    part = parameter_jacobian(model, x, subset, chunk_size=2)
    n_first = sum(p.numel() for p in model[0].parameters())
    torch.testing.assert_close(part, full[:, :, n_first:])


def test_bn_selection_is_norm_affine_plus_last_linear():
    model = small_cnn()
    assert list(select_parameters(model, "bn")) == [
        "1.weight", "1.bias", "4.weight", "4.bias", "7.weight", "7.bias"]


def test_prompt_selection_is_prompt_tokens_plus_head():
    model = PromptedClassifier()
    assert list(select_parameters(model, "prompt")) == [
        "prompt_tokens", "head.weight", "head.bias"]
    # LayerNorm counts as a normalisation layer for the bn selection.
    assert list(select_parameters(model, "bn")) == [
        "norm.weight", "norm.bias", "head.weight", "head.bias"]


@pytest.mark.parametrize("kind", ["bn", "prompt"])
def test_fast_ntk_selection_on_plain_mlp_is_a_config_error(kind):
    with pytest.raises(ConfigError, match="has no BN or prompt parameters.*--method ntk"):
        select_parameters(small_mlp(), kind)


def test_unknown_selection_names_the_choices():
    with pytest.raises(ConfigError, match="unknown parameter selection 'heads'"):
        select_parameters(small_mlp(), "heads")
    assert {"all", "bn", "prompt"} <= set(PARAMETER_SELECTORS)


def test_params_from_another_model_are_rejected():
    with pytest.raises(ConfigError, match="not parameters of"):
        parameter_jacobian(small_mlp(), torch.randn(2, 6), {"fc.weight": torch.zeros(3, 7)})
