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
- ``audio`` waveform ``(1, T)`` in ``[-1, 1]``: by default (``spectral-mask``) a bounded mask, an
  additive term and optionally a frequency warp on the STFT magnitude, resynthesised with
  ``torch.istft`` (see :class:`SpectralMaskGenerator`); the first generator, ``waveform-resnet``
  (``x' = tanh(atanh(x) + r)``), is kept for comparison;
- ``motion`` window ``(C, W)`` and ``features`` ``(d,)``: unbounded, ``x' = x + sigma * r`` with
  ``sigma`` the per-channel standard deviation measured on the training data.

Adding a modality or an architecture is one decorated factory
``factory(schema, noise_dim, **kwargs) -> nn.Module`` whose module maps ``(x, z) -> x'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import math

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
                 init_scale: float = 0.3, max_logit: float | None = None):
        super().__init__()
        if max_logit is not None and (isinstance(max_logit, bool) or not isinstance(max_logit, (int, float))
                                      or not (math.isfinite(max_logit) and max_logit > 0)):
            raise ConfigError(f"max_logit={max_logit} must be > 0 (None: unbounded residual), e.g. 3")
        # blocks run at 1/down resolution: attributes are mostly coarse shape, and it keeps a CPU fast
        self.net = _ConvResidualNet(2, channels, noise_dim, width, blocks, 3, down, init_scale)
        self.max_logit = None if max_logit is None else float(max_logit)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        xc = x.clamp(_EPS, 1 - _EPS)
        # the network sees pixels centred at 0; the residual acts on logits so the output stays in (0, 1)
        r = self.net(xc - 0.5, z)
        if self.max_logit is not None:
            # a bounded edit, r = B tanh(r / B): the release cannot be driven into the flat tails of the
            # sigmoid (an all-black/white image has no gradient left for the kept attributes' guards)
            r = self.max_logit * torch.tanh(r / self.max_logit)
        return torch.sigmoid(torch.logit(xc) + r)


class WaveformGenerator(nn.Module):
    """``x' = tanh(atanh(x) + r(x, z))`` with ``r`` a strided 1-D conv residual net; samples in (-1, 1)."""

    def __init__(self, noise_dim: int, width: int = 24, blocks: int = 3, kernel: int = 5, down: int = 8,
                 init_scale: float = 0.3):
        super().__init__()
        self.net = _ConvResidualNet(1, 1, noise_dim, width, blocks, kernel, down, init_scale)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        xc = x.clamp(-1 + _EPS, 1 - _EPS)
        return torch.tanh(torch.atanh(xc) + self.net(xc, z))


class _FrameNet(nn.Module):
    """1-D conv residual net over spectrogram frames: ``(B, F, N) -> (B, out_bins, N)``.

    Every frequency bin is a channel, so each layer sees the whole spectrum of a frame (the spectral
    envelope and the harmonic spacing that carry speaker identity are patterns *across* frequency),
    while the convolutions and the global-context path run along time.
    """

    def __init__(self, bins: int, out_bins: int, noise_dim: int, width: int, blocks: int, kernel: int,
                 init_scale: float, global_out: int = 0):
        super().__init__()
        pad = kernel // 2
        # optional per-utterance outputs from the time-averaged hidden state (zero-initialised)
        self.global_head = nn.Linear(width, global_out) if global_out else None
        if self.global_head is not None:
            nn.init.zeros_(self.global_head.weight)
            nn.init.zeros_(self.global_head.bias)
        self.stem = nn.Conv1d(bins, width, kernel, padding=pad)
        self.noise = _NoiseBias(noise_dim, width, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv1d(width, width, kernel, padding=pad * 2 ** i, dilation=2 ** i),
                          nn.GELU(), nn.Conv1d(width, width, kernel, padding=pad * 2 ** i, dilation=2 ** i))
            for i in range(blocks))
        self.context = nn.ModuleList(_GlobalContext(width) for _ in range(blocks))
        self.head = nn.Conv1d(width, out_bins, kernel, padding=pad)
        _small_init(self.head, init_scale)

    def forward(self, h: torch.Tensor, z: torch.Tensor | None):
        h = self.noise(self.stem(h), z)
        for block, context in zip(self.blocks, self.context):
            h = context(h + block(h))
        h = nn.functional.gelu(h)
        if self.global_head is None:
            return self.head(h)
        return self.head(h), self.global_head(h.mean(-1))


