"""Selective suppression: release data from which named attributes can no longer be inferred.

:class:`MaSS` (Chen et al., ICML 2024) learns a transform ``X' = G(X, noise)`` that removes
sensitive attributes while keeping annotated useful attributes and unannotated features; see
``docs/suppress.md``. :func:`privkit.suppress.report.suppress_run` is what ``privkit suppress`` runs.
"""

from privkit.suppress.generators import create_generator, list_generators, register_generator
from privkit.suppress.mass import MaSS, resolve_budgets

__all__ = ["MaSS", "resolve_budgets", "create_generator", "list_generators", "register_generator"]
