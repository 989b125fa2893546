r"""``rurk`` in the unlearning registry: RURK (Hsu et al., NeurIPS 2025) through the shared loop.

.. math::

    \min_\theta\; \mathbb E_{D_r} \big[\operatorname{CE}(f_\theta(x), y)
      + \beta\,T^2\,\mathrm{KL}(p_{\theta_0} \Vert p_\theta)\big]
    + \lambda\, \mathbb E_{D_f} \mathbb E_{x' \in B_p(x, \tau)}
      \big[ \mathbb 1\{\arg\max f_\theta(x') = y\}\, \ell_{\text{pen}}(f_\theta(x'), y) \big],
    \qquad \ell_{\text{pen}} = -\log(1 - p_\theta(y \mid x')).

The objective is :func:`privkit.audit.rurk.rurk_loss` (:math:`\theta_0`: the starting model, frozen;
:math:`\beta` = ``distill``, 0 for the paper's objective); the optimisation runs through
:func:`privkit.train.run_training` via :class:`privkit.audit.rurk.RURKTask` (one forget batch,
cycled, paired with every retain batch), with the :class:`privkit.audit.rurk.StopRule` early stop
and validation-accuracy floor. ``privkit unlearn --method rurk`` starts from the original model;
with ``--from RUN`` it starts from the model of an earlier unlearning run (a post-hoc fix of any
method). ``privkit audit residual --fix`` hands it the reference model (:meth:`RURKUnlearner.with_reference`),
so the stop rule audits against the retrained model and its floor uses the reference's validation accuracy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.unlearn.base import UnlearnContext, copy_model, register_unlearner
from privkit.unlearn.baselines import _Cycle, _Iterative, index_batches, load_batch, recipe_parameters

__all__ = ["RURKUnlearner"]


def _input_range(dataset, batch_size: int = 256) -> tuple[float, float] | None:
    """``(0, 1)`` when the first batch of inputs lies in [0, 1] (images), else ``None`` (no clipping)."""
    for _, x, _ in dataset.batches(batch_size):
        return (0.0, 1.0) if float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else None
    return None


def _materialize(dataset, target_index: int, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _, x, a in dataset.batches(batch_size):
        xs.append(x)
        ys.append(a[:, target_index])
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys)


@register_unlearner("rurk")
class RURKUnlearner(_Iterative):
    r"""RURK fine-tuning (retain cross-entropy + distillation + bounded penalty on recognised forget perturbations).

    Parameters
    ----------
    epochs, lr : optional
        Default: half the recipe's epochs, the recipe's learning rate. With ``early_stop`` the
        epochs are a budget: the run stops at the first check that finds the residual knowledge gone.
    lam : float
        :math:`\lambda`.
    tau : float
        Radius of the perturbation ball.
    norm : {"linf", "l2"}
    samples : int
        Perturbations per forget sample.
    sampler : {"pgd", "uniform", "gaussian"}
        ``pgd`` finds the vulnerable perturbations the model recognises most confidently.
    distill : float
        :math:`\beta`, weight of the KL to the starting model on the retain batches (0: off).
    temperature : float
        Temperature of that KL.
    early_stop : bool
        Use the :class:`~privkit.audit.rurk.StopRule`: checks every ``check_every`` steps on fresh
        perturbations (``check_samples`` per forget sample) against the reference (set by
        :meth:`with_reference`) or, without one, against held-out validation samples of the same
        classes; and a validation-accuracy floor ``val_tolerance`` points under
        ``min(start, reference)``, with roll-back and a halved learning rate when crossed. When
        neither tier can audit the forget set (a whole class forgotten and no reference) the rule is
        not used and the epoch budget decides.
    check_every : int, optional
        Steps between checks (default: a quarter of an epoch, at least 1).
    distill_forgotten : bool
        Whether the distillation term keeps the classes the retain set no longer holds (a forgotten
        class or identity). Default ``False``: they are left out (see
        :func:`~privkit.audit.rurk.rurk_loss`), since distilling the starting model's probability of
        a forgotten class on retain inputs brought the recognition of its perturbations back.
    margin : float
        Logit margin of the penalty's indicator: perturbations within ``margin`` logits of being
        recognised are penalised too (0: the paper's indicator; see :func:`~privkit.audit.rurk.rurk_loss`).
    """

    epochs_fraction = 0.5
    lr_factor = 1.0

    def __init__(self, epochs: int | None = None, lr: float | None = None, lam: float = 1.0, tau: float = 0.03,
                 norm: str = "linf", samples: int = 4, sampler: str = "pgd", distill: float = 1.0,
                 temperature: float = 1.0, early_stop: bool = True, check_every: int | None = None,
                 check_samples: int = 32, val_tolerance: float = 1.0, distill_forgotten: bool = False,
                 margin: float = 0.0):
        super().__init__(epochs, lr)
        self.lam = lam
        self.tau = tau
        self.norm = norm
        self.samples = samples
        self.sampler = sampler
        self.distill = distill
        self.temperature = temperature
        self.early_stop = early_stop
        self.check_every = check_every
        self.check_samples = check_samples
        self.val_tolerance = val_tolerance
        self.distill_forgotten = distill_forgotten
        self.margin = margin
        self._reference: nn.Module | None = None

    def check(self, model: nn.Module, context: UnlearnContext) -> None:
        """Refuse, before anything runs, options of the wrong kind (the CLI checks types, Python callers may not)."""
        if not isinstance(self.distill_forgotten, bool):
            raise ConfigError(f"distill_forgotten={self.distill_forgotten!r} must be true or false")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not 0 <= self.margin < math.inf:
            raise ConfigError(f"margin={self.margin!r} must be a finite number >= 0 (logits; 0 = the paper's indicator)")

    def with_reference(self, reference: nn.Module | None) -> "RURKUnlearner":
        """Use ``reference`` (a model retrained without the forget set) in the stop rule; returns self."""
        self._reference = reference
        return self

    def get_params(self) -> dict:
        # the reference model is an input of the run, not a hyperparameter (and not JSON)
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        from privkit.audit.rurk import RURKTask, StopRule, finish, has_norm_stats, rurk_loss
        from privkit.train import make_optimizer, recalibrate_batchnorm

        r = context.recipe
        if len(forget) == 0:
            raise ConfigError("the forget set is empty; check the --forget selection matches some samples")
        t = context.target_index(retain)
        clip = _input_range(retain)
        generator = torch.Generator().manual_seed(int(context.seed))
        forget_batches = _Cycle(forget, r.batch_size, context.seed, 1, t)
        epochs = self._epochs(r)

        student = copy_model(model)
        frozen_stats = r.peft is not None  # a PEFT model keeps its pretrained BatchNorm statistics
        params = recipe_parameters(student, r)
        optimizer = make_optimizer(params, r.classifier_config(lr=self._lr(r)))
        teacher = None
        if self.distill > 0:
            teacher = copy_model(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

        recalibrate = None
        if not frozen_stats and has_norm_stats(student):
            recalibrate = lambda m: recalibrate_batchnorm(m, retain, r.batch_size)  # noqa: E731

        def retain_batches(epoch: int):
            for idx in index_batches(len(retain), r.batch_size, context.seed, epoch, stream=0):
                yield load_batch(retain, idx, t)

        retained = torch.unique(torch.as_tensor(retain.labels[:, t]))  # labels only: no images loaded
        fy_all = torch.as_tensor(forget.labels[:, t]).long()
        # classes forgotten as a whole: the distillation term leaves them out (see rurk_loss)
        forgotten = None if self.distill_forgotten else torch.unique(fy_all[~torch.isin(fy_all, retained)])

        def loss(m, retain_batch, forget_batch):
            return rurk_loss(m, retain_batch, forget_batch, tau=self.tau, norm=self.norm, samples=self.samples,
                             lam=self.lam, sampler=self.sampler, clip=clip, generator=generator, teacher=teacher,
                             distill=self.distill, temperature=self.temperature, forgotten_classes=forgotten,
                             margin=self.margin)

        stop_rule = None
        if self.early_stop:
            steps_per_epoch = max(1, math.ceil(len(retain) / r.batch_size))
            fx, fy = _materialize(forget, t)
            hx, hy = _materialize(val, t) if val is not None else (None, None)
            vx, vy = hx, hy
            if vy is not None and vy.numel():
                # the floor guards the utility that is kept: validation samples of a class the retain set no
                # longer holds (a forgotten class or identity) are *meant* to be lost and would trip it
                kept = torch.isin(vy, retained)
                vx, vy = vx[kept], vy[kept]
            if not bool(torch.isin(fy, retained).all()):
                # held-out samples of a class that is forgotten as a whole are recognised exactly as well as the
                # forget samples by a model that kept the class: that tier would call it "forgotten" at once
                hx = hy = None
        # a rule that cannot audit the forget set (a whole class forgotten, no reference) would only guard the
        # validation floor, and every check that forgets a little costs a little utility: it rolled the whole fix
        # back (digits class 3 kept, r_tau 16.4). Without an audit the budget decides, as before the rule existed.
        if self.early_stop and (self._reference is not None or hx is not None):
            stop_rule = StopRule(fx, fy, tau=self.tau, norm=self.norm, samples=self.check_samples, clip=clip,
                                 seed=context.seed, reference=self._reference, heldout_x=hx, heldout_y=hy,
                                 val_x=vx, val_y=vy, val_tolerance=self.val_tolerance,
                                 check_every=self.check_every or max(1, steps_per_epoch // 4), recalibrate=recalibrate)
            stop_rule.start(student, optimizer)

        from privkit.train import LoopConfig, run_training, unwrap

        task = RURKTask(student, optimizer, retain_batches, forget_batches.next, loss, stop_rule=stop_rule,
                        train_mode=not frozen_stats)
        run_training(task, None, LoopConfig(epochs=int(epochs), batch_size=int(r.batch_size), seed=context.seed,
                                            progress=context.progress, description="rurk"))
        student = unwrap(task.nets["model"])
        finish(student, optimizer, stop_rule, recalibrate)
        for p in student.parameters():
            p.requires_grad_(True)
        context.info["rurk"] = {"tau": self.tau, "norm": self.norm, "samples": self.samples, "lam": self.lam,
                                "sampler": self.sampler, "clip": clip, "distill": self.distill,
                                "distill_left_out": [] if forgotten is None else forgotten.tolist(),
                                "margin": self.margin,
                                "epochs_budget": int(epochs),
                                **({"stop_rule": stop_rule.summary()} if stop_rule is not None else {})}
        return student