class SpectralMaskGenerator(nn.Module):
    r"""Waveform -> waveform through a masked short-time Fourier transform.

    With :math:`X = \mathrm{STFT}(x)`, magnitude :math:`M = |X|`, phase :math:`\phi = \angle X` and
    :math:`(g, a) = r(\log M, z)` the output of a residual frame network (:class:`_FrameNet`),

    .. math::

        M' = M \, e^{\gamma \tanh g} + \beta \, \bar M \, \sigma(a - 4),\qquad
        x' = \mathrm{ISTFT}(M' e^{i \phi}) / \max(1, \max_t |\cdot| / 0.999)

    - the multiplicative mask is bounded to :math:`\pm` ``max_gain_db`` (:math:`\gamma = \ln 10
      \cdot \mathrm{max\_gain\_db} / 20`): it can reshape the spectral envelope (formants,
      tilt) and smear the harmonics that give the pitch away, but not create a different signal;
    - the additive term (at most ``additive`` times the utterance's mean magnitude :math:`\bar M`)
      fills time-frequency cells with energy (e.g. masks harmonic gaps), driven by the noise ``z``;
    - the phase is the input's, so at ``g = 0, a \to -\infty`` the STFT round trip returns the
      input exactly (Hann window, hop ``n_fft / 4``); the head is initialised at ``init_scale`` of its
      usual scale and the additive term starts at :math:`\sigma(-4) \approx 2\%`, near identity;
    - the release stays a waveform in ``(-1, 1)`` (rescaled only when a peak would reach 1).

    The residual network sees the per-utterance standardised log-magnitude, the same
    representation (up to the mel pooling) that the audit's attackers see.
    """

    def __init__(self, noise_dim: int, n_fft: int = 256, hop: int | None = None, width: int = 128, blocks: int = 3,
                 kernel: int = 3, max_gain_db: float = 20.0, additive: float = 1.0, init_scale: float = 0.1,
                 max_warp: float = 0.0):
        super().__init__()
        if not (math.isfinite(max_warp) and max_warp >= 0):
            raise ConfigError(f"max_warp={max_warp} must be >= 0 (0 disables the frequency warp), e.g. 0.5")
        if hop is not None and not (1 <= int(hop) <= n_fft // 2 and int(hop) == hop):
            # the Hann-windowed STFT only inverts exactly (COLA) with at least 50 % overlap
            raise ConfigError(f"hop={hop} must be an integer in [1, n_fft/2 = {n_fft // 2}], e.g. {n_fft // 4}")
        self.max_warp = float(max_warp)
        if int(n_fft) < 8 or int(n_fft) & (int(n_fft) - 1):
            raise ConfigError(f"n_fft={n_fft} must be a power of two >= 8, e.g. 256")
        if max_gain_db <= 0 or additive < 0:
            raise ConfigError(f"max_gain_db={max_gain_db} must be > 0 and additive={additive} >= 0")
        self.n_fft = int(n_fft)
        self.hop = int(hop or n_fft // 4)
        self.log_gain = math.log(10.0) * float(max_gain_db) / 20.0
        self.additive = float(additive)
        bins = self.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.net = _FrameNet(bins, 2 * bins, noise_dim, width, blocks, kernel, init_scale,
                             global_out=1 if self.max_warp > 0 else 0)
        with torch.no_grad():
            # the additive half starts at sigma(-4) ~ 2 % of the mean magnitude: near identity
            self.net.head.bias[bins:].fill_(-4.0)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        wave = x[:, 0]
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        mag, phase = spec.abs(), spec.angle()
        log_mag = torch.log(mag + 1e-5)
        mean = log_mag.mean(dim=(1, 2), keepdim=True)
        std = log_mag.std(dim=(1, 2), keepdim=True) + 1e-5
        out = self.net((log_mag - mean) / std, z)
        if self.max_warp > 0:
            out, warp = out
            log_factor = self.max_warp * torch.tanh(warp[:, 0])
            mag = self._warp(mag, log_factor)
            phase = self._warp_phase(spec, log_factor.detach())
        gain, add = out.chunk(2, dim=1)
        ref = mag.mean(dim=(1, 2), keepdim=True)
        mag_rel = mag * torch.exp(self.log_gain * torch.tanh(gain)) + self.additive * ref * torch.sigmoid(add)
        y = torch.istft(torch.polar(mag_rel, phase), self.n_fft, self.hop, window=self.window, center=True,
                        length=wave.shape[-1])
        # keep the release a valid waveform without distorting it: rescale only if a peak reaches 1
        peak = y.abs().amax(dim=-1, keepdim=True)
        y = y / torch.clamp(peak / 0.999, min=1.0)
        return y[:, None]

    def _warp_phase(self, spec: torch.Tensor, log_factor: torch.Tensor) -> torch.Tensor:
        """Phase-vocoder phase for the warped magnitude: bin ``k`` takes the unwrapped phase of source
        bin ``round(k / alpha)``, its advance since the first frame scaled by ``alpha``.

        The input's own phase would advance at the *original* frequencies from frame to frame and
        pull the resynthesised partials back (a 500 Hz tone warped by 1.65 came out at 787 Hz, not
        824). The true per-hop advance of bin ``k`` is ``omega_k hop + wrap(dphi - omega_k hop)``;
        its running sum is the unwrapped phase, and scaling the advance by ``alpha`` moves the partial
        to ``alpha`` times its frequency. At ``alpha = 1`` this is the input's phase.
        """
        b, bins, frames = spec.shape
        phase = spec.angle().double()
        omega = (2.0 * math.pi * self.hop / self.n_fft) * torch.arange(bins, dtype=phase.dtype, device=spec.device)
        expected = omega.view(1, bins, 1)
        step = phase[..., 1:] - phase[..., :-1] - expected
        advance = expected + torch.remainder(step + math.pi, 2.0 * math.pi) - math.pi
        unwrapped = torch.cat([phase[..., :1], phase[..., :1] + torch.cumsum(advance, dim=-1)], dim=-1)
        alpha = torch.exp(log_factor.double()).view(b, 1)
        src = torch.round(torch.arange(bins, dtype=phase.dtype, device=spec.device).view(1, bins) / alpha)
        src = src.clamp(0, bins - 1).long().view(b, bins, 1).expand(b, bins, frames)
        source = torch.gather(unwrapped, 1, src)
        # scale the accumulated advance only: the first frame keeps its phases, so the bins around
        # one partial keep their relative phases (scaling those too cancelled most of the energy)
        warped = source[..., :1] + alpha.view(b, 1, 1) * (source - source[..., :1])
        return torch.remainder(warped + math.pi, 2.0 * math.pi).float() - math.pi

    @staticmethod
    def _warp(mag: torch.Tensor, log_factor: torch.Tensor) -> torch.Tensor:
        """Scale the frequency axis by ``alpha = exp(log_factor)`` per utterance: ``M'(f) = M(f / alpha)``.

        Vocal-tract length normalisation (VTLN) in reverse: one factor moves every formant and
        every harmonic (hence the pitch) together, the cue that most separates speakers and
        genders and one a bounded mask alone cannot move. Linear interpolation between bins keeps
        it differentiable in ``alpha``; bins mapped from above Nyquist are silent.
        """
        b, bins, frames = mag.shape
        src = torch.arange(bins, dtype=mag.dtype, device=mag.device).view(1, bins) * torch.exp(-log_factor).view(b, 1)
        grid_f = (2.0 * src / (bins - 1) - 1.0).view(b, bins, 1).expand(b, bins, frames)
        grid_t = torch.linspace(-1.0, 1.0, frames, dtype=mag.dtype, device=mag.device)
        grid_t = grid_t.view(1, 1, frames).expand(b, bins, frames)
        grid = torch.stack([grid_t, grid_f], dim=-1)  # grid_sample wants (x = time, y = frequency)
        return nn.functional.grid_sample(mag.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=True).squeeze(1)


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
                 init_scale: float = 0.3, max_logit: float | None = None):
    return ImageGenerator(schema.input_shape[0], noise_dim, width, blocks, down, init_scale, max_logit)


@register_generator("waveform-resnet", ("audio",), "strided 1-D conv residual net on atanh(samples), samples stay "
                    "in (-1, 1); the first audio generator, kept for comparison")
def waveform_resnet(schema: Schema, noise_dim: int, width: int = 24, blocks: int = 3, kernel: int = 5, down: int = 8,
                    init_scale: float = 0.3):
    return WaveformGenerator(noise_dim, width, blocks, kernel, down, init_scale)


@register_generator("spectral-mask", ("audio",), "STFT-domain residual net: bounded log-magnitude mask + additive "
                    "noise, input phase, istft back to a waveform", default_for=("audio",))
def spectral_mask(schema: Schema, noise_dim: int, n_fft: int = 256, hop: int | None = None, width: int = 128,
                  blocks: int = 3, kernel: int = 3, max_gain_db: float = 20.0, additive: float = 1.0,
                  init_scale: float = 0.1, max_warp: float = 0.0):
    return SpectralMaskGenerator(noise_dim, n_fft, hop, width, blocks, kernel, max_gain_db, additive, init_scale,
                                 max_warp)


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
           "WaveformGenerator", "SpectralMaskGenerator"]
