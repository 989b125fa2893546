"""Chunked vmap and hooks Jacobians against the per-sample, per-logit autograd loop; parameter
selections."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import privkit.unlearn.jacobian as jacobian_module

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


@pytest.mark.parametrize("mode", ["rev", "fwd", "hooks"])
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


# --------------------------------------------------------------------------------------------
# Hooks mode: one batched forward, C backwards to module outputs, per-sample einsums
# --------------------------------------------------------------------------------------------


def pooled_cnn(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Strided/padded convs, BatchNorm2d with real running statistics, pooling, in-place ReLU."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(6 * 4, 5),
    ).to(dtype)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 2, 9, 9, dtype=dtype) * 2 + 1)
    return model


def bn_mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(),
                          nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 6, dtype=dtype) * 3 - 1)
    return model


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10,
                                                                         "atol": 1e-10}


@pytest.fixture
def vmap_calls(monkeypatch) -> list[str]:
    """Record every call of the vmap path, so a test can tell which path ``auto`` took."""
    calls: list[str] = []
    original = jacobian_module._iter_vmap_chunks

    def spy(model, x, differentiated, fixed, chunk_size, mode, project=None):
        calls.append(mode)
        yield from original(model, x, differentiated, fixed, chunk_size, mode, project)

    monkeypatch.setattr(jacobian_module, "_iter_vmap_chunks", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["all", "bn"])
def test_hooks_jacobian_matches_loop_and_vmap_on_bn_cnn(dtype, kind, vmap_calls):
    model = pooled_cnn(dtype=dtype)
    torch.manual_seed(2)
    x = torch.randn(7, 2, 9, 9, dtype=dtype)
    params = select_parameters(model, kind)
    hooks, logits = parameter_jacobian(model, x, params, chunk_size=3, mode="hooks",
                                       return_logits=True)
    assert hooks.dtype == dtype and hooks.shape == (7, 5, sum(p.numel() for p in params.values()))
    auto = parameter_jacobian(model, x, params, chunk_size=3)
    assert vmap_calls == []  # every selected parameter is in a supported module
    vmapped = parameter_jacobian(model, x, params, chunk_size=3, mode="rev")
    loop = per_sample_loop_jacobian(model, x, params)
    torch.testing.assert_close(hooks, loop, **tolerances(dtype))
    torch.testing.assert_close(hooks, vmapped, **tolerances(dtype))
    torch.testing.assert_close(auto, hooks, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), **tolerances(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hooks_jacobian_matches_loop_on_mlp_with_batchnorm1d(dtype, vmap_calls):
    model = bn_mlp(dtype=dtype)
    torch.manual_seed(3)
    x = torch.randn(10, 6, dtype=dtype)
    loop = per_sample_loop_jacobian(model, x)
    for kind in ("all", "bn"):
        params = select_parameters(model, kind)
        auto = parameter_jacobian(model, x, params, chunk_size=4)
        columns = per_sample_loop_jacobian(model, x, params)
        torch.testing.assert_close(auto, columns, **tolerances(dtype))
    torch.testing.assert_close(parameter_jacobian(model, x, chunk_size=10, mode="hooks"), loop,
                               **tolerances(dtype))
    assert vmap_calls == []


def test_hooks_jacobian_at_another_point_and_buffers():
    # Affine BN parameters and running statistics at values other than the model's own: the
    # normalised input must use the given statistics, the gradient the given weights.
    model = pooled_cnn(dtype=torch.float64)
    torch.manual_seed(4)
    point = {name: p.detach() + 0.2 * torch.randn_like(p)
             for name, p in model.named_parameters()}
    buffers = {name: b + 0.5 * torch.rand_like(b) for name, b in model.named_buffers()
               if "running" in name}
    x = torch.randn(5, 2, 9, 9, dtype=torch.float64)
    hooks = parameter_jacobian(model, x, point, chunk_size=2, buffers=buffers, mode="hooks")
    loop = per_sample_loop_jacobian(model, x, point, buffers=buffers)
    torch.testing.assert_close(hooks, loop, rtol=1e-10, atol=1e-10)
    own_point = parameter_jacobian(model, x, chunk_size=2, mode="hooks")
    assert not torch.allclose(hooks, own_point, atol=1e-4)


class ScaledHead(nn.Module):
    """A raw ``nn.Parameter`` used directly in ``forward``: no per-sample rule covers it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh())
        self.temperature = nn.Parameter(torch.tensor([1.5, 0.5, 2.0]))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.features(x)) * self.temperature


