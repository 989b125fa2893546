r"""Parameter-efficient training (``privkit train --peft bn|prompt``), the setting of Fast-NTK.

Fast-NTK (Li et al., 2024) and NTK forgetting (Golatkar et al., 2020) assume the classifier was
*fine-tuned* from pretrained weights :math:`w_0` with a penalty toward them:

.. math::

    \min_w \frac1N \sum_{i \in D} \ell(f(x_i; w), y_i) + \frac{\lambda}{2} \lVert w - w_0 \rVert^2 ,

where only the parameter-efficient parameters :math:`w` train (``bn``: the affine parameters of the
normalisation layers and the head; ``prompt``: the visual prompt tokens and the head) and the NTK
ridge term is :math:`\lambda_D = N\lambda`. :func:`train_peft_run` produces such a model:

1. **Pretrain** the whole network (all parameters, the recipe's epochs and learning rate) on a
   *pretraining part*: a fixed half of the classifier's training split (drawn with ``data_seed``).
   This part plays the role of public pretraining data; it is disjoint from the fine-tuning data
   and is never a deletion target.
2. **Fine-tune** only the PEFT parameters on the other half (the *training data* :math:`D` of the
   artifact: its fingerprint is ``data_fingerprint``, and ``privkit unlearn`` selects forget sets
   inside it) with the anchor penalty above, ``lambda = --weight-decay`` (5e-4 when it is 0, since
   the NTK closed form needs :math:`\lambda > 0`). BatchNorm statistics are frozen (eval mode), so
   the function being fine-tuned is exactly the one NTK linearises.

The pretrained PEFT values :math:`w_0` are saved beside the weights in ``w0.safetensors``
(checksummed in ``meta.json``: ``w0_sha256``), because :func:`~privkit.models.load_model` loads
``weights.safetensors`` strictly and the NTK step needs :math:`w_0` as its linearisation point.

3. **Keep the NTK state** (``keep_ntk_state=True``, the default): deletion requests keep coming,
   so the one-off part of Fast-NTK is paid here, once. :class:`~privkit.unlearn.ntk.NTKState` is
   fitted over the training data :math:`D` with the recipe ``fast-ntk`` uses by default (linearised
   at the trained weights :math:`w^*`, penalty toward :math:`w_0`, the PEFT parameters,
   cross-entropy residual, Gauss-Newton weighting :math:`W = \mathrm{diag}(p) - pp^T`,
   :math:`\lambda_S = |S|\,\lambda`): :math:`G = J_D^TWJ_D`, :math:`b = J_D^Tr_D` and the
   eigendecomposition of :math:`G`. It is saved
   as ``ntk_state.safetensors``; ``meta.json`` records ``ntk_state_sha256`` (the SHA-256 of the
   file's header, which lists the SHA-256 of every tensor, so a request checks just what it reads),
   ``ntk_state_data_fingerprint`` (the samples it covers) and ``ntk_state_fit_seconds`` (the
   one-off cost). A deletion request then needs only the forget set's Jacobians and a downdate
   (:meth:`~privkit.unlearn.ntk.NTKState.forget`); see :mod:`privkit.unlearn.methods_ntk`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from privkit.errors import ArtifactError, ConfigError
from privkit.train import ClassifierTask

__all__ = ["PEFT_KINDS", "W0_FILE", "NTK_STATE_FILE", "run_folder_file", "PeftClassifierTask", "peft_parts", "peft_parameter_names",
           "save_w0", "load_w0", "training_indices", "fit_ntk_state", "save_ntk_state", "load_ntk_state",
           "ntk_state_meta", "train_peft_run"]

PEFT_KINDS = ("bn", "prompt")
W0_FILE = "w0.safetensors"
NTK_STATE_FILE = "ntk_state.safetensors"
#: The keys of ``meta.json`` that describe a kept NTK state (copied along a chain of requests).
NTK_STATE_KEYS = ("ntk_state_file", "ntk_state_sha256", "ntk_state_data_fingerprint", "ntk_state_fit_seconds",
                  "ntk_state_params", "ntk_state_weight_decay")
PRETRAIN_FRACTION = 0.5
DEFAULT_ANCHOR = 5e-4


class PeftClassifierTask(ClassifierTask):
    """:class:`~privkit.train.ClassifierTask` with the network in eval mode (frozen BN statistics).

    Only the parameters named in ``cfg.trainable`` train; with ``cfg.anchor_penalty`` the loss
    carries :math:`\\tfrac\\lambda2\\lVert w - w_0\\rVert^2` toward the values at construction.
    """

    train_mode = False  # BatchNorm uses (and keeps) the pretrained running statistics


def peft_parameter_names(model: nn.Module, kind: str) -> list[str]:
    """Names of the PEFT parameters (``bn`` or ``prompt``, plus the head), via the NTK selection."""
    from privkit.unlearn.jacobian import select_parameters

    if kind not in PEFT_KINDS:
        raise ConfigError(f"--peft {kind!r} is not one of {', '.join(PEFT_KINDS)}")
    return list(select_parameters(model, kind))


def peft_parts(train_indices: np.ndarray, data_seed: int, fraction: float = PRETRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Split the training split into ``(pretrain, finetune)`` index arrays (sorted, disjoint).

    A fixed function of ``data_seed`` so ``privkit unlearn`` rebuilds the same fine-tuning set.
    """
    train_indices = np.asarray(train_indices, dtype=np.int64)
    rng = np.random.default_rng([int(data_seed), 0x9EF7])
    order = rng.permutation(len(train_indices))
    k = int(round(fraction * len(train_indices)))
    if k < 1 or k >= len(train_indices):
        raise ConfigError(f"the training split has {len(train_indices)} samples, too few to pretrain on part of them "
                          f"and fine-tune on the rest; use more data")
    return np.sort(train_indices[order[:k]]), np.sort(train_indices[order[k:]])


