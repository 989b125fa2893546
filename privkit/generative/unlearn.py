r"""Unlearning for image-to-image models: Li et al., "Machine Unlearning for Image-to-Image
Generative Models", ICLR 2024 (arXiv 2402.00351), and its four baselines.

Notation: encoder :math:`E_\theta` (trainable, starting from the original :math:`\theta_0`),
frozen decoder :math:`D_\phi`, I2I operator :math:`T` (mask; :mod:`privkit.generative.tasks`),
retain set :math:`D_R`, forget set :math:`D_F`, :math:`\lVert\cdot\rVert^2` the mean squared error
over embedding (or pixel) entries.

``li2024`` (the paper's method)

.. math::

    \min_\theta\ \mathbb E_{x_r \in D_R} \lVert E_\theta(T(x_r)) - E_{\theta_0}(T(x_r))\rVert^2
    + \alpha\, \mathbb E_{x_f \in D_F,\ n \sim \mathcal N(\mu, \Sigma)}
      \lVert E_\theta(T(x_f)) - E_{\theta_0}(T(n))\rVert^2

The forget target is the *frozen* encoder's embedding of Gaussian noise :math:`n` put through the
same operator :math:`T`; :math:`\mu, \Sigma` are the per-channel mean and variance of the forget
batch and :math:`n` is clipped to the valid pixel range ``[0, 1]`` (:func:`gaussian_like`).
:math:`\alpha \approx 0.1`-:math:`0.2` in the paper (the default, 0.15). :math:`D_R` may be a *proxy*
set of other images (``--proxy-retain``): the retain term only needs :math:`E_{\theta_0}`'s
embeddings, no labels.

Both terms are mean squared errors over the flattened embedding (for the U-Net: every skip level,
the whole input of the frozen decoder), and each optimiser step pairs one retain batch with one
forget batch of the same size, so :math:`\alpha` weighs the two terms per embedding entry. The
split is the paper's: the encoder (U-Net down path with its skips; MAE patch embedding +
Transformer encoder) trains, the decoder (U-Net up path; MAE Transformer decoder + pixel head)
is frozen. An unlearning *epoch* is one pass over :math:`D_R` (the forget set is cycled), so its
step does two frozen and two trainable encoder passes (measured on the digits benchmark: about
1.1 training steps each);
unlearning pays off when it needs far fewer epochs than the original recipe.

Defaults are the paper's (:math:`\alpha = 0.15`) and were *not* changed to the values tuned in
``benchmarks/bench_i2i.py``: on its tiny CPU models (8x8 digits, a U-Net of 8 channels, mask
0.625; 10 epochs at learning rate 1e-3) :math:`\alpha = 0.15` moves the forget Frechet distance
2.8x (U-Net) and 2.0x (``mae-tiny``); :math:`\alpha = 0.25` meets both Frechet targets on the
U-Net (4.0x forget, 1.08x retain) but not on ``mae-tiny``; 0.5 breaks the retain target on both.
That scale depends on the embedding size and on how close forget and retain images are, so it is
no general default (see ``docs/benchmarks.md``).

``frozen_stages`` (every encoder method; default 0, the paper's set-up) keeps the first encoder
stages, input side first (:meth:`~privkit.generative.models.I2IModel.encoder_stages`: U-Net
resolution levels, full resolution first; MAE patch embedding, then each Transformer layer), at
:math:`\theta_0`. The objective is unchanged and still matches every output the decoder reads;
the frozen outputs simply cannot move. On the U-Net the full-resolution level (the skip the
decoder fuses last, pixel by pixel) then stays exactly as before for every input, so retain
completions drift less for the same forget movement: on the digits benchmark (mask 0.625, 10
epochs at 1e-3) :math:`\alpha = 0.35` with one stage frozen gives 5.0x forget / 1.03x retain
Frechet distance against 5.0x / 1.20x with the whole encoder trained. On ``mae-tiny`` it did not
improve the trade-off in the tuning runs (validation split) and is not used there.

How selectively the objective forgets depends on the encoder's capacity (it must send the forget
inputs to the noise embedding while every retain input keeps its embedding, and the decoder
cannot change): on the same digits benchmark a 24-channel U-Net (``width=24``) meets the three
targets of the issue for ``class=3`` at :math:`\alpha = 0.35`-0.5 (forget completions recognised
0.19 of the time at 0.35 with one stage frozen, chance 0.10; the 8-channel U-Net: 0.32), but on
``class=5`` it still misses them (``docs/benchmarks.md``).

Baselines (as in the paper's section 5; each adds :math:`\alpha\times` its forget term to the
reconstruction loss :math:`\ell` of :mod:`privkit.generative.train` on :math:`D_R`, and, like the
method, trains the encoder against the frozen decoder):

``max-loss``
    :math:`-\alpha\,\ell(D(E_\theta(T(x_f))), x_f)`: maximise the reconstruction loss on :math:`D_F`.
``noisy-label``
    :math:`\alpha\,\ell(D(E_\theta(T(x_f))), n)`: train the forget images to output Gaussian noise.
``retain-label``
    :math:`\alpha\,\ell(D(E_\theta(T(x_f))), x_r')`: train them toward randomly drawn retain images.
``random-encoder``
    :math:`\alpha\,\lVert E_\theta(T(x_f)) - z\rVert^2,\ z \sim \mathcal N(0, I)`: push the
    forget embeddings to random Gaussian vectors directly in embedding space (the paper's
    "random encoder" baseline; it does not re-initialise the weights).
``retrain``
    A fresh model of the same architecture trained on :math:`D_R` with the original recipe: the
    exact-unlearning reference (and the cost every method is timed against).

The methods register in their own registry (:data:`I2I_UNLEARNERS`, :func:`get_i2i_unlearner`), so
the classifier registry (:func:`privkit.unlearn.list_unlearners`) is unchanged, and implement the
same protocol as classifier methods: ``unlearn(model, retain, forget, val, *, context) -> model``
with an :class:`I2IUnlearnContext`. Every method trains through :func:`privkit.train.run_training`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.registry import Registry
from privkit.generative.models import create_i2i, flatten_embedding
from privkit.generative.tasks import MaskOperator
from privkit.generative.train import I2IConfig, reconstruction_loss, train_i2i
from privkit.train import LoopConfig, TrainTask, run_training, unwrap
from privkit.unlearn.base import UnlearnContext

__all__ = ["I2IRecipe", "I2IUnlearnContext", "I2I_UNLEARNERS", "register_i2i_unlearner", "get_i2i_unlearner",
           "list_i2i_unlearners", "gaussian_like", "forget_target", "check_frozen_stages", "freeze_encoder_stages",
           "copy_i2i", "Li2024", "MaxLoss", "NoisyLabel", "RetainLabel", "RandomEncoder", "RetrainI2I"]


@dataclass
class I2IRecipe:
    """How the original I2I model was trained (``meta.json`` ``config``), reused by ``retrain``."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    whole_weight: float = 0.5
    seed: int = 0

    @classmethod
    def from_config(cls, config: dict) -> "I2IRecipe":
        optim = dict(config.get("optim") or {})
        return cls(epochs=int(config.get("epochs", 10)), batch_size=int(config.get("batch_size", 64)),
                   lr=float(optim.get("lr", 2e-3)), whole_weight=float(optim.get("whole_weight", 0.5)),
                   seed=int(config.get("seed", 0)))


