"""Per-sample parameter Jacobians of a classifier's logits, and parameter selections.

The NTK forgetting step of Golatkar et al. (ECCV 2020) and its parameter-efficient variant
Fast-NTK (Li et al., arXiv 2312.14923) need, for every sample :math:`x_i` and every logit
:math:`c`, the gradient of the logit :math:`f_c(x_i; w)` with respect to a chosen subset
:math:`w` of the parameters,

.. math::

    J(x_i)_{c,p} = \\frac{\\partial f_c(x_i; w)}{\\partial w_p},
    \\qquad J \\in \\mathbb{R}^{N \\times C \\times P}.

:func:`parameter_jacobian` computes it in one of two ways, over chunks of samples:

* ``mode="hooks"`` (what ``"auto"`` picks when it can), the way Opacus' ``GradSampleModule``
  builds per-sample gradients: ONE forward pass of the chunk through
  :func:`torch.func.functional_call` at the requested point, with forward hooks on the modules
  that own the selected parameters recording each call's input :math:`a` (or what the layer's
  rule needs from it) and output :math:`y`; then, for every logit :math:`c`, one backward
  :math:`g^{(c)} = \\partial \\big(\\sum_i f_c(x_i)\\big) / \\partial y` to the recorded
  outputs (all C at once as a vmapped ``is_grads_batched`` backward). In eval mode the
  samples do not interact, so row :math:`i` of :math:`g^{(c)}` is sample :math:`i`'s own
  :math:`\\partial f_c(x_i)/\\partial y_i`, and each layer's per-sample parameter gradient
  follows in closed form (a module called several times sums its calls):

  - ``nn.Linear`` (:math:`y = a W^T + b` on ``(n, *, in)``, :math:`t` the extra axes):
    :math:`\\partial_W f_c(x_i) = \\sum_t g^{(c)}_{i,t} a_{i,t}^T`,
    :math:`\\partial_b f_c(x_i) = \\sum_t g^{(c)}_{i,t}`.
  - ``nn.Conv1d``/``nn.Conv2d`` (any stride, padding, padding mode, dilation, groups):
    with :math:`U_i = \\mathrm{unfold}(a_i) \\in \\mathbb{R}^{(I/G) k_h k_w \\times L}` per
    group and :math:`g^{(c)}_i \\in \\mathbb{R}^{(O/G) \\times L}` over the :math:`L` output
    positions, :math:`\\partial_W f_c(x_i) = g^{(c)}_i U_i^T` and
    :math:`\\partial_b f_c(x_i) = \\sum_l g^{(c)}_{i,:,l}`.
  - eval-mode ``nn.BatchNorm1d/2d/3d``, ``nn.GroupNorm``, ``nn.LayerNorm``
    (:math:`y = \\gamma \\hat{a} + \\beta`): :math:`\\partial_\\gamma f_c(x_i) =
    \\sum_s g^{(c)}_{i,:,s} \\odot \\hat{a}_{i,:,s}` and :math:`\\partial_\\beta f_c(x_i) =
    \\sum_s g^{(c)}_{i,:,s}` over every non-parameter axis :math:`s`, where
    :math:`\\hat{a} = (a - \\mu_{run}) / \\sqrt{\\sigma^2_{run} + \\epsilon}` for BatchNorm
    (running statistics of the point's buffers) and the per-sample (per-group) normalised
    input for GroupNorm/LayerNorm. :math:`\\hat{a}` does not depend on :math:`\\gamma,
    \\beta`, so the formula holds at any point.

  Cost: one forward, C backwards that skip every weight gradient, and per-sample gradient
  products with the same FLOPs as the weight gradients of C ordinary backwards: about the
  "C forward+backward passes" floor (1.0-1.2x of it measured on the benchmark CNN, where
  ``vmap(jacrev)`` takes 1.5-2.4x). Other parametrised modules (raw
  ``nn.Parameter`` such as prompt tokens, attention, custom layers), shared (tied)
  parameters, and BatchNorm without running statistics are not covered: ``auto`` then falls
  back to ``vmap``, and ``mode="hooks"`` raises :class:`~privkit.errors.ConfigError` naming the
  parameter. Because a hook cannot see a parameter used outside its module's ``forward``
  (``F.linear(h, self.fc.weight)``) or a module whose leading axis is not the sample axis,
  the first chunk is self-checked: :math:`\\sum_{i,c} u_i v_c J_{i,c,:}` must equal the
  ordinary gradient of :math:`\\sum_{i,c} u_i v_c f_c(x_i)` for fixed non-uniform weights
  :math:`u, v`; a mismatch is also a fallback (``auto``) or an error (``hooks``).
* ``mode="rev"`` / ``"fwd"``: ``vmap(jacrev)`` (or ``vmap(jacfwd)`` when :math:`P < C`)
  of :func:`torch.func.functional_call` on one sample, which handles any model ``vmap`` can.

:func:`per_sample_loop_jacobian` is the reference notebook's per-sample, per-logit autograd
loop, kept as the slow, obviously-correct reference for tests and benchmarks.

The model is always evaluated in eval mode, so BatchNorm uses (and never updates) its running
statistics and every sample's logits depend on that sample alone; this is what makes the
per-sample Jacobian well defined and is the "BatchNorm statistics frozen" part of the recipe.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacfwd, jacrev, vmap

from privkit.errors import ConfigError

__all__ = [
    "PARAMETER_SELECTORS",
    "register_parameter_selector",
    "select_parameters",
    "parameter_jacobian",
    "iter_jacobian_chunks",
    "per_sample_loop_jacobian",
    "PER_SAMPLE_GRAD_RULES",
    "PerSampleGradRule",
    "register_per_sample_grad_rule",
    "JACOBIAN_MODES",
    "flatten_parameters",
    "unflatten_parameters",
]

DEFAULT_CHUNK_SIZE = 32

#: Accepted values of the ``mode`` argument of the Jacobian functions.
JACOBIAN_MODES = ("auto", "hooks", "rev", "fwd")

# Hooks mode: run the C per-logit backwards as one vmapped (is_grads_batched) backward. On
# the bench_ntk CNN (CPU, chunk 64) it took ~0.8x the time of a Python loop of C backwards.
_BATCHED_BACKWARD = True
# Projected rows (K given vectors per sample, a deletion request's few samples): vmap the backward with
# torch.func instead, whose batching rules run a convolution's or pooling's backward once for all K
# slots where is_grads_batched loops over them. On the 32x32 synthetic-faces CNN (8 forget samples x 40
# slots, 1-2 samples per chunk) it took 0.8x the CPU time; with 8 samples per chunk 1.2x, so the
# full-Jacobian path (the state's fit, 32 samples per chunk) keeps is_grads_batched.
_FUNCTORCH_PROJECTED_BACKWARD = True

# --------------------------------------------------------------------------------------------
# Parameter selections
# --------------------------------------------------------------------------------------------

ParameterSelector = Callable[[nn.Module], dict[str, Tensor]]

#: Registry of parameter selections, filled by :func:`register_parameter_selector`.
PARAMETER_SELECTORS: dict[str, ParameterSelector] = {}

# Normalisation layers whose affine parameters Fast-NTK fine-tunes ("BN" in the paper, which
# the recipe extends to GroupNorm/LayerNorm so transformer-style backbones are covered too).
_NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
)


def register_parameter_selector(name: str) -> Callable[[ParameterSelector], ParameterSelector]:
    """Register ``fn(model) -> {name: parameter}`` as the parameter selection ``name``."""

    def decorate(fn: ParameterSelector) -> ParameterSelector:
        if name in PARAMETER_SELECTORS:
            raise ValueError(f"parameter selection {name!r} is already registered")
        PARAMETER_SELECTORS[name] = fn
        return fn

    return decorate


def _classifier_head(model: nn.Module) -> dict[str, Tensor]:
    """Parameters of the classifier head, taken to be the last ``nn.Linear`` registered."""
    last_linear_name: str | None = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear_name = module_name
    if last_linear_name is None:
        return {}
    prefix = f"{last_linear_name}." if last_linear_name else ""
    return {
        name: param
        for name, param in model.named_parameters()
        if name.startswith(prefix) and name[len(prefix):] in ("weight", "bias")
    }


def _model_name(model: nn.Module) -> str:
    return type(model).__name__


@register_parameter_selector("all")
def _select_all(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter: full-parameter NTK (Golatkar et al.)."""
    return dict(model.named_parameters())


