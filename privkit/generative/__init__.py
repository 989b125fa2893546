"""Image-to-image generative models (inpainting, outpainting) and their unlearning.

- :mod:`privkit.generative.tasks`: input operators :math:`T` (``center-crop``, ``outpaint``);
- :mod:`privkit.generative.models`: ``mae-tiny`` and ``unet`` (``.encoder`` / ``.decoder``);
- :mod:`privkit.generative.train`: ``privkit i2i train`` and the ``"i2i"`` artifact;
- :mod:`privkit.generative.unlearn`: Li et al. (ICLR 2024) and the MAX LOSS, NOISY LABEL,
  RETAIN LABEL and RANDOM ENCODER baselines in their own registry;
- :mod:`privkit.generative.metrics`: offline FD / IS / cosine / accuracy / PSNR / SSIM;
- :mod:`privkit.generative.run`: ``privkit i2i unlearn``.

See ``docs/i2i.md``.
"""

from privkit.generative.models import I2I_MODELS, create_i2i, list_i2i_models, register_i2i_model
from privkit.generative.tasks import I2I_OPERATORS, create_operator, list_operators, register_operator
from privkit.generative.unlearn import (I2I_UNLEARNERS, I2IUnlearnContext, get_i2i_unlearner, list_i2i_unlearners,
                                        register_i2i_unlearner)

__all__ = ["I2I_MODELS", "create_i2i", "list_i2i_models", "register_i2i_model", "I2I_OPERATORS", "create_operator",
           "list_operators", "register_operator", "I2I_UNLEARNERS", "I2IUnlearnContext", "get_i2i_unlearner",
           "list_i2i_unlearners", "register_i2i_unlearner"]