@dataclass
class I2IUnlearnContext(UnlearnContext):
    """:class:`~privkit.unlearn.base.UnlearnContext` plus the I2I operator and recipe.

    ``target`` is the attribute ``class=`` forget requests refer to (informational here).
    """

    target: str = ""
    operator: MaskOperator | None = None
    i2i_recipe: I2IRecipe = field(default_factory=I2IRecipe)


#: name -> I2I unlearner class (separate from the classifier registry).
I2I_UNLEARNERS = Registry("I2I unlearning method", name_attribute="name")


def register_i2i_unlearner(name: str) -> Callable[[type], type]:
    """Class decorator registering an I2I unlearning method under ``name`` (sets ``cls.name``)."""
    return I2I_UNLEARNERS.register(name)


def list_i2i_unlearners() -> list[str]:
    return list(I2I_UNLEARNERS)


def get_i2i_unlearner(name: str, **params: Any):
    """An instance of I2I method ``name`` with ``params``, checked (ConfigError on unknown name/bad value)."""
    factory = I2I_UNLEARNERS.lookup(name)
    try:
        method = factory(**params)
    except TypeError as e:
        raise ConfigError(f"bad options for I2I unlearning method {name!r}: {e}") from None
    method.check_params()
    return method


def copy_i2i(model: nn.Module) -> nn.Module:
    out = copy.deepcopy(unwrap(model))
    if hasattr(model, "privkit_spec"):
        out.privkit_spec = copy.deepcopy(model.privkit_spec)
    return out


