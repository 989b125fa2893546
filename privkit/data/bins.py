"""Binning numeric attributes into named classes.

Every privkit attribute is categorical, so numeric columns (age, height, weight) are cut at
user-given edges. Edges ``e_1 < e_2 < ... < e_m`` give ``m + 1`` classes named
``<e_1``, ``e_1-e_2``, ..., ``>=e_m``; a value ``v`` falls in class ``k = #{j : e_j <= v}``
(left-closed intervals, as ``numpy.searchsorted(edges, v, side="right")``).

Users write bins as ``name=e1,e2,...`` (``--bins age=25,35 --bins height=170,180``).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from privkit.errors import ConfigError, SchemaError

BIN_SYNTAX = "write bins as NAME=EDGE1,EDGE2,... with increasing numbers, e.g. age=25,35"


def format_edge(edge: float) -> str:
    """``25.0 -> "25"``, ``1.5 -> "1.5"``: integral edges print without a decimal point."""
    edge = float(edge)
    if edge.is_integer():
        return str(int(edge))
    return f"{edge:g}"


def bin_classes(edges: Sequence[float]) -> tuple[str, ...]:
    """Class names of the ``len(edges) + 1`` bins cut at ``edges``.

    Examples
    --------
    >>> bin_classes([25, 35])
    ('<25', '25-35', '>=35')
    """
    edges = [float(e) for e in edges]
    if not edges:
        raise ConfigError(f"a binning needs at least one edge; {BIN_SYNTAX}")
    names = [f"<{format_edge(edges[0])}"]
    names += [f"{format_edge(a)}-{format_edge(b)}" for a, b in zip(edges[:-1], edges[1:])]
    names.append(f">={format_edge(edges[-1])}")
    return tuple(names)


def check_edges(name: str, edges: Sequence[float]) -> list[float]:
    """Validate edges: at least one, all finite, strictly increasing."""
    edges = [float(e) for e in edges]
    if not edges:
        raise ConfigError(f"bins for {name!r} name no edges; {BIN_SYNTAX}")
    if not all(math.isfinite(e) for e in edges):
        raise ConfigError(f"bins for {name!r} contain a non-finite edge {edges}; {BIN_SYNTAX}")
    if any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ConfigError(f"bins for {name!r} are not strictly increasing: {edges}; {BIN_SYNTAX}")
    return edges


def parse_bins(specs: str | Iterable[str] | Mapping[str, Sequence[float]] | None) -> dict[str, list[float]]:
    """Parse user bin specifications into ``{attribute: edges}``.

    Parameters
    ----------
    specs : str, iterable of str, mapping or None
        ``"age=25,35"``, ``["age=25,35", "height=170,180"]``, or an already parsed mapping.

    Examples
    --------
    >>> parse_bins(["age=25,35", "height=170,180"])
    {'age': [25.0, 35.0], 'height': [170.0, 180.0]}
    """
    if specs is None:
        return {}
    if isinstance(specs, Mapping):
        return {str(k): check_edges(str(k), v) for k, v in specs.items()}
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, list[float]] = {}
    for spec in specs:
        spec = str(spec).strip()
        name, sep, rest = spec.partition("=")
        name = name.strip()
        if not sep or not name or not rest.strip():
            raise ConfigError(f"cannot parse bins {spec!r}; {BIN_SYNTAX}")
        try:
            edges = [float(p) for p in rest.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"bins {spec!r} contain a value that is not a number; {BIN_SYNTAX}") from None
        if name in out:
            raise ConfigError(f"bins for {name!r} given twice; give each attribute's bins once")
        out[name] = check_edges(name, edges)
    return out


def to_numbers(name: str, values: Sequence[str], sample_ids: Sequence[str] | None = None) -> np.ndarray:
    """Parse the raw values of attribute ``name`` as finite floats (needed to bin it)."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            where = f" (sample {sample_ids[i]})" if sample_ids is not None else ""
            raise SchemaError(
                f"attribute {name!r} has the non-numeric value {str(v)!r}{where}; only numeric attributes can be binned"
            ) from None
        if not math.isfinite(out[i]):
            where = f" (sample {sample_ids[i]})" if sample_ids is not None else ""
            raise SchemaError(f"attribute {name!r} has the non-finite value {str(v)!r}{where}; fix the value")
    return out


def bin_values(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Labels ``k = #{j : e_j <= v}`` of numeric ``values`` for bins cut at ``edges``."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64),
                           side="right").astype(np.int64)


def quantile_edges(values: Sequence[float], n_bins: int = 3) -> list[float]:
    """Edges at the ``1/n, ..., (n-1)/n`` quantiles of ``values``, rounded to integers when the
    values span more than a few units (so classes read ``<170``, ``170-180``, ``>=180``).

    Repeated edges (few distinct values) are merged; a constant column gives one edge at its value.
    """
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, np.arange(1, n_bins) / n_bins)
    if np.ptp(v) > 10:
        q = np.round(q)
    edges = sorted(set(float(e) for e in q))
    return edges or [float(v[0])]
