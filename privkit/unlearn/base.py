r"""The :class:`Unlearner` protocol, the method registry and what every method is given.

Every unlearning method is a small estimator-like class registered by name with
:func:`register_unlearner`. Its hyperparameters are set in ``__init__`` (stored as given, no
work done), and one call

.. math::

    \theta_u = \mathcal U(\theta_o, D_r, D_f, D_{val})

turns the original model :math:`\theta_o` (trained on :math:`D = D_r \cup D_f`) into the
unlearned model :math:`\theta_u`::

    model_u = get_unlearner("finetune").unlearn(model, retain, forget, val, context=context)

``retain``, ``forget`` and ``val`` are :class:`~privkit.data.datasets.AttributeDataset` views;
``context`` (:class:`UnlearnContext`) carries the target attribute, the original training
recipe (read from the model's ``meta.json``), the NTK linearisation point :math:`w_0`, the seed
and the progress flag. Methods never modify the model they are given.

Iterative methods train through :func:`privkit.train.run_training` with a
:class:`~privkit.train.TrainTask` (see :mod:`privkit.unlearn.baselines`), so they share its
deterministic batch order, progress bar and DDP support.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.registry import Registry

__all__ = [
    "TrainingRecipe",
    "UnlearnContext",
    "Unlearner",
    "UNLEARNERS",
    "register_unlearner",
    "get_unlearner",
    "list_unlearners",
    "fresh_model_like",
]

# Weight decay used for the NTK ridge term when the recipe has none (lambda = N * wd must be > 0).
DEFAULT_NTK_WEIGHT_DECAY = 5e-4


@dataclass
class TrainingRecipe:
    """How the original model was trained (``meta.json`` ``config``), reused by retraining.

    Attributes
    ----------
    epochs, batch_size, lr, optimizer, weight_decay, seed :
        The recipe of ``privkit train``.
    anchor_penalty : float
        :math:`\\lambda` of the :math:`\\tfrac\\lambda2\\lVert w - w_0\\rVert^2` penalty of PEFT
        fine-tuning (0 for ordinary training).
    trainable : list of str or None
        Parameter names that were trained (PEFT), ``None`` = all.
    peft : str or None
        ``"bn"`` or ``"prompt"`` for a parameter-efficient model.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    anchor_penalty: float = 0.0
    trainable: list[str] | None = None
    peft: str | None = None

    @classmethod
    def from_config(cls, config: dict) -> "TrainingRecipe":
        """Read the recipe from a trained model's ``meta.json`` ``config`` section."""
        optim = dict(config.get("optim") or {})
        trainable = optim.get("trainable")
        return cls(
            epochs=int(config.get("epochs", 10)),
            batch_size=int(config.get("batch_size", 64)),
            lr=float(optim.get("lr", 1e-3)),
            optimizer=str(optim.get("optimizer", "adam")),
            weight_decay=float(optim.get("weight_decay", 0.0)),
            seed=int(config.get("seed", 0)),
            anchor_penalty=float(optim.get("anchor_penalty", 0.0)),
            trainable=list(trainable) if trainable else None,
            peft=config.get("peft"),
        )

    def classifier_config(self, **overrides: Any):
        """The :class:`~privkit.train.ClassifierConfig` of this recipe (with ``overrides``)."""
        from privkit.train import ClassifierConfig

        kw = dict(lr=self.lr, weight_decay=self.weight_decay, optimizer=self.optimizer,
                  anchor_penalty=self.anchor_penalty, trainable=self.trainable)
        kw.update(overrides)
        return ClassifierConfig(**kw)

    @property
    def ntk_weight_decay(self) -> float:
        """:math:`wd` of the NTK ridge term :math:`\\lambda = N\\,wd`: the w0-penalty of the recipe."""
        for value in (self.anchor_penalty, self.weight_decay):
            if value > 0:
                return float(value)
        return DEFAULT_NTK_WEIGHT_DECAY


