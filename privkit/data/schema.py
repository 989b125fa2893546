"""Schema: what a dataset holds.

A :class:`Schema` names the modality (``image``, ``audio``, ``motion``, ``features``), the input
shape of one sample and every attribute with its class names. Every privkit module takes an
:class:`~privkit.data.datasets.AttributeDataset` whose ``schema`` is one of these, and every
artifact stores the schema it was trained on so that applying it to other data is checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from privkit.errors import SchemaError

MODALITIES = ("image", "audio", "motion", "features")


@dataclass(frozen=True)
class Attribute:
    """One categorical attribute.

    Parameters
    ----------
    name : str
        Attribute name as users type it (``gender``, ``identity``).
    classes : tuple of str
        Class names; label ``k`` means ``classes[k]``.
    identity : bool
        True when the attribute names the person (subject, speaker). Splits are grouped by it and
        audits of it are closed-set.
    """

    name: str
    classes: tuple[str, ...]
    identity: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(self.classes) < 1:
            raise SchemaError(f"attribute {self.name!r} has no classes; give at least one class name")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, value: Any) -> int:
        """Label of a class given its name (or its integer label)."""
        value_str = str(value)
        if value_str in self.classes:
            return self.classes.index(value_str)
        raise SchemaError(
            f"unknown value {value_str!r} for attribute {self.name!r}; known values: "
            f"{', '.join(self.classes[:20])}{' ...' if len(self.classes) > 20 else ''}"
        )

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "identity": self.identity}

    @classmethod
    def from_dict(cls, d: dict) -> "Attribute":
        return cls(name=str(d["name"]), classes=tuple(d["classes"]), identity=bool(d.get("identity", False)))


@dataclass(frozen=True)
class Schema:
    """Modality, input shape and attributes of a dataset.

    Parameters
    ----------
    modality : {"image", "audio", "motion", "features"}
    attributes : tuple of Attribute
    input_shape : tuple of int
        Shape of one sample ``x``: ``(C, H, W)`` for images, ``(1, T)`` for audio waveforms,
        ``(channels, window)`` for motion, ``(d,)`` for features.
    sample_rate : int, optional
        Samples per second for audio and motion.
    layout : str
        The on-disk layout the data came from (``image_csv``, ``fsdd``, ``npz`` ...), used to write
        released data back in the input's own format.

    Examples
    --------
    >>> s = Schema("features", (Attribute("y", ("a", "b")),), (4,))
    >>> s.attribute("y").num_classes
    2
    """

    modality: str
    attributes: tuple[Attribute, ...]
    input_shape: tuple[int, ...]
    sample_rate: int | None = None
    layout: str = "npz"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise SchemaError(f"unknown modality {self.modality!r}; use one of {', '.join(MODALITIES)}")
        object.__setattr__(self, "attributes", tuple(self.attributes))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate attribute names in {names}; each attribute must be named once")

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def attribute(self, name: str) -> Attribute:
        """The attribute called ``name``; an unknown name is an error listing the known ones."""
        for a in self.attributes:
            if a.name == name:
                return a
        raise SchemaError(
            f"unknown attribute {name!r}; this dataset has: {', '.join(self.attribute_names) or '(none)'}"
        )

    def index(self, name: str) -> int:
        """Column of attribute ``name`` in the ``attrs`` tensor."""
        self.attribute(name)
        return self.attribute_names.index(name)

    def check_attributes(self, names: Iterable[str]) -> list[str]:
        names = [n.strip() for n in names if n.strip()]
        for n in names:
            self.attribute(n)
        return names

    @property
    def identity_attribute(self) -> str | None:
        for a in self.attributes:
            if a.identity:
                return a.name
        return None

    def to_dict(self) -> dict:
        return {
            "modality": self.modality,
            "attributes": [a.to_dict() for a in self.attributes],
            "input_shape": list(self.input_shape),
            "sample_rate": self.sample_rate,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Schema":
        try:
            return cls(
                modality=d["modality"],
                attributes=tuple(Attribute.from_dict(a) for a in d["attributes"]),
                input_shape=tuple(d["input_shape"]),
                sample_rate=d.get("sample_rate"),
                layout=d.get("layout", "npz"),
            )
        except (KeyError, TypeError) as e:
            raise SchemaError(f"malformed schema in metadata (missing {e}); the file was not written by privkit")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def check_compatible(self, other: "Schema", what: str = "model", attributes: Sequence[str] | None = None) -> None:
        """Raise unless ``other`` (the data) can be fed to something trained on ``self``.

        Modality and input shape must match; the named ``attributes`` (default: all of ours that the
        other has) must exist in ``other`` with the same classes.
        """
        if self.modality != other.modality:
            raise SchemaError(
                f"the {what} was trained on {self.modality} data but the data is {other.modality}; "
                f"use data of the same modality"
            )
        if tuple(self.input_shape) != tuple(other.input_shape):
            raise SchemaError(
                f"the {what} expects inputs of shape {list(self.input_shape)} but the data has "
                f"{list(other.input_shape)}; load the data with the same size options"
            )
        for name in attributes if attributes is not None else []:
            mine, theirs = self.attribute(name), None
            try:
                theirs = other.attribute(name)
            except SchemaError:
                raise SchemaError(
                    f"the {what} uses attribute {name!r} which the data lacks; the data has: "
                    f"{', '.join(other.attribute_names)}"
                ) from None
            if mine.classes != theirs.classes:
                raise SchemaError(
                    f"attribute {name!r} has classes {list(mine.classes)[:8]} in the {what} but "
                    f"{list(theirs.classes)[:8]} in the data; use data with the same classes"
                )
