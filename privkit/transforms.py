"""Saved transforms: one registry of artifact kinds that ``privkit transform`` can apply.

A learned transform (MaSS suppression, anonymizers, ...) is saved as an artifact whose
``meta.json`` names its ``kind``. A module registers a loader for its kind::

    @register_transform_kind("mass")
    def _load_mass(folder):
        return MaSS.load(folder)          # has .schema and .transform_batch(x, attrs)

and :func:`apply_transform` streams any dataset through it in batches into
:func:`privkit.data.writers.write_released`, which writes the release in the input's own format
without holding the dataset in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from privkit.errors import ArtifactError, ConfigError


class SavedTransform(Protocol):
    """What a loader returns: the schema it was fitted on and a batch transform."""

    schema: Any

    def transform_batch(self, x, attrs, indices=None, schema=None):  # pragma: no cover - protocol
        """``x'`` for one batch; ``indices`` are the samples' dataset indices (for per-sample
        randomness independent of batching), ``schema`` the data's schema."""
        ...


_KINDS: dict[str, Callable[[Path], SavedTransform]] = {}


def register_transform_kind(kind: str):
    """Decorator registering ``loader(folder) -> SavedTransform`` for artifacts of ``kind``."""

    def deco(loader: Callable[[Path], SavedTransform]) -> Callable[[Path], SavedTransform]:
        if kind in _KINDS:
            raise ValueError(f"transform kind {kind!r} registered twice")
        _KINDS[kind] = loader
        return loader

    return deco


def _ensure_loaded() -> None:
    """Import the modules that register the built-in kinds (absent optional ones are skipped)."""
    import importlib

    for module in ("privkit.suppress", "privkit.anonymize"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise


def list_transform_kinds() -> list[str]:
    _ensure_loaded()
    return sorted(_KINDS)


def load_transform(run_dir: str | Path) -> tuple[SavedTransform, dict]:
    """Load the transform saved in a finished run folder; returns ``(transform, meta)``."""
    from privkit.io.artifacts import read_meta
    from privkit.io.rundir import require_complete

    folder = require_complete(run_dir, "transform")
    meta = read_meta(folder)
    _ensure_loaded()
    kind = meta.get("kind")
    if kind not in _KINDS:
        raise ArtifactError(f"{folder} holds a {kind!r} artifact, which is not a transform; transforms: "
                            f"{', '.join(sorted(_KINDS)) or '(none)'}; point --transform at a suppress/anonymize run")
    return _KINDS[kind](folder), meta


def check_applicable(transform: SavedTransform, dataset, meta: dict | None = None) -> None:
    """Raise :class:`~privkit.errors.SchemaError` unless ``dataset`` has the modality, shape and the
    attributes (with the same classes) of the data the transform was fitted on."""
    names = list((meta or {}).get("config", {}).get("suppress", [])) + list((meta or {}).get("config", {}).get("preserve", []))
    transform.schema.check_compatible(dataset.schema, what="transform", attributes=names or None)


def transformed_batches(transform: SavedTransform, dataset, batch_size: int = 256) -> Iterator[tuple]:
    """Yield ``(indices, x')`` for every sample of ``dataset``, reading and transforming batch by batch."""
    if int(batch_size) < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1")
    for idx, x, attrs in dataset.batches(int(batch_size)):
        # sample indices and the data's schema let a transform draw per-sample randomness that does
        # not depend on how the data is batched, and map labels by class name
        yield idx, transform.transform_batch(x, attrs, indices=idx, schema=dataset.schema)


def apply_transform(run_dir: str | Path, dataset, out_dir: str | Path, batch_size: int = 256) -> Path:
    """Apply the transform saved in ``run_dir`` to ``dataset`` and write the release to ``out_dir``.

    Everything is checked before anything is written: the run is finished and holds a transform,
    the data matches its schema (modality, shape, attributes) and ``out_dir`` does not exist yet.
    The release is written in the input's own layout (images, WAVs, motion CSVs, npz) by
    :func:`privkit.data.writers.write_released`, atomically.
    """
    from privkit.data.writers import write_released

    transform, meta = load_transform(run_dir)
    check_applicable(transform, dataset, meta)
    out = Path(out_dir).expanduser()
    if out.exists():
        raise ConfigError(f"output folder {out} already exists; choose a new --out or remove it")
    if int(batch_size) < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1")
    return write_released(dataset, transformed_batches(transform, dataset, batch_size), out)


__all__ = ["register_transform_kind", "list_transform_kinds", "load_transform", "apply_transform",
           "transformed_batches", "check_applicable", "SavedTransform"]
