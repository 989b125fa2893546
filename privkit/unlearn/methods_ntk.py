r"""``ntk`` and ``fast-ntk`` in the unlearning registry: wrappers of :func:`privkit.unlearn.ntk.ntk_unlearn`.

Both apply the NTK forgetting step of Golatkar et al. (2020),

.. math::

    w \leftarrow w(D) + s\,[\,w_{lin}(D_r) - w_{lin}(D)\,], \qquad
    w_{lin}(S) - w_0 = (J_S^T J_S + \lambda_S I)^{-1} J_S^T r_S, \quad \lambda_S = |S|\,wd,

``ntk`` over every parameter, ``fast-ntk`` (Li et al., 2024) over the parameter-efficient ones
(BatchNorm affine + head, or prompt tokens + head). :math:`wd` is the recipe's w0-penalty
(``anchor_penalty``), else its weight decay, else ``5e-4``.

**Linearisation point and weighting** (``linearise``, ``weighting``). For a model trained with
``--peft`` the penalty is centred at the pretrained PEFT values :math:`w_0` (``w0.safetensors``,
in ``context.w0``) and ``linearise="auto"`` means ``"trained"``: Jacobians and residuals at the
trained weights :math:`w^*` with the Gauss-Newton weighting :math:`W = \mathrm{diag}(p) - pp^T`
(``weighting="auto"`` = ``"ggn"`` there), i.e. a Newton step on the cross-entropy retraining
objective from :math:`w^*` (:mod:`privkit.unlearn.ntk`, "Linearisation point"). It was chosen
on evidence (``docs/benchmarks.md``, Fast-NTK on PEFT models): the paper's recipe,
``linearise="pretrained"`` with ``weighting="identity"``, left the digits class request unchanged
and moved the synthetic-faces identity request *away* from retraining. ``"pretrained"`` and
``"identity"`` stay available. For an ordinarily trained model no :math:`w_0` exists:
``"auto"`` means ``"init"`` (the initial weights, rebuilt from the training seed) with
``"identity"``; ``"trained"`` there centres the penalty at the trained weights too.

**Kept state** (issue point 6). A model trained with ``privkit train --peft`` keeps the NTK state
over its training data :math:`D` (``ntk_state.safetensors``, see :mod:`privkit.unlearn.peft`):
:math:`G = J_D^TJ_D`, :math:`b = J_D^Tr_D` and the eigendecomposition of :math:`G`, paid once.
When the run folder holds a state that answers the same question (same parameters, :math:`w_0`,
:math:`wd`, residual and :math:`\lambda` scaling, fitted on exactly the model's training samples)
a request is served by :meth:`~privkit.unlearn.ntk.NTKState.forget`: reading and checking the
factor it uses (the pre-flight ``check`` reads only the file's checksummed header and the
P-length tensors; the request reads :math:`Q`, not :math:`G`), the forget set's
Jacobians :math:`J_f` and the downdate :math:`A_r = G - J_f^TJ_f + \lambda_r I`,
:math:`b_r = b - J_f^Tr_f` (Woodbury against the kept factor, or Cholesky) -- the retain set is
never touched. The result equals the one-shot step up to round-off. ``context.info["ntk"]``
reports ``path`` (``"kept-state"`` or ``"one-shot"``, with ``path_reason``), ``one_off_seconds``
(the fit at training time; 0 for one-shot) and ``per_request_seconds``. The downdated state (now
over :math:`D_r`) is handed back in ``context.ntk_state_out`` (a :class:`PendingStateCommit`: the
downdate is done after the request, as upkeep) so the unlearned run keeps it and the next request
against the unlearned model is cheap as well. The state stays linearised where it was fitted (the
original :math:`w^*`, or :math:`w_0`), so a chain of requests equals one request for their union
from the original model, not a fresh step linearised at the unlearned weights.

Which state is refused and which is merely not used: a state whose recipe differs from the one
asked for (another ``weight_decay``, ``loss``, ``linearise``, ``weighting`` or an explicit ``solver``,
or ``kept_state="off"``) is *not used* -- the step runs one-shot and ``path_reason`` says why. A state
that claims to belong to the model but does not (checksum mismatch, unreadable file, other
parameters, another :math:`w_0`, other training samples) is *refused* with a one-line
:class:`~privkit.errors.ArtifactError`, before any output is written: a tampered artifact must
not silently change what a deletion request does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from privkit.errors import ArtifactError, ConfigError
from privkit.unlearn.base import UnlearnContext, copy_model, fresh_model_like, register_unlearner

__all__ = ["NTKUnlearner", "FastNTKUnlearner", "fast_ntk_kind", "DEFAULT_NTK_CHUNK_SIZE", "NTK_STATE_LOSS",
           "NTK_STATE_LAMBDA_SCALING", "KEPT_STATE_MODES", "LINEARISE_MODES", "WEIGHTING_MODES",
           "PEFT_DEFAULT_LINEARISE", "DEFAULT_WEIGHTING", "PendingStateCommit", "STEP_MODES"]

#: Defaults of the methods below, which the state kept at training time is fitted with.
DEFAULT_NTK_CHUNK_SIZE = 32
NTK_STATE_LOSS = "ce"
NTK_STATE_LAMBDA_SCALING = "per-set"  # lambda_S = |S| wd, as ntk_unlearn's default
KEPT_STATE_MODES = ("auto", "off")
#: ``step``: one Gauss-Newton step (the closed form), the exact minimiser of the linearised cross-entropy
#: (:mod:`privkit.unlearn.ntk_linearized`), or the training recipe replayed on the linearised network
#: (:mod:`privkit.unlearn.ntk_replay`); ``auto`` = ``replay`` when the run keeps a replay state that answers
#: the request (the user kept it with ``privkit train --peft --replay-state``), else ``newton``
STEP_MODES = ("auto", "newton", "linearised-ce", "replay")
LINEARISE_MODES = ("auto", "pretrained", "trained", "init")
WEIGHTING_MODES = ("auto", "identity", "ggn")
#: What ``linearise="auto"`` means for a model trained with ``--peft`` (the kept state's recipe).
PEFT_DEFAULT_LINEARISE = "trained"
#: What ``weighting="auto"`` means at each linearisation point (the kept state's recipe for PEFT models).
DEFAULT_WEIGHTING = {"trained": "ggn", "pretrained": "identity", "init": "identity"}


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


def _check_replay_points(points, form: str = "direct", replay_model: str = "auto") -> None:
    from privkit.unlearn.ntk_replay import REPLAY_FORMS, REPLAY_MODELS

    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ConfigError(f"replay_points must be a whole number >= 1, got {points!r}; 3 is the default")
    if form not in REPLAY_FORMS:
        raise ConfigError(f"replay_form={form!r}; choose one of {', '.join(REPLAY_FORMS)}")
    if replay_model not in REPLAY_MODELS:
        raise ConfigError(f"replay_model={replay_model!r}; choose one of {', '.join(REPLAY_MODELS)}")


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _x_y(dataset, target_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, attrs = dataset.materialize()
    return x, attrs[:, target_index]


@dataclass
class PendingStateCommit:
    """A kept NTK state that served a request and still has to be downdated to :math:`D_r`.

    :meth:`commit` removes the forget set from the state (:math:`G \\leftarrow G - J_f^TJ_f`,
    :math:`b \\leftarrow b - J_f^Tr_f`, re-factorising when enough rows were removed) so the unlearned
    run can keep it and serve the next request against the unlearned model. ``privkit unlearn``
    times it apart from the request (``ntk_costs["upkeep_seconds"]``).
    """

    state: Any
    model: nn.Module
    forget_x: torch.Tensor
    forget_y: torch.Tensor

    def commit(self) -> tuple[Any, float]:
        """Downdate the state in place, exactly (``rank_tol=0``); returns ``(state, seconds)``.

        The request may drop negligible Gauss-Newton rows (``ggn_rank_tol``); the upkeep runs off the
        request's clock and keeps every row, so the kept state stays the exact system over the retain
        set and the per-request bounds do not accumulate over a sequence of requests.
        """
        t_start = time.perf_counter()
        self.state.forget(self.model, self.forget_x, self.forget_y, commit=True, rank_tol=0.0)
        return self.state, time.perf_counter() - t_start


def _import_torch_func() -> None:
    """Run torch.func once on a scalar, so its lazy imports happen now.

    The first torch.func transform in a process imports ``torch._dynamo`` (seconds on a CPU). That
    is start-up, like ``import torch``, not work of a deletion request: ``privkit unlearn`` calls
    ``check`` before it starts the clock, so ``RTE`` measures the request (either path) itself.
    """
    torch.func.vmap(torch.func.jacrev(torch.sin))(torch.zeros(1, 1))


class _NTKBase:
    params_kind = "all"

    def __init__(self, scale: float | str = 1.0, weight_decay: float | None = None, solver: str = "auto",
                 chunk_size: int = DEFAULT_NTK_CHUNK_SIZE, loss: str = NTK_STATE_LOSS, linearise: str = "auto",
                 kept_state: str = "auto", weighting: str = "auto", ggn_rank_tol: float | None = None,
                 step: str = "auto", replay_points: int | None = None, replay_form: str = "direct",
                 replay_model: str = "auto"):
        from privkit.unlearn.ntk import DEFAULT_GGN_RANK_TOL
        from privkit.unlearn.ntk_replay import DEFAULT_REPLAY_POINTS

        self.step = step
        self.replay_points = DEFAULT_REPLAY_POINTS if replay_points is None else replay_points
        self.replay_form = replay_form
        self.replay_model = replay_model
        self.scale = scale
        self.ggn_rank_tol = DEFAULT_GGN_RANK_TOL if ggn_rank_tol is None else ggn_rank_tol
        self.linearise = linearise
        self.weighting = weighting
        self.weight_decay = weight_decay
        self.solver = solver
        self.chunk_size = chunk_size
        self.loss = loss
        self.kept_state = kept_state

    def _kind(self, model: nn.Module, context: UnlearnContext) -> str:
        return "all"

    def _check_rank_tol(self) -> None:
        if isinstance(self.ggn_rank_tol, bool) or not isinstance(self.ggn_rank_tol, (int, float)) \
                or not 0 <= self.ggn_rank_tol < 1:
            raise ConfigError(f"ggn_rank_tol must be a number in [0, 1), got {self.ggn_rank_tol!r}; "
                              f"0 keeps every Gauss-Newton direction")

    def _weight_decay(self, context: UnlearnContext) -> float:
        return float(self.weight_decay) if self.weight_decay is not None else context.recipe.ntk_weight_decay

    def check(self, model: nn.Module, context: UnlearnContext) -> None:
        """Refuse, before anything runs, a model this method cannot handle or a broken kept state."""
        from privkit.unlearn.jacobian import select_parameters

        self._check_rank_tol()
        if self.step not in STEP_MODES:
            raise ConfigError(f"step={self.step!r}; choose one of {', '.join(STEP_MODES)}")
        if self.step == "replay" and context.w0 is None:
            raise ConfigError("step='replay' replays the parameter-efficient fine-tuning from its pretrained values "
                              "w0; it needs a model trained with `privkit train --peft`, or use step='newton'")
        _check_replay_points(self.replay_points, self.replay_form, self.replay_model)
        if self.kept_state not in KEPT_STATE_MODES:
            raise ConfigError(f"kept_state={self.kept_state!r}; choose one of {', '.join(KEPT_STATE_MODES)}")
        kind = self._kind(model, context)
        selected = select_parameters(model, kind)
        if (self.step == "replay" or (self.step == "auto" and _numeric(self.scale))) and context.w0 is not None:
            # a kept replay state that is malformed or not of this model is refused before anything is written
            # (the request reads and checks it again, on its own clock)
            self._replay_state(selected, kind, context)
            if self.step == "replay":
                _import_torch_func()
                return
        t_start = time.perf_counter()
        state, _ = self._kept_state(selected, kind, context)  # ArtifactError for a state not of the model
        if state is not None:
            # what the check read: the state's header and P-length tensors; the P x P factor is read (and
            # checked) by the request itself, on its clock
            self._verified_state = ((str(context.model_dir), (context.model_meta or {})["ntk_state_sha256"]), state,
                                    time.perf_counter() - t_start)
        _import_torch_func()

    def _linearise_mode(self, context: UnlearnContext) -> str:
        mode = self.linearise
        if mode not in LINEARISE_MODES:
            raise ConfigError(f"linearise={mode!r}; choose one of {', '.join(LINEARISE_MODES)}")
        if mode == "auto":
            mode = PEFT_DEFAULT_LINEARISE if context.w0 is not None else "init"
        return mode

    def _weighting_mode(self, context: UnlearnContext) -> str:
        if self.weighting not in WEIGHTING_MODES:
            raise ConfigError(f"weighting={self.weighting!r}; choose one of {', '.join(WEIGHTING_MODES)}")
        if self.weighting == "auto":
            return DEFAULT_WEIGHTING[self._linearise_mode(context)]
        return self.weighting

    def _kept_state(self, selected: dict, kind: str, context: UnlearnContext):
        """``(state, why)``: the verified kept NTK state that serves this request, or ``None`` and why not.

        Raises ArtifactError for a state that claims to belong to the model but does not (module docstring).
        """
        from privkit.unlearn.peft import load_ntk_state

        if self.kept_state not in KEPT_STATE_MODES:
            raise ConfigError(f"kept_state={self.kept_state!r}; choose one of {', '.join(KEPT_STATE_MODES)}")
        meta = context.model_meta or {}
        if self.kept_state == "off":
            return None, "kept_state='off' was asked for"
        if context.model_dir is None or not meta.get("ntk_state_sha256"):
            return None, "the model's run folder keeps no NTK state (trained without one, or unlearned by a " \
                         "method that does not carry it)"
        if meta.get("ntk_state_params") != kind:
            return None, f"the kept state covers the {meta.get('ntk_state_params')!r} parameters, this method " \
                         f"updates {kind!r}"
        mode = self._linearise_mode(context)
        if mode == "init":
            return None, "linearise='init' was asked for; a kept state is linearised at w0 or the trained weights"
        if self.solver != "auto":
            return None, f"solver={self.solver!r} was asked for; the kept state is its own primal solver"
        wd = self._weight_decay(context)
        if not math.isclose(wd, float(meta.get("ntk_state_weight_decay", float("nan"))), rel_tol=1e-12):
            return None, f"weight_decay={wd:g} was asked for; the kept state uses {meta.get('ntk_state_weight_decay')}"
        # check() verified it already: hand that copy to the request instead of reading and hashing the
        # file twice (the request mutates its state, so the hand-over is one-shot)
        key = (str(context.model_dir), meta["ntk_state_sha256"])
        verified = self.__dict__.pop("_verified_state", None)
        self._preflight_seconds = verified[2] if verified is not None and verified[0] == key else 0.0
        state = (verified[1] if verified is not None and verified[0] == key
                 else load_ntk_state(context.model_dir, meta, data_fingerprint=context.train_fingerprint))
        state_mode = "pretrained" if torch.equal(state.point_, state.w0_) else "trained"
        if state_mode != mode:
            return None, f"linearise={mode!r} was asked for; the kept state is linearised at the " \
                         f"{'pretrained values w0' if state_mode == 'pretrained' else 'trained weights'}"
        weighting = self._weighting_mode(context)
        if state.weighting != weighting:
            return None, f"weighting={weighting!r} was asked for; the kept state uses {state.weighting!r}"
        if state.loss != self.loss or state.lambda_scaling != NTK_STATE_LAMBDA_SCALING:
            return None, f"loss={self.loss!r} was asked for; the kept state uses loss={state.loss!r}, " \
                         f"lambda_scaling={state.lambda_scaling!r}"
        where = f"the NTK state of {context.model_dir}"
        if context.n_train is not None and state.n_samples_ != context.n_train:
            raise ArtifactError(f"{where} covers {state.n_samples_} samples but the model was trained on "
                                f"{context.n_train}; the artifact was modified, re-create it")
        shapes = [list(p.shape) for p in selected.values()]
        if state.param_names_ != list(selected) or state.param_shapes_ != shapes:
            raise ArtifactError(f"{where} was fitted for other parameters than the model's {kind!r} parameters; "
                                f"the artifact was modified, re-create it with `privkit train --peft`")
        w0 = torch.cat([context.w0.get(n, p).detach().reshape(-1).to(state.w0_.dtype) for n, p in selected.items()])
        if not torch.equal(w0, state.w0_):
            raise ArtifactError(f"{where} was linearised at another w0 than the model's w0.safetensors; "
                                f"the artifact was modified, re-create it with `privkit train --peft`")
        return state, f"{where} covers the model's {state.n_samples_} training samples with the same recipe"

    def _w0(self, model: nn.Module, selected: dict, retain, context: UnlearnContext
            ) -> tuple[dict, dict | None, str]:
        """``(anchor, linearisation point or None for the anchor itself, phrase)`` (module docstring)."""
        mode = self._linearise_mode(context)
        pretrained = None
        if context.w0 is not None:
            pretrained = {n: context.w0[n] if n in context.w0 else p.detach().clone() for n, p in selected.items()}
        if mode == "pretrained":
            if pretrained is None:
                raise ConfigError("linearise='pretrained' needs a model trained with --peft (its w0.safetensors)")
            return pretrained, None, "pretrained PEFT values w0"
        if mode == "trained":
            trained = {n: p.detach().clone() for n, p in selected.items()}
            if pretrained is None:
                # no w0 exists: the penalty is centred at the trained weights too (the notebook's practice)
                return trained, None, "trained weights (penalty centred there: no w0)"
            return pretrained, trained, "trained weights w*, penalty toward the pretrained values w0"
        # `privkit train` seeds torch with the training seed right before creating the model, so the
        # initial weights it started from are rebuilt exactly; the global RNG is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.recipe.seed)
            init = dict(fresh_model_like(model, retain.schema).named_parameters())
        return {n: init[n].detach().clone() for n in selected}, None, \
            f"initial weights (training seed {context.recipe.seed})"

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        from privkit.unlearn.jacobian import select_parameters
        from privkit.unlearn.ntk import ntk_unlearn

        t_start = time.perf_counter()
        context.ntk_state_out = None
        if not (isinstance(self.scale, (int, float)) or self.scale == "trapezium"):
            raise ConfigError(f"scale must be a number or 'trapezium', got {self.scale!r}")
        self._check_rank_tol()
        kind = self._kind(model, context)
        selected = select_parameters(model, kind)
        w0, linearise_at, point = self._w0(model, selected, retain, context)
        weighting = self._weighting_mode(context)
        wd = self._weight_decay(context)
        t = context.target_index(retain)
        if self.step not in STEP_MODES:
            raise ConfigError(f"step={self.step!r}; choose one of {', '.join(STEP_MODES)}")
        if self.step == "linearised-ce":
            forget_x, forget_y = _x_y(forget, t)
            return self._unlearn_linearised(model, selected, kind, w0, linearise_at, point, weighting, wd, retain,
                                            forget, t, forget_x, forget_y, context, t_start)
        if self.step == "replay":
            return self._unlearn_replay(model, selected, kind, retain, forget, t, context, t_start)
        step_reason = "step='newton' was asked for"
        if self.step == "auto":
            replay_state, step_reason = (self._replay_state(selected, kind, context)
                                         if context.w0 is not None and _numeric(self.scale)
                                         else (None, "a replay needs a --peft model and a numeric scale"))
            if replay_state is not None:
                return self._unlearn_replay(model, selected, kind, retain, forget, t, context, t_start,
                                            kept=(replay_state, step_reason))
            step_reason = f"step='auto' without a replay state: {step_reason}"
        forget_x, forget_y = _x_y(forget, t)  # the Newton step's forget Jacobians (a replay needs none)
        state, why = self._kept_state(selected, kind, context)
        if state is not None:
            # only the forget set's Jacobians and a downdate; the state is moved to D_r afterwards, off the
            # request's clock (PendingStateCommit), because that may re-factorise the P x P system for later
            # Woodbury downdates, which this request does not need
            t_loaded = time.perf_counter()
            updated, info = state.forget(copy_model(model), forget_x, forget_y, scale=self.scale, method="auto",
                                         commit=False, inplace=True, rank_tol=self.ggn_rank_tol)
            per_request = dict(info["timings"]["per_request"])
            # reading the state: here (when check() did not hand it over) and the factor inside forget()
            per_request["load_state"] = t_loaded - t_start + per_request.get("load", 0.0)
            # the pre-flight check's share (header + P-length tensors), outside the request's clock
            per_request["preflight_state"] = getattr(self, "_preflight_seconds", 0.0)
            info["timings"] = per_request
            one_off = float(context.model_meta["ntk_state_fit_seconds"])
            context.ntk_state_out = PendingStateCommit(state, model, forget_x, forget_y)
        else:
            retain_x, retain_y = _x_y(retain, t)
            updated, info = ntk_unlearn(copy_model(model), w0, retain_x, retain_y, forget_x, forget_y, params=kind,
                                        weight_decay=wd, scale=self.scale, solver=self.solver,
                                        chunk_size=self.chunk_size, loss=self.loss, inplace=True,
                                        linearise_at=linearise_at, weighting=weighting)
            one_off = 0.0  # nothing is kept: every request pays for the Jacobians over all of D
        info = {k: v for k, v in info.items() if k != "delta"}
        info["linearisation_point"] = point
        info["weighting"] = weighting
        info["weight_decay"] = wd
        info["path"] = "kept-state" if state is not None else "one-shot"
        info["path_reason"] = why
        info["step"] = "newton"
        info["step_reason"] = step_reason
        info["one_off_seconds"] = one_off
        info["per_request_seconds"] = time.perf_counter() - t_start
        context.info["ntk"] = info
        updated.eval()
        return updated


    def _run_folder_state(self, context: UnlearnContext, key: str, load: Callable, what: str):
        """``(state, where)`` for the run folder's kept ``what`` (``meta.json`` keys ``key_*``), or ``(None, why)``.

        ``load`` checks the file's checksum (ArtifactError for a modified file); a state fitted on other
        samples than the model's training data is an ArtifactError too.
        """
        meta = context.model_meta or {}
        if self.kept_state not in KEPT_STATE_MODES:
            raise ConfigError(f"kept_state={self.kept_state!r}; choose one of {', '.join(KEPT_STATE_MODES)}")
        if self.kept_state == "off":
            return None, "kept_state='off' was asked for"
        if context.model_dir is None or not meta.get(f"{key}_sha256"):
            return None, f"the model's run folder keeps no {what}"
        state = load(context.model_dir, meta)
        where = f"the {what} of {context.model_dir}"
        if context.train_fingerprint is not None and meta.get(f"{key}_data_fingerprint") != context.train_fingerprint:
            raise ArtifactError(f"{where} was fitted on other samples than the training data of this model; use "
                                f"the same --data and --size as `privkit train`, or re-create the run")
        return state, where

    def _replay_state(self, selected: dict, kind: str, context: UnlearnContext):
        """``(state, why)``: the run folder's kept replay state when it answers this request, else ``None``."""
        from privkit.unlearn.jacobian import flatten_parameters
        from privkit.unlearn.ntk_replay import SOLVE_DTYPE, load_replay_state

        meta = context.model_meta or {}
        # what meta.json says the state covers, before reading it: a state for other parameters (`--method ntk`
        # on a run that kept a Fast-NTK state) or with another number of points is not read at all
        if meta.get("ntk_replay_params") not in (None, kind):
            return None, f"it covers the {meta['ntk_replay_params']!r} parameters, not {kind!r}"
        if meta.get("ntk_replay_points") not in (None, self.replay_points):
            return None, (f"it holds {meta['ntk_replay_points']} linearisation points, not "
                          f"replay_points={self.replay_points}")
        if self.replay_model != "auto" and meta.get("ntk_replay_model", "logits") != self.replay_model:
            return None, (f"it linearises the {meta.get('ntk_replay_model', 'logits')} model, not "
                          f"replay_model={self.replay_model!r}")
        state, where = self._run_folder_state(context, "ntk_replay", load_replay_state, "replay state")
        if state is None:
            return None, where
        if state.params != kind:
            return None, f"it covers the {state.params!r} parameters, not {kind!r}"
        shapes = [list(p.shape) for p in selected.values()]
        if (state.net.names != list(selected) or state.net.shapes != shapes
                or not torch.equal(state.w0, flatten_parameters({n: context.w0[n] for n in selected},
                                                                SOLVE_DTYPE))):
            raise ArtifactError(f"{where} was fitted for other parameters or another w0 than the model's; the "
                                f"artifact was modified, re-create it with `privkit train --peft`")
        if len(state.nets) != self.replay_points:
            return None, f"it holds {len(state.nets)} linearisation points, not replay_points={self.replay_points}"
        if self.replay_model != "auto" and state.model != self.replay_model:
            return None, f"it linearises the {state.model} model, not replay_model={self.replay_model!r}"
        if not torch.equal(state.trained, flatten_parameters(selected, SOLVE_DTYPE)):
            return None, "the model's weights differ from those the state was fitted at (an earlier request changed them)"
        return state, f"{where} covers the model's training samples with the same recipe"

    def _unlearn_replay(self, model, selected, kind, retain, forget, t, context: UnlearnContext,
                        t_start: float, kept: tuple | None = None) -> nn.Module:
        """``step="replay"``: the recipe replayed on the network linearised piecewise along the fine-tuning,
        update :math:`w_0 + \\delta_{D_r}` (``replay_form="direct"``) or :math:`w^* + s(\\delta_{D_r} -
        \\delta_D)` (``"difference"``) (:mod:`privkit.unlearn.ntk_replay`).

        From the run folder's kept :class:`~privkit.unlearn.ntk_replay.ReplayState` when it matches (no
        network pass), else one-shot: the fine-tuning re-run for its iterates, the Jacobians over
        :math:`D_r` and :math:`D_f`, with :math:`D` put back in the training order (ascending dataset
        index) for the replays.
        """
        from privkit.unlearn.jacobian import flatten_parameters, unflatten_parameters
        from privkit.unlearn.ntk import _apply_delta
        from privkit.unlearn.ntk_replay import (SOLVE_DTYPE, ReplayRecipe, linearise_for_replay, path_points,
                                                replay_forget_delta, trajectory_points)

        if not _numeric(self.scale):
            raise ConfigError(f"step='replay' takes a numeric scale, got {self.scale!r}")
        if context.w0 is None:
            raise ConfigError("step='replay' needs a model trained with `privkit train --peft` (its w0); "
                              "use step='newton'")
        _check_replay_points(self.replay_points, self.replay_form, self.replay_model)
        recipe = ReplayRecipe.from_training(context.recipe, seed=context.seed)
        points = path_points({n: context.w0[n] for n in selected}, selected, self.replay_points)
        state, why = kept if kept is not None else self._replay_state(selected, kind, context)
        if state is not None:
            delta_flat, info = state.forget(forget.base_indices, recipe, self.replay_form)
            one_off = float((context.model_meta or {}).get("ntk_replay_fit_seconds", 0.0))
        else:
            w0 = {n: context.w0[n] for n in selected}
            retain_x, retain_y = _x_y(retain, t)
            forget_x, forget_y = _x_y(forget, t)
            # D in training order: the fine-tuning set and the retain set are both in ascending dataset index
            # (peft_parts, select_forget), so sorting the union by index restores the order training saw
            ids = torch.as_tensor(np.concatenate([retain.base_indices, forget.base_indices]), dtype=torch.long)
            order = torch.argsort(ids)
            x, y = torch.cat([retain_x, forget_x])[order], torch.cat([retain_y, forget_y])[order]
            retain_rows = torch.nonzero(order < len(retain_y)).reshape(-1)
            # the training's own iterates (its recipe and seed; a re-run of the fine-tuning over D), else the
            # straight path's points; an unlearned run's weights are no training's end point: no re-run
            trajectory, error = (None, None) if (context.model_meta or {}).get("unlearned_by") else \
                trajectory_points(model, w0, x, y, ReplayRecipe.from_training(context.recipe), self.replay_points)
            schedule = "steps" if trajectory is not None else "path"
            nets = [linearise_for_replay(model, w0, point, x, y, self.chunk_size, self.replay_model)
                    for point in (trajectory if trajectory is not None else points)]
            path = flatten_parameters(selected, SOLVE_DTYPE) - flatten_parameters(w0, SOLVE_DTYPE)
            delta_flat, info = replay_forget_delta(nets, retain_rows, recipe, path=path, schedule=schedule,
                                                   form=self.replay_form)
            info["trajectory_rerun_error"] = error
            one_off = 0.0
        delta = unflatten_parameters(delta_flat, selected)
        updated = copy_model(model)
        _apply_delta(updated, list(selected), {n: float(self.scale) * d for n, d in delta.items()})
        info = dict(info, step="replay",
                    linearisation_point=(f"{len(points)} iterates of the fine-tuning"
                                         if info["replay_schedule"] == "steps"
                                         else f"{len(points)} points on the path w0 -> trained weights"),
                    step_reason="step='auto' found a replay state" if kept is not None else "step='replay' was asked for",
                    recipe=recipe.to_dict(), path="kept-state" if state is not None else "one-shot", path_reason=why,
                    one_off_seconds=one_off, per_request_seconds=time.perf_counter() - t_start)
        context.info["ntk"] = info
        updated.eval()
        return updated

    def _linearised_state(self, selected: dict, kind: str, w0: dict, linearise_at: dict | None, wd: float,
                          context: UnlearnContext):
        """``(state, why)``: the run folder's kept linearised state when it answers this request, else ``None``."""
        from privkit.unlearn.jacobian import flatten_parameters
        from privkit.unlearn.ntk_linearized import load_linearised_state

        state, where = self._run_folder_state(context, "ntk_linearised", load_linearised_state, "linearised state")
        if state is None:
            return None, where
        shapes = [list(p.shape) for p in selected.values()]
        anchor = flatten_parameters(w0, torch.float64)
        point = anchor if linearise_at is None else flatten_parameters(linearise_at, torch.float64)
        if state.param_names_ != list(selected) or state.param_shapes_ != shapes or not torch.equal(state.w0_, anchor):
            raise ArtifactError(f"{where} was fitted for other parameters or another w0 than the model's; the "
                                f"artifact was modified, re-create it with `privkit train --peft`")
        if state.params != kind or not math.isclose(state.weight_decay, wd, rel_tol=1e-12):
            return None, f"it covers the {state.params!r} parameters with weight_decay={state.weight_decay:g}"
        if not torch.equal(state.point_, point):
            return None, "it is linearised at another point than the one asked for"
        return state, f"{where} covers the model's training samples with the same recipe"

    def _unlearn_linearised(self, model, selected, kind, w0, linearise_at, point, weighting, wd, retain, forget, t,
                            forget_x, forget_y, context: UnlearnContext, t_start: float) -> nn.Module:
        """``step="linearised-ce"``: :math:`w \\leftarrow w(D) + s(\\delta_{D_r} - \\delta_D)` with the exact
        minimisers of the linearised cross-entropy (:mod:`privkit.unlearn.ntk_linearized`).

        From the run folder's kept :class:`~privkit.unlearn.ntk_linearized.LinearisedState` when it
        matches (no network pass: Newton-CG on the stored Jacobian, preconditioned by the kept NTK
        state's factor when there is one), else one-shot (Jacobians over all of D).
        """
        from privkit.unlearn.jacobian import unflatten_parameters
        from privkit.unlearn.ntk import _apply_delta
        from privkit.unlearn.ntk_linearized import (kept_state_preconditioner, linearised_forget_delta,
                                                    one_step_from_ntk_state)

        if not isinstance(self.scale, (int, float)):
            raise ConfigError(f"step='linearised-ce' takes a numeric scale (it minimises the linearised loss "
                              f"exactly; the trapezium correction is for one step), got {self.scale!r}")
        lin_state, why = self._linearised_state(selected, kind, w0, linearise_at, wd, context)
        if lin_state is not None:
            ntk_state, _ = self._kept_state(selected, kind, context)
            if ntk_state is not None and lin_state.has_subspace:
                # the Fast-NTK step from the kept NTK state (forget rows from the stored Jacobian), then Newton
                # on the linearised cross-entropy in the kept top-curvature subspace: no network pass
                one_step = one_step_from_ntk_state(ntk_state, lin_state, forget.base_indices)
                delta_flat, info = lin_state.forget(forget.base_indices, one_step=one_step)
            else:
                precondition = kept_state_preconditioner(ntk_state, len(retain)) if ntk_state is not None else None
                delta_flat, info = lin_state.forget(forget.base_indices, precondition=precondition)
            delta = unflatten_parameters(delta_flat, selected)
            one_off = float((context.model_meta or {}).get("ntk_linearised_fit_seconds", 0.0))
        else:
            retain_x, retain_y = _x_y(retain, t)
            delta, info = linearised_forget_delta(model, w0, retain_x, retain_y, forget_x, forget_y, params=kind,
                                                  weight_decay=wd, linearise_at=linearise_at,
                                                  chunk_size=self.chunk_size)
            one_off = 0.0
        # as the one-step update: added to the trained weights, w(D) + s (delta_r - delta_D)
        updated = copy_model(model)
        _apply_delta(updated, list(selected), {n: float(self.scale) * d for n, d in delta.items()})
        info = dict(info, step="linearised-ce", linearisation_point=point, weighting=weighting, weight_decay=wd,
                    path="kept-state" if lin_state is not None else "one-shot", path_reason=why,
                    one_off_seconds=one_off, per_request_seconds=time.perf_counter() - t_start)
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
    linearise : {"auto", "pretrained", "trained", "init"}
        Linearisation point (module docstring). ``auto``: ``trained`` for a ``--peft`` model,
        ``init`` otherwise.
    weighting : {"auto", "identity", "ggn"}
        :math:`W` of the Gram matrix :math:`J^TWJ` (:func:`~privkit.unlearn.ntk.weighted_rows`).
        ``auto``: ``identity`` for every parameter — ``ggn`` is solved in the primal (a P x P system
        over *all* parameters), which rarely fits, while ``identity`` keeps the dual (N C x N C) open.
        Pass ``weighting=ggn`` to ask for it.
    kept_state : {"auto", "off"}
        ``auto`` serves the request from the run folder's kept NTK state when it matches (module
        docstring), else one-shot; ``off`` always runs one-shot.
    ggn_rank_tol : float, optional
        Kept-state requests with the Gauss-Newton weighting compute, per forget sample, only the
        eigen-directions of :math:`W_i = \\mathrm{diag}(p_i) - p_ip_i^T` that matter (one
        vector-Jacobian product each, instead of C), dropping small eigenvalues as long as the
        retain-set step changes by at most this fraction (a proven bound,
        :meth:`~privkit.unlearn.ntk.NTKState.forget`). Default
        :data:`~privkit.unlearn.ntk.DEFAULT_GGN_RANK_TOL` (``1e-6``); ``0`` keeps every direction.
    step : {"auto", "newton", "linearised-ce", "replay"}
        ``auto`` (default): ``replay`` when the run folder keeps a replay state that answers the request
        (``privkit train --peft ... --replay-state``), else ``newton``. ``newton``: the closed form, one
        Gauss-Newton step of the retraining objective. ``linearised-ce``:
        the exact minimisers :math:`\\delta_S` of the linearised network's cross-entropy
        :math:`\\Phi_S(\\delta) = \\sum_{i\\in S}\\mathrm{CE}(z_i + J_i\\delta, y_i) + \\tfrac{\\lambda_S}2
        \\lVert a+\\delta-w_0\\rVert^2` (Newton-CG, :mod:`privkit.unlearn.ntk_linearized`), update
        :math:`w(D) + s(\\delta_{D_r} - \\delta_D)`; served from the run folder's kept linearised state
        (``ntk_linearised.safetensors``) when there is one. ``replay`` (PEFT models): the fine-tuning
        recipe replayed on the network linearised at the fine-tuning's own iterates, update
        :math:`w_0 + \\delta_{D_r}` (:mod:`privkit.unlearn.ntk_replay`); served from the
        kept replay state (``privkit train --peft ... --replay-state``) when there is one.
    replay_points : int
        ``step="replay"``: linearisation points (default
        :data:`~privkit.unlearn.ntk_replay.DEFAULT_REPLAY_POINTS`); a kept state with another number is
        not used.
    replay_form : {"direct", "difference"}
        ``step="replay"``: the update :math:`w_0 + \\delta_{D_r}` (default) or
        :math:`w^* + s(\\delta_{D_r} - \\delta_D)`.
    replay_model : {"auto", "logits", "bilinear"}
        ``step="replay"``: what is linearised (:data:`~privkit.unlearn.ntk_replay.REPLAY_MODELS`);
        ``auto`` takes the kept state's model, or picks by size for a one-shot request; a kept state of
        the other model does not answer an explicit one.
    """

    def _weighting_mode(self, context: UnlearnContext) -> str:
        if self.weighting == "auto":
            return "identity"
        return super()._weighting_mode(context)


@register_unlearner("fast-ntk")
class FastNTKUnlearner(_NTKBase):
    """Fast-NTK (Li et al., 2024): the NTK step on BatchNorm affine (or prompt) parameters + head."""

    def _kind(self, model: nn.Module, context: UnlearnContext) -> str:
        return fast_ntk_kind(model, context.recipe.peft)
