"""One registry type for every "name -> implementation" table of privkit.

Methods, samplers, operators, writers and representations are registered by decorator where they
are defined, so adding one never touches an if-chain elsewhere. :class:`Registry` is a ``dict``
(so ``name in REG``, ``REG[name]`` and ``list(REG)`` keep working) that adds the three things every
such table needs: a decorator that refuses a name registered twice, an optional attribute that
tells a registered class its own name, and a lookup whose error names the unknown value and the
known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from privkit.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(dict):
    """A ``name -> object`` table filled by decorator.

    Parameters
    ----------
    kind : str
        What is registered, for messages ("unlearning method", "sampler", ...).
    name_attribute : str, optional
        Attribute set on each registered object to the name it was registered under (e.g.
        ``"name"`` so an unlearner class knows its registry name).
    """

    def __init__(self, kind: str, name_attribute: str | None = None):
        super().__init__()
        self.kind = kind
        self.name_attribute = name_attribute

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; a second registration is an error."""

        def decorate(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            if self.name_attribute is not None:
                setattr(obj, self.name_attribute, name)
            self[name] = obj
            return obj

        return decorate

    def lookup(self, name: str, hint: str = "") -> Any:
        """``self[name]``, or a :class:`ConfigError` naming ``name`` and the known names."""
        try:
            return self[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self))}"
                              + (f" ({hint})" if hint else "")) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self)
