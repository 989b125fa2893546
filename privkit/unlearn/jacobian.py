"""Per-sample parameter Jacobians of a classifier's logits, and parameter selections.

The NTK forgetting step of Golatkar et al. (ECCV 2020) and its parameter-efficient variant
Fast-NTK (Li et al., arXiv 2312.14923) need, for every sample :math:`x_i` and every logit
:math:`c`, the gradient of the logit :math:`f_c(x_i; w)` with respect to a chosen subset
:math:`w` of the parameters,

.. math::

    J(x_i)_{c,p} = \\frac{\\partial f_c(x_i; w)}{\\partial w_p},
    \\qquad J \\in \\mathbb{R}^{N \\times C \\times P}.

:func:`parameter_jacobian` computes it with :func:`torch.func.functional_call` and
``vmap(jacrev)`` (or ``vmap(jacfwd)`` when :math:`P < C`) over chunks of samples;
:func:`per_sample_loop_jacobian` is the reference notebook's per-sample, per-logit autograd
loop, kept as the slow, obviously-correct reference for tests and benchmarks.

The model is always evaluated in eval mode, so BatchNorm uses (and never updates) its running
statistics and every sample's logits depend on that sample alone; this is what makes the
per-sample Jacobian well defined and is the "BatchNorm statistics frozen" part of the recipe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
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
    "flatten_parameters",
    "unflatten_parameters",
]

DEFAULT_CHUNK_SIZE = 32

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


def iter_jacobian_chunks(
    model: nn.Module,
    x: Tensor,
    params: Mapping[str, Tensor] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    buffers: Mapping[str, Tensor] | None = None,
    mode: str = "auto",
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield ``(start, J_chunk, logits_chunk)`` over chunks of ``chunk_size`` samples.

    ``J_chunk`` has shape ``(n, C, P)`` in the model's dtype; ``logits_chunk`` is ``(n, C)``,
    the logits :math:`f(x_i; w)` at the same point (one forward pass serves both). Streaming
    lets the primal solver accumulate :math:`J^T J` without ever holding all of :math:`J`.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}; pass a positive integer")
    if mode not in ("auto", "rev", "fwd"):
        raise ConfigError(f"unknown Jacobian mode {mode!r}; choose 'auto', 'rev' or 'fwd'")
    differentiated, fixed = _split_point(model, params, buffers)
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
            yield start, jac, logits


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
        Samples per ``vmap`` call; memory grows linearly with it.
    buffers : dict of str to Tensor, optional
        Buffer values (BatchNorm running statistics) overriding the model's.
    mode : {"auto", "rev", "fwd"}
        ``vmap(jacrev)`` (one vector-Jacobian product per logit) or ``vmap(jacfwd)`` (one
        Jacobian-vector product per parameter); ``auto`` picks forward mode when P < C.
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
