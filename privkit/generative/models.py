r"""Image-to-image models: an encoder :math:`E_\theta` and a decoder :math:`D_\phi`.

Every I2I model maps the operator's input :math:`T(x)` (``(B, C + 1, H, W)``: visible pixels and
the mask, see :mod:`privkit.generative.tasks`) to an image ``(B, C, H, W)`` in ``[0, 1]``:

.. math:: \hat x = D_\phi(E_\theta(T(x)))

and exposes ``.encoder`` and ``.decoder`` so unlearning can train the encoder alone against a
frozen decoder (Li et al., ICLR 2024). :meth:`embed` flattens the encoder output to one vector
per image (for the U-Net: every skip level, since the decoder reads them all).

``mae-tiny``
    Masked-autoencoder-style ViT: patches of ``patch x patch`` pixels (visible pixels + mask
    channel) are embedded, pass a small Transformer encoder, and a Transformer decoder predicts
    the pixels of every patch. Unlike the original MAE (which drops hidden patches), every patch
    is kept and the mask channel tells hidden from visible (the input of an inpainter).
``unet``
    Convolutional U-Net inpainter (GroupNorm, SiLU), ``levels`` resolutions; the encoder
    returns the feature map of every level, the decoder upsamples and fuses the skips.

Models register by decorator in :data:`I2I_MODELS` (separate from the classifier registry of
:mod:`privkit.models`); :func:`create_i2i` records ``privkit_spec`` so an artifact rebuilds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from privkit.errors import ConfigError

__all__ = ["I2I_MODELS", "register_i2i_model", "create_i2i", "list_i2i_models", "I2IModel", "MAETiny", "UNet",
           "flatten_embedding"]


@dataclass(frozen=True)
class I2IModelEntry:
    name: str
    factory: Callable
    description: str


#: name -> entry, filled by :func:`register_i2i_model`.
I2I_MODELS: dict[str, I2IModelEntry] = {}


def register_i2i_model(name: str, description: str) -> Callable:
    """Decorator registering ``factory(input_shape, **kwargs) -> I2IModel`` under ``name``."""

    def deco(factory: Callable) -> Callable:
        if name in I2I_MODELS:
            raise ValueError(f"I2I model {name!r} registered twice")
        I2I_MODELS[name] = I2IModelEntry(name, factory, description)
        return factory

    return deco


def list_i2i_models() -> list[str]:
    return list(I2I_MODELS)


def i2i_model_entry(name: str) -> I2IModelEntry:
    if name not in I2I_MODELS:
        raise ConfigError(f"unknown I2I model {name!r}; known I2I models: {', '.join(I2I_MODELS)}")
    return I2I_MODELS[name]


def create_i2i(name: str, input_shape, **kwargs: Any) -> "I2IModel":
    """Build I2I model ``name`` for images of ``input_shape = (C, H, W)``.

    The factory resolves size-dependent defaults (e.g. the patch size) into the recorded kwargs,
    so ``create_i2i(spec["architecture"], spec["input_shape"], **spec["kwargs"])`` rebuilds it.
    """
    entry = i2i_model_entry(name)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ConfigError(f"I2I models take images (C, H, W) but the data has shape {list(shape)}; use image data")
    model, resolved = entry.factory(shape, **kwargs)
    model.privkit_spec = {"architecture": name, "kwargs": resolved, "input_shape": list(shape)}
    return model


def flatten_embedding(z) -> torch.Tensor:
    """One ``(B, D)`` vector per image from an encoder output (a tensor or a tuple of tensors)."""
    if isinstance(z, (tuple, list)):
        return torch.cat([t.flatten(1) for t in z], dim=1)
    return z.flatten(1)


class I2IModel(nn.Module):
    """``forward(t) = decoder(encoder(t))``; ``embed(t)`` = flattened encoder output."""

    encoder: nn.Module
    decoder: nn.Module

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(t))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return flatten_embedding(self.encoder(t))

    def encoder_stages(self) -> list[list[nn.Parameter]]:
        """The encoder's parameters in stages, input side first (every parameter in exactly one stage)."""
        return self.encoder.stages()


# -- mae-tiny -------------------------------------------------------------------------------------

