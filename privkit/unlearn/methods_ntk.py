r"""``ntk`` and ``fast-ntk`` in the unlearning registry: wrappers of :func:`privkit.unlearn.ntk.ntk_unlearn`.

Both apply the NTK forgetting step of Golatkar et al. (2020),

.. math::

    w \leftarrow w(D) + s\,[\,w_{lin}(D_r) - w_{lin}(D)\,], \qquad
    w_{lin}(S) - w_0 = (J_S^T J_S + \lambda_S I)^{-1} J_S^T r_S, \quad \lambda_S = |S|\,wd,

``ntk`` over every parameter, ``fast-ntk`` (Li et al., 2024) over the parameter-efficient ones
(BatchNorm affine + head, or prompt tokens + head). The linearisation point :math:`w_0` is the
model's pretrained PEFT values (``w0.safetensors``, in ``context.w0``) for a model trained with
``--peft``; for an ordinarily trained model no :math:`w_0` exists and the step linearises at the
trained weights (what the reference notebook does in practice). :math:`wd` is the recipe's
w0-penalty (``anchor_penalty``), else its weight decay, else ``5e-4``.
"""

from __future__ import annotations

import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.unlearn.base import UnlearnContext, copy_model, fresh_model_like, register_unlearner

__all__ = ["NTKUnlearner", "FastNTKUnlearner", "fast_ntk_kind"]


def fast_ntk_kind(model: nn.Module, recipe_peft: str | None = None) -> str:
    """``"prompt"`` or ``"bn"``: the PEFT parameters Fast-NTK updates for ``model``.

    The model's own PEFT kind when it was trained with ``--peft``; otherwise prompt tokens if it
    has any, else normalisation affine parameters. A model with neither raises ConfigError.
    """
    from privkit.unlearn.jacobian import select_parameters

    if recipe_peft:
        return recipe_peft
    for kind in ("prompt", "bn"):
        try:
            select_parameters(model, kind)
            return kind
        except ConfigError:
            continue
    raise ConfigError(f"fast-ntk needs BatchNorm or prompt parameters but model {type(model).__name__} has neither; "
                      f"use --method ntk or train a model with BatchNorm (cnn) or prompts (vit-tiny)")


def _x_y(dataset, target_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, attrs = dataset.materialize()
    return x, attrs[:, target_index]


class _NTKBase:
    params_kind = "all"

    def __init__(self, scale: float | str = 1.0, weight_decay: float | None = None, solver: str = "auto",
                 chunk_size: int = 32, loss: str = "ce", linearise: str = "auto"):
        self.scale = scale
        self.linearise = linearise
        self.weight_decay = weight_decay
        self.solver = solver
        self.chunk_size = chunk_size
        self.loss = loss

    def _kind(self, model: nn.Module, context: UnlearnContext) -> str:
        return "all"

    def check(self, model: nn.Module, context: UnlearnContext) -> None:
        """Refuse, before anything runs, a model this method cannot handle."""
        from privkit.unlearn.jacobian import select_parameters

        select_parameters(model, self._kind(model, context))

    def _w0(self, model: nn.Module, selected: dict, retain, context: UnlearnContext) -> tuple[dict, str]:
        """The linearisation point and a phrase naming it (see the module docstring)."""
        mode = self.linearise
        if mode not in ("auto", "pretrained", "init", "trained"):
            raise ConfigError(f"linearise={mode!r}; choose auto, pretrained, init or trained")
        if mode == "auto":
            mode = "pretrained" if context.w0 is not None else "init"
        if mode == "pretrained":
            if context.w0 is None:
                raise ConfigError("linearise='pretrained' needs a model trained with --peft (its w0.safetensors)")
            return {n: context.w0[n] if n in context.w0 else p.detach().clone() for n, p in selected.items()}, \
                "pretrained PEFT values w0"
        if mode == "trained":
            return {n: p.detach().clone() for n, p in selected.items()}, "trained weights"
        # `privkit train` seeds torch with the training seed right before creating the model, so the
        # initial weights it started from are rebuilt exactly; the global RNG is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.recipe.seed)
            init = dict(fresh_model_like(model, retain.schema).named_parameters())
        return {n: init[n].detach().clone() for n in selected}, f"initial weights (training seed {context.recipe.seed})"

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        from privkit.unlearn.jacobian import select_parameters
        from privkit.unlearn.ntk import ntk_unlearn

        kind = self._kind(model, context)
        selected = select_parameters(model, kind)
        w0, point = self._w0(model, selected, retain, context)
        wd = float(self.weight_decay) if self.weight_decay is not None else context.recipe.ntk_weight_decay
        t = context.target_index(retain)
        retain_x, retain_y = _x_y(retain, t)
        forget_x, forget_y = _x_y(forget, t)
        updated, info = ntk_unlearn(copy_model(model), w0, retain_x, retain_y, forget_x, forget_y, params=kind,
                                    weight_decay=wd, scale=self.scale, solver=self.solver, chunk_size=self.chunk_size,
                                    loss=self.loss, inplace=True)
        info = {k: v for k, v in info.items() if k != "delta"}
        info["linearisation_point"] = point
        info["weight_decay"] = wd
        context.info["ntk"] = info
        updated.eval()
        return updated


@register_unlearner("ntk")
class NTKUnlearner(_NTKBase):
    """NTK forgetting over every parameter (Golatkar et al., 2020).

    Parameters
    ----------
    scale : float or "trapezium"
        Step length :math:`s`.
    weight_decay : float, optional
        :math:`wd` of :math:`\\lambda = N\\,wd` (default: the recipe's w0-penalty).
    solver : {"auto", "primal", "dual", "block"}
    chunk_size : int
        Samples per vmapped Jacobian call.
    loss : {"ce", "mse"}
        Residual definition.
    """


@register_unlearner("fast-ntk")
class FastNTKUnlearner(_NTKBase):
    """Fast-NTK (Li et al., 2024): the NTK step on BatchNorm affine (or prompt) parameters + head."""

    def _kind(self, model: nn.Module, context: UnlearnContext) -> str:
        return fast_ntk_kind(model, context.recipe.peft)