def training_indices(meta: dict, train_indices: np.ndarray) -> np.ndarray:
    """The samples a model's trained parameters saw: the fine-tuning part for PEFT models, else the train split."""
    config = meta.get("config", {})
    if config.get("peft"):
        return peft_parts(train_indices, int(config.get("data_seed", 0)),
                          float(config.get("pretrain_fraction", PRETRAIN_FRACTION)))[1]
    return np.asarray(train_indices, dtype=np.int64)


def _tensor_sha256(tensors: dict[str, torch.Tensor]) -> tuple[bytes, str]:
    from safetensors.torch import save as st_save

    blob = st_save({k: v.detach().cpu().contiguous() for k, v in sorted(tensors.items())})
    return blob, hashlib.sha256(blob).hexdigest()


def save_w0(folder: str | Path, w0: dict[str, torch.Tensor]) -> str:
    """Write ``w0.safetensors`` atomically; return its SHA-256 (to record in ``meta.json``)."""
    from privkit.io.atomic import atomic_write_bytes

    blob, digest = _tensor_sha256(w0)
    atomic_write_bytes(Path(folder) / W0_FILE, blob)
    return digest


def load_w0(folder: str | Path, meta: dict) -> dict[str, torch.Tensor] | None:
    """The pretrained PEFT values of a PEFT model's run folder (``None`` for other models).

    Checks the safetensors header and the SHA-256 recorded in ``meta.json`` (never unpickles).
    """
    from safetensors.torch import load as st_load

    from privkit.io.artifacts import verify_safetensors_file

    if not meta.get("config", {}).get("peft"):
        return None
    path = Path(folder) / W0_FILE
    verify_safetensors_file(path)
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("w0_sha256"):
        raise ArtifactError(f"{path} does not match the checksum in meta.json; the artifact was modified or is corrupt")
    return st_load(blob)


