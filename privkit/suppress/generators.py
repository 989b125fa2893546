"""Generators ``X' = G(X, noise)`` for MaSS, one per modality, registered by decorator.

Every generator is a residual network ``x' = x + r(x, z)`` whose last layer is initialised at
``init_scale`` (default 0.3) of its usual scale. Close to the identity but not at it: with the
first default, 0.01, the residual branch started at ~0, its gradients were tiny and on real data
the generator never moved away from the identity (relative MSE 0.005 after training, attributes
untouched). Pass ``init_scale=0.01`` to start at the identity. The noise ``z`` (a vector of ``noise_dim`` standard normals per sample) is
projected to a per-channel bias inside the network, so the generator can replace a sensitive
signal with randomness instead of a deterministic (and hence invertible) code.

Outputs stay in the input's range:

- ``image``: pixels in ``[0, 1]``: ``x' = sigmoid(logit(x) + r)``;
- ``audio`` waveform ``(1, T)`` in ``[-1, 1]``: ``x' = tanh(atanh(x) + r)``;
- ``motion`` window ``(C, W)`` and ``features`` ``(d,)``: unbounded, ``x' = x + sigma * r`` with
  ``sigma`` the per-channel standard deviation measured on the training data.

Adding a modality or an architecture is one decorated factory
``factory(schema, noise_dim, **kwargs) -> nn.Module`` whose module maps ``(x, z) -> x'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from privkit.data.schema import Schema
from privkit.errors import ConfigError, SchemaError

_EPS = 1e-4


@dataclass(frozen=True)
class GeneratorEntry:
    name: str
    factory: Callable[..., nn.Module]
    modalities: tuple[str, ...]
    description: str


_GENERATORS: dict[str, GeneratorEntry] = {}
_DEFAULT_GENERATOR: dict[str, str] = {}


def register_generator(name: str, modalities: tuple[str, ...], description: str, default_for: tuple[str, ...] = ()):
    """Decorator registering ``factory(schema, noise_dim, **kw) -> nn.Module`` under ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _GENERATORS:
            raise ValueError(f"generator {name!r} registered twice")
        _GENERATORS[name] = GeneratorEntry(name, factory, tuple(modalities), description)
        for m in default_for:
            _DEFAULT_GENERATOR[m] = name
        return factory

    return deco


def list_generators(modality: str | None = None) -> list[str]:
    return sorted(n for n, e in _GENERATORS.items() if modality is None or modality in e.modalities)


def create_generator(name: str | None, schema: Schema, noise_dim: int = 8, **kwargs: Any) -> nn.Module:
    """Build generator ``name`` (default: the modality's) for inputs of ``schema``.

    The module remembers ``privkit_spec = {"architecture", "kwargs", "noise_dim"}`` so a saved
    transform can be rebuilt from ``meta.json`` without pickling code.
    """
    name = name or _DEFAULT_GENERATOR.get(schema.modality)
    if name not in _GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; known generators: {', '.join(sorted(_GENERATORS))}")
    entry = _GENERATORS[name]
    if schema.modality not in entry.modalities:
        raise SchemaError(f"generator {name!r} takes {'/'.join(entry.modalities)} data but the data is "
                          f"{schema.modality}; use one of: {', '.join(list_generators(schema.modality))}")
    if int(noise_dim) < 0:
        raise ConfigError(f"noise_dim {noise_dim} must be >= 0")
    gen = entry.factory(schema, int(noise_dim), **kwargs)
    gen.privkit_spec = {"architecture": name, "kwargs": dict(kwargs), "noise_dim": int(noise_dim)}
    return gen


def _small_init(layer: nn.Module, scale: float) -> None:
    """Scale a freshly initialised layer down so the residual branch starts close to zero."""
    with torch.no_grad():
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.zero_()


