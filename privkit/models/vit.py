"""A tiny Vision Transformer with visual prompt tokens (for prompt-tuning and Fast-NTK).

Prompt tuning (Jia et al., 2022, "Visual Prompt Tuning") prepends ``num_prompts`` learnable tokens
to the patch tokens; with ``--peft prompt`` only ``prompt_tokens`` and the ``head`` train.
"""

from __future__ import annotations

import torch
from torch import nn

from privkit.data.schema import Schema
from privkit.models.registry import register_model


class TinyViT(nn.Module):
    def __init__(self, in_channels: int, image_hw: tuple[int, int], num_classes: int, patch: int = 4, dim: int = 64,
                 depth: int = 2, heads: int = 4, num_prompts: int = 4):
        super().__init__()
        h, w = image_hw
        self.patch = patch
        self.pad = ((patch - h % patch) % patch, (patch - w % patch) % patch)
        n_patches = ((h + self.pad[0]) // patch) * ((w + self.pad[1]) // patch)
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.prompt_tokens = nn.Parameter(torch.randn(1, num_prompts, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = nn.functional.pad(x, (0, self.pad[1], 0, self.pad[0]))
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        b = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.pos
        tokens = torch.cat([tokens[:, :1], self.prompt_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1)
        out = self.norm(self.blocks(tokens))
        return self.head(out[:, 0])


@register_model("vit-tiny", ("image",), "tiny ViT with visual prompt tokens (prompt tuning)")
def vit_tiny(schema: Schema, num_classes: int, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
             num_prompts: int = 4):
    c, h, w = schema.input_shape
    return TinyViT(c, (h, w), num_classes, patch, dim, depth, heads, num_prompts)