def gaussian_like(x: torch.Tensor, generator: torch.Generator | None = None, low: float = 0.0,
                  high: float = 1.0) -> torch.Tensor:
    r""":math:`n \sim \mathcal N(\mu, \Sigma)` shaped like ``x``, clipped to ``[low, high]``.

    :math:`\mu_c, \sigma^2_c` are the mean and variance of channel ``c`` over the batch
    (every image and pixel), :math:`\Sigma = \mathrm{diag}(\sigma^2)`.
    """
    dims = [0] + list(range(2, x.dim()))
    mu = x.mean(dim=dims, keepdim=True)
    sd = x.std(dim=dims, keepdim=True) if x.numel() > x.shape[1] else torch.zeros_like(mu)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return (mu + sd * z).clamp(low, high)


@torch.no_grad()
def forget_target(encoder0: nn.Module, operator: MaskOperator, x_forget: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(n, E_{\theta_0}(T(n)))``: the clipped Gaussian noise and its frozen-encoder embedding."""
    n = gaussian_like(x_forget, generator)
    return n, flatten_embedding(encoder0(operator(n)))


def check_frozen_stages(model: nn.Module, frozen_stages: int) -> list[list[nn.Parameter]]:
    """``model``'s encoder stages, after checking that ``frozen_stages`` leaves at least one to train."""
    if not callable(getattr(model, "encoder_stages", None)) or not callable(getattr(model.encoder, "stages", None)):
        raise ConfigError(f"--frozen-stages {frozen_stages}: this model's encoder ({type(model.encoder).__name__}) "
                          "does not define stages(); use --frozen-stages 0")
    stages = model.encoder_stages()
    if frozen_stages >= len(stages):
        raise ConfigError(f"--frozen-stages {frozen_stages} leaves nothing to train: this encoder has {len(stages)} "
                          f"stages; use at most {len(stages) - 1}")
    return stages


def freeze_encoder_stages(model: nn.Module, frozen_stages: int) -> None:
    """Keep the first ``frozen_stages`` stages of ``model.encoder`` (input side) at their weights.

    The stages are the model's :meth:`~privkit.generative.models.I2IModel.encoder_stages`; the
    embedding the objective matches is unchanged (still every output the decoder reads).
    """
    if frozen_stages == 0:  # the paper's set-up; works for any encoder, with or without stages()
        return
    for stage in check_frozen_stages(model, frozen_stages)[:frozen_stages]:
        for p in stage:
            p.requires_grad_(False)


# -- shared training task -------------------------------------------------------------------------

class _EncoderUnlearnTask(TrainTask):
    """One step: a retain batch from the loop, a forget batch cycled alongside; only the encoder trains."""

    def __init__(self, method: "_EncoderMethod", model: nn.Module, encoder0: nn.Module, forget_x: torch.Tensor,
                 retain_x_pool: torch.Tensor | None, operator: MaskOperator, recipe: I2IRecipe, seed: int):
        self.method, self.operator, self.recipe, self.seed = method, operator, recipe, seed
        self.encoder0 = encoder0
        self.forget_x = forget_x
        self.retain_x_pool = retain_x_pool
        for p in model.decoder.parameters():
            p.requires_grad_(False)
        self.nets = {"encoder": model.encoder}
        self.decoder = model.decoder
        # frozen stages (``frozen_stages``) keep theta_0: only the parameters that still require grad train
        self.optimizers = {"encoder": torch.optim.Adam([p for p in model.encoder.parameters() if p.requires_grad],
                                                       lr=method.lr)}
        self._order: torch.Tensor | None = None

    def forget_batch(self, epoch: int, step: int, size: int) -> torch.Tensor:
        n = len(self.forget_x)
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch * 1009 + step)
        return self.forget_x[torch.randint(0, n, (min(size, n),), generator=g)]

    def step(self, batch, epoch: int, step: int) -> dict[str, float]:
        x_r, _ = batch
        x_f = self.forget_batch(epoch, step, self.method.batch_size)
        enc = self.nets["encoder"]
        enc.train()
        opt = self.optimizers["encoder"]
        opt.zero_grad(set_to_none=True)
        retain_term, forget_term = self.method.terms(self, x_r, x_f, epoch, step)
        loss = retain_term + self.method.alpha * forget_term
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), "retain": float(retain_term.detach()),
                "forget": float(forget_term.detach())}

    # helpers for the methods
    def decode(self, t: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.nets["encoder"](t))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return flatten_embedding(self.nets["encoder"](t))

    def generator(self, epoch: int, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 104729 + epoch * 7 + step * 131 + 1)