class _NoiseBias(nn.Module):
    """``z (B, noise_dim) -> (B, channels, 1, ...)`` bias added to hidden activations."""

    def __init__(self, noise_dim: int, channels: int, spatial_dims: int):
        super().__init__()
        self.proj = nn.Linear(noise_dim, channels) if noise_dim > 0 else None
        self.spatial_dims = spatial_dims

    def forward(self, h: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if self.proj is None or z is None:
            return h
        b = self.proj(z)
        return h + b.view(*b.shape, *([1] * self.spatial_dims))


class _GlobalContext(nn.Module):
    """``h + W mean(h)``: every position sees a summary of the whole sample.

    Convolutions only see a local window, but much of what identifies a person is global (a
    constant offset such as how a phone sits in a pocket, overall pitch or brightness). Without
    this path the generator cannot estimate such a quantity, so it cannot remove it.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Linear(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        g = self.proj(h.flatten(2).mean(-1))
        return h + g.view(*g.shape, *([1] * (h.dim() - 2)))


class _ConvResidualNet(nn.Module):
    """Stem -> residual blocks (with noise bias and global context) -> head; 1-D or 2-D convolutions.

    ``down`` > 1 runs the blocks at a coarser resolution (strided stem, transposed-conv head), which
    keeps long waveforms affordable on a CPU.
    """

    def __init__(self, dims: int, in_channels: int, noise_dim: int, width: int, blocks: int, kernel: int,
                 down: int, init_scale: float):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        convt = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose1d
        pad = kernel // 2
        if down > 1:
            self.stem = conv(in_channels, width, 2 * down, stride=down, padding=down // 2)
            self.head = convt(width, in_channels, 2 * down, stride=down, padding=down // 2)
        else:
            self.stem = conv(in_channels, width, kernel, padding=pad)
            self.head = conv(width, in_channels, kernel, padding=pad)
        self.noise = _NoiseBias(noise_dim, width, dims)
        self.blocks = nn.ModuleList()
        for i in range(blocks):
            dil = 2 ** i if dims == 1 else 1  # growing receptive field along time
            self.blocks.append(nn.Sequential(nn.GELU(), conv(width, width, kernel, padding=pad * dil, dilation=dil),
                                             nn.GELU(), conv(width, width, kernel, padding=pad * dil, dilation=dil)))
        self.context = nn.ModuleList(_GlobalContext(width) for _ in range(blocks))
        self.act = nn.GELU()
        _small_init(self.head, init_scale)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        h = self.noise(self.stem(x), z)
        for block, context in zip(self.blocks, self.context):
            h = context(h + block(h))
        r = self.head(self.act(h))
        if r.shape[-1] != x.shape[-1] or r.shape[-2] != x.shape[-2]:
            r = _fit_length(r, x.shape[2:])
        return r


def _fit_length(r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Crop or zero-pad the trailing dims of ``r`` to ``shape`` (strided convs may be off by a few)."""
    slices = [slice(None), slice(None)]
    pads: list[int] = []
    for have, want in zip(r.shape[2:], shape):
        slices.append(slice(0, min(have, want)))
    r = r[tuple(slices)]
    for have, want in reversed(list(zip(r.shape[2:], shape))):
        pads += [0, want - have]
    return nn.functional.pad(r, pads) if any(pads) else r


class ImageGenerator(nn.Module):
    """``x' = sigmoid(logit(x) + r(x, z))`` with ``r`` a 2-D conv residual network; pixels in [0, 1]."""

    def __init__(self, channels: int, noise_dim: int, width: int = 24, blocks: int = 3, down: int = 2,
                 init_scale: float = 0.3):
        super().__init__()
        # blocks run at 1/down resolution: attributes are mostly coarse shape, and it keeps a CPU fast
        self.net = _ConvResidualNet(2, channels, noise_dim, width, blocks, 3, down, init_scale)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        xc = x.clamp(_EPS, 1 - _EPS)
        # the network sees pixels centred at 0; the residual acts on logits so the output stays in (0, 1)
        return torch.sigmoid(torch.logit(xc) + self.net(xc - 0.5, z))


class WaveformGenerator(nn.Module):
    """``x' = tanh(atanh(x) + r(x, z))`` with ``r`` a strided 1-D conv residual net; samples in (-1, 1)."""

    def __init__(self, noise_dim: int, width: int = 24, blocks: int = 3, kernel: int = 5, down: int = 8,
                 init_scale: float = 0.3):
        super().__init__()
        self.net = _ConvResidualNet(1, 1, noise_dim, width, blocks, kernel, down, init_scale)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        xc = x.clamp(-1 + _EPS, 1 - _EPS)
        return torch.tanh(torch.atanh(xc) + self.net(xc, z))


class _Standardised(nn.Module):
    """Residual around a network that sees standardised inputs: ``x' = x + sigma * r((x - mu) / sigma, z)``.

    ``mu`` and ``sigma`` are buffers set once from the training data (:meth:`fit_scale`), saved with
    the weights, so the residual network works on unit-scale inputs whatever the data's units.
    """

    def __init__(self, net: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    @torch.no_grad()
    def fit_scale(self, x: torch.Tensor) -> None:
        dims = [0] + list(range(2, x.dim())) if x.dim() > 2 else [0]
        self.mean.copy_(x.mean(dim=dims).reshape(self.mean.shape))
        self.std.copy_((x.std(dim=dims) + 1e-6).reshape(self.std.shape))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.std * self.net((x - self.mean) / self.std, z)


class _MLPResidual(nn.Module):
    def __init__(self, d: int, noise_dim: int, hidden: int, depth: int, init_scale: float):
        super().__init__()
        self.inp = nn.Linear(d + noise_dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, d)
        self.noise_dim = noise_dim
        _small_init(self.out, init_scale)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if self.noise_dim:
            x = torch.cat([x, z if z is not None else x.new_zeros(len(x), self.noise_dim)], 1)
        h = nn.functional.gelu(self.inp(x))
        for layer in self.hidden:
            h = h + nn.functional.gelu(layer(h))
        return self.out(h)


class _Conv1dResidual(nn.Module):
    def __init__(self, channels: int, noise_dim: int, width: int, blocks: int, kernel: int, init_scale: float):
        super().__init__()
        self.net = _ConvResidualNet(1, channels, noise_dim, width, blocks, kernel, 1, init_scale)

    def forward(self, x, z):
        return self.net(x, z)


@register_generator("image-resnet", ("image",), "2-D conv residual net on logits, pixels stay in [0, 1]",
                    default_for=("image",))
def image_resnet(schema: Schema, noise_dim: int, width: int = 24, blocks: int = 3, down: int = 2,
                 init_scale: float = 0.3):
    return ImageGenerator(schema.input_shape[0], noise_dim, width, blocks, down, init_scale)


@register_generator("waveform-resnet", ("audio",), "strided 1-D conv residual net, samples stay in (-1, 1)",
                    default_for=("audio",))
def waveform_resnet(schema: Schema, noise_dim: int, width: int = 24, blocks: int = 3, kernel: int = 5, down: int = 8,
                    init_scale: float = 0.3):
    return WaveformGenerator(noise_dim, width, blocks, kernel, down, init_scale)


@register_generator("motion-resnet", ("motion",), "1-D conv residual net over sensor windows (standardised)",
                    default_for=("motion",))
def motion_resnet(schema: Schema, noise_dim: int, width: int = 32, blocks: int = 3, kernel: int = 5,
                  init_scale: float = 0.3):
    channels = schema.input_shape[0]
    return _Standardised(_Conv1dResidual(channels, noise_dim, width, blocks, kernel, init_scale), (channels, 1))


@register_generator("mlp-resnet", ("features",), "MLP residual net on standardised feature vectors",
                    default_for=("features",))
def mlp_resnet(schema: Schema, noise_dim: int, hidden: int = 128, depth: int = 3, init_scale: float = 0.3):
    d = int(torch.tensor(schema.input_shape).prod())
    return _Standardised(_MLPResidual(d, noise_dim, hidden, depth, init_scale), tuple(schema.input_shape))


def fit_generator_scale(generator: nn.Module, x: torch.Tensor) -> None:
    """Set the data statistics of generators that standardise their input (no-op for the others)."""
    if isinstance(generator, _Standardised):
        generator.fit_scale(x)


__all__ = ["register_generator", "create_generator", "list_generators", "fit_generator_scale", "ImageGenerator",
           "WaveformGenerator"]
