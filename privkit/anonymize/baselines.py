"""Naive anonymization baselines: Gaussian blur / noise and pixelation / coarse quantisation.

They are what a data owner might try first, and the yardstick the anonymizer must beat: at matched
kept-attribute accuracy, identity should be much closer to chance after
:class:`~privkit.anonymize.estimator.BiometricAnonymizer` than after either baseline.

Both work on the same fixed-length representation as the anonymizer, laid out on the
representation's natural grid, and the result is decoded back to samples the same way (so audio
baselines also go through Griffin-Lim and are compared on equal terms):

========  =======================  =============================================  =================================================
modality  grid                     ``blur`` (strength ``s``)                      ``pixelate`` (strength ``b``)
========  =======================  =============================================  =================================================
image     ``(C, H, W)`` pixels     Gaussian blur, ``sigma = s`` pixels            ``b x b`` block means (pixelation)
audio     ``(1, mels, frames)``    Gaussian blur of the log-mel spectrogram,      ``b x b`` block means of the log-mel spectrogram
                                   ``sigma = s`` bins
motion    ``(C, 1, W)``            Gaussian blur along time, ``sigma = s``        means of ``b`` consecutive samples
                                   samples
features  ``(d,)``                 Gaussian noise, ``std = s`` x feature std      quantisation to steps of ``b / 4`` feature std
========  =======================  =============================================  =================================================

A blur is separable: ``y = g_s * x`` along each spatial axis with ``g_s(t) ∝ exp(-t² / 2s²)``
truncated at ``|t| <= ceil(3 s)``, edges replicated. A block mean replaces every value of a block
(the last block of an axis may be shorter) by the block's mean. Baselines are registered with
:func:`register_baseline`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from privkit.anonymize.representations import Representation
from privkit.errors import ConfigError

_BASELINES: dict[str, Callable[..., np.ndarray]] = {}

#: Strengths swept by default when matching kept-attribute accuracy (per baseline).
DEFAULT_STRENGTHS = {"blur": (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
                     "pixelate": (2, 3, 4, 6, 8, 12, 16, 24)}


def register_baseline(name: str):
    """Register ``f(rows, representation, strength, seed) -> rows`` as baseline ``name``."""

    def decorate(fn):
        _BASELINES[name] = fn
        return fn

    return decorate


def available_baselines() -> list[str]:
    return sorted(_BASELINES)


def grid_shape(representation: Representation) -> tuple[int, int, int] | None:
    """``(C, H, W)`` layout of one encoded row, or None for plain feature vectors."""
    modality = representation.modality
    if modality == "image":
        return tuple(representation.input_shape)  # type: ignore[return-value]
    if modality == "audio":
        return (1, representation.n_mels, representation.frames)
    if modality == "motion":
        c, w = representation.input_shape
        return (c, 1, w)
    return None


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-t ** 2 / (2.0 * sigma ** 2))
    return g / g.sum()


def _blur_axis(x: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    """Convolve along ``axis`` with a Gaussian, replicating edge values."""
    g = _gaussian_kernel(sigma)
    radius = len(g) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(x, pad, mode="edge")
    out = np.zeros_like(x)
    n = x.shape[axis]
    for offset, weight in enumerate(g):  # kernel is short: one shifted add per tap
        out += weight * np.take(padded, np.arange(offset, offset + n), axis=axis)
    return out


def _block_mean_axis(x: np.ndarray, axis: int, block: int) -> np.ndarray:
    """Replace each run of ``block`` values along ``axis`` by its mean (last run may be shorter)."""
    n = x.shape[axis]
    starts = np.arange(0, n, block)
    sums = np.add.reduceat(x, starts, axis=axis)
    counts = np.diff(np.r_[starts, n]).astype(np.float64)
    shape = [1] * x.ndim
    shape[axis] = len(starts)
    means = sums / counts.reshape(shape)
    return np.repeat(means, np.diff(np.r_[starts, n]), axis=axis)


def _check_strength(strength: float, name: str) -> float:
    s = float(strength)
    if not math.isfinite(s) or s <= 0:
        raise ConfigError(f"{name} strength {strength!r} must be a positive number")
    return s


@register_baseline("blur")
def blur_rows(rows: np.ndarray, representation: Representation, strength: float, seed: int = 0) -> np.ndarray:
    """Gaussian blur (``sigma = strength``) on the grid; Gaussian noise for feature vectors."""
    sigma = _check_strength(strength, "blur")
    rows = np.asarray(rows, dtype=np.float64)
    grid = grid_shape(representation)
    if grid is None:  # no neighbourhood to blur over: additive noise scaled per feature
        rng = np.random.default_rng(seed)
        return rows + rng.standard_normal(rows.shape) * sigma * rows.std(axis=0, keepdims=True)
    x = rows.reshape(len(rows), *grid)
    for axis in (2, 3):
        if x.shape[axis] > 1:
            x = _blur_axis(x, axis, sigma)
    return x.reshape(len(rows), -1)


@register_baseline("pixelate")
def pixelate_rows(rows: np.ndarray, representation: Representation, strength: float, seed: int = 0) -> np.ndarray:
    """Block means of ``strength x strength`` cells on the grid; coarse quantisation for feature vectors."""
    block = _check_strength(strength, "pixelate")
    rows = np.asarray(rows, dtype=np.float64)
    grid = grid_shape(representation)
    if grid is None:  # quantise each feature to steps of block/4 of its standard deviation
        step = (block / 4.0) * np.maximum(rows.std(axis=0, keepdims=True), 1e-12)
        centre = rows.mean(axis=0, keepdims=True)
        return centre + np.round((rows - centre) / step) * step
    block = max(1, int(round(block)))
    x = rows.reshape(len(rows), *grid)
    for axis in (2, 3):
        if x.shape[axis] > 1:
            x = _block_mean_axis(x, axis, block)
    return x.reshape(len(rows), -1)


def apply_baseline(name: str, samples, representation: Representation, strength: float, seed: int = 0,
                   batch_size: int = 512):
    """Apply baseline ``name`` to samples ``(N, *input_shape)``; returns a float32 tensor of the same shape."""
    import torch

    if name not in _BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; use one of {', '.join(available_baselines())}")
    fn = _BASELINES[name]
    grid = grid_shape(representation)
    if grid is None:  # statistics-based variants need the whole set at once
        return representation.decode(fn(representation.encode(samples), representation, strength, seed))
    out = []
    for start in range(0, len(samples), batch_size):
        rows = representation.encode(samples[start:start + batch_size])
        out.append(representation.decode(fn(rows, representation, strength, seed)))
    return torch.cat(out)


__all__ = ["DEFAULT_STRENGTHS", "apply_baseline", "available_baselines", "blur_rows", "grid_shape", "pixelate_rows",
           "register_baseline"]