def set_parameters(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into the named parameters of ``model``."""
    live = dict(model.named_parameters())
    with torch.no_grad():
        for name, v in values.items():
            live[name].copy_(v)


def fit_ntk_state(model: nn.Module, w0: dict[str, torch.Tensor], dataset, target_index: int, kind: str,
                  weight_decay: float, chunk_size: int | None = None, linearise: str | None = None,
                  weighting: str | None = None):
    """Fit the :class:`~privkit.unlearn.ntk.NTKState` ``fast-ntk`` uses over ``dataset`` (the one-off cost).

    The recipe is the one of :class:`~privkit.unlearn.methods_ntk.FastNTKUnlearner` with its defaults
    for a PEFT model (``linearise``/``weighting`` of ``None``): Jacobians of the ``kind`` parameters at
    the trained weights :math:`w^*` (``"trained"``; ``"pretrained"`` linearises at :math:`w_0`), other
    parameters and BatchNorm statistics as in ``model``, penalty toward :math:`w_0`, residual
    :math:`\\mathrm{onehot}(y) - \\mathrm{softmax}(f(x))`, Gauss-Newton weighting
    :math:`\\mathrm{diag}(p) - pp^T` (``"ggn"``; ``"identity"`` is the paper's squared loss),
    :math:`\\lambda_S = |S|\\,wd` with :math:`wd` = ``weight_decay``.

    Returns
    -------
    state : NTKState
    seconds : float
        Wall time of the fit, reading the samples included.
    """
    from privkit.unlearn.methods_ntk import (
        DEFAULT_NTK_CHUNK_SIZE,
        DEFAULT_WEIGHTING,
        NTK_STATE_LAMBDA_SCALING,
        NTK_STATE_LOSS,
        PEFT_DEFAULT_LINEARISE,
    )
    from privkit.unlearn.ntk import NTKState

    linearise = linearise or PEFT_DEFAULT_LINEARISE
    if linearise not in ("pretrained", "trained"):
        raise ConfigError(f"a kept NTK state is linearised at 'pretrained' or 'trained' weights, not {linearise!r}")
    t_start = time.perf_counter()
    x, attrs = dataset.materialize()
    state = NTKState(params=kind, weight_decay=float(weight_decay), loss=NTK_STATE_LOSS,
                     lambda_scaling=NTK_STATE_LAMBDA_SCALING,
                     chunk_size=int(chunk_size or DEFAULT_NTK_CHUNK_SIZE),
                     weighting=weighting or DEFAULT_WEIGHTING[linearise])
    live = dict(model.named_parameters())
    trained = {n: live[n].detach().clone() for n in w0} if linearise == "trained" else None
    state.fit(model, w0, x, attrs[:, target_index], linearise_at=trained)
    return state, time.perf_counter() - t_start


def save_ntk_state(folder: str | Path, state) -> str:
    """Write ``ntk_state.safetensors`` into ``folder`` (write, then rename); return its checksum.

    The checksum (``ntk_state_sha256`` in ``meta.json``) is the SHA-256 of the file's safetensors
    header, which lists the SHA-256 of every tensor (:meth:`~privkit.unlearn.ntk.NTKState.save`): it
    authenticates the whole file, and a request can check only the tensors it reads.
    """
    from privkit.unlearn.ntk import read_safetensors_header

    folder = Path(folder)
    partial = folder / (NTK_STATE_FILE + ".partial")
    state.save(partial)
    digest = hashlib.sha256(read_safetensors_header(partial)[0]).hexdigest()
    os.replace(partial, folder / NTK_STATE_FILE)
    return digest


def ntk_state_meta(state, sha256: str, data_fingerprint: str, fit_seconds: float) -> dict[str, Any]:
    """The ``meta.json`` keys describing a kept NTK state (:data:`NTK_STATE_KEYS`)."""
    return {"ntk_state_file": NTK_STATE_FILE, "ntk_state_sha256": sha256,
            "ntk_state_data_fingerprint": data_fingerprint, "ntk_state_fit_seconds": float(fit_seconds),
            "ntk_state_params": state.params, "ntk_state_weight_decay": float(state.weight_decay)}


def run_folder_file(folder: str | Path, name: str, what: str) -> Path:
    """``folder / name`` for a file ``meta.json`` names; refuses a name that would leave the run folder."""
    if Path(name).name != name:
        raise ArtifactError(f"meta.json names {what} {name!r}, which is not a file of the run folder; "
                            f"the artifact was modified, re-create it")
    return Path(folder) / name


def write_checked_file(folder: str | Path, name: str, write: Callable[[Path], None]) -> str:
    """``write(path)`` into ``folder / name`` atomically (a ``.partial`` file, then a rename); its SHA-256.

    The kept states of a run folder (linearised, replay) are written this way so a crash leaves the
    old file or none, never half of one, and ``meta.json`` records the checksum of exactly what was written.
    """
    folder = Path(folder)
    partial = folder / (name + ".partial")
    write(partial)
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    os.replace(partial, folder / name)
    return digest


def read_checked_file(folder: str | Path, name: str, sha256: str, what: str) -> tuple[Path, bytes]:
    """``(path, bytes)`` of the run folder's file ``name`` after checking them against ``sha256``.

    The caller parses these verified bytes (never a second read); a missing, unreadable or modified
    file is a one-line :class:`~privkit.errors.ArtifactError`.
    """
    path = run_folder_file(folder, name, what)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror}); re-create the run") from exc
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ArtifactError(f"{path} does not match the checksum in meta.json; the artifact was modified or is corrupt")
    return path, raw


def load_ntk_state(folder: str | Path, meta: dict, data_fingerprint: str | None = None):
    """The kept NTK state of a run folder, verified; ``None`` when the run keeps none.

    ``ntk_state_sha256`` is the SHA-256 of the file's header (format 3: the header lists every tensor's
    SHA-256), so only the header and the P-length tensors are read here; the P x P ones are read and
    checked when first used (the factor by the request, the Gram matrix by the upkeep), see
    :meth:`~privkit.unlearn.ntk.NTKState.open`. A state whose checksum is that of the whole file (format
    1 or 2, written before) is read and checked whole, as before.

    Raises :class:`~privkit.errors.ArtifactError` when ``meta.json`` names a state that is missing,
    not a safetensors file, does not match ``ntk_state_sha256`` (now or, for a tensor, when it is read),
    or (given ``data_fingerprint``) covers other samples than the model's training data.
    """
    from privkit.io.artifacts import verify_safetensors_file
    from privkit.unlearn.ntk import NTKState, read_safetensors_header

    if not meta.get("ntk_state_sha256"):
        return None
    path = run_folder_file(folder, str(meta.get("ntk_state_file") or NTK_STATE_FILE), "the NTK state")
    verify_safetensors_file(path)
    mismatch = ArtifactError(f"{path} does not match the checksum in meta.json; the artifact was modified or is "
                             f"corrupt (delete ntk_state_* from meta.json to fall back to one-shot fast-ntk)")
    if data_fingerprint is not None and meta.get("ntk_state_data_fingerprint") != data_fingerprint:
        raise ArtifactError(f"{path} was fitted on other samples than the training data of this model; use the "
                            f"same --data and --size as `privkit train`, or re-create the run")
    header = read_safetensors_header(path)
    if hashlib.sha256(header[0]).hexdigest() == meta["ntk_state_sha256"]:
        # open() refuses a header without a checksum per tensor: only such a header authenticates the data
        return NTKState.open(path, header)
    raw = path.read_bytes()  # a state checksummed whole (format 1 or 2): read once, checksum and tensors
    if hashlib.sha256(raw).hexdigest() != meta["ntk_state_sha256"]:
        raise mismatch
    return NTKState.load(path, raw=raw)


def _ntk_state_memory_problem(model: nn.Module, names: list[str], n_samples: int, n_classes: int,
                              sample: torch.Tensor) -> str | None:
    """Why the NTK state would not fit in memory (the memory guard's message), or ``None`` if it fits.

    ``sample`` is one input (batch of one), used only to size the layer outputs the Jacobian holds.
    """
    from privkit.errors import ResourceError
    from privkit.unlearn.methods_ntk import DEFAULT_NTK_CHUNK_SIZE
    from privkit.unlearn.ntk import activation_footprint, check_memory

    params = dict(model.named_parameters())
    n_params = sum(params[n].numel() for n in names)
    point = {n: params[n] for n in names}
    try:
        check_memory(n_samples, n_classes, n_params, "state", DEFAULT_NTK_CHUNK_SIZE, params[names[0]].dtype,
                     activations=activation_footprint(model, point, sample))
    except ResourceError as exc:
        return str(exc)
    return None


def replay_state_memory_problem(model: nn.Module, names: list[str], n_samples: int, n_classes: int,
                                points: int, replay_model: str = "auto") -> str | None:
    """Why the replay state would not fit in memory, or ``None`` if it fits.

    The state holds, per linearisation point, the Jacobian of the selected parameters other than the
    classifier head (float32, ``n_samples x rows x P_body``, rows = the classes, or the head's inputs
    for the bilinear model); fitting it holds about twice that.
    """
    from privkit.unlearn.jacobian import _classifier_head
    from privkit.unlearn.ntk_replay import choose_replay_model

    params = dict(model.named_parameters())
    head = [n for n in _classifier_head(model) if n in names]
    factored = len(head) == 2
    body = sum(params[n].numel() for n in names if not factored or n not in head)
    rows = n_classes
    if factored and body:
        head_in = next(params[n].shape[1] for n in head if params[n].dim() == 2)
        chosen = choose_replay_model(True, n_classes, head_in) if replay_model == "auto" else replay_model
        rows = head_in if chosen == "bilinear" else n_classes
    return _state_too_large("replay state", 2 * points * n_samples * rows * body * 4,
                            f"{points} points x {n_samples} samples x {rows} rows x {body} parameters",
                            "train with --no-replay-state (fast-ntk then uses the Newton step) or on fewer samples")


def _state_too_large(what: str, need: int, shape: str, advice: str) -> str | None:
    """The memory guard's message when ``need`` bytes exceed 80 % of the available memory, else ``None``."""
    from privkit.unlearn.ntk import _gib, available_memory_bytes

    available = available_memory_bytes()
    if available is not None and need > 0.8 * available:
        return f"the {what} would need about {_gib(need)} ({shape}) but {_gib(available)} are available; {advice}"
    return None


def linearised_state_memory_problem(model: nn.Module, names: list[str], n_samples: int, n_classes: int) -> str | None:
    """Why the linearised state of ``fast-ntk step="linearised-ce"`` would not fit in memory, or ``None``.

    The state keeps the per-sample Jacobian of every selected parameter (float32, ``n_samples x
    n_classes x P``); fitting it also holds the Gauss-Newton-weighted rows and the Jacobian in the
    kept subspace, about three times that in all.
    """
    params = dict(model.named_parameters())
    n_params = sum(params[n].numel() for n in names)
    return _state_too_large("linearised state", 3 * n_samples * n_classes * n_params * 4,
                            f"{n_samples} samples x {n_classes} classes x {n_params} parameters, three copies while "
                            f"fitting", "train without keep_linearised_state (fast-ntk then uses the Newton or replay "
                            "step) or on fewer samples")


def train_peft_run(ds, data_spec: str, target: str, out: Path, *, model_name: str | None = None, peft: str = "bn",
                   epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                   data_seed: int = 0, size: int | None = None, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, pretrain_epochs: int | None = None, model_kwargs: dict | None = None,
                   keep_ntk_state: bool = True, keep_linearised_state: bool = False,
                   keep_replay_state: bool | None = None, replay_points: int | None = None,
                   replay_model: str = "auto") -> Path:
    """Pretrain on one half of the training split, fine-tune the PEFT parameters on the other half.

    Writes a classifier artifact (``load_model`` works on it) plus ``w0.safetensors``; ``meta.json``
    records ``peft``, the recipe (``optim`` with ``anchor_penalty`` and ``trainable``) and
    ``pretrain_fraction``. With ``keep_ntk_state`` (default) it also fits and saves the NTK state over
    the fine-tuning data (``ntk_state.safetensors``, one-off cost in ``meta.json`` and ``metrics.json``
    as ``ntk_state_fit_seconds``) so ``fast-ntk`` requests need only the forget set's Jacobians; a state
    that would not fit in memory is skipped (the report says why) and ``fast-ntk`` then runs one-shot.
    ``keep_linearised_state`` / ``keep_replay_state`` also keep what ``fast-ntk step="linearised-ce"`` /
    ``step="replay"`` requests need (:mod:`privkit.unlearn.ntk_linearized`, :mod:`privkit.unlearn.ntk_replay`).
    ``keep_replay_state=None`` (default): keep it when it fits in memory, else say why in the report;
    ``True``: a replay state that would not fit is an error before training; ``False``: none.
    Every input check happens before the run folder is created.
    """
    from privkit.classify import TEST_FRACTION, VAL_FRACTION, add_evaluation, classifier_split, evaluate_predictions
    from privkit.evaluate.report import Report
    from privkit.io.rundir import RunDir
    from privkit.models import create, model_meta, save_model
    from privkit.models.registry import default_model, model_entry
    from privkit.train import ClassifierConfig, LoopConfig, run_training, train_classifier, unwrap

    if peft not in PEFT_KINDS:
        raise ConfigError(f"--peft {peft!r} is not one of {', '.join(PEFT_KINDS)}")
    attribute = ds.schema.attribute(target)
    if attribute.num_classes < 2:
        raise ConfigError(f"attribute {target!r} has a single class; choose an attribute with at least two classes")
    if model_name is None:
        model_name = "vit-tiny" if peft == "prompt" else default_model(ds.schema.modality)
    model_entry(model_name)
    if weight_decay < 0:
        raise ConfigError(f"--weight-decay {weight_decay} must be >= 0")
    if replay_points is not None and (isinstance(replay_points, bool) or not isinstance(replay_points, int)
                                      or replay_points < 1):
        raise ConfigError(f"replay_points must be a whole number >= 1, got {replay_points!r}; 3 is the default")
    anchor = float(weight_decay) if weight_decay > 0 else DEFAULT_ANCHOR
    pretrain_epochs = int(pretrain_epochs or epochs)
    split = classifier_split(ds, target, data_seed)
    if len(split.test) == 0:
        raise ConfigError(f"the dataset has too few samples ({len(ds)}) to split into train and test; use more data")
    pre_idx, fine_idx = peft_parts(split.train, data_seed)
    torch.manual_seed(seed)
    model = create(model_name, ds.schema, attribute.num_classes, **dict(model_kwargs or {}))
    names = peft_parameter_names(model, peft)  # ConfigError for a model without BN / prompt parameters
    pre_loop = LoopConfig(epochs=pretrain_epochs, batch_size=batch_size, seed=seed, progress=progress,
                          description=f"pretrain {target}")
    fine_loop = LoopConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                           description=f"fine-tune {peft} {target}")
    pre_loop.validate()
    fine_loop.validate()
    cfg = ClassifierConfig(lr=lr, weight_decay=anchor, anchor_penalty=anchor, trainable=names)
    state_skipped = None
    if keep_ntk_state:
        state_skipped = _ntk_state_memory_problem(model, names, len(fine_idx), attribute.num_classes,
                                                  ds[int(fine_idx[0])][0].unsqueeze(0))
    replay_skipped = None
    if keep_replay_state is not False:
        from privkit.errors import ResourceError
        from privkit.unlearn.ntk_replay import DEFAULT_REPLAY_POINTS

        from privkit.unlearn.ntk_replay import REPLAY_MODELS

        if replay_model not in REPLAY_MODELS:
            raise ConfigError(f"replay_model={replay_model!r}; choose one of {', '.join(REPLAY_MODELS)}")
        problem = replay_state_memory_problem(model, names, len(fine_idx), attribute.num_classes,
                                              replay_points or DEFAULT_REPLAY_POINTS, replay_model)
        if problem is not None and keep_replay_state:
            raise ResourceError(problem)
        replay_skipped = problem
    if keep_ntk_state and keep_linearised_state and state_skipped is None:
        from privkit.errors import ResourceError

        problem = linearised_state_memory_problem(model, names, len(fine_idx), attribute.num_classes)
        if problem is not None:
            raise ResourceError(problem)
    config: dict[str, Any] = {
        "data": str(data_spec), "size": size, "target": target, "model": model_name, "model_kwargs": dict(model_kwargs or {}),
        "epochs": epochs, "batch_size": batch_size, "seed": seed, "data_seed": data_seed,
        "val_fraction": VAL_FRACTION, "test_fraction": TEST_FRACTION, "optim": cfg.to_dict(), "dp": None,
        "data_options": {}, "peft": peft, "pretrain_epochs": pretrain_epochs, "pretrain_fraction": PRETRAIN_FRACTION,
    }
    fine_set = ds.subset(fine_idx)
    with RunDir(out, "train", config, resume=resume, overwrite=overwrite) as run:
        model, pre_history = train_classifier(model, ds.subset(pre_idx), target, ClassifierConfig(lr=lr), pre_loop,
                                              checkpoint_dir=run.checkpoint_dir / "pretrain", resume=resume)
        w0 = {n: p.detach().clone() for n, p in model.named_parameters() if n in set(names)}
        task = PeftClassifierTask(model, ds.schema.index(target), cfg)
        history = run_training(task, fine_set, fine_loop, checkpoint_dir=run.checkpoint_dir / "finetune", resume=resume)
        model = unwrap(task.nets["model"])
        for p in model.parameters():
            p.requires_grad_(True)
        result = evaluate_predictions(model, ds.subset(split.test), target)
        report = Report(f"Parameter-efficient ({peft}) classifier for {target!r} on {data_spec}", "train")
        add_evaluation(report, result, target, attribute.classes)
        n_peft = sum(t.numel() for t in w0.values())
        report.text(f"Pretrained all parameters on {len(pre_idx)} samples (half of the training split, drawn with "
                    f"data seed {data_seed}), then fine-tuned only the {n_peft} {peft} + head parameters on the other "
                    f"{len(fine_idx)} samples with the penalty (lambda/2)||w - w0||^2, lambda = {anchor:g}, toward the "
                    f"pretrained values w0 (saved in {W0_FILE}); BatchNorm statistics frozen while fine-tuning.",
                    title="Parameter-efficient training")
        report.set_metric("peft_parameters", n_peft)
        report.table("pretraining history", list(pre_history[0].keys()), [list(h.values()) for h in pre_history])
        report.table("fine-tuning history", list(history[0].keys()), [list(h.values()) for h in history])
        w0_sha = save_w0(run.path, w0)
        state_meta: dict[str, Any] = {}
        if keep_ntk_state and state_skipped is None:
            run.log("fitting the NTK state over the fine-tuning data (one-off cost of fast-ntk)")
            state, fit_seconds = fit_ntk_state(model, w0, fine_set, ds.schema.index(target), peft, anchor)
            state_meta = ntk_state_meta(state, save_ntk_state(run.path, state), fine_set.fingerprint(), fit_seconds)
            report.set_metric("ntk_state_fit_seconds", fit_seconds)
            report.text(f"Fitted the NTK state of fast-ntk over the {len(fine_idx)} fine-tuning samples in "
                        f"{fit_seconds:.2f} s, once: J^T W J + lambda I and J^T r of the {n_peft} {peft} + head "
                        f"parameters, linearised at the trained weights with the Gauss-Newton weighting W, "
                        f"penalty toward w0 (saved in {NTK_STATE_FILE}). A deletion request then needs only the "
                        f"forget set's Jacobians and a downdate.", title="Kept NTK state (one-off cost)")
            if keep_linearised_state:
                from privkit.unlearn.ntk_linearized import fit_linearised_state, save_linearised_state

                # fast-ntk step="linearised-ce": the per-sample Jacobians over D (float32) and the minimiser of
                # the linearised cross-entropy on D, so a request needs no network pass (one-off cost)
                live = dict(model.named_parameters())
                lin_state = fit_linearised_state(model, w0, fine_set, ds.schema.index(target), peft, anchor,
                                                 linearise_at={n: live[n].detach().clone() for n in w0},
                                                 ntk_state=state)
                state_meta.update(save_linearised_state(run.path, lin_state),
                                  ntk_linearised_data_fingerprint=fine_set.fingerprint())
                report.set_metric("ntk_linearised_fit_seconds", lin_state.fit_seconds_)
        elif keep_ntk_state:
            report.text(f"The NTK state was not kept: {state_skipped}. fast-ntk runs one-shot on this model.",
                        title="Kept NTK state (one-off cost)")
        if replay_skipped is not None:
            report.text(f"The replay state was not kept: {replay_skipped}. fast-ntk uses the Newton step on this "
                        f"model.", title="Kept replay state (one-off cost)")
        elif keep_replay_state is not False:
            from privkit.errors import ResourceError
            from privkit.unlearn.base import TrainingRecipe
            from privkit.unlearn.ntk_replay import ReplayRecipe, ReplayState, save_replay_state

            # fast-ntk step="replay": the network linearised at the fine-tuning's iterates over its samples,
            # in their training order, and the recipe replayed over all of them (one-off cost)
            x_fine, attrs_fine = fine_set.materialize()
            try:
                replay_state = ReplayState.fit(model, w0, x_fine, attrs_fine[:, ds.schema.index(target)],
                                               fine_set.base_indices, ReplayRecipe.from_training(
                                                   TrainingRecipe.from_config(config)), peft,
                                               replay_model=replay_model,
                                               **({} if replay_points is None else {"points": replay_points}))
            except (ConfigError, ResourceError, RuntimeError, MemoryError) as exc:
                # e.g. the recipe does not train the linearised network, or (kept by default, not asked for)
                # memory ran out: keep the trained model either way
                if keep_replay_state and not isinstance(exc, ConfigError):
                    raise
                report.text(f"The replay state was not kept: {exc}. fast-ntk uses the Newton step on this model.",
                            title="Kept replay state (one-off cost)")
            else:
                state_meta.update(save_replay_state(run.path, replay_state, fine_set.fingerprint()))
                report.set_metric("ntk_replay_fit_seconds", replay_state.fit_seconds)
        meta = model_meta(model, ds.schema, target=target, config=config, metrics=report.to_dict(),
                          data_fingerprint=fine_set.fingerprint(),
                          extra={"split_fingerprint": ds.fingerprint(), "history": history, "peft": peft,
                                 "w0_file": W0_FILE, "w0_sha256": w0_sha, "peft_parameters": names, **state_meta})
        save_model(run.path, model, meta)
        report.write(run.path)
        run.finish()
    return Path(out)