def test_auto_falls_back_to_vmap_for_an_unsupported_parameter(vmap_calls):
    torch.manual_seed(5)
    model = ScaledHead()
    x = torch.randn(6, 5)
    auto = parameter_jacobian(model, x, chunk_size=4)
    assert vmap_calls == ["auto"]
    torch.testing.assert_close(auto, per_sample_loop_jacobian(model, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="mode='hooks'.*'temperature'.*mode='auto'"):
        parameter_jacobian(model, x, mode="hooks")
    # Without the raw parameter every selected module is supported again.
    subset = {k: v for k, v in model.named_parameters() if k != "temperature"}
    parameter_jacobian(model, x, subset, chunk_size=4)
    assert vmap_calls == ["auto"]


class FunctionalHead(nn.Module):
    """Calls ``F.linear`` with the head's weight, so the head's forward hook never fires."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        hidden = torch.tanh(self.body(x))
        return F.linear(hidden, self.head.weight, self.head.bias) + 0.1 * self.head(hidden)


def test_self_check_catches_a_parameter_used_outside_its_module(vmap_calls):
    torch.manual_seed(6)
    model = FunctionalHead()
    x = torch.randn(5, 4)
    with pytest.raises(ConfigError, match="'head.weight'.*do not add up"):
        parameter_jacobian(model, x, mode="hooks")
    auto = parameter_jacobian(model, x, chunk_size=2)
    assert vmap_calls == ["auto"]
    torch.testing.assert_close(auto, per_sample_loop_jacobian(model, x), rtol=1e-5, atol=1e-6)


class SequenceFirst(nn.Module):
    """A Linear applied to a (T, n, d) tensor: rows of its output are not samples."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # x: (n, T, 3) with T == n, so every shape check passes
        return self.head(self.mix(x.transpose(0, 1)).transpose(0, 1).mean(dim=1))


def test_self_check_catches_a_module_whose_leading_axis_is_not_the_sample_axis(vmap_calls):
    torch.manual_seed(7)
    model = SequenceFirst()
    x = torch.randn(4, 4, 3)
    with pytest.raises(ConfigError, match="'mix.weight'.*sample axis"):
        parameter_jacobian(model, x, chunk_size=4, mode="hooks")
    auto = parameter_jacobian(model, x, chunk_size=4)
    assert vmap_calls == ["auto"]
    torch.testing.assert_close(auto, per_sample_loop_jacobian(model, x), rtol=1e-5, atol=1e-6)


class LayerZoo(nn.Module):
    """Conv1d (reflect padding, groups), Conv2d (padding='same', groups), GroupNorm, LayerNorm
    over a sequence, a Linear on (n, T, d) inputs and a module applied twice."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(2, 4, 3, stride=2, padding=1, padding_mode="reflect", groups=2)
        self.conv2d = nn.Conv2d(4, 4, 3, padding="same", groups=2, bias=False)
        self.group_norm = nn.GroupNorm(2, 4)
        self.token = nn.Linear(4, 6)
        self.layer_norm = nn.LayerNorm(6)
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):  # x: (n, 2, 8)
        h = torch.relu(self.conv1d(x))                                   # (n, 4, 4)
        h = self.group_norm(self.conv2d(h.unsqueeze(-1).expand(-1, -1, -1, 3)))  # (n, 4, 4, 3)
        tokens = self.layer_norm(self.token(h.mean(-1).transpose(1, 2)))  # (n, 4, 6)
        tokens = self.shared(torch.tanh(self.shared(tokens)))
        return self.head(tokens.mean(dim=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hooks_jacobian_on_conv1d_groups_norms_sequences_and_reuse(dtype, vmap_calls):
    torch.manual_seed(8)
    model = LayerZoo().to(dtype)
    with torch.no_grad():  # non-trivial norm affine parameters
        for norm in (model.group_norm, model.layer_norm):
            norm.weight.add_(torch.randn_like(norm.weight))
            norm.bias.add_(torch.randn_like(norm.bias))
    x = torch.randn(5, 2, 8, dtype=dtype)
    hooks = parameter_jacobian(model, x, chunk_size=3, mode="hooks")
    torch.testing.assert_close(hooks, per_sample_loop_jacobian(model, x), **tolerances(dtype))
    params = select_parameters(model, "bn")
    torch.testing.assert_close(parameter_jacobian(model, x, params, chunk_size=2),
                               per_sample_loop_jacobian(model, x, params), **tolerances(dtype))
    assert vmap_calls == []


def test_hooks_loop_backward_matches_batched_backward(monkeypatch):
    model = pooled_cnn()
    x = torch.randn(4, 2, 9, 9)
    batched = parameter_jacobian(model, x, chunk_size=4, mode="hooks")
    monkeypatch.setattr(jacobian_module, "_BATCHED_BACKWARD", False)
    looped = parameter_jacobian(model, x, chunk_size=4, mode="hooks")
    torch.testing.assert_close(batched, looped, rtol=1e-6, atol=1e-6)


def test_hooks_jacobian_under_no_grad_and_model_state_untouched():
    model = pooled_cnn()
    model.train()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = [len(m._forward_hooks) for m in model.modules()]
    x = torch.randn(3, 2, 9, 9)
    with torch.no_grad():
        hooks = parameter_jacobian(model, x, chunk_size=2, mode="hooks")
    torch.testing.assert_close(hooks, per_sample_loop_jacobian(model, x), rtol=1e-5, atol=1e-5)
    assert model.training
    assert [len(m._forward_hooks) for m in model.modules()] == hooks_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key


def test_tied_weights_fall_back_to_vmap(vmap_calls):
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    x = torch.randn(3, 4)
    with pytest.raises(ConfigError, match="shared"):
        parameter_jacobian(model, x, mode="hooks")
    auto = parameter_jacobian(model, x)
    assert vmap_calls == ["auto"]
    torch.testing.assert_close(auto, per_sample_loop_jacobian(model, x), rtol=1e-5, atol=1e-6)


def test_unknown_jacobian_mode_lists_hooks():
    with pytest.raises(ConfigError, match="unknown Jacobian mode 'jvp'.*'hooks'"):
        parameter_jacobian(small_mlp(), torch.randn(2, 6), mode="jvp")
