"""The ``PrivkitError`` family.

Every error a user can cause (a bad path, an unknown attribute, a corrupt file, an infeasible
budget) is raised as a subclass of :class:`PrivkitError` with a message that names the bad value
and says how to fix it. The CLI turns these into one red line and exit code 2.
"""

from __future__ import annotations


class PrivkitError(Exception):
    """Base class of every user-facing privkit error. The message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class DataError(PrivkitError):
    """A dataset is missing, empty, corrupt, or laid out in a way privkit cannot read."""


class SchemaError(PrivkitError):
    """An attribute, modality or shape does not match the dataset's or the model's schema."""


class ConfigError(PrivkitError):
    """An option or a combination of options is invalid (for example an infeasible budget)."""


class ArtifactError(PrivkitError):
    """A saved model, transform or run directory is incomplete, corrupt or not what it claims."""


class ResourceError(PrivkitError):
    """A configuration would not fit in memory or on disk, or an output cannot be written."""
