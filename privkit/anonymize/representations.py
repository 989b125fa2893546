"""Fixed-length representations of samples, and their inverses.

The anonymizer (:class:`~privkit.anonymize.estimator.BiometricAnonymizer`) works on a 2-D array of
fixed-length vectors, one row per record. A :class:`Representation` turns a batch of samples of one
modality into such rows (:meth:`Representation.encode`) and rows back into samples of the input's
own shape (:meth:`Representation.decode`), so the released data can be written in the input's own
format:

========  ===================================  ==========================================================
modality  encode                               decode
========  ===================================  ==========================================================
image     flatten the ``(C, H, W)`` pixels     reshape, clip to ``[0, 1]``
audio     log-mel spectrogram, flattened       mel -> linear power (pseudo-inverse of the filterbank),
                                               Griffin-Lim phase reconstruction to ``T`` samples
motion    flatten the ``(C, W)`` window        reshape
features  identity on ``(d,)``                 identity
========  ===================================  ==========================================================

Representations are registered per modality with :func:`register_representation` and built with
:func:`get_representation`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from privkit.errors import SchemaError

_REPRESENTATIONS: dict[str, type["Representation"]] = {}


def register_representation(modality: str) -> Callable[[type["Representation"]], type["Representation"]]:
    """Class decorator registering a :class:`Representation` subclass for ``modality``."""

    def decorate(cls: type["Representation"]) -> type["Representation"]:
        if modality in _REPRESENTATIONS:
            raise ValueError(f"a representation for modality {modality!r} is already registered")
        cls.modality = modality
        _REPRESENTATIONS[modality] = cls
        return cls

    return decorate


def available_representations() -> list[str]:
    """Modalities that have a registered representation."""
    return sorted(_REPRESENTATIONS)


def get_representation(modality: str, input_shape: Sequence[int], sample_rate: int | None = None,
                       **options) -> "Representation":
    """The representation of ``modality`` samples of shape ``input_shape``.

    Parameters
    ----------
    modality : {"image", "audio", "motion", "features"}
    input_shape : sequence of int
        Shape of one sample (without the batch axis).
    sample_rate : int, optional
        Samples per second (needed for audio).
    **options
        Modality-specific options (audio: ``n_fft``, ``hop_length``, ``n_mels``, ``n_iter``).

    Raises
    ------
    SchemaError
        Unknown modality, or a shape the modality cannot take.
    """
    try:
        cls = _REPRESENTATIONS[modality]
    except KeyError:
        raise SchemaError(
            f"no representation for modality {modality!r}; use one of {', '.join(available_representations())}"
        ) from None
    return cls(tuple(int(s) for s in input_shape), sample_rate=sample_rate, **options)


def representation_from_dict(spec: dict) -> "Representation":
    """Rebuild a representation from :meth:`Representation.to_dict`."""
    return get_representation(spec["modality"], spec["input_shape"], spec.get("sample_rate"),
                              **spec.get("options", {}))


def _as_batch_tensor(x_batch, input_shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x_batch) if not isinstance(x_batch, torch.Tensor) else x_batch)
    x = x.detach().to(dtype=torch.float32, device="cpu")
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise SchemaError(
            f"samples have shape {list(x.shape[1:])} but the representation expects {list(input_shape)}; "
            f"pass a batch of shape (B, {', '.join(map(str, input_shape))})"
        )
    return x


class Representation:
    """Base class: a fixed-length vector per sample and back.

    Attributes
    ----------
    modality : str
    input_shape : tuple of int
        Shape of one sample.
    dim : int
        Length ``d`` of one encoded vector.
    """

    modality: str = ""

    def __init__(self, input_shape: tuple[int, ...], sample_rate: int | None = None):
        if len(input_shape) < 1 or any(s < 1 for s in input_shape):
            raise SchemaError(f"input shape {list(input_shape)} is not a valid sample shape; give positive sizes")
        self.input_shape = tuple(input_shape)
        self.sample_rate = sample_rate

    @property
    def dim(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def options(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        return {"modality": self.modality, "input_shape": list(self.input_shape),
                "sample_rate": self.sample_rate, "options": self.options}

    def encode(self, x_batch) -> np.ndarray:
        """``(B, *input_shape)`` samples -> ``(B, d)`` float32 array."""
        x = _as_batch_tensor(x_batch, self.input_shape)
        return x.reshape(x.shape[0], -1).numpy().astype(np.float32, copy=False)

    def _rows(self, z: np.ndarray) -> torch.Tensor:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise SchemaError(f"encoded rows have shape {list(z.shape)} but this representation expects (B, {self.dim})")
        return torch.from_numpy(np.ascontiguousarray(z))

    def decode(self, z: np.ndarray) -> torch.Tensor:
        """``(B, d)`` array -> ``(B, *input_shape)`` float32 tensor."""
        rows = self._rows(z)
        return rows.reshape(rows.shape[0], *self.input_shape)


@register_representation("flatten")
class FlattenRepresentation(Representation):
    """Any fixed-shape array, flattened row-major (used for N-D arrays with ``representation="auto"``)."""


@register_representation("features")
class FeatureRepresentation(Representation):
    """A feature vector is its own representation."""

    def __init__(self, input_shape: tuple[int, ...], sample_rate: int | None = None):
        super().__init__(input_shape, sample_rate)
        if len(self.input_shape) != 1:
            raise SchemaError(f"feature samples must be 1-D but have shape {list(self.input_shape)}; flatten them first")


@register_representation("image")
class ImageRepresentation(Representation):
    """Flattened pixels; decoding clips to the valid intensity range ``[0, 1]``."""

    def decode(self, z: np.ndarray) -> torch.Tensor:
        return super().decode(z).clamp_(0.0, 1.0)


@register_representation("motion")
class MotionRepresentation(Representation):
    """A ``(channels, window)`` motion window, flattened channel by channel."""

    def __init__(self, input_shape: tuple[int, ...], sample_rate: int | None = None):
        super().__init__(input_shape, sample_rate)
        if len(self.input_shape) != 2:
            raise SchemaError(f"motion windows must have shape (channels, window) but have {list(self.input_shape)}")


@register_representation("audio")
class LogMelRepresentation(Representation):
    """Log-mel spectrogram of a ``(1, T)`` waveform, flattened ``(n_mels, frames)``.

    Encoding: ``z = log(max(M |STFT(x)|^2, floor))`` with ``M`` the mel filterbank.
    Decoding: the non-negative least-squares linear power ``P = argmin_{P >= 0} ||M P - exp(z)||``
    (projected gradient from the clipped pseudo-inverse ``max(pinv(M) exp(z), 0)``; the clipped
    pseudo-inverse alone smears energy across bins and loses the envelope), then Griffin-Lim phase
    reconstruction to a waveform of exactly ``T`` samples. Griffin-Lim starts from zero phase
    (``rand_init=False``) so decoding is deterministic.

    Parameters
    ----------
    input_shape : (1, T)
    sample_rate : int
    n_fft : int, default 512
    hop_length : int, default n_fft // 4
    n_mels : int, default 64
    n_iter : int, default 32
        Griffin-Lim iterations.
    nnls_iter : int, default 100
        Projected-gradient iterations of the mel -> linear inversion.
    floor : float, default 1e-5
        Power floor before the log, so silence maps to a finite value.
    """

    def __init__(self, input_shape: tuple[int, ...], sample_rate: int | None = None, n_fft: int = 512,
                 hop_length: int | None = None, n_mels: int = 64, n_iter: int = 32, nnls_iter: int = 100, floor: float = 1e-5):
        super().__init__(input_shape, sample_rate)
        if len(self.input_shape) != 2 or self.input_shape[0] != 1:
            raise SchemaError(f"audio samples must be mono waveforms of shape (1, T) but have {list(self.input_shape)}")
        if not sample_rate or sample_rate <= 0:
            raise SchemaError("audio needs a positive sample_rate to build the mel filterbank; set it in the schema")
        import torchaudio.transforms as T  # imported here: torchaudio is slow to import

        self.n_fft, self.n_mels, self.n_iter, self.floor = int(n_fft), int(n_mels), int(n_iter), float(floor)
        self.nnls_iter = int(nnls_iter)
        self.hop_length = int(hop_length) if hop_length else self.n_fft // 4
        self.num_samples = self.input_shape[1]
        self._mel = T.MelSpectrogram(sample_rate=int(sample_rate), n_fft=self.n_fft, hop_length=self.hop_length,
                                     n_mels=self.n_mels, power=2.0)
        self._griffin_lim = T.GriffinLim(n_fft=self.n_fft, hop_length=self.hop_length, power=2.0,
                                         n_iter=self.n_iter, length=self.num_samples, rand_init=False)
        filterbank = self._mel.mel_scale.fb.double()  # (n_freqs, n_mels): mel = fb^T @ power
        self._filterbank = filterbank.float()
        self._mel_pinv = torch.linalg.pinv(filterbank.T).float()  # (n_freqs, n_mels)
        # 1 / Lipschitz constant of the least-squares gradient: a step that never overshoots.
        self._nnls_step = float(1.0 / torch.linalg.matrix_norm(filterbank, 2) ** 2)
        self.frames = self.num_samples // self.hop_length + 1

    @property
    def options(self) -> dict:
        return {"n_fft": self.n_fft, "hop_length": self.hop_length, "n_mels": self.n_mels,
                "n_iter": self.n_iter, "nnls_iter": self.nnls_iter, "floor": self.floor}

    @property
    def dim(self) -> int:
        return self.n_mels * self.frames

    def encode(self, x_batch) -> np.ndarray:
        x = _as_batch_tensor(x_batch, self.input_shape)[:, 0, :]  # (B, T)
        with torch.no_grad():
            mel = self._mel(x)  # (B, n_mels, frames)
            log_mel = torch.log(mel.clamp_min(self.floor))
        return log_mel.reshape(x.shape[0], -1).numpy().astype(np.float32, copy=False)

    def decode(self, z: np.ndarray) -> torch.Tensor:
        log_mel = self._rows(z).reshape(-1, self.n_mels, self.frames)
        with torch.no_grad():
            mel_power = torch.exp(log_mel)
            linear_power = self.mel_to_linear(mel_power)  # (B, n_freqs, frames)
            waveform = self._griffin_lim(linear_power)  # (B, T)
        return waveform.reshape(-1, *self.input_shape)

    def mel_to_linear(self, mel_power: torch.Tensor) -> torch.Tensor:
        """Non-negative least-squares inverse of the mel filterbank, ``(B, n_mels, F) -> (B, n_freqs, F)``."""
        fb = self._filterbank
        power = torch.matmul(self._mel_pinv, mel_power).clamp_min(0.0)
        for _ in range(self.nnls_iter):
            residual = torch.matmul(fb.T, power) - mel_power
            power = (power - self._nnls_step * torch.matmul(fb, residual)).clamp_min(0.0)
        return power
