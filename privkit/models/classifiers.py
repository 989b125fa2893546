"""Built-in classifiers, one or more per modality.

Every classifier ends in a ``head`` (``nn.Linear``) so parameter-efficient methods can find it;
CNNs use BatchNorm (``norm="group"`` swaps in GroupNorm, which DP-SGD can use).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from privkit.data.schema import Schema
from privkit.models.registry import register_model


def _norm2d(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


def _norm1d(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm1d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


class SmallCNN(nn.Module):
    """Three conv-norm-ReLU blocks, global average pooling, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), _norm2d(norm, w), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), _norm2d(norm, 2 * w), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), _norm2d(norm, 2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@register_model("cnn", ("image",), "small CNN with BatchNorm (3 conv blocks)", default_for=("image",))
def cnn(schema: Schema, num_classes: int, width: int = 32, norm: str = "batch", dropout: float = 0.0):
    return SmallCNN(schema.input_shape[0], num_classes, width, norm, dropout)


@register_model("resnet18", ("image",), "torchvision ResNet-18 (weights=None) for larger images")
def resnet18(schema: Schema, num_classes: int, norm: str = "batch"):
    import torchvision

    norm_layer = nn.BatchNorm2d if norm == "batch" else (lambda c: nn.GroupNorm(min(32, c), c))
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes, norm_layer=norm_layer)
    if schema.input_shape[0] != 3:
        net.conv1 = nn.Conv2d(schema.input_shape[0], 64, 7, 2, 3, bias=False)
    return _WithHead(net)


class _WithHead(nn.Module):
    """Expose a torchvision model's ``fc`` as ``head`` (one name for the classifier head everywhere)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def forward(self, x):
        return self.head(self.body(x))


class LogMel(nn.Module):
    """Log-mel spectrogram front end (torchaudio), log(mel + 1e-6), per-utterance normalised."""

    def __init__(self, sample_rate: int, n_mels: int = 40, n_fft: int | None = None):
        super().__init__()
        import torchaudio

        n_fft = n_fft or 2 ** int(math.ceil(math.log2(sample_rate * 0.032)))
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=n_fft // 2,
                                                        n_mels=n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, 1, T) -> (B, 1, n_mels, frames)
        spec = torch.log(self.mel(wave) + 1e-6)
        mean = spec.mean(dim=(-1, -2), keepdim=True)
        std = spec.std(dim=(-1, -2), keepdim=True) + 1e-5
        return (spec - mean) / std


class AudioCNN(nn.Module):
    def __init__(self, sample_rate: int, num_classes: int, width: int = 32, n_mels: int = 40, norm: str = "batch"):
        super().__init__()
        self.frontend = LogMel(sample_rate, n_mels)
        body = SmallCNN(1, num_classes, width, norm)
        self.features, self.head = body.features, body.head

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.frontend(wave)))


@register_model("audio-cnn", ("audio",), "log-mel front end (torchaudio) + small CNN", default_for=("audio",))
def audio_cnn(schema: Schema, num_classes: int, width: int = 32, n_mels: int = 40, norm: str = "batch"):
    return AudioCNN(schema.sample_rate or 8000, num_classes, width, n_mels, norm)


class MotionCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32, norm: str = "batch"):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv1d(channels, w, 5, padding=2), _norm1d(norm, w), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(w, 2 * w, 5, padding=2), _norm1d(norm, 2 * w), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(2 * w, 2 * w, 3, padding=1), _norm1d(norm, 2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


@register_model("motion-cnn", ("motion",), "1-D CNN over sensor windows", default_for=("motion",))
def motion_cnn(schema: Schema, num_classes: int, width: int = 32, norm: str = "batch"):
    return MotionCNN(schema.input_shape[0], num_classes, width, norm)


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout)]
            d = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


@register_model("mlp", ("features", "image", "audio", "motion"), "multi-layer perceptron on flattened inputs",
                default_for=("features",))
def mlp(schema: Schema, num_classes: int, hidden: int = 128, depth: int = 2, dropout: float = 0.0):
    return MLP(math.prod(schema.input_shape), num_classes, hidden, depth, dropout)


class Linear(nn.Module):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.head(self.flatten(x))


@register_model("linear", ("features", "image", "audio", "motion"), "linear (softmax regression) on flattened inputs")
def linear(schema: Schema, num_classes: int):
    return Linear(math.prod(schema.input_shape), num_classes)
