r"""Image-to-image input operators :math:`T`: what part of an image the model sees.

An operator hides a region of the image ``x`` (shape ``(C, H, W)``, values in ``[0, 1]``) and gives
the model

.. math:: T(x) = \big[\,x \odot (1 - m),\ m\,\big]

the visible pixels (hidden ones set to 0) stacked with the binary mask :math:`m` (1 = hidden,
to be generated) as one extra channel, so the model always knows which pixels to fill in.

``center-crop`` (inpainting)
    Hides the centre square of side ``mask`` and keeps the border.
``outpaint``
    Keeps the centre square of side ``mask`` and hides the border.

``mask`` is the side of the centre square: a fraction of the shorter image side when
``0 < mask < 1`` (``0.5`` = half the side), else a whole number of pixels. A square larger
than the image (or one leaving nothing hidden or nothing visible) is a
:class:`~privkit.errors.ConfigError`.

Operators register by decorator (:func:`register_operator`) and are rebuilt from
``meta.json`` with :func:`create_operator` (``{"name": ..., "mask": ...}``).
"""

from __future__ import annotations

from typing import Callable

import torch

from privkit.errors import ConfigError
from privkit.registry import Registry

__all__ = ["I2I_OPERATORS", "register_operator", "create_operator", "list_operators", "MaskOperator",
           "CenterCrop", "Outpaint"]

#: name -> operator class, filled by :func:`register_operator`.
I2I_OPERATORS = Registry("I2I operator", name_attribute="name")


def register_operator(name: str) -> Callable[[type], type]:
    """Class decorator registering an I2I input operator under ``name`` (sets ``cls.name``)."""
    return I2I_OPERATORS.register(name)


def list_operators() -> list[str]:
    return list(I2I_OPERATORS)


def create_operator(name: str, mask: float = 0.5) -> "MaskOperator":
    """Operator ``name`` with centre-square side ``mask`` (unknown name -> ConfigError listing the known ones)."""
    return I2I_OPERATORS.lookup(name)(mask=mask)


class MaskOperator:
    """Base class: a binary mask :math:`m` over ``(H, W)`` and :math:`T(x) = [x(1-m), m]`.

    Parameters
    ----------
    mask : float
        Side of the centre square: fraction of the shorter side if ``0 < mask < 1``, else pixels.
    """

    name = "mask"

    def __init__(self, mask: float = 0.5):
        self.mask = mask

    # -- geometry --------------------------------------------------------------------------------
    def square_side(self, height: int, width: int) -> int:
        """Side in pixels of the centre square for an image of ``height x width`` (validated)."""
        try:
            mask = float(self.mask)
        except (TypeError, ValueError):
            raise ConfigError(f"--mask {self.mask!r} is not a number; give a fraction like 0.5 or pixels like 4") from None
        short = min(int(height), int(width))
        if not mask > 0:
            raise ConfigError(f"--mask {self.mask} must be > 0 (a fraction of the side, or pixels)")
        if mask < 1:
            side = int(round(mask * short))
        else:
            if mask != int(mask):
                raise ConfigError(f"--mask {self.mask} is above 1 so it counts pixels; give a whole number "
                                  f"or a fraction below 1")
            side = int(mask)
        if side > short:
            raise ConfigError(f"--mask {self.mask} ({side} px) is larger than the {height}x{width} image; "
                              f"use at most {short - 1} px or a fraction below 1")
        if side < 1 or side >= short:
            raise ConfigError(f"--mask {self.mask} gives a {side} px square on a {height}x{width} image, leaving "
                              f"nothing {'hidden' if (side < 1) == (self.name == 'center-crop') else 'visible'}; "
                              f"choose a side between 1 and {short - 1} px")
        return side

    def check(self, input_shape) -> None:
        """Validate against a schema's ``(C, H, W)`` input shape (raises ConfigError)."""
        if len(input_shape) != 3:
            raise ConfigError(f"I2I operators take images (C, H, W) but the data has shape {list(input_shape)}; "
                              f"use image data")
        self.square_side(input_shape[1], input_shape[2])

    def centre_square(self, height: int, width: int) -> torch.Tensor:
        """Boolean ``(H, W)`` map of the centre square."""
        side = self.square_side(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        sq = torch.zeros(height, width, dtype=torch.bool)
        sq[top:top + side, left:left + side] = True
        return sq

    def hidden(self, height: int, width: int) -> torch.Tensor:  # pragma: no cover - abstract
        """Boolean ``(H, W)`` map of the pixels the model must generate."""
        raise NotImplementedError

    def mask_for(self, x: torch.Tensor) -> torch.Tensor:
        """Float mask :math:`m` (1 = hidden) broadcastable to ``x`` of shape ``(..., C, H, W)``."""
        return self.hidden(x.shape[-2], x.shape[-1]).to(dtype=x.dtype, device=x.device)

    # -- the operator ----------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`T(x) = [x(1-m), m]`: ``(B, C, H, W)`` -> ``(B, C + 1, H, W)``."""
        m = self.mask_for(x)
        visible = x * (1 - m)
        return torch.cat([visible, m.expand(x.shape[0], 1, *m.shape)], dim=1)

    def composite(self, x: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """The completed image: generated pixels where hidden, the input's own pixels elsewhere."""
        m = self.mask_for(x)
        return generated * m + x * (1 - m)

    def to_dict(self) -> dict:
        return {"name": self.name, "mask": self.mask}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask={self.mask!r})"


@register_operator("center-crop")
class CenterCrop(MaskOperator):
    """Inpainting: the centre square is hidden, the border is visible."""

    def hidden(self, height: int, width: int) -> torch.Tensor:
        return self.centre_square(height, width)


@register_operator("outpaint")
class Outpaint(MaskOperator):
    """Outpainting: the centre square is visible, the border is hidden."""

    def hidden(self, height: int, width: int) -> torch.Tensor:
        return ~self.centre_square(height, width)
