r"""Fast-NTK by replaying the training recipe on the linearised network (``fast-ntk step="replay"``).

The closed-form step (:mod:`privkit.unlearn.ntk`) and ``step="linearised-ce"``
(:mod:`privkit.unlearn.ntk_linearized`) both approximate retraining by the *minimiser* of a
(linearised) objective over :math:`D_r`. The reference they are scored against is not a minimiser:
it is the original fine-tuning recipe (optimizer, learning rate, batch size, epochs, seed) run
again from :math:`w_0` on :math:`D_r`, and with 10 epochs of Adam it stops far from any optimum.
On a forgotten class the one Newton step then undershoots by a wide margin (digits, classes 1, 5,
8: Avg. Gap 12-20 points in a scratch study; classes were used to choose this design, class 3 was
not), because at :math:`w^*` the forget samples are fitted and carry almost no gradient, while
the retrained model never raised their logits in the first place.

This step replays the recipe itself on the network linearised piecewise along the fine-tuning, at
K points (default K = 3). By default (``schedule="steps"``) the points are the fine-tuning's own
iterates :math:`m_k = w_{s_k}` after :math:`s_k = \mathrm{round}((k + \tfrac12)S/K)` of its S steps
(:func:`trajectory_points` re-runs the recipe and checks it lands on :math:`w^*`), and step s of a
replay of :math:`S'` steps uses point :math:`\lfloor sK/S'\rfloor`, the iterate nearest in time;
``schedule="path"`` (the fallback when the re-run does not reproduce :math:`w^*`, and format-1
states) uses :math:`m_k = w_0 + t_k(w^* - w_0)`, :math:`t_k = (k + \tfrac12)/K`, picked by the
iterate's projection onto the path. At point :math:`m` with :math:`\Delta = w - m`:

.. math::

    f_{lin}(x; w) = f(x; m) + J_m(x)\,\Delta \qquad (\text{``logits'' model}),

    f_{bil}(x; w) = (W_m + \Delta W)\,(a_m(x) + A_m(x)\,\Delta\theta) + b_m + \Delta b
    \qquad (\text{``bilinear'' model}),

the second keeping the linear head :math:`z = Wa + b` exact and linearising only its input
:math:`a(x; \theta)` in the other (normalisation-layer or prompt) parameters :math:`\theta`: the
logits model plus the head-body cross term :math:`\Delta W A_m\Delta\theta`. It stores
:math:`A_m` (head inputs x body parameters per sample) instead of :math:`J_m` (classes x body
parameters), so ``replay_model="auto"`` picks it when the head's input is at most
:data:`BILINEAR_MAX_RATIO` times the classes (synthetic-faces and ORL identity: 64 inputs, 40
classes) and the logits model otherwise (digits: 64 for 10). Then

.. math::

    \delta_S = \mathrm{Recipe}_S\Big(\delta \mapsto \tfrac1{|B|}\sum_{i\in B}
        \mathrm{CE}(f(x_i; w_0+\delta), y_i) + \tfrac\lambda2\lVert\delta\rVert^2\Big),
        \quad \delta^{(0)} = 0,

where :math:`\mathrm{Recipe}_S` runs the recipe's optimizer for its epochs over the batches of
:func:`privkit.train.epoch_batches` on :math:`S` (the same permutations ``privkit train`` and
``retrain`` draw for a set of that size), and :math:`\lambda` is the recipe's w0-penalty. The
update is, by default (``replay_form="direct"``), the replayed retraining itself,

.. math::

    w \leftarrow w_0 + \delta_{D_r} \;=\; w^* + s\,(\delta_{D_r} - (w^* - w_0)),\ s = 1,

or (``"difference"``) :math:`w^* + s(\delta_{D_r} - \delta_D)`, which cancels the linearisation
error common to both replays but also carries the replay over :math:`D`'s own error
(:math:`\lVert w_0 + \delta_D - w^*\rVert`, reported as ``replay_path_error``). The two coincide
when that error is 0: on a model whose logits are linear in the selected parameters the
linearisation is exact, :math:`w_0 + \delta_D = w^*` and the update *is* retraining (tested to
round-off). The choices (iterates over the straight path, the bilinear model, the direct form)
were made on tuning requests, not the issue's own (docs/benchmarks.md, "Fast-NTK's three steps").

**Cost.** A replay is the recipe's epochs of products with the stored Jacobian (no network
pass). The classifier head is a linear layer :math:`z = W a + b`, so its Jacobian rows are
:math:`e_c a_i^T` and :math:`e_c`: only the head's input features :math:`a_i` are stored, and the
Jacobian is stored for the other (normalisation-layer or prompt) parameters only -- on the
benchmark CNN 320 of 2,920 parameters. :class:`ReplayState` keeps, per point, that Jacobian
(float32), :math:`a_i`, :math:`f(x_i; m)` (and :math:`W_m` for the bilinear model), the labels and
dataset ids over :math:`D`, and :math:`\delta_D`, so a request selects the retain rows by id and
runs one replay.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from privkit.errors import ArtifactError, ConfigError

__all__ = ["ReplayRecipe", "LinearisedNet", "linearise_for_replay", "replay_recipe", "replay_forget_delta",
           "path_points", "trajectory_points", "DEFAULT_REPLAY_POINTS", "REPLAY_MODELS", "REPLAY_FORMS",
           "ReplayState", "save_replay_state", "load_replay_state", "REPLAY_STATE_FILE"]

SOLVE_DTYPE = torch.float64
#: Linearisation points along the fine-tuning path (chosen on tuning requests: docs/benchmarks.md).
DEFAULT_REPLAY_POINTS = 3
#: What is linearised: ``logits`` (:math:`f` itself, first order in every selected parameter) or
#: ``bilinear`` (the head's input features, the linear head kept exact); ``auto`` picks ``bilinear``
#: when its stored Jacobian (head inputs x body parameters per sample) is at most
#: :data:`BILINEAR_MAX_RATIO` times the logits one (classes x body parameters), else ``logits``.
REPLAY_MODELS = ("auto", "logits", "bilinear")
BILINEAR_MAX_RATIO = 2
#: The update: ``direct`` :math:`w_0 + \delta_{D_r}` (the replayed retraining itself) or ``difference``
#: :math:`w^* + (\delta_{D_r} - \delta_D)`.
REPLAY_FORMS = ("direct", "difference")
#: How a replay step picks its linearisation point: ``steps`` (the training iterate the step is nearest
#: to in time: points are snapshots of the fine-tuning) or ``path`` (projection onto w0 -> w*).
REPLAY_SCHEDULES = ("steps", "path")
#: File name and ``meta.json`` keys of a kept :class:`ReplayState` in a run folder.
REPLAY_STATE_FILE = "ntk_replay.safetensors"


@dataclass(frozen=True)
class ReplayRecipe:
    """The fine-tuning recipe a replay repeats (``privkit train --peft``'s, from ``meta.json``)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    anchor_penalty: float = 0.0
    seed: int = 0

    @classmethod
    def from_training(cls, recipe, seed: int | None = None) -> "ReplayRecipe":
        """From a :class:`~privkit.unlearn.base.TrainingRecipe` (``seed`` overrides the recipe's)."""
        return cls(epochs=int(recipe.epochs), batch_size=int(recipe.batch_size), lr=float(recipe.lr),
                   optimizer=str(recipe.optimizer), momentum=float(getattr(recipe, "momentum", 0.9)),
                   anchor_penalty=float(recipe.anchor_penalty), seed=int(recipe.seed if seed is None else seed))

    def check(self) -> None:
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"a replay needs a whole-number {name}, got {value!r}; re-create the run")
        for name in ("lr", "momentum", "anchor_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"a replay needs a finite, non-negative {name}, got {value!r}; re-create the run")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"a replay needs epochs >= 1 and batch_size >= 1, got {self.epochs} and "
                              f"{self.batch_size}; the model's recipe in meta.json is damaged, re-create the run")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"a replay needs a positive learning rate, got {self.lr}; re-create the run")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"step='replay' replays adam or sgd, not {self.optimizer!r}; use step='newton'")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "optimizer", "momentum",
                                              "anchor_penalty", "seed")}