class _EncoderMethod:
    """Encoder-only unlearning: hyperparameters and the shared ``unlearn``; subclasses give ``terms``."""

    name = "encoder-method"

    def __init__(self, alpha: float = 0.15, epochs: int = 10, lr: float = 5e-3, batch_size: int = 64,
                 frozen_stages: int = 0):
        self.alpha = alpha
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.frozen_stages = frozen_stages

    def check_params(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ConfigError(f"--alpha {self.alpha} must be >= 0 (the paper uses 0.1-0.2)")
        if int(self.epochs) < 1:
            raise ConfigError(f"--epochs {self.epochs} must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"--lr {self.lr} must be > 0")
        if int(self.batch_size) < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be at least 1")
        if isinstance(self.frozen_stages, bool) or not isinstance(self.frozen_stages, int) or self.frozen_stages < 0:
            raise ConfigError(f"--frozen-stages {self.frozen_stages!r} must be a whole number >= 0 "
                              "(0 trains the whole encoder)")

    def terms(self, task: _EncoderUnlearnTask, x_r, x_f, epoch: int, step: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: I2IUnlearnContext) -> nn.Module:
        if context.operator is None:
            raise ConfigError("I2I unlearning needs the model's operator in the context")
        out = copy_i2i(model)
        encoder0 = copy.deepcopy(out.encoder).eval()
        for p in encoder0.parameters():
            p.requires_grad_(False)
        freeze_encoder_stages(out, int(self.frozen_stages))
        forget_x, _ = forget.materialize()
        pool = retain.materialize()[0] if self.needs_retain_pool else None
        task = _EncoderUnlearnTask(self, out, encoder0, forget_x, pool, context.operator, context.i2i_recipe,
                                   context.seed)
        history = run_training(task, retain, LoopConfig(epochs=int(self.epochs), batch_size=int(self.batch_size),
                                                        seed=context.seed, progress=context.progress,
                                                        description=f"unlearn {self.name}"))
        out.encoder = unwrap(task.nets["encoder"])
        for p in out.parameters():
            p.requires_grad_(True)
        context.info["history"] = history
        out.eval()
        return out

    needs_retain_pool = False


@register_i2i_unlearner("li2024")
class Li2024(_EncoderMethod):
    """Li et al. (ICLR 2024): retain embeddings stay, forget embeddings go to the noise embedding."""

    def terms(self, task, x_r, x_f, epoch, step):
        op = task.operator
        with torch.no_grad():
            target_r = flatten_embedding(task.encoder0(op(x_r)))
            _, target_f = forget_target(task.encoder0, op, x_f, task.generator(epoch, step))
        retain_term = ((task.embed(op(x_r)) - target_r) ** 2).mean()
        forget_term = ((task.embed(op(x_f)) - target_f) ** 2).mean()
        return retain_term, forget_term


class _ReconstructionBaseline(_EncoderMethod):
    def retain_term(self, task, x_r):
        op = task.operator
        return reconstruction_loss(task.decode(op(x_r)), x_r, op.mask_for(x_r), task.recipe.whole_weight)

    def forget_loss(self, task, x_f, target):
        op = task.operator
        return reconstruction_loss(task.decode(op(x_f)), target, op.mask_for(x_f), task.recipe.whole_weight)


@register_i2i_unlearner("max-loss")
class MaxLoss(_ReconstructionBaseline):
    """Maximise the reconstruction loss of the forget images (w.r.t. their ground truth)."""

    def terms(self, task, x_r, x_f, epoch, step):
        return self.retain_term(task, x_r), -self.forget_loss(task, x_f, x_f)


@register_i2i_unlearner("noisy-label")
class NoisyLabel(_ReconstructionBaseline):
    """Train the forget images to be completed into clipped Gaussian noise."""

    def terms(self, task, x_r, x_f, epoch, step):
        noise = gaussian_like(x_f, task.generator(epoch, step))
        return self.retain_term(task, x_r), self.forget_loss(task, x_f, noise)


@register_i2i_unlearner("retain-label")
class RetainLabel(_ReconstructionBaseline):
    """Train the forget images to be completed into randomly drawn retain images."""

    needs_retain_pool = True

    def terms(self, task, x_r, x_f, epoch, step):
        pool = task.retain_x_pool
        pick = torch.randint(0, len(pool), (len(x_f),), generator=task.generator(epoch, step))
        return self.retain_term(task, x_r), self.forget_loss(task, x_f, pool[pick])


@register_i2i_unlearner("random-encoder")
class RandomEncoder(_ReconstructionBaseline):
    """Push forget embeddings toward random standard-Gaussian vectors in embedding space."""

    def terms(self, task, x_r, x_f, epoch, step):
        z = task.embed(task.operator(x_f))
        noise = torch.randn(z.shape, generator=task.generator(epoch, step), dtype=z.dtype)
        return self.retain_term(task, x_r), ((z - noise) ** 2).mean()


@register_i2i_unlearner("retrain")
class RetrainI2I:
    """Exact unlearning: a fresh model trained on :math:`D_R` with the original recipe."""

    def __init__(self, epochs: int | None = None, lr: float | None = None, batch_size: int | None = None):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size

    def check_params(self) -> None:
        if self.epochs is not None and int(self.epochs) < 1:
            raise ConfigError(f"--epochs {self.epochs} must be at least 1")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr {self.lr} must be > 0")

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: I2IUnlearnContext) -> nn.Module:
        spec = getattr(model, "privkit_spec", None)
        if spec is None:
            raise ConfigError("model was not created with create_i2i; cannot rebuild it for retraining")
        r = context.i2i_recipe
        torch.manual_seed(context.seed)
        fresh = create_i2i(spec["architecture"], spec["input_shape"], **spec["kwargs"])
        loop = LoopConfig(epochs=int(self.epochs or r.epochs), batch_size=int(self.batch_size or r.batch_size),
                          seed=context.seed, progress=context.progress, description="retrain i2i")
        out, history = train_i2i(fresh, retain, context.operator, I2IConfig(lr=self.lr or r.lr,
                                                                           whole_weight=r.whole_weight), loop)
        out.privkit_spec = copy.deepcopy(spec)
        context.info["history"] = history
        return out
