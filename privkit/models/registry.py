"""Model registry: ``@register_model`` factories, :func:`create`, :func:`list_models`.

Adding an architecture is one decorated function ``factory(schema, num_classes, **kwargs)``; the
CLI's ``--model`` choices come from here. Every created model remembers its name and kwargs so an
artifact can rebuild it (``meta.json``) without pickling code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from privkit.data.schema import Schema
from privkit.errors import ArtifactError, ConfigError, SchemaError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable
    modalities: tuple[str, ...]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}
_DEFAULTS: dict[str, str] = {}


def register_model(name: str, modalities: tuple[str, ...], description: str, default_for: tuple[str, ...] = ()):
    """Decorator registering ``factory(schema, num_classes, **kw) -> nn.Module`` under ``name``."""

    def deco(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, factory, tuple(modalities), description)
        for m in default_for:
            _DEFAULTS[m] = name
        return factory

    return deco


def _ensure_loaded() -> None:
    import privkit.models.classifiers  # noqa: F401  (registers the built-in models)
    import privkit.models.vit  # noqa: F401


def list_models(modality: str | None = None) -> list[str]:
    """Names of registered models (for one modality if given)."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if modality is None or modality in e.modalities)


def model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def default_model(modality: str) -> str:
    _ensure_loaded()
    return _DEFAULTS[modality]


def create(name: str | None, schema: Schema, num_classes: int, **kwargs: Any):
    """Build model ``name`` (default: the modality's default) for inputs of ``schema``.

    Examples
    --------
    >>> from privkit.data.schema import Schema, Attribute
    >>> s = Schema("features", (Attribute("y", ("a", "b")),), (4,))
    >>> create("mlp", s, 2)(__import__("torch").zeros(3, 4)).shape
    torch.Size([3, 2])
    """
    name = name or default_model(schema.modality)
    entry = model_entry(name)
    if schema.modality not in entry.modalities:
        raise SchemaError(
            f"model {name!r} takes {'/'.join(entry.modalities)} data but the data is {schema.modality}; "
            f"use one of: {', '.join(list_models(schema.modality))}"
        )
    model = entry.factory(schema, num_classes, **kwargs)
    model.privkit_spec = {"architecture": name, "kwargs": dict(kwargs), "num_classes": int(num_classes)}
    return model


def model_meta(model, schema: Schema, *, target: str | None, config: dict, metrics: dict, data_fingerprint: str,
               kind: str = "classifier", extra: dict | None = None) -> dict:
    spec = getattr(model, "privkit_spec", None)
    if spec is None:
        raise ConfigError("model was not created with privkit.models.create; cannot describe it in meta.json")
    meta = {
        "kind": kind,
        "architecture": spec["architecture"],
        "kwargs": spec["kwargs"],
        "num_classes": spec["num_classes"],
        "schema": schema.to_dict(),
        "target": target,
        "config": config,
        "metrics": metrics,
        "data_fingerprint": data_fingerprint,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    meta.update(extra or {})
    return meta


def save_model(folder: str | Path, model, meta: dict) -> Path:
    """Save ``model`` as ``weights.safetensors`` + ``meta.json`` (see :func:`model_meta`)."""
    from privkit.io.artifacts import save_artifact
    from privkit.train import unwrap

    return save_artifact(folder, dict(unwrap(model).state_dict()), meta)


def load_model(folder: str | Path, kinds: tuple[str, ...] = ("classifier",)):
    """Rebuild a model from a finished run folder. Returns ``(model, meta)``; never unpickles."""
    from privkit.io.artifacts import load_artifact
    from privkit.io.rundir import require_complete

    folder = require_complete(folder, "model")
    tensors, meta = load_artifact(folder)
    if meta.get("kind") not in kinds:
        raise ArtifactError(f"{folder} holds a {meta.get('kind')!r}, not a model ({'/'.join(kinds)}); point --model at a trained model run")
    schema = Schema.from_dict(meta["schema"])
    model = create(meta["architecture"], schema, int(meta["num_classes"]), **meta.get("kwargs", {}))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError:
        raise ArtifactError(f"weights in {folder} do not fit architecture {meta['architecture']!r}; the artifact is inconsistent") from None
    model.eval()
    return model, meta