@dataclass
class LinearisedNet:
    r"""The network linearised at ``point``, in head-factored form, over samples :math:`D`.

    ``logits`` :math:`= f(x_i; m)`; ``jac_body`` the per-sample Jacobian ``(n, C, P_body)`` of the
    selected parameters other than the head (``None`` when there are none); ``features`` the head's
    input :math:`a_i` ``(n, in)`` (``None`` when the head is not factored: its rows are then in
    ``jac_body``); ``shift`` :math:`= m - w_0` flattened in the selection's order.

    ``head_weight`` set (the head's weight :math:`W_m` at the point, ``(C, in)``) makes it the
    *bilinear* model: ``jac_body`` is then the Jacobian of the head's input,
    :math:`A_i = \partial a_i/\partial\theta` ``(n, in, P_body)``, and the head stays exact,

    .. math::

        f_{bil}(x_i; w) = (W_m + \Delta W)\,(a_i + A_i\Delta\theta) + b_m + \Delta b
        = f(x_i; m) + J_i\Delta\theta + \Delta W a_i + \Delta b + \Delta W A_i\Delta\theta,

    with :math:`J_i = W_mA_i` the logits' Jacobian: the logits model plus the head-body cross term.
    """

    names: list[str]
    shapes: list[list[int]]
    body: list[str]  # selected names whose Jacobian is stored, in selection order
    head: tuple[str, str] | None  # (weight name, bias name) of the factored head
    logits: Tensor
    labels: Tensor
    jac_body: Tensor | None
    features: Tensor | None
    shift: Tensor
    head_weight: Tensor | None = None

    @property
    def bilinear(self) -> bool:
        return self.head_weight is not None

    def _sizes(self) -> dict[str, int]:
        return {n: math.prod(s) for n, s in zip(self.names, self.shapes)}

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """A flat selection-ordered vector as named parts."""
        out, offset = {}, 0
        for name, size in self._sizes().items():
            out[name] = flat[offset:offset + size]
            offset += size
        return out

    def join(self, parts: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([parts[n].reshape(-1) for n in self.names])

    def outputs(self, rows: Tensor, delta: Mapping[str, Tensor]) -> Tensor:
        r""":math:`f_{lin}(x_i; w_0 + \delta)` for the samples ``rows`` (float64)."""
        shift = self.split(self.shift)
        z = self.logits[rows].clone()
        if self.bilinear:
            w, b = self.head
            d_body = torch.cat([(delta[n] - shift[n]).reshape(-1) for n in self.body])
            d_w = (delta[w] - shift[w]).reshape(z.shape[1], -1)
            moved_features = self.jac_body[rows].to(SOLVE_DTYPE) @ d_body
            return (z + moved_features @ (self.head_weight.to(SOLVE_DTYPE) + d_w).T
                    + self.features[rows].to(SOLVE_DTYPE) @ d_w.T + (delta[b] - shift[b]).reshape(1, -1))
        if self.body:
            d_body = torch.cat([(delta[n] - shift[n]).reshape(-1) for n in self.body])
            z = z + self.jac_body[rows].to(SOLVE_DTYPE) @ d_body
        if self.head is not None:
            w, b = self.head
            d_w = (delta[w] - shift[w]).reshape(z.shape[1], -1)
            z = z + self.features[rows].to(SOLVE_DTYPE) @ d_w.T + (delta[b] - shift[b]).reshape(1, -1)
        return z

    def subset(self, rows: Tensor) -> "LinearisedNet":
        return LinearisedNet(self.names, self.shapes, self.body, self.head, self.logits[rows], self.labels[rows],
                             None if self.jac_body is None else self.jac_body[rows],
                             None if self.features is None else self.features[rows], self.shift, self.head_weight)


def _head_input_and_logits(model: nn.Module, head_module: str, x: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """The head module's input and the logits for ``x``, in chunks of ``chunk_size`` samples (a forward hook)."""
    captured: list[Tensor] = []
    module = model.get_submodule(head_module)
    handle = module.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            logits = torch.cat([model(x[i:i + chunk_size]) for i in range(0, len(x), chunk_size)])
    finally:
        handle.remove()
    return torch.cat(captured), logits


def linearise_for_replay(model: nn.Module, w0: Mapping[str, Tensor], point: Mapping[str, Tensor], x: Tensor,
                         y: Tensor, chunk_size: int = 32, replay_model: str = "logits") -> LinearisedNet:
    """:class:`LinearisedNet` of ``model`` with the parameters named in ``w0`` at ``point``, over ``(x, y)``.

    The head (the last ``nn.Linear``, :func:`~privkit.unlearn.jacobian._classifier_head`) is factored
    when both its weight and bias are selected and the logits are exactly ``a W^T + b`` of its input
    ``a`` (checked on every sample); otherwise every selected parameter's Jacobian is stored.
    ``replay_model`` (:data:`REPLAY_MODELS`): ``bilinear`` stores the Jacobian of the head's input
    instead of the logits' (only with a factored head and other selected parameters; else ``logits``).
    """
    from privkit.unlearn.base import copy_model
    from privkit.unlearn.jacobian import _classifier_head, flatten_parameters, parameter_jacobian

    names = list(w0)
    at_point = copy_model(model)
    at_point.eval()
    live = dict(at_point.named_parameters())
    with torch.no_grad():
        for n in names:
            live[n].copy_(point[n])
    head = None
    head_params = _classifier_head(at_point)
    if len(head_params) == 2 and all(n in w0 for n in head_params):
        w_name = next(n for n in head_params if n.endswith("weight"))
        b_name = next(n for n in head_params if n.endswith("bias"))
        module_name = w_name[:-len(".weight")] if w_name.endswith(".weight") else ""
        features, logits = _head_input_and_logits(at_point, module_name, x, chunk_size)
        if features.dim() == 2 and torch.allclose(features @ live[w_name].T + live[b_name], logits, rtol=1e-4,
                                                  atol=1e-5):
            head = (w_name, b_name)
    if head is None:
        features = None
    body = [n for n in names if head is None or n not in head]
    jac_body, head_weight = None, None
    if replay_model not in REPLAY_MODELS:
        raise ConfigError(f"replay_model={replay_model!r}; choose one of {', '.join(REPLAY_MODELS)}")
    if replay_model == "auto":
        replay_model = (choose_replay_model(True, int(logits.shape[1]), int(features.shape[1]))
                        if head is not None and body else "logits")
    if body and head is not None and replay_model == "bilinear":
        # the Jacobian of the head's input: the network with the head replaced by the identity
        body_net = copy_model(at_point)
        parent_name, _, leaf = module_name.rpartition(".")
        setattr(body_net.get_submodule(parent_name) if parent_name else body_net, leaf, nn.Identity())
        body_live = dict(body_net.named_parameters())
        jac = parameter_jacobian(body_net, x, {n: body_live[n] for n in body}, chunk_size)
        jac_body = jac.reshape(len(x), -1, jac.shape[-1]).to(torch.float32)
        head_weight = live[head[0]].detach().to(SOLVE_DTYPE, copy=True)
    elif body:
        jac, logits = parameter_jacobian(at_point, x, {n: live[n] for n in body}, chunk_size, return_logits=True)
        jac_body = jac.reshape(len(x), -1, jac.shape[-1]).to(torch.float32)
    shift = flatten_parameters(point, SOLVE_DTYPE) - flatten_parameters(w0, SOLVE_DTYPE)
    return LinearisedNet(names, [list(w0[n].shape) for n in names], body, head, logits.detach().to(SOLVE_DTYPE),
                         y.detach().long().clone(), jac_body,
                         None if features is None else features.to(torch.float32, copy=True), shift, head_weight)


def choose_replay_model(factored: bool, n_classes: int, head_in: int) -> str:
    """``replay_model="auto"``: ``bilinear`` when the head is factored over other selected parameters and its
    input is at most :data:`BILINEAR_MAX_RATIO` times the classes (the state's and each step's cost grow by
    ``head_in / n_classes``), else ``logits``."""
    return "bilinear" if factored and head_in <= BILINEAR_MAX_RATIO * n_classes else "logits"


def replay_recipe(nets: LinearisedNet | Sequence[LinearisedNet], recipe: ReplayRecipe, path: Tensor | None = None,
                  dtype: torch.dtype = torch.float32, rows: Tensor | None = None, schedule: str = "path") -> Tensor:
    r""":math:`\delta_S`: the recipe run on the linearised network over ``nets``' samples, from :math:`w_0`.

    ``rows``: the positions of :math:`S` among the samples (in their order); default all of them. The
    same as replaying over ``net.subset(rows)``, without copying the stored Jacobians.

    The batches are :func:`privkit.train.epoch_batches` of ``(len(net), batch_size, seed, epoch)``,
    the loss the mean cross-entropy of the batch plus :math:`\tfrac\lambda2\lVert\delta\rVert^2`, as
    :class:`privkit.train.ClassifierTask` trains with ``anchor_penalty``; the optimizer's update is
    ``torch.optim.Adam``'s (defaults betas (0.9, 0.999), eps 1e-8) or SGD with momentum, written out
    on one flat vector (a test checks it against ``torch.optim``). The gradient is explicit: with
    :math:`g_i = (\mathrm{softmax}(z_i) - e_{y_i})/|B|`, :math:`\nabla = J_B^Tg` for the stored
    Jacobian, :math:`g^Ta` and :math:`\sum_i g_i` for the head, plus :math:`\lambda\delta`. Computed in
    ``dtype`` (float32: the precision the network itself trains in); returns the flat :math:`\delta`
    (float64, selection order).

    With K ``nets`` and ``schedule="path"`` (points :math:`w_0 + t_k(w^* - w_0)`,
    :math:`t_k = (k + \tfrac12)/K`, and ``path`` :math:`= w^* - w_0`), each step uses the linearisation
    nearest to the iterate's position along the path, :math:`t = \langle\delta, w^*-w_0\rangle /
    \lVert w^*-w_0\rVert^2` (a piecewise linearisation: segment k covers :math:`t \in [k/K, (k+1)/K)`,
    the ends extended). With ``schedule="steps"`` (points: the fine-tuning's iterates after
    :math:`\mathrm{round}((k + \tfrac12)S/K)` of its S steps, :func:`trajectory_points`), step s of this
    replay's :math:`S'` steps uses point :math:`\lfloor sK/S' \rfloor`: the iterate nearest in time.

    A bilinear net (``head_weight`` set, :class:`LinearisedNet`) adds the head-body cross term: with
    :math:`u_i = A_i\Delta\theta` and :math:`W = W_m + \Delta W`, :math:`z_i = f(x_i; m) + W u_i +
    \Delta W a_i + \Delta b`, gradients :math:`A_i^TW^Tg_i` (body), :math:`g_i(a_i + u_i)^T` (head
    weight), :math:`g_i` (bias).
    """
    from privkit.distributed import DistInfo
    from privkit.train import epoch_batches

    recipe.check()
    nets = [nets] if isinstance(nets, LinearisedNet) else list(nets)
    if schedule not in REPLAY_SCHEDULES:
        raise ConfigError(f"schedule={schedule!r}; choose one of {', '.join(REPLAY_SCHEDULES)}")
    if len(nets) > 1 and path is None and schedule == "path":
        raise ConfigError("a replay over several linearisation points needs the path w* - w0")
    net = nets[0]
    n = len(net.labels) if rows is None else len(rows)
    if n == 0:
        raise ConfigError("a replay needs at least one sample")
    sizes = net._sizes()
    total = sum(sizes.values())
    offsets, offset = {}, 0
    for name, size in sizes.items():
        offsets[name] = slice(offset, offset + size)
        offset += size
    body_index: Tensor | slice | None = None
    if net.body:
        body_index = torch.cat([torch.arange(offsets[nm].start, offsets[nm].stop) for nm in net.body])
        if bool((body_index.diff() == 1).all()):  # one block (the usual layout: norm layers, then the head)
            body_index = slice(int(body_index[0]), int(body_index[-1]) + 1)
    pieces = [(nt.shift.to(dtype), nt.logits.to(dtype), None if nt.jac_body is None else nt.jac_body.to(dtype),
               None if nt.features is None else nt.features.to(dtype),
               None if nt.head_weight is None else nt.head_weight.to(dtype)) for nt in nets]
    n_pieces = len(pieces)
    if n_pieces > 1 and schedule == "path":
        path = path.to(dtype)
        path_sq = float(path @ path)
        if not (math.isfinite(path_sq) and path_sq > 0):  # fine-tuning did not move: every point is the same
            pieces, n_pieces = pieces[:1], 1
    n_classes = net.logits.shape[1]
    # softmax minus the one-hot label, per sample: the one-hot rows are gathered with the batch
    onehot = torch.nn.functional.one_hot(net.labels, n_classes).to(dtype)
    delta = torch.zeros(total, dtype=dtype)
    grad = torch.zeros(total, dtype=dtype)
    m_avg, v_avg = torch.zeros(total, dtype=dtype), torch.zeros(total, dtype=dtype)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    single = DistInfo()
    batches = [torch.as_tensor(batch, dtype=torch.long) for epoch in range(recipe.epochs)
               for batch in epoch_batches(n, recipe.batch_size, recipe.seed, epoch, single)]
    if rows is not None:  # batch positions within S -> positions among the stored samples
        rows = torch.as_tensor(rows, dtype=torch.long)
        batches = [rows.index_select(0, batch) for batch in batches]
    moved, denom = torch.empty_like(delta), torch.empty_like(delta)
    for batch in batches:
        if n_pieces == 1:
            piece = 0
        elif schedule == "steps":
            piece = min(n_pieces - 1, step * n_pieces // len(batches))
        else:
            position = float(delta @ path) / path_sq
            if not math.isfinite(position):
                raise ConfigError("the replay diverged (a non-finite iterate); the recipe's learning rate does not "
                                  "train the linearised network, use step='newton'")
            piece = min(n_pieces - 1, max(0, int(position * n_pieces)))
        shift, logits, jac, feats, head_weight = pieces[piece]
        torch.sub(delta, shift, out=moved)
        z = logits.index_select(0, batch)
        if head_weight is not None:  # bilinear: the head's input moves, the head stays exact
            w, b = net.head
            d_w = moved[offsets[w]].view(n_classes, -1)
            jac_b = jac.index_select(0, batch).view(len(batch) * head_weight.shape[1], -1)
            feats_b = feats.index_select(0, batch)
            moved_feats = (jac_b @ moved[body_index]).view(len(batch), -1)
            weight = head_weight + d_w
            z += torch.addmm(moved[offsets[b]], feats_b, d_w.T).addmm_(moved_feats, weight.T)
            g = torch.softmax(z, dim=1).sub_(onehot.index_select(0, batch)).div_(len(batch))
            torch.mul(delta, recipe.anchor_penalty, out=grad)
            grad[body_index] += (g @ weight).view(1, -1).mm(jac_b).view(-1)
            grad[offsets[w]] += (g.T @ feats_b.add_(moved_feats)).view(-1)
            grad[offsets[b]] += g.sum(0)
        else:
            if jac is not None:
                jac_b = jac.index_select(0, batch).view(len(batch) * n_classes, -1)
                z += (jac_b @ moved[body_index]).view(len(batch), n_classes)
            if net.head is not None:
                w, b = net.head
                feats_b = feats.index_select(0, batch)
                z += torch.addmm(moved[offsets[b]], feats_b, moved[offsets[w]].view(n_classes, -1).T)
            g = torch.softmax(z, dim=1).sub_(onehot.index_select(0, batch)).div_(len(batch))
            torch.mul(delta, recipe.anchor_penalty, out=grad)
            if jac is not None:
                grad[body_index] += g.view(1, -1).mm(jac_b).view(-1)
            if net.head is not None:
                grad[offsets[w]] += (g.T @ feats_b).view(-1)
                grad[offsets[b]] += g.sum(0)
        step += 1
        if recipe.optimizer == "adam":
            m_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            v_avg.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            torch.sqrt(v_avg, out=denom).div_(math.sqrt(1 - beta2 ** step)).add_(eps)
            delta.addcdiv_(m_avg, denom, value=-recipe.lr / (1 - beta1 ** step))
        else:  # torch.optim.SGD with momentum (dampening 0): the buffer starts as the first gradient
            m_avg = grad.clone() if step == 1 else m_avg.mul_(recipe.momentum).add_(grad)
            delta.add_(m_avg if recipe.momentum else grad, alpha=-recipe.lr)
    if not bool(torch.isfinite(delta).all()):
        raise ConfigError("the replay diverged (a non-finite iterate); the recipe's learning rate does not train the "
                          "linearised network, use step='newton'")
    return delta.to(SOLVE_DTYPE)


def replay_forget_delta(nets: LinearisedNet | Sequence[LinearisedNet], retain_rows: Tensor, recipe: ReplayRecipe,
                        delta_full: Tensor | None = None, path: Tensor | None = None, schedule: str = "path",
                        form: str = "difference") -> tuple[Tensor, dict]:
    r"""The update from :math:`w^*` over ``nets`` (:math:`D`, in training order) and its retain rows.

    ``form="difference"``: :math:`\delta_{D_r} - \delta_D`; ``form="direct"``: :math:`\delta_{D_r} -
    (w^* - w_0)` (``path``), i.e. :math:`w^* + \text{update} = w_0 + \delta_{D_r}`.
    ``delta_full``: :math:`\delta_D` when already known (a kept state's), else replayed here (it is
    also what ``replay_path_error`` measures).
    """
    nets = [nets] if isinstance(nets, LinearisedNet) else list(nets)
    if form not in REPLAY_FORMS:
        raise ConfigError(f"replay_form={form!r}; choose one of {', '.join(REPLAY_FORMS)}")
    if form == "direct" and path is None:
        raise ConfigError("replay_form='direct' needs the path w* - w0")
    t0 = time.perf_counter()
    kept = delta_full
    if delta_full is None:
        delta_full = replay_recipe(nets, recipe, path, schedule=schedule)
    t1 = time.perf_counter()
    delta_retain = replay_recipe(nets, recipe, path, rows=retain_rows, schedule=schedule)
    t2 = time.perf_counter()
    net = nets[0]
    info = {"delta_full": "replayed" if kept is None else "kept", "linearisation_points": len(nets),
            "replay_schedule": schedule, "replay_form": form,
            "replay_model": "bilinear" if net.bilinear else "logits"}
    if path is not None and float(path.norm()) > 0:
        # how far replaying the recipe over D lands from the trained weights, relative to the path: the
        # linearisation's own error (0 for a model linear in its parameters, with D in training order)
        info["replay_path_error"] = float((delta_full - path).norm() / path.norm())
        info["replay_path_norm"] = float(path.norm())
    base = path.to(delta_retain.dtype) if form == "direct" else delta_full
    return delta_retain - base, {**info,
                                       "replay_full_seconds": t1 - t0, "replay_retain_seconds": t2 - t1,
                                       "replay_steps_per_epoch": math.ceil(len(retain_rows) / recipe.batch_size),
                                       "head_factored": net.head is not None,
                                       "stored_jacobian_params": 0 if net.jac_body is None else net.jac_body.shape[-1]}


def path_points(w0: Mapping[str, Tensor], trained: Mapping[str, Tensor], points: int) -> list[dict[str, Tensor]]:
    """The K linearisation points :math:`w_0 + t_k(w^* - w_0)`, :math:`t_k = (k + 1/2)/K` (K = 1: the midpoint)."""
    _check_points(points)
    return [{n: w0[n].detach() + (k + 0.5) / points * (trained[n].detach() - w0[n].detach()) for n in w0}
            for k in range(points)]


def _check_points(points) -> None:
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ConfigError(f"replay_points must be a whole number >= 1, got {points!r}; 3 is the default")


#: How far (relative to the path's length) a re-run of the fine-tuning may land from the trained weights
#: and its snapshots still count as the training's own iterates
TRAJECTORY_TOLERANCE = 1e-4


def trajectory_points(model: nn.Module, w0: Mapping[str, Tensor], x: Tensor, y: Tensor, recipe: ReplayRecipe,
                      points: int) -> tuple[list[dict[str, Tensor]] | None, float]:
    r"""The fine-tuning's own iterates after :math:`\mathrm{round}((k + \tfrac12)S/K)` of its S steps.

    Re-runs the recipe (the :class:`~privkit.unlearn.peft.PeftClassifierTask` loop of ``privkit train
    --peft``, from ``w0``, over ``(x, y)`` in training order, BatchNorm statistics frozen) and keeps K
    snapshots. Returns ``(points, error)`` with ``error`` the re-run's distance from the model's trained
    values relative to :math:`\lVert w^* - w_0\rVert`; ``points`` is ``None`` when that exceeds
    :data:`TRAJECTORY_TOLERANCE` (the run cannot be reproduced, e.g. other data or a non-deterministic
    device): the caller then linearises along the straight path instead.
    """
    from privkit.train import ClassifierConfig, LoopConfig, epoch_batches, run_training, unwrap
    from privkit.distributed import DistInfo
    from privkit.unlearn.base import copy_model
    from privkit.unlearn.peft import PeftClassifierTask, set_parameters

    _check_points(points)
    recipe.check()
    names = list(w0)
    live = dict(model.named_parameters())
    trained = {n: live[n].detach().clone() for n in names}
    total = recipe.epochs * len(epoch_batches(len(y), recipe.batch_size, recipe.seed, 0, DistInfo()))
    wanted: dict[int, list[int]] = {}  # steps applied -> the points taken there (several when K > S)
    for k in range(points):
        wanted.setdefault(round((k + 0.5) * total / points), []).append(k)
    fresh = copy_model(model)
    set_parameters(fresh, {n: w0[n].detach() for n in names})
    cfg = ClassifierConfig(lr=recipe.lr, weight_decay=recipe.anchor_penalty, optimizer=recipe.optimizer,
                           momentum=recipe.momentum, anchor_penalty=recipe.anchor_penalty, trainable=names)
    task = PeftClassifierTask(fresh, 0, cfg)
    snapshots: dict[int, dict[str, Tensor]] = {}
    applied = [0]

    def snapshot() -> None:
        if applied[0] in wanted:
            net_live = dict(unwrap(task.nets["model"]).named_parameters())
            for k in wanted[applied[0]]:
                snapshots[k] = {n: net_live[n].detach().clone() for n in names}

    snapshot()  # a point at step 0 (K > 2S) is w0 itself
    step = task.step

    def step_and_snapshot(batch, epoch, index):
        stats = step(batch, epoch, index)
        applied[0] += 1
        snapshot()
        return stats

    task.step = step_and_snapshot
    data = torch.utils.data.TensorDataset(x, y.long())
    # the training loop seeds every generator; the caller's random streams are left as they were
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            run_training(task, data, LoopConfig(epochs=recipe.epochs, batch_size=recipe.batch_size,
                                                seed=recipe.seed, progress=False, description="replay trajectory"))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    rerun = dict(unwrap(task.nets["model"]).named_parameters())
    gap = math.sqrt(sum(float((rerun[n].detach().double() - trained[n].double()).pow(2).sum()) for n in names))
    length = math.sqrt(sum(float((trained[n].double() - w0[n].double()).pow(2).sum()) for n in names))
    error = gap / length if length > 0 else gap
    if error > TRAJECTORY_TOLERANCE or len(snapshots) != points:
        return None, error
    return [snapshots[k] for k in range(points)], error


class ReplayState:
    """The linearised network over :math:`D` and :math:`\\delta_D`, kept so a request needs no network pass.

    ``nets``: one :class:`LinearisedNet` per linearisation point: the fine-tuning's iterates
    (``schedule="steps"``, :func:`trajectory_points`) or points of :math:`w_0 \\to w^*`
    (``schedule="path"``, :func:`path_points`). Saved as safetensors (tensors) + JSON metadata in its header; the file's
    SHA-256 lives in the run's ``meta.json`` and is checked on every load (never unpickles).
    """

    FORMAT = "privkit.ntk_replay_state/2"
    FORMATS = ("privkit.ntk_replay_state/1", FORMAT)  # /1: straight-path points, logits model
    _METADATA_KEY = "privkit_ntk_replay_state"
    _PER_POINT = ("logits", "shift", "jac_body", "features", "head_weight")

    def __init__(self, nets: Sequence[LinearisedNet], ids: Tensor, w0: Tensor, trained: Tensor, delta_full: Tensor,
                 recipe: ReplayRecipe, params: str, fit_seconds: float = 0.0, schedule: str = "path",
                 trajectory_error: float | None = None):
        self.nets, self.ids, self.w0, self.trained = list(nets), ids, w0, trained
        self.delta_full, self.recipe, self.params, self.fit_seconds = delta_full, recipe, params, fit_seconds
        self.schedule, self.trajectory_error = schedule, trajectory_error

    @property
    def model(self) -> str:
        """``bilinear`` or ``logits`` (:data:`REPLAY_MODELS`)."""
        return "bilinear" if self.net.bilinear else "logits"

    @property
    def net(self) -> LinearisedNet:
        """The first point's network (names, shapes, labels are the same at every point)."""
        return self.nets[0]

    @property
    def path(self) -> Tensor:
        return self.trained - self.w0

    @classmethod
    def fit(cls, model: nn.Module, w0: Mapping[str, Tensor], x: Tensor, y: Tensor, ids, recipe: ReplayRecipe,
            params: str, points: int = DEFAULT_REPLAY_POINTS, chunk_size: int = 32, replay_model: str = "auto",
            schedule: str = "steps") -> "ReplayState":
        """Linearise at ``points`` points over ``(x, y)`` in training order, and replay the recipe over all of it.

        ``schedule="steps"`` (default): the points are the fine-tuning's own iterates, re-run here
        (:func:`trajectory_points`); when the re-run does not reproduce the trained weights, the
        straight path's points (``schedule="path"``, :func:`path_points`) are used instead.
        """
        from privkit.unlearn.jacobian import flatten_parameters, select_parameters

        t0 = time.perf_counter()
        if schedule not in REPLAY_SCHEDULES:
            raise ConfigError(f"schedule={schedule!r}; choose one of {', '.join(REPLAY_SCHEDULES)}")
        w0 = {n: w0[n] for n in select_parameters(model, params)}  # the selection's order, as requests flatten
        live = dict(model.named_parameters())
        trained = {n: live[n].detach().clone() for n in w0}
        where, error = None, None
        if schedule == "steps":
            where, error = trajectory_points(model, w0, x, y, recipe, points)
            schedule = "steps" if where is not None else "path"
        if where is None:
            where = path_points(w0, trained, points)
        nets = [linearise_for_replay(model, w0, point, x, y, chunk_size, replay_model) for point in where]
        w0_flat, trained_flat = flatten_parameters(w0, SOLVE_DTYPE), flatten_parameters(trained, SOLVE_DTYPE)
        delta_full = replay_recipe(nets, recipe, trained_flat - w0_flat, schedule=schedule)
        return cls(nets, torch.as_tensor(ids, dtype=torch.long).clone(), w0_flat, trained_flat, delta_full, recipe,
                   params, time.perf_counter() - t0, schedule, error)

    def retain_rows(self, forget_ids) -> Tensor:
        """Row positions of the samples not in ``forget_ids`` (training order kept); every id must be held."""
        forget = torch.as_tensor(forget_ids, dtype=torch.long).reshape(-1)
        held = torch.isin(forget, self.ids)
        if not bool(held.all()):
            missing = forget[~held][:5].tolist()
            raise ConfigError(f"forget ids {missing} are not among the samples the replay state was fitted on; "
                              f"use the model's training data, or step='newton'")
        return torch.nonzero(~torch.isin(self.ids, forget)).reshape(-1)

    def forget(self, forget_ids, recipe: ReplayRecipe | None = None, form: str = "direct") -> tuple[Tensor, dict]:
        r"""The update from :math:`w^*` for a request (:func:`replay_forget_delta`; ``recipe``: the state's
        unless a seed differs)."""
        recipe = recipe or self.recipe
        rows = self.retain_rows(forget_ids)
        if len(rows) == 0:
            raise ConfigError("the forget set holds every sample the model was fine-tuned on; nothing would remain")
        delta, info = replay_forget_delta(self.nets, rows, recipe, self.delta_full if recipe == self.recipe else None,
                                          self.path, self.schedule, form)
        if self.trajectory_error is not None:
            info["trajectory_rerun_error"] = self.trajectory_error
        return delta, info

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        net = self.net
        tensors = {"labels": net.labels, "ids": self.ids, "w0": self.w0, "trained": self.trained,
                   "delta_full": self.delta_full}
        for k, nt in enumerate(self.nets):
            for key in self._PER_POINT:
                value = getattr(nt, key)
                if value is not None:
                    tensors[f"p{k}.{key}"] = value
        header = {"format": self.FORMAT, "names": net.names, "shapes": net.shapes, "body": net.body,
                  "head": list(net.head) if net.head else None, "points": len(self.nets),
                  "recipe": self.recipe.to_dict(), "params": self.params, "fit_seconds": self.fit_seconds,
                  "schedule": self.schedule, "model": self.model, "trajectory_error": self.trajectory_error}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
                  metadata={self._METADATA_KEY: json.dumps(header)})

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> "ReplayState":
        from safetensors.torch import load as st_load

        try:
            tensors = st_load(raw)
            header = json.loads(_metadata(raw).get(cls._METADATA_KEY, "null"))
        except Exception as exc:  # noqa: BLE001 - any parse failure of an untrusted file is one error
            raise ArtifactError(f"{where} is not a replay state ({type(exc).__name__}); re-create the run") from None
        if not isinstance(header, dict) or header.get("format") not in cls.FORMATS:
            raise ArtifactError(f"{where} is not a {cls.FORMAT} file; re-create the run")
        try:
            head = tuple(header["head"]) if header["head"] else None
            points = int(header["points"])
            if points < 1:
                raise ValueError("no linearisation point")
            nets = [LinearisedNet(list(header["names"]), [list(s) for s in header["shapes"]], list(header["body"]),
                                  head, tensors[f"p{k}.logits"], tensors["labels"], tensors.get(f"p{k}.jac_body"),
                                  tensors.get(f"p{k}.features"), tensors[f"p{k}.shift"],
                                  tensors.get(f"p{k}.head_weight")) for k in range(points)]
            recipe = ReplayRecipe(**header["recipe"])
            schedule, model_kind = str(header.get("schedule", "path")), str(header.get("model", "logits"))
            error = header.get("trajectory_error")
            if schedule not in REPLAY_SCHEDULES or model_kind not in REPLAY_MODELS[1:]:
                raise ValueError("schedule or model")
            if error is not None and (isinstance(error, bool) or not isinstance(error, (int, float))
                                      or not math.isfinite(error)):
                raise ValueError("trajectory_error")
            state = cls(nets, tensors["ids"], tensors["w0"], tensors["trained"], tensors["delta_full"], recipe,
                        str(header["params"]), float(header["fit_seconds"]), schedule,
                        None if error is None else float(error))
            if state.model != model_kind or any(nt.bilinear != nets[0].bilinear for nt in nets):
                raise ValueError("the header's model does not match the stored tensors")
            known = {"labels", "ids", "w0", "trained", "delta_full"} | {f"p{k}.{key}" for k in range(points)
                                                                        for key in cls._PER_POINT}
            _check_shapes(state, set(tensors) - known)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError, ConfigError) as exc:
            raise ArtifactError(f"{where} is a malformed replay state ({exc}); re-create the run") from None
        return state


def _metadata(raw: bytes) -> dict:
    """The ``__metadata__`` of a safetensors byte string."""
    from privkit.io.artifacts import safetensors_header

    return dict(safetensors_header(raw).get("__metadata__") or {})


def _check_shapes(state: ReplayState, extra_keys: set[str]) -> None:
    """Everything a replay relies on, so a malformed state is refused here, not half-way through a request."""
    net = state.net
    if any(not isinstance(d, int) or isinstance(d, bool) for shape in net.shapes for d in shape):
        raise ValueError("parameter shapes are not whole numbers")
    names, sizes = net.names, [math.prod(s) for s in net.shapes]
    if len(set(names)) != len(names) or any(not isinstance(n, str) for n in names) or any(v < 1 for v in sizes):
        raise ValueError("parameter names or shapes")
    if net.head is not None:
        if len(net.head) != 2 or not set(net.head) <= set(names):
            raise ValueError("head names")
    if net.body != [n for n in names if net.head is None or n not in net.head]:
        raise ValueError("body names")
    n, p = len(net.labels), sum(sizes)
    if net.labels.dtype != torch.int64 or net.labels.dim() != 1 or n == 0:
        raise ValueError("labels")
    if state.ids.shape != (n,) or state.ids.dtype != torch.int64 or len(torch.unique(state.ids)) != n:
        raise ValueError("ids")
    if any(t.shape != (p,) or not t.is_floating_point() for t in (state.w0, state.trained, state.delta_full)):
        raise ValueError("w0, trained or delta_full")
    n_classes = net.logits.shape[1] if net.logits.dim() == 2 else 0
    if n_classes < 2 or int(net.labels.min()) < 0 or int(net.labels.max()) >= n_classes:
        raise ValueError("labels out of the logits' range")
    head_in = None
    if net.head is not None:
        w_size, b_size = (sizes[names.index(h)] for h in net.head)
        head_in = w_size // n_classes
        if b_size != n_classes or w_size != head_in * n_classes:
            raise ValueError("head shapes")
    body_p = sum(size for name, size in zip(names, sizes) if name in net.body)
    for nt in state.nets:
        if (tuple(nt.logits.shape) != (n, n_classes) or nt.shift.shape != (p,) or not nt.logits.is_floating_point()
                or not nt.shift.is_floating_point()):
            raise ValueError("logits or shift")
        rows = head_in if nt.bilinear else n_classes
        if net.body and (nt.jac_body is None or tuple(nt.jac_body.shape) != (n, rows, body_p)
                         or not nt.jac_body.is_floating_point()):
            raise ValueError("jac_body")
        if nt.bilinear and (net.head is None or not net.body or tuple(nt.head_weight.shape) != (n_classes, head_in)
                            or not nt.head_weight.is_floating_point()):
            raise ValueError("head_weight")
        if (net.head is None) != (nt.features is None) or (
                nt.features is not None and (tuple(nt.features.shape) != (n, head_in) or not nt.features.is_floating_point())):
            raise ValueError("features")
    if extra_keys:
        raise ValueError(f"unexpected tensors {sorted(extra_keys)[:3]}")
    state.recipe.check()


def save_replay_state(folder, state: ReplayState, data_fingerprint: str) -> dict:
    """Write :data:`REPLAY_STATE_FILE` into ``folder`` (write, then rename); return its ``meta.json`` keys."""
    from privkit.unlearn.peft import write_checked_file

    digest = write_checked_file(folder, REPLAY_STATE_FILE, state.save)
    return {"ntk_replay_file": REPLAY_STATE_FILE, "ntk_replay_sha256": digest,
            "ntk_replay_fit_seconds": float(state.fit_seconds), "ntk_replay_data_fingerprint": data_fingerprint,
            "ntk_replay_params": state.params, "ntk_replay_points": len(state.nets),
            "ntk_replay_schedule": state.schedule, "ntk_replay_model": state.model}


def load_replay_state(folder, meta: Mapping[str, Any]) -> ReplayState | None:
    """The run folder's kept :class:`ReplayState`, checksum-verified; ``None`` when it keeps none."""
    from privkit.unlearn.peft import read_checked_file

    if not meta.get("ntk_replay_sha256"):
        return None
    path, raw = read_checked_file(folder, str(meta.get("ntk_replay_file") or REPLAY_STATE_FILE),
                                  str(meta["ntk_replay_sha256"]), "the replay state")
    return ReplayState.from_bytes(raw, str(path))  # the verified bytes, not a second read