class PatchEncoder(nn.Module):
    """Patchify ``(B, C_in, H, W)``, linear patch embedding + learned positions, Transformer layers."""

    def __init__(self, in_channels: int, height: int, width: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        n = (height // patch) * (width // patch)
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(t).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.blocks(tokens))

    def stages(self) -> list[list[nn.Parameter]]:
        """Patch embedding + positions, then one stage per Transformer layer (the last with the final norm)."""
        layers = [list(layer.parameters()) for layer in self.blocks.layers]
        layers[-1] += list(self.norm.parameters())
        return [[*self.embed.parameters(), self.pos], *layers]


class PatchDecoder(nn.Module):
    """Transformer layers over the encoder tokens, then a linear map to each patch's pixels."""

    def __init__(self, channels: int, height: int, width: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.channels, self.height, self.width, self.patch = channels, height, width, patch
        n = (height // patch) * (width // patch)
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.to_pixels = nn.Linear(dim, channels * patch * patch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        p, c = self.patch, self.channels
        h, w = self.height // p, self.width // p
        pix = self.to_pixels(self.blocks(z + self.pos))  # (B, h*w, C*p*p)
        img = pix.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * p, w * p)
        return torch.sigmoid(img)


class MAETiny(I2IModel):
    def __init__(self, input_shape, patch: int, dim: int, depth: int, decoder_depth: int, heads: int):
        super().__init__()
        c, h, w = input_shape
        self.encoder = PatchEncoder(c + 1, h, w, patch, dim, depth, heads)
        self.decoder = PatchDecoder(c, h, w, patch, dim, decoder_depth, heads)


def _auto_patch(height: int, width: int) -> int:
    # ~4x4 tokens for tiny images (8x8 digits -> patch 2), ~8x8 tokens for larger ones (64x64 -> 8)
    want = max(1, min(height, width) // 4) if min(height, width) <= 16 else max(1, min(height, width) // 8)
    for p in range(want, 0, -1):
        if height % p == 0 and width % p == 0:
            return p
    return 1


@register_i2i_model("mae-tiny", "masked-autoencoder-style ViT encoder/decoder (patch tokens + mask channel)")
def mae_tiny(input_shape, patch: int | None = None, dim: int = 32, depth: int = 2, decoder_depth: int = 1,
             heads: int = 2):
    c, h, w = input_shape
    patch = int(patch) if patch is not None else _auto_patch(h, w)
    if patch < 1 or h % patch or w % patch:
        raise ConfigError(f"patch {patch} does not tile the {h}x{w} image; choose a patch size dividing both sides")
    if dim % heads:
        raise ConfigError(f"dim {dim} is not divisible by heads {heads}; choose dim a multiple of heads")
    kwargs = {"patch": patch, "dim": int(dim), "depth": int(depth), "decoder_depth": int(decoder_depth),
              "heads": int(heads)}
    return MAETiny(input_shape, **kwargs), kwargs


# -- unet -------------------------------------------------------------------------------------------

def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(min(4, cout), cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(min(4, cout), cout), nn.SiLU())


class UNetEncoder(nn.Module):
    """Level 0 at full resolution, each further level halves it (stride-2 conv); returns every level."""

    def __init__(self, in_channels: int, width: int, levels: int):
        super().__init__()
        chans = [width * 2 ** i for i in range(levels)]
        self.levels = nn.ModuleList([_block(in_channels, chans[0])] +
                                    [_block(chans[i - 1], chans[i], stride=2) for i in range(1, levels)])

    def stages(self) -> list[list[nn.Parameter]]:
        """One stage per resolution level, full resolution first."""
        return [list(level.parameters()) for level in self.levels]

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = []
        h = t
        for level in self.levels:
            h = level(h)
            feats.append(h)
        return tuple(feats)


class UNetDecoder(nn.Module):
    """From the coarsest level up: upsample to the skip's size, concatenate, fuse; 1x1 conv to pixels."""

    def __init__(self, channels: int, width: int, levels: int):
        super().__init__()
        chans = [width * 2 ** i for i in range(levels)]
        self.fuse = nn.ModuleList([_block(chans[i + 1] + chans[i], chans[i]) for i in range(levels - 1)])
        self.to_pixels = nn.Conv2d(chans[0], channels, 1)

    def forward(self, feats) -> torch.Tensor:
        h = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            h = nn.functional.interpolate(h, size=feats[i].shape[-2:], mode="nearest")
            h = self.fuse[i](torch.cat([h, feats[i]], dim=1))
        return torch.sigmoid(self.to_pixels(h))


class UNet(I2IModel):
    def __init__(self, input_shape, width: int, levels: int):
        super().__init__()
        c = input_shape[0]
        self.encoder = UNetEncoder(c + 1, width, levels)
        self.decoder = UNetDecoder(c, width, levels)


@register_i2i_model("unet", "convolutional U-Net inpainter (GroupNorm), encoder = every skip level")
def unet(input_shape, width: int = 8, levels: int | None = None):
    c, h, w = input_shape
    # 2 levels on tiny images (8x8 -> 4x4), 3 on larger ones (64x64 -> 16x16)
    levels = int(levels) if levels is not None else (2 if min(h, w) <= 16 else 3)
    if levels < 1 or 2 ** (levels - 1) > min(h, w):
        raise ConfigError(f"levels {levels} is too deep for a {h}x{w} image; use at most "
                          f"{max(1, min(h, w).bit_length())}")
    if width < 1:
        raise ConfigError(f"width {width} must be at least 1")
    kwargs = {"width": int(width), "levels": levels}
    return UNet(input_shape, **kwargs), kwargs