@register_parameter_selector("bn")
def _select_norm_affine(model: nn.Module) -> dict[str, Tensor]:
    """Normalisation-layer affine parameters plus the classifier head (Fast-NTK, CNN case)."""
    norm_module_names = {
        module_name
        for module_name, module in model.named_modules()
        if isinstance(module, _NORM_LAYER_TYPES)
    }
    selected = {
        name: param
        for name, param in model.named_parameters()
        if name.rpartition(".")[0] in norm_module_names
        and name.rpartition(".")[2] in ("weight", "bias")
    }
    if not selected:
        raise ConfigError(
            f"model {_model_name(model)} has no BN or prompt parameters to select with "
            "params='bn' (no BatchNorm/GroupNorm/LayerNorm affine weights); "
            "use --method ntk or train with --peft bn"
        )
    selected.update(_classifier_head(model))
    return _in_model_order(model, selected)


@register_parameter_selector("prompt")
def _select_prompt(model: nn.Module) -> dict[str, Tensor]:
    """Parameters whose name contains ``prompt`` plus the classifier head (Fast-NTK, ViT case)."""
    selected = {name: param for name, param in model.named_parameters() if "prompt" in name}
    if not selected:
        raise ConfigError(
            f"model {_model_name(model)} has no BN or prompt parameters to select with "
            "params='prompt' (no parameter name contains 'prompt'); "
            "use --method ntk or train with --peft bn"
        )
    selected.update(_classifier_head(model))
    return _in_model_order(model, selected)


