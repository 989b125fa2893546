r"""``rurk`` in the unlearning registry: RURK (Hsu et al., NeurIPS 2025) through the shared loop.

.. math::

    \min_\theta\; \mathbb E_{D_r} \operatorname{CE}(f_\theta(x), y)
    + \lambda\, \mathbb E_{D_f} \mathbb E_{x' \in B_p(x, \tau)}
      \big[ \mathbb 1\{\arg\max f_\theta(x') = y\}\, \ell_{\text{pen}}(f_\theta(x'), y) \big],
    \qquad \ell_{\text{pen}} = -\log(1 - p_\theta(y \mid x')).

The objective is :func:`privkit.audit.rurk.rurk_loss`; the optimisation runs through
:func:`privkit.train.run_training` (one forget batch, cycled, paired with every retain batch).
``privkit unlearn --method rurk`` starts from the original model; with ``--from RUN`` it starts
from the model of an earlier unlearning run (a post-hoc fix of any method).
"""

from __future__ import annotations

import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.unlearn.base import UnlearnContext, copy_model, register_unlearner
from privkit.unlearn.baselines import UnlearnTask, _Cycle, _Iterative, _train, index_batches, load_batch

__all__ = ["RURKUnlearner"]


def _input_range(dataset, batch_size: int = 256) -> tuple[float, float] | None:
    """``(0, 1)`` when the first batch of inputs lies in [0, 1] (images), else ``None`` (no clipping)."""
    for _, x, _ in dataset.batches(batch_size):
        return (0.0, 1.0) if float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else None
    return None


@register_unlearner("rurk")
class RURKUnlearner(_Iterative):
    """RURK fine-tuning (retain cross-entropy + bounded penalty on recognised forget perturbations).

    Parameters
    ----------
    epochs, lr : optional
        Default: half the recipe's epochs, the recipe's learning rate.
    lam : float
        :math:`\\lambda`.
    tau : float
        Radius of the perturbation ball.
    norm : {"linf", "l2"}
    samples : int
        Perturbations per forget sample.
    sampler : {"pgd", "uniform", "gaussian"}
        ``pgd`` finds the vulnerable perturbations the model recognises most confidently.
    """

    epochs_fraction = 0.5
    lr_factor = 1.0

    def __init__(self, epochs: int | None = None, lr: float | None = None, lam: float = 1.0, tau: float = 0.03,
                 norm: str = "linf", samples: int = 4, sampler: str = "pgd"):
        super().__init__(epochs, lr)
        self.lam = lam
        self.tau = tau
        self.norm = norm
        self.samples = samples
        self.sampler = sampler

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        from privkit.audit.rurk import rurk_loss

        r = context.recipe
        if len(forget) == 0:
            raise ConfigError("the forget set is empty; check the --forget selection matches some samples")
        t = context.target_index(retain)
        clip = _input_range(retain)
        generator = torch.Generator().manual_seed(int(context.seed))
        forget_batches = _Cycle(forget, r.batch_size, context.seed, 1, t)

        def schedule(epoch: int):
            for idx in index_batches(len(retain), r.batch_size, context.seed, epoch, stream=0):
                yield "pair", (load_batch(retain, idx, t), forget_batches.next())

        def loss(model, payload):
            retain_batch, forget_batch = payload
            return rurk_loss(model, retain_batch, forget_batch, tau=self.tau, norm=self.norm, samples=self.samples,
                             lam=self.lam, sampler=self.sampler, clip=clip, generator=generator)

        task = UnlearnTask(copy_model(model), r, self._lr(r), schedule, {"pair": loss})
        context.info["rurk"] = {"tau": self.tau, "norm": self.norm, "samples": self.samples, "lam": self.lam,
                                "sampler": self.sampler, "clip": clip}
        return _train(task, None, self._epochs(r), r.batch_size, context, "rurk")
