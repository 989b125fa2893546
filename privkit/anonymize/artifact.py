"""The anonymizer as a privkit run-folder artifact (kind ``"anonymizer"``), and its ``privkit transform``.

A fitted :class:`~privkit.anonymize.estimator.BiometricAnonymizer` is stored in a run folder as
``weights.safetensors`` (its arrays: relevance, per-feature weights, the kept-attribute model and
the reference pool) + ``meta.json`` (``kind: "anonymizer"``, the schema it was fitted on, the kept
and hidden attributes, and the estimator's own JSON state under ``extra.estimator``), written with
:func:`privkit.io.save_artifact` -- never pickle. :func:`load_anonymizer` reads it back; the
``"anonymizer"`` kind is registered with :mod:`privkit.transforms` so ``privkit transform
--transform RUN`` applies it to new data.

.. warning:: The artifact contains raw records (the reference pool). Store it like the original
   data and never publish it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from privkit.anonymize.estimator import BiometricAnonymizer
from privkit.data.schema import Schema
from privkit.errors import ArtifactError, SchemaError
from privkit.transforms import register_transform_kind

KIND = "anonymizer"


def save_anonymizer(folder: str | Path, anonymizer: BiometricAnonymizer, schema: Schema, *, sensitive: str, keep: str,
                    config: dict | None = None, metrics: dict | None = None, data_fingerprint: str | None = None) -> Path:
    """Write ``anonymizer`` into ``folder`` as a ``kind="anonymizer"`` artifact.

    Parameters
    ----------
    folder : path
        The run folder (its ``complete`` marker is written by :class:`privkit.io.RunDir`).
    anonymizer : fitted BiometricAnonymizer
        Fitted with class *names* as labels (see :func:`privkit.anonymize.run.fit_anonymizer`), so
        new data is matched by name, not by label index.
    schema : Schema
        Schema of the data it was fitted on.
    sensitive, keep : str
        The hidden identity attribute and the kept attribute.
    """
    arrays, estimator_meta = anonymizer.get_state()
    tensors = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
    meta = {
        "kind": KIND,
        "architecture": "BiometricAnonymizer",
        "kwargs": estimator_meta["params"],
        "schema": schema.to_dict(),
        "config": dict(config or {}, sensitive=sensitive, keep=keep),
        "metrics": metrics or {},
        "data_fingerprint": data_fingerprint,
        "extra": {"estimator": estimator_meta},
    }
    from privkit.io import save_artifact

    return save_artifact(folder, tensors, meta)


def load_anonymizer(folder: str | Path) -> tuple[BiometricAnonymizer, dict]:
    """``(anonymizer, meta)`` from an ``"anonymizer"`` artifact folder (safetensors + JSON only)."""
    from privkit.io import load_artifact

    tensors, meta = load_artifact(folder, expected_kind=KIND)
    try:
        estimator_meta = meta["extra"]["estimator"]
    except (KeyError, TypeError):
        raise ArtifactError(f"{folder}/meta.json lacks extra.estimator; the anonymizer is incomplete, re-run privkit anonymize") from None
    arrays = {name: t.numpy() for name, t in tensors.items()}
    return BiometricAnonymizer.from_state(arrays, estimator_meta, where=str(folder)), meta


class _BindingSchema:
    """The fitted schema, remembering the schema of the data it is checked against.

    ``privkit.transforms`` hands :meth:`AnonymizerTransform.transform_batch` only ``(x, attrs)``,
    with ``attrs`` in the *data's* column order and label codes; mapping them to the fitted class
    names needs the data's schema. :func:`privkit.transforms.check_applicable` always calls
    ``transform.schema.check_compatible(data_schema)`` first, so this wrapper records it there.
    """

    def __init__(self, schema: Schema, owner: "AnonymizerTransform"):
        self._schema, self._owner = schema, owner

    def check_compatible(self, other: Schema, what: str = "model", attributes=None) -> None:
        self._schema.check_compatible(other, what=what, attributes=attributes)
        self._owner.bind(other)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._schema, name)


class AnonymizerTransform:
    """A saved anonymizer applied batch by batch (what ``privkit transform`` runs).

    Each record is mixed with ``k - 1`` records of the stored reference pool. The kept class comes
    from the data's labels when the data has the kept attribute (else it is predicted), and the
    record's own person is excluded from its set when the data's identity names match pool
    identities. Draws are counter based on the record's row: rows are counted across calls in the
    order batches arrive (``privkit.transforms`` streams the dataset in order, so the row is the
    sample's index), or given explicitly with ``indices``.
    """

    def __init__(self, anonymizer: BiometricAnonymizer, meta: dict):
        self.anonymizer = anonymizer
        self.meta = meta
        self.fitted_schema = Schema.from_dict(meta["schema"])
        self.keep = meta["config"]["keep"]
        self.sensitive = meta["config"]["sensitive"]
        self.schema = _BindingSchema(self.fitted_schema, self)
        self.data_schema: Schema | None = None
        self._next_row = 0

    def bind(self, data_schema: Schema) -> "AnonymizerTransform":
        """Use ``data_schema`` to read ``attrs`` and restart the row counter."""
        self.fitted_schema.check_compatible(data_schema, what="anonymizer")
        self.data_schema = data_schema
        self._next_row = 0
        return self

    def _labels(self, attrs: torch.Tensor | None, name: str) -> np.ndarray | None:
        """Class names of attribute ``name`` for the batch, or None when the data lacks it."""
        if attrs is None:
            return None
        schema = self.data_schema
        if schema is None:
            # unbound: only safe when the data has exactly the fitted attributes
            if attrs.shape[1] != len(self.fitted_schema.attributes):
                raise SchemaError(f"attrs have {attrs.shape[1]} columns but the anonymizer was fitted on "
                                  f"{len(self.fitted_schema.attributes)}; call bind(data_schema) first")
            schema = self.fitted_schema
        if name not in schema.attribute_names:
            return None
        attribute = schema.attribute(name)
        codes = attrs[:, schema.index(name)].numpy()
        return np.asarray(attribute.classes)[codes]

    def transform_batch(self, x: torch.Tensor, attrs: torch.Tensor | None = None, indices=None,
                        schema: Schema | None = None) -> torch.Tensor:
        """Anonymize one batch of samples ``(B, *input_shape)``; returns samples of the same shape."""
        if schema is not None and schema is not self.data_schema:
            self.bind(schema)
        n = int(x.shape[0])
        if indices is None:
            start = self._next_row
            rows = None
        else:
            rows = np.asarray(indices, dtype=np.int64).reshape(-1)
            start = int(rows[0]) if n else 0
        keep = self._labels(attrs, self.keep)
        identity = self._labels(attrs, self.sensitive)
        if rows is not None and n and not np.array_equal(rows, np.arange(start, start + n)):
            # non-contiguous rows: one record at a time so each keeps its own row's draws
            out = torch.stack([self.anonymizer.transform(x[i:i + 1], None if keep is None else keep[i:i + 1],
                                                         None if identity is None else identity[i:i + 1],
                                                         start_row=int(r))[0] for i, r in enumerate(rows)])
        else:
            out = self.anonymizer.transform(x, keep, identity, start_row=start)
        self._next_row = start + n
        return torch.as_tensor(out, dtype=torch.float32)


@register_transform_kind(KIND)
def _load_transform(folder: Path) -> AnonymizerTransform:
    anonymizer, meta = load_anonymizer(folder)
    return AnonymizerTransform(anonymizer, meta)


__all__ = ["KIND", "AnonymizerTransform", "load_anonymizer", "save_anonymizer"]