def _in_model_order(model: nn.Module, selected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # A fixed order (the model's own) makes the flattened parameter vector reproducible.
    return {name: param for name, param in model.named_parameters() if name in selected}


def select_parameters(model: nn.Module, kind: str = "all") -> dict[str, Tensor]:
    """Select the parameters NTK forgetting updates.

    Parameters
    ----------
    model : nn.Module
        The classifier.
    kind : {"all", "bn", "prompt"} or another registered name
        ``all``: every parameter. ``bn``: BatchNorm/GroupNorm/LayerNorm affine parameters and
        the classifier head (the last ``nn.Linear``). ``prompt``: parameters whose name
        contains ``"prompt"`` and the head.

    Returns
    -------
    dict of str to Tensor
        The live parameters, keyed by their ``named_parameters`` name, in model order.

    Raises
    ------
    ConfigError
        Unknown ``kind``, or a Fast-NTK selection that finds no BN or prompt parameters.
    """
    try:
        selector = PARAMETER_SELECTORS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown parameter selection {kind!r}; choose one of {sorted(PARAMETER_SELECTORS)}"
        ) from None
    selected = selector(model)
    if not selected:
        raise ConfigError(f"model {_model_name(model)} has no parameters for params={kind!r}")
    return selected


def flatten_parameters(params: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """Concatenate ``params`` (in mapping order) into one flat vector, the order of J's P axis."""
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    return flat if dtype is None else flat.to(dtype)


def unflatten_parameters(flat: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Split a flat vector back into tensors shaped (and typed) like ``like``."""
    out: dict[str, Tensor] = {}
    offset = 0
    for name, ref in like.items():
        count = ref.numel()
        out[name] = flat[offset:offset + count].reshape(ref.shape).to(ref.dtype)
        offset += count
    if offset != flat.numel():
        raise ConfigError(
            f"flat parameter vector has {flat.numel()} entries but the parameters need {offset}"
        )
    return out


# --------------------------------------------------------------------------------------------
# Jacobians
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode (frozen BatchNorm statistics, no dropout), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _split_point(
    model: nn.Module,
    params: Mapping[str, Tensor] | None,
    buffers: Mapping[str, Tensor] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Return (differentiated parameters, fixed tensors) for :func:`functional_call`."""
    named_params = dict(model.named_parameters())
    if params is None:
        params = named_params
    unknown = sorted(set(params) - set(named_params))
    if unknown:
        raise ConfigError(
            f"parameters {unknown[:3]} are not parameters of {_model_name(model)}; "
            "pass names from model.named_parameters()"
        )
    for name, value in params.items():
        if tuple(value.shape) != tuple(named_params[name].shape):
            raise ConfigError(
                f"parameter {name!r} has shape {tuple(value.shape)} but the model's has "
                f"{tuple(named_params[name].shape)}; pass values for this architecture"
            )
    differentiated = {name: value.detach() for name, value in params.items()}
    fixed = {name: p.detach() for name, p in named_params.items() if name not in differentiated}
    model_buffers = dict(model.named_buffers())
    if buffers is not None:
        model_buffers.update({name: b.detach() for name, b in buffers.items()})
    fixed.update(model_buffers)
    return differentiated, fixed


def _n_params(params: Mapping[str, Tensor]) -> int:
    return sum(p.numel() for p in params.values())


# --------------------------------------------------------------------------------------------
# Per-sample gradients from module activations (the "hooks" Jacobian mode)
# --------------------------------------------------------------------------------------------


class _HooksUnsupported(ConfigError):
    """The hooks path cannot compute this Jacobian; ``auto`` falls back to ``vmap``."""


class PerSampleGradRule:
    """How to turn one module call's (input, output gradient) into per-sample parameter grads.

    A rule sees one call of its module on a chunk of :math:`n` samples. :meth:`capture` runs in
    the forward hook (under ``no_grad``, while :func:`functional_call` has the point's
    parameters and buffers swapped in) and keeps what the gradient needs; :meth:`grads` then
    receives the stacked gradients of every logit with respect to the module's output,
    shape ``(C, n, *output.shape[1:])``, and returns ``{"weight": ..., "bias": ...}`` with
    each value of shape ``(n, C, numel)`` laid out like the flattened parameter.
    """

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this module instance cannot be handled (``None`` when it can)."""
        return None

    def capture(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return inputs.detach()

    def grads(self, module: nn.Module, captured: Tensor, grad_out: Tensor,
              names: tuple[str, ...]) -> dict[str, Tensor]:
        raise NotImplementedError


#: Module type (exact, since a subclass may override ``forward``) -> per-sample gradient rule.
PER_SAMPLE_GRAD_RULES: dict[type[nn.Module], PerSampleGradRule] = {}


def register_per_sample_grad_rule(
    *module_types: type[nn.Module],
) -> Callable[[type[PerSampleGradRule]], type[PerSampleGradRule]]:
    """Register a :class:`PerSampleGradRule` subclass for ``module_types`` (exact types)."""

    def decorate(rule_cls: type[PerSampleGradRule]) -> type[PerSampleGradRule]:
        rule = rule_cls()
        for module_type in module_types:
            if module_type in PER_SAMPLE_GRAD_RULES:
                raise ValueError(f"a per-sample gradient rule for {module_type.__name__} "
                                 "is already registered")
            PER_SAMPLE_GRAD_RULES[module_type] = rule
        return rule_cls

    return decorate


def _bias_grad(grad_out: Tensor) -> Tensor:
    """(C, n, K, S) -> (n, C, K): the bias gradient sums the output gradient over S."""
    return grad_out.sum(dim=3).transpose(0, 1)


@register_per_sample_grad_rule(nn.Linear)
class _LinearRule(PerSampleGradRule):
    """:math:`y = x W^T + b` on ``(n, *, in)``: :math:`\\partial_W = \\sum_t g_t^T x_t`."""

    def grads(self, module, captured, grad_out, names):
        n_classes, n = grad_out.shape[:2]
        x = captured.reshape(n, -1, captured.shape[-1])             # (n, T, in)
        g = grad_out.reshape(n_classes, n, -1, grad_out.shape[-1])  # (C, n, T, out)
        out: dict[str, Tensor] = {}
        if "weight" in names:
            out["weight"] = torch.einsum("cnto,nti->ncoi", g, x).reshape(n, n_classes, -1)
        if "bias" in names:
            out["bias"] = _bias_grad(g.transpose(2, 3))
        return out


@register_per_sample_grad_rule(nn.Conv1d, nn.Conv2d)
class _ConvRule(PerSampleGradRule):
    """Convolution as a matrix product with the unfolded input (im2col).

    With :math:`U_i = \\mathrm{unfold}(x_i) \\in \\mathbb{R}^{(I/G) k \\times L}` per group and
    the output gradient :math:`g_i \\in \\mathbb{R}^{O/G \\times L}`,
    :math:`\\partial_W = g_i U_i^T` (per group) and :math:`\\partial_b = \\sum_l g_{i,:,l}`.
    Conv1d is handled as a Conv2d with a 1-high kernel.
    """

    def unsupported_reason(self, module):
        if module.transposed:
            return "transposed convolution"
        return None

    def grads(self, module, captured, grad_out, names):
        n_classes, n = grad_out.shape[:2]
        n_spatial = captured.dim() - 2
        if n_spatial != len(module.kernel_size):
            raise _HooksUnsupported(f"{type(module).__name__} got an input of shape "
                                    f"{tuple(captured.shape)} without a batch dimension")
        x = captured
        padding = module.padding
        if module.padding_mode != "zeros" or isinstance(padding, str):
            # What Conv does itself: pad explicitly (also covers padding="same"), then none.
            pad_mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=pad_mode)
            padding = (0,) * n_spatial
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        if n_spatial == 1:
            x = x.unsqueeze(2)
            kernel, stride = (1, kernel[0]), (1, stride[0])
            dilation, padding = (1, dilation[0]), (0, padding[0])
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        groups = module.groups
        g = grad_out.reshape(n_classes, n, groups, module.out_channels // groups, -1)
        out: dict[str, Tensor] = {}
        if "weight" in names:
            # One bmm over (sample, group): (C * O/G, L) @ (L, I/G * k); explicit rather than
            # einsum, which picks a slower layout here.
            n_cols = cols.shape[1] // groups
            lhs = g.permute(1, 2, 0, 3, 4).reshape(n * groups, -1, g.shape[-1])
            rhs = cols.reshape(n * groups, n_cols, -1).transpose(1, 2)
            weight = torch.bmm(lhs, rhs).reshape(n, groups, n_classes, -1, n_cols)
            out["weight"] = weight.transpose(1, 2).reshape(n, n_classes, -1)
        if "bias" in names:
            out["bias"] = _bias_grad(g.reshape(n_classes, n, module.out_channels, -1))
        return out


class _NormalisedInputRule(PerSampleGradRule):
    """Affine normalisation :math:`y = \\gamma \\hat{x} + \\beta` with :math:`\\hat{x}`
    independent of :math:`\\gamma, \\beta`: :math:`\\partial_\\gamma = \\sum g \\odot \\hat{x}`,
    :math:`\\partial_\\beta = \\sum g` over every non-parameter axis.

    :meth:`capture` keeps :math:`\\hat{x}` reshaped to ``(n, K, S)`` with the parameter axis K.
    """

    def grads(self, module, captured, grad_out, names):
        n_classes, n, n_affine = grad_out.shape[0], captured.shape[0], captured.shape[1]
        g = grad_out.reshape(n_classes, n, n_affine, -1)
        out: dict[str, Tensor] = {}
        if "weight" in names:
            out["weight"] = (g * captured).sum(dim=3).transpose(0, 1)  # beats einsum's bmm
        if "bias" in names:
            out["bias"] = _bias_grad(g)
        return out


@register_per_sample_grad_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class _EvalBatchNormRule(_NormalisedInputRule):
    """Eval-mode BatchNorm:
    :math:`\\hat{x} = (x - \\mu_{run}) / \\sqrt{\\sigma^2_{run} + \\epsilon}`."""

    def unsupported_reason(self, module):
        if module.running_mean is None or module.running_var is None:
            # Without running statistics eval-mode BN normalises by batch statistics, which
            # couples the samples.
            return "BatchNorm without running statistics (track_running_stats=False)"
        return None

    def capture(self, module, inputs):
        if module.training:
            raise _HooksUnsupported("BatchNorm in training mode")
        x_hat = F.batch_norm(inputs, module.running_mean, module.running_var, None, None,
                             training=False, eps=module.eps)
        if x_hat.dim() == 2:
            return x_hat.unsqueeze(-1)
        return x_hat.flatten(2)


@register_per_sample_grad_rule(nn.GroupNorm)
class _GroupNormRule(_NormalisedInputRule):
    """GroupNorm: :math:`\\hat{x}` normalised per sample and group."""

    def capture(self, module, inputs):
        x_hat = F.group_norm(inputs, module.num_groups, None, None, module.eps)
        return x_hat.reshape(x_hat.shape[0], x_hat.shape[1], -1)


@register_per_sample_grad_rule(nn.LayerNorm)
class _LayerNormRule(_NormalisedInputRule):
    """LayerNorm over the trailing ``normalized_shape`` axes; sums over the axes before them."""

    def capture(self, module, inputs):
        x_hat = F.layer_norm(inputs, module.normalized_shape, None, None, module.eps)
        n, n_affine = x_hat.shape[0], math.prod(module.normalized_shape)
        # (n, ..., *normalized_shape) -> (n, K, S) with S the leading non-batch axes.
        return x_hat.reshape(n, -1, n_affine).transpose(1, 2)

    def grads(self, module, captured, grad_out, names):
        n_classes, n = grad_out.shape[:2]
        g = grad_out.reshape(n_classes, n, -1, captured.shape[1]).transpose(2, 3)
        return super().grads(module, captured, g, names)


def _hooked_modules(
    model: nn.Module, names: list[str],
) -> tuple[dict[str, tuple[nn.Module, PerSampleGradRule, list[tuple[str, str]]]], str | None]:
    """Group the differentiated parameters by owning module and find each module's rule.

    Returns ``({module_name: (module, rule, [(suffix, parameter name), ...])}, reason)``
    where ``reason`` names the first parameter the hooks path cannot handle (else ``None``).
    """
    # A parameter reachable under two names (weight tying) gets gradient from both modules.
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    live = dict(model.named_parameters())
    modules: dict[str, tuple[nn.Module, PerSampleGradRule, list[tuple[str, str]]]] = {}
    for name in names:
        module_name, _, suffix = name.rpartition(".")
        module = model.get_submodule(module_name)
        rule = PER_SAMPLE_GRAD_RULES.get(type(module))
        if rule is None or suffix not in ("weight", "bias"):
            return {}, (f"parameter {name!r} belongs to a {type(module).__name__}, "
                        "which has no per-sample gradient rule")
        reason = rule.unsupported_reason(module)
        if reason is not None:
            return {}, f"parameter {name!r} belongs to a {reason}"
        if len(owners[id(live[name])]) > 1:
            return {}, f"parameter {name!r} is shared as {owners[id(live[name])]}"
        modules.setdefault(module_name, (module, rule, []))[2].append((suffix, name))
    return modules, None


class _ActivationRecorder:
    """Forward hooks that record, per call of each selected module, what its rule needs.

    ``clone_outputs`` hands downstream layers a copy of each output, for models that modify
    a module's output in place (``ReLU(inplace=True)``): the gradient must be taken with
    respect to the output as the module produced it.
    """

    def __init__(self, modules):
        self.modules = modules
        self.clone_outputs = False
        self.batched_backward = _BATCHED_BACKWARD
        self.functorch_backward = _FUNCTORCH_PROJECTED_BACKWARD
        self.calls: dict[str, list[tuple[Tensor, Tensor, int]]] = {}
        self._handles = []

    def __enter__(self) -> _ActivationRecorder:
        for module_name, (module, rule, _) in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(module_name, rule)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module_name: str, rule: PerSampleGradRule):
        def record(module: nn.Module, args: tuple, output: Tensor):
            if not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                raise _HooksUnsupported(f"module {module_name!r} was called with a "
                                        "non-tensor positional input or output")
            with torch.no_grad():
                captured = rule.capture(module, args[0])
            self.calls.setdefault(module_name, []).append((captured, output, output._version))
            return output.clone() if self.clone_outputs else None

        return record

    def forward(self, run: Callable[[], Tensor]) -> Tensor:
        """Run the model once, recording; redo with cloned outputs if one was changed in place."""
        self.calls = {}
        logits = run()
        if not self.clone_outputs and any(
            output._version != version
            for calls in self.calls.values() for _, output, version in calls
        ):
            self.clone_outputs = True
            self.calls = {}
            logits = run()
        return logits


def _output_gradients(recorder: _ActivationRecorder, logits: Tensor,
                      outputs: list[Tensor], vectors: Tensor | None = None) -> list[Tensor | None]:
    """:math:`\\partial (v_k^T f) / \\partial y` for every recorded output y, stacked as ``(K, n, ...)``.

    ``vectors`` (``(K, n, C)``, default the C unit vectors: :math:`\\partial f_c/\\partial y`)
    holds one vector per slot k and sample. Row i of the gradient with respect to a module
    output is sample i's alone (eval mode, so the samples do not interact), so one backward
    per slot over the whole chunk gives every sample's output gradient. The K backwards run
    as one vmapped (``is_grads_batched``) backward when the graph's ops support it, else as a
    loop that retains the graph.
    """
    n, n_classes = logits.shape
    projected = vectors is not None
    if vectors is None:
        vectors = torch.eye(n_classes, dtype=logits.dtype,
                            device=logits.device)[:, None, :].expand(-1, n, -1)
    if projected and recorder.batched_backward and recorder.functorch_backward:
        def slot(vector: Tensor) -> tuple[Tensor, ...]:
            return torch.autograd.grad(logits, outputs, grad_outputs=vector, retain_graph=True)

        try:
            return list(torch.func.vmap(slot)(vectors))
        except RuntimeError as exc:
            # an op without a torch.func batching rule, or an output the logits do not depend on (grad
            # gives None, which vmap cannot return): is_grads_batched below handles both
            if "vmap" not in str(exc) and "batched" not in str(exc).lower() and "differentiated" not in str(exc):
                raise
            recorder.functorch_backward = False
    if recorder.batched_backward:
        try:
            return list(torch.autograd.grad(logits, outputs, grad_outputs=vectors,
                                            retain_graph=True, is_grads_batched=True,
                                            allow_unused=True))
        except RuntimeError as exc:
            # An op without a vmap rule for its backward (a custom autograd.Function, say):
            # the loop below computes the same gradients, one logit at a time. Anything else
            # (out of memory, a device mismatch) is a real error and is raised as it is.
            if "vmap" not in str(exc) and "batched" not in str(exc).lower():
                raise
            recorder.batched_backward = False
    per_class = [
        torch.autograd.grad(logits, outputs, grad_outputs=vectors[k], retain_graph=True,
                            allow_unused=True)
        for k in range(vectors.shape[0])
    ]
    return [None if grads[0] is None else torch.stack(grads) for grads in zip(*per_class)]


def _hooks_jacobian_chunk(
    recorder: _ActivationRecorder,
    run: Callable[[], Tensor],
    leaves: Mapping[str, Tensor],
    n: int,
    self_check: bool,
    project: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One forward, C (or K) backwards to the module outputs, einsums: ``(J (n, C, P), logits)``.

    With ``project`` the rows are :math:`V_iJ_i` (``(n, K, P)``) for the vectors
    ``V = project(logits)`` of shape ``(n, K, C)``: K backwards instead of C.
    """
    logits = recorder.forward(run)
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ConfigError(
            f"model output has shape {tuple(logits.shape)} for {n} samples; "
            "NTK forgetting needs logits of shape (batch, classes)"
        )
    vectors = None
    if project is not None:
        # (n, K, C) -> (K, n, C): slot-major, the layout of the batched backward
        vectors = project(logits).transpose(0, 1)
    n_classes = logits.shape[1] if vectors is None else vectors.shape[0]
    entries = [(module_name, captured, output)
               for module_name, calls in recorder.calls.items()
               for captured, output, _ in calls]
    for module_name, _, output in entries:
        if output.dim() == 0 or output.shape[0] != n:
            raise _HooksUnsupported(f"module {module_name!r} output of shape "
                                    f"{tuple(output.shape)} has no leading sample axis of {n}")
    outputs = [output for _, _, output in entries]
    check_grads: tuple[Tensor | None, ...] = ()
    if self_check:
        # Random-free but non-uniform weights over samples and logits: the weighted sum of the
        # per-sample rows must equal the plain gradient of the weighted logits. This catches
        # parameters used outside their module's forward and modules whose leading axis is not
        # the sample axis, neither of which the hooks see.
        sample_weights = torch.linspace(1.0, 2.0, n, dtype=logits.dtype, device=logits.device)
        class_weights = torch.linspace(1.0, 3.0, n_classes, dtype=logits.dtype, device=logits.device)
        weights = sample_weights[:, None] * class_weights[None, :]
        # the same weighted sum of the rows, in logit space: sum_k w_ik v_ik
        logit_weights = weights if vectors is None else torch.einsum("nk,knc->nc", weights, vectors)
        check_grads = torch.autograd.grad(logits, list(leaves.values()), grad_outputs=logit_weights,
                                          retain_graph=True, allow_unused=True)
    stacked = _output_gradients(recorder, logits, outputs, vectors) if outputs else []
    per_param: dict[str, Tensor] = {}
    for (module_name, captured, output), grad_out in zip(entries, stacked):
        if grad_out is None:
            continue  # this call does not reach the logits: it contributes zero
        module, rule, suffixes = recorder.modules[module_name]
        wanted = tuple(suffix for suffix, _ in suffixes)
        grads = rule.grads(module, captured, grad_out, wanted)
        for suffix, name in suffixes:
            # Summing over calls handles a module applied more than once in a forward pass.
            per_param[name] = per_param[name] + grads[suffix] if name in per_param \
                else grads[suffix]
    jac = logits.new_empty((n, n_classes, _n_params(leaves)))
    offset = 0
    for name, leaf in leaves.items():
        count = leaf.numel()
        if name in per_param:
            jac[:, :, offset:offset + count] = per_param[name]
        else:
            jac[:, :, offset:offset + count] = 0  # its module never reached the logits
        offset += count
    if self_check:
        expected = weights.reshape(-1) @ jac.reshape(n * n_classes, -1)
        # Rounding in either sum is at most ~eps * sum(weights) * max|J| per entry.
        tol = 1000 * torch.finfo(jac.dtype).eps * float(weights.sum())
        offset = 0
        for (name, leaf), grad in zip(leaves.items(), check_grads):
            count = leaf.numel()
            got = torch.zeros(count, dtype=jac.dtype, device=jac.device) if grad is None \
                else grad.reshape(-1)
            block = jac[:, :, offset:offset + count]
            bound = tol * float(torch.linalg.vector_norm(block, float("inf")))
            if float((got - expected[offset:offset + count]).abs().max()) > bound:
                raise _HooksUnsupported(
                    f"parameter {name!r}: per-sample gradients from its module's hooks do not "
                    "add up to its gradient (it is used outside its module's forward, or the "
                    "module's leading axis is not the sample axis)"
                )
            offset += count
    return jac, logits.detach()


def _projection(project: Callable[[Tensor, int], Tensor], logits: Tensor, start: int) -> Tensor:
    """``project(logits, start)`` checked to be ``(n, K, C)`` with K >= 1, in the logits' dtype."""
    n, n_classes = logits.shape
    vectors = project(logits.detach(), start)
    if vectors.dim() != 3 or vectors.shape[0] != n or vectors.shape[2] != n_classes \
            or vectors.shape[1] < 1:
        raise ConfigError(f"project returned shape {tuple(vectors.shape)}; it must return "
                          f"(samples, K >= 1, classes) = ({n}, K, {n_classes}) vectors")
    return vectors.to(dtype=logits.dtype, device=logits.device)


def _iter_vmap_chunks(
    model: nn.Module,
    x: Tensor,
    differentiated: dict[str, Tensor],
    fixed: dict[str, Tensor],
    chunk_size: int,
    mode: str,
    project: Callable[[Tensor, int], Tensor] | None = None,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``vmap(jacrev)`` / ``vmap(jacfwd)`` chunks; ``mode`` is "auto", "rev" or "fwd".

    ``project`` is applied to the full per-sample Jacobian (no saving, same result).
    """
    n_params = _n_params(differentiated)

    def logits_of(point: dict[str, Tensor], sample: Tensor) -> tuple[Tensor, Tensor]:
        logits = functional_call(model, {**point, **fixed}, (sample.unsqueeze(0),))
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ConfigError(
                f"model output has shape {tuple(logits.shape)} for one sample; "
                "NTK forgetting needs logits of shape (batch, classes)"
            )
        logits = logits.squeeze(0)
        return logits, logits.detach()

    with _eval_mode(model):
        jacobian_fn = None
        for start in range(0, x.shape[0], chunk_size):
            chunk = x[start:start + chunk_size]
            if jacobian_fn is None:
                if mode == "auto":
                    with torch.no_grad():
                        n_classes = logits_of(differentiated, chunk[0])[0].numel()
                    # Forward mode costs one pass per parameter, reverse one per logit.
                    mode = "fwd" if n_params < n_classes else "rev"
                transform = jacfwd if mode == "fwd" else jacrev
                jacobian_fn = vmap(transform(logits_of, has_aux=True), in_dims=(None, 0))
            per_param, logits = jacobian_fn(differentiated, chunk)
            n, n_classes = logits.shape
            jac = torch.cat([per_param[name].reshape(n, n_classes, -1) for name in differentiated],
                            dim=2)
            if project is not None:
                jac = torch.einsum("nkc,ncp->nkp", _projection(project, logits, start), jac)
            yield start, jac, logits


def _iter_hooks_chunks(
    model: nn.Module,
    x: Tensor,
    differentiated: dict[str, Tensor],
    fixed: dict[str, Tensor],
    chunk_size: int,
    modules: dict,
    project: Callable[[Tensor, int], Tensor] | None = None,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Hooks-mode chunks; the first chunk is self-checked and may raise ``_HooksUnsupported``."""
    leaves = {name: value.detach().requires_grad_(True) for name, value in differentiated.items()}
    point = {**fixed, **leaves}
    with _eval_mode(model), _ActivationRecorder(modules) as recorder:
        for start in range(0, x.shape[0], chunk_size):
            chunk = x[start:start + chunk_size]
            # enable_grad: the caller may iterate under no_grad (vmap's transforms ignore it).
            with torch.enable_grad():
                jac, logits = _hooks_jacobian_chunk(
                    recorder, lambda: functional_call(model, point, (chunk,)), leaves,
                    chunk.shape[0], self_check=start == 0,
                    project=None if project is None else functools.partial(_projection, project,
                                                                             start=start))
            # drop this chunk's recorded outputs (and with them its graph) before the caller
            # works on J, so only one chunk's activations are ever alive
            recorder.calls = {}
            yield start, jac, logits


def iter_jacobian_chunks(
    model: nn.Module,
    x: Tensor,
    params: Mapping[str, Tensor] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    buffers: Mapping[str, Tensor] | None = None,
    mode: str = "auto",
    project: Callable[[Tensor, int], Tensor] | None = None,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield ``(start, J_chunk, logits_chunk)`` over chunks of ``chunk_size`` samples.

    ``J_chunk`` has shape ``(n, C, P)`` in the model's dtype; ``logits_chunk`` is ``(n, C)``,
    the logits :math:`f(x_i; w)` at the same point (one forward pass serves both). Streaming
    lets the primal solver accumulate :math:`J^T J` without ever holding all of :math:`J`.
    ``mode`` is as in :func:`parameter_jacobian`.

    ``project(logits, start)`` maps a chunk's logits ``(n, C)`` (``start``: the index of its
    first sample in ``x``) to vectors ``V`` of shape ``(n, K, C)``; the
    chunk's rows are then the vector-Jacobian products :math:`V_iJ_i` (``(n, K, P)``) instead of
    :math:`J_i`. The hooks mode computes them with K backward passes instead of C, which is
    what a caller that needs only a few directions per sample (a low-rank weighting
    :math:`J^TWJ`) saves; the vmap modes form :math:`J_i` and multiply.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}; pass a positive integer")
    if mode not in JACOBIAN_MODES:
        raise ConfigError(f"unknown Jacobian mode {mode!r}; choose one of {list(JACOBIAN_MODES)}")
    differentiated, fixed = _split_point(model, params, buffers)
    if mode in ("auto", "hooks"):
        modules, reason = _hooked_modules(model, list(differentiated))
        if reason is None:
            hooks_chunks = _iter_hooks_chunks(model, x, differentiated, fixed, chunk_size,
                                              modules, project)
            try:
                first = next(hooks_chunks, None)
            except _HooksUnsupported as exc:
                reason = str(exc)
            else:
                if first is not None:
                    yield first
                    yield from hooks_chunks
                return
        if mode == "hooks":
            raise ConfigError(f"mode='hooks' cannot compute this Jacobian: {reason}; "
                              "use mode='auto' (falls back to vmap) or mode='rev'")
    yield from _iter_vmap_chunks(model, x, differentiated, fixed, chunk_size, mode, project)


def parameter_jacobian(
    model: nn.Module,
    x: Tensor,
    params: Mapping[str, Tensor] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    buffers: Mapping[str, Tensor] | None = None,
    mode: str = "auto",
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Jacobian of the logits with respect to the selected parameters, per sample.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits of shape ``(batch, C)``; evaluated in eval mode.
    x : Tensor
        Inputs, shape ``(N, ...)``.
    params : dict of str to Tensor, optional
        The parameters to differentiate and the values to evaluate them at (a subset of
        ``model.named_parameters()``; the others are held at the model's values).
        ``None`` means all parameters at their current values.
    chunk_size : int
        Samples per batched call; memory grows linearly with it.
    buffers : dict of str to Tensor, optional
        Buffer values (BatchNorm running statistics) overriding the model's.
    mode : {"auto", "hooks", "rev", "fwd"}
        ``hooks``: one batched forward, one backward per logit to the selected modules'
        outputs, per-sample gradients from (activation, output gradient) (see the module
        docstring); raises :class:`ConfigError` naming a parameter it cannot handle.
        ``rev``/``fwd``: ``vmap(jacrev)`` (one vector-Jacobian product per logit) or
        ``vmap(jacfwd)`` (one Jacobian-vector product per parameter). ``auto``: ``hooks``
        when every selected parameter belongs to a supported module and its self-check
        passes, else forward mode when P < C and reverse mode otherwise.
    return_logits : bool
        Also return the logits :math:`f(x; w)` at the same point.

    Returns
    -------
    Tensor
        :math:`J` of shape ``(N, C, P)`` with :math:`J_{i,c,p} = \\partial f_c(x_i)/\\partial w_p`;
        the P axis follows ``params``' order, each tensor flattened row-major.
    """
    jac: Tensor | None = None
    logits_all: Tensor | None = None
    for start, jac_chunk, logits in iter_jacobian_chunks(model, x, params, chunk_size, buffers,
                                                         mode):
        if jac is None:
            # Preallocate instead of concatenating a list: peak memory stays at N*C*P, not 2x.
            jac = jac_chunk.new_empty((x.shape[0],) + tuple(jac_chunk.shape[1:]))
            logits_all = logits.new_empty((x.shape[0], logits.shape[1]))
        jac[start:start + jac_chunk.shape[0]] = jac_chunk
        logits_all[start:start + logits.shape[0]] = logits
    if jac is None:
        raise ConfigError("cannot compute a Jacobian over zero samples; pass a non-empty x")
    return (jac, logits_all) if return_logits else jac


def per_sample_loop_jacobian(
    model: nn.Module,
    x: Tensor,
    params: Mapping[str, Tensor] | None = None,
    buffers: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Reference Jacobian: one forward per sample and one ``autograd.grad`` per logit.

    This is the loop of the reference notebook (``delta_w_utils`` in AdityaGolatkar/
    SelectiveForgetting): slow (N forwards and N*C backwards, none batched) but plainly
    correct, so tests and the benchmark compare :func:`parameter_jacobian` against it.
    Same arguments and result layout as :func:`parameter_jacobian`.
    """
    differentiated, fixed = _split_point(model, params, buffers)
    leaves = {name: value.clone().requires_grad_(True) for name, value in differentiated.items()}
    leaf_list = list(leaves.values())
    rows: list[Tensor] = []
    with _eval_mode(model):
        for i in range(x.shape[0]):
            logits = functional_call(model, {**leaves, **fixed}, (x[i:i + 1],))
            per_logit = []
            for c in range(logits.shape[1]):
                grads = torch.autograd.grad(logits[0, c], leaf_list, retain_graph=True,
                                            allow_unused=True)
                per_logit.append(torch.cat([
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, leaf_list)
                ]))
            rows.append(torch.stack(per_logit))
    if not rows:
        raise ConfigError("cannot compute a Jacobian over zero samples; pass a non-empty x")
    return torch.stack(rows)