@dataclass
class UnlearnContext:
    """Everything a method needs besides the model and the three data sets.

    Attributes
    ----------
    target : str
        Attribute the classifier predicts.
    recipe : TrainingRecipe
        The original training recipe.
    w0 : dict of str to Tensor or None
        NTK linearisation point: the pretrained values of the PEFT parameters for a model trained
        with ``--peft``; ``None`` for an ordinarily trained model (NTK methods then linearise at
        the trained weights, as the reference notebook does in practice).
    seed : int
        Seed of the unlearning run (random labels, batch order).
    progress : bool
        Show progress bars.
    info : dict
        Filled by the method: anything worth reporting (NTK timings, mask size, ...).
    model_dir : Path or None
        Run folder of the model being unlearned (where a kept NTK state lives); ``None`` when the
        model did not come from a run folder.
    model_meta : dict
        That folder's ``meta.json`` (``ntk_state_*`` keys describe a kept NTK state).
    train_fingerprint, n_train : str or None, int or None
        Fingerprint and number of the samples the model was trained on, :math:`D = D_r \\cup D_f`
        (what a kept NTK state must cover).
    ntk_state_out : PendingStateCommit or None
        Filled by ``ntk``/``fast-ntk`` on the kept-state path: the state, to be downdated to
        :math:`D_r` (``.commit()``) and kept by the unlearned run folder so the next request is
        cheap too.
    """

    target: str
    recipe: TrainingRecipe = field(default_factory=TrainingRecipe)
    w0: dict[str, torch.Tensor] | None = None
    seed: int = 0
    progress: bool = False
    info: dict = field(default_factory=dict)
    model_dir: Path | None = None
    model_meta: dict = field(default_factory=dict)
    train_fingerprint: str | None = None
    n_train: int | None = None
    ntk_state_out: Any = None

    def target_index(self, dataset) -> int:
        return dataset.schema.index(self.target)


@runtime_checkable
class Unlearner(Protocol):
    """``unlearn(model, retain, forget, val, *, context) -> model`` (a new model; the input is untouched)."""

    name: str

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        ...  # pragma: no cover - protocol


#: name -> unlearner class, filled by :func:`register_unlearner`.
UNLEARNERS = Registry("unlearning method", name_attribute="name")


def register_unlearner(name: str) -> Callable[[type], type]:
    """Class decorator registering an :class:`Unlearner` under ``name`` (sets ``cls.name``)."""
    return UNLEARNERS.register(name)


def _ensure_loaded() -> None:
    import privkit.unlearn.baselines  # noqa: F401  (registers the baselines)
    import privkit.unlearn.methods_ntk  # noqa: F401
    import privkit.unlearn.methods_rurk  # noqa: F401


def list_unlearners() -> list[str]:
    """Registered method names, in registration order."""
    _ensure_loaded()
    return UNLEARNERS.names()


def get_unlearner(name: str, **params: Any) -> Unlearner:
    """An instance of method ``name`` with hyperparameters ``params``.

    Raises
    ------
    ConfigError
        Unknown method (the message lists the known ones) or unknown hyperparameter.
    """
    _ensure_loaded()
    method = UNLEARNERS.lookup(name)
    _check_option_types(name, method, params)
    try:
        return method(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad options for unlearning method {name!r}: {e}") from None


def _check_option_types(name: str, method: Any, params: dict) -> None:
    """Refuse a hyperparameter whose value does not fit the constructor's annotation (one line).

    Options from the CLI arrive as parsed JSON or plain strings: ``early_stop="False"`` would be a
    truthy string and ``lam="abc"`` would fail deep inside training, after the run folder exists.
    """
    import inspect

    try:
        signature = inspect.signature(method.__init__)
    except (TypeError, ValueError):
        return
    for key, value in params.items():
        parameter = signature.parameters.get(key)
        if parameter is None or value is None:
            continue
        annotation = str(parameter.annotation)
        kinds = {part.strip() for part in annotation.replace("Optional[", "").rstrip("]").split("|")} - {"None"}
        checks = {"bool": lambda v: isinstance(v, bool),
                  "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                  "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "str": lambda v: isinstance(v, str)}
        if not kinds or not kinds <= set(checks) or any(checks[k](value) for k in kinds):
            continue  # fits, or an annotation this check does not understand
        names = {"bool": "true or false", "float": "a number", "int": "an integer", "str": "a string"}
        wanted = " or ".join(names[k] for k in sorted(kinds))
        raise ConfigError(f"option {key}={value!r} of unlearning method {name!r} must be {wanted}")


def fresh_model_like(model: nn.Module, schema) -> nn.Module:
    """A newly initialised model of ``model``'s architecture and kwargs (its ``privkit_spec``) for ``schema``.

    Initialisation draws from torch's global generator: seed it first for reproducibility.
    """
    from privkit.models import create

    spec = getattr(model, "privkit_spec", None)
    if spec is None:
        raise ConfigError("model was not created with privkit.models.create; cannot rebuild it for retraining")
    return create(spec["architecture"], schema, spec["num_classes"], **spec["kwargs"])


def copy_model(model: nn.Module) -> nn.Module:
    """Deep copy keeping ``privkit_spec`` (methods never modify the model they are given)."""
    out = copy.deepcopy(model)
    if hasattr(model, "privkit_spec"):
        out.privkit_spec = copy.deepcopy(model.privkit_spec)
    return out
