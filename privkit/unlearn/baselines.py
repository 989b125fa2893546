r"""Baseline unlearning methods, following the protocol of SalUn (Fan et al., ICLR 2024) and
"Model sparsity can simplify machine unlearning" (Jia et al., NeurIPS 2023).

Notation: :math:`\theta_o` the original model trained on :math:`D = D_r \cup D_f`,
:math:`\ell` the cross-entropy, :math:`\eta` the learning rate, :math:`E` the epochs.

``retrain``
    The reference ("exact unlearning"): a fresh model of the same architecture and kwargs,
    trained on :math:`D_r` with the original recipe (epochs, lr, batch size, optimizer; the
    unlearning seed). For a PEFT model: the same PEFT parameters re-trained from the same
    pretrained backbone :math:`w_0` with the same recipe, anchor penalty included.
``finetune`` (FT)
    :math:`\min_\theta \mathbb E_{D_r}\,\ell(\theta; x, y)` from :math:`\theta_o`, a few epochs
    (half the recipe's) at a larger learning rate (twice the recipe's): catastrophic forgetting
    of :math:`D_f`.
``neggrad`` (GA)
    Gradient ascent on the forget set, :math:`\max_\theta \mathbb E_{D_f}\,\ell(\theta; x, y)`.
``neggrad-plus`` (NegGrad+)
    :math:`\min_\theta\ \alpha\,\mathbb E_{D_r}\ell - (1-\alpha)\,\mathbb E_{D_f}\ell`, one forget
    batch paired with every retain batch.
``random-label`` (RL)
    Fine-tune on :math:`D_f` relabelled with random *wrong* labels :math:`y' \ne y` (re-drawn every
    step) together with :math:`D_r`.
``l1-sparse``
    :math:`\min_\theta \mathbb E_{D_r}\ell + \gamma_t\lVert\theta\rVert_1` with
    :math:`\gamma_t = \gamma(1 - t/T)` decaying linearly over the :math:`T` steps.
``salun``
    Weight saliency :math:`m_S = \mathbb 1\big(|\nabla_\theta \mathbb E_{D_f}\ell(\theta_o)| \ge
    q\big)`, :math:`q` the quantile keeping the top ``fraction`` of entries; then random-label
    training where only salient weights move: :math:`\theta \leftarrow \theta - \eta\,(m_S \odot g)`.
``scrub``
    Teacher :math:`\theta_o` (frozen), student :math:`\theta`. "Max" epochs ascend
    :math:`\mathbb E_{D_f} \mathrm{KL}(p_{\theta_o} \Vert p_\theta)`; every epoch then descends
    :math:`\mathbb E_{D_r}\,[\alpha\,\mathrm{KL}(p_{\theta_o} \Vert p_\theta) + \gamma\,\ell]`
    (temperature :math:`T` on both distributions).

Every method trains through :func:`privkit.train.run_training` (deterministic batch order from
the seed; progress bar). For a PEFT model only its PEFT parameters train and BatchNorm statistics
stay frozen, as in its original fine-tuning.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privkit.errors import ConfigError
from privkit.train import ClassifierTask, LoopConfig, TrainTask, make_optimizer, run_training, unwrap
from privkit.unlearn.base import TrainingRecipe, UnlearnContext, copy_model, fresh_model_like, register_unlearner

__all__ = ["Retrain", "Finetune", "NegGrad", "NegGradPlus", "RandomLabel", "L1Sparse", "SalUn", "Scrub"]


# -- shared plumbing ----------------------------------------------------------------------------

def _check_positive(name: str, value, integer: bool = False) -> None:
    if value is None:
        return
    if integer and (int(value) != value or value < 1):
        raise ConfigError(f"--{name} {value} must be an integer >= 1")
    if not integer and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--{name} {value} must be a positive number")


def recipe_parameters(model: nn.Module, recipe: TrainingRecipe) -> list[nn.Parameter]:
    """Let only the recipe's trainable parameters (all, or a PEFT subset) require grad; return them."""
    names = set(recipe.trainable) if recipe.trainable else None
    for n, p in model.named_parameters():
        p.requires_grad_(names is None or n in names)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters; the model's recipe names parameters it does not have")
    return params


def index_batches(n: int, batch_size: int, seed: int, epoch: int, stream: int = 0) -> list[np.ndarray]:
    """One epoch of shuffled index batches, a fixed function of ``(seed, epoch, stream)``."""
    if n == 0:
        return []
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 7 + int(stream))
    order = torch.randperm(n, generator=g).numpy()
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


def load_batch(dataset, idx: np.ndarray, target_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of samples ``idx`` of ``dataset`` (``y`` = the target attribute)."""
    items = [dataset[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([a for _, a in items])[:, target_index]


class _Cycle:
    """Endless batches of a (small) set: a fresh deterministic permutation on every pass."""

    def __init__(self, dataset, batch_size: int, seed: int, stream: int, target_index: int):
        self.dataset, self.batch_size, self.seed, self.stream = dataset, batch_size, seed, stream
        self.target_index = target_index
        self.passes = 0
        self._pending: list[np.ndarray] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._pending:
            self._pending = index_batches(len(self.dataset), self.batch_size, self.seed, self.passes, self.stream)
            self.passes += 1
        return load_batch(self.dataset, self._pending.pop(0), self.target_index)


class UnlearnTask(TrainTask):
    """A :class:`~privkit.train.TrainTask` over the unlearning model, fed by ``schedule(epoch)``.

    ``schedule`` yields ``(kind, payload)`` items; :meth:`step` dispatches to ``self.losses[kind]``
    (a callable ``(model, payload) -> (loss, stats)``). Only the recipe's trainable parameters
    train; a PEFT model stays in eval mode (frozen BatchNorm statistics).
    """

    def __init__(self, model: nn.Module, recipe: TrainingRecipe, lr: float, schedule, losses: dict,
                 grad_mask: dict[str, torch.Tensor] | None = None):
        self.frozen_stats = recipe.peft is not None
        params = recipe_parameters(model, recipe)
        self.nets = {"model": model}
        self.optimizers = {"model": make_optimizer(params, recipe.classifier_config(lr=lr))}
        self.batch_source = schedule
        self.losses = losses
        self.grad_mask = grad_mask

    def step(self, batch, epoch: int, step: int) -> dict[str, float]:
        kind, payload = batch
        model = self.nets["model"]
        model.eval() if self.frozen_stats else model.train()
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss, stats = self.losses[kind](model, payload)
        loss.backward()
        if self.grad_mask is not None:
            for n, p in unwrap(model).named_parameters():
                if p.grad is not None and n in self.grad_mask:
                    p.grad.mul_(self.grad_mask[n])
        opt.step()
        stats = dict(stats)
        stats["loss"] = float(loss.detach())
        return stats


def _train(task: TrainTask, dataset, epochs: int, batch_size: int, context: UnlearnContext, name: str) -> nn.Module:
    loop = LoopConfig(epochs=int(epochs), batch_size=int(batch_size), seed=context.seed, progress=context.progress,
                      description=name)
    run_training(task, dataset, loop)
    model = unwrap(task.nets["model"])
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model


class _Iterative:
    """Common hyperparameters: ``epochs`` and ``lr`` default to a fraction / multiple of the recipe's."""

    epochs_fraction = 0.5
    lr_factor = 1.0

    def __init__(self, epochs: int | None = None, lr: float | None = None):
        self.epochs = epochs
        self.lr = lr

    def _epochs(self, recipe: TrainingRecipe) -> int:
        _check_positive("epochs", self.epochs, integer=True)
        return int(self.epochs) if self.epochs is not None else max(1, int(round(self.epochs_fraction * recipe.epochs)))

    def _lr(self, recipe: TrainingRecipe) -> float:
        _check_positive("lr", self.lr)
        return float(self.lr) if self.lr is not None else recipe.lr * self.lr_factor

    def get_params(self) -> dict[str, Any]:
        return dict(vars(self))


def _ce(model: nn.Module, payload) -> tuple[torch.Tensor, dict]:
    x, y = payload
    logits = model(x)
    return F.cross_entropy(logits, y), {"acc": float((logits.argmax(1) == y).float().mean())}


def _retain_schedule(retain, batch_size: int, seed: int, target_index: int):
    def schedule(epoch: int) -> Iterator:
        for idx in index_batches(len(retain), batch_size, seed, epoch, stream=0):
            yield "retain", load_batch(retain, idx, target_index)

    return schedule


# -- retrain --------------------------------------------------------------------------------------

@register_unlearner("retrain")
class Retrain:
    """Exact unlearning: train from scratch on :math:`D_r` with the original recipe (the reference).

    Parameters
    ----------
    epochs, lr : optional
        Override the recipe's (default: the recipe's own, which makes this the gold standard).
    """

    def __init__(self, epochs: int | None = None, lr: float | None = None):
        self.epochs = epochs
        self.lr = lr

    def unlearn(self, model: nn.Module, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        from privkit.train import train_classifier

        r = context.recipe
        _check_positive("epochs", self.epochs, integer=True)
        _check_positive("lr", self.lr)
        epochs = int(self.epochs or r.epochs)
        lr = float(self.lr or r.lr)
        loop = LoopConfig(epochs=epochs, batch_size=r.batch_size, seed=context.seed, progress=context.progress,
                          description="retrain")
        if r.peft:
            from privkit.unlearn.peft import PeftClassifierTask, set_parameters

            if context.w0 is None:
                raise ConfigError("retraining a PEFT model needs its pretrained values w0 (w0.safetensors in the run)")
            fresh = copy_model(model)
            set_parameters(fresh, context.w0)  # the same pretrained backbone; PEFT parameters back at w0
            task = PeftClassifierTask(fresh, context.target_index(retain), r.classifier_config(lr=lr))
            run_training(task, retain, loop)
            fresh = unwrap(task.nets["model"])
            for p in fresh.parameters():
                p.requires_grad_(True)
        else:
            # exactly what `privkit train` does, on D_r: seed, create, train
            torch.manual_seed(context.seed)
            fresh = fresh_model_like(model, retain.schema)
            fresh, _ = train_classifier(fresh, retain, context.target, r.classifier_config(lr=lr), loop)
        fresh.eval()
        return fresh


# -- fine-tune, gradient ascent -------------------------------------------------------------------

@register_unlearner("finetune")
class Finetune(_Iterative):
    """Fine-tune on :math:`D_r` (half the recipe's epochs, twice its learning rate by default)."""

    epochs_fraction = 0.5
    lr_factor = 2.0

    def unlearn(self, model, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        r = context.recipe
        student = copy_model(model)
        schedule = _retain_schedule(retain, r.batch_size, context.seed, context.target_index(retain))
        task = UnlearnTask(student, r, self._lr(r), schedule, {"retain": _ce})
        return _train(task, None, self._epochs(r), r.batch_size, context, "finetune")


@register_unlearner("neggrad")
class NegGrad(_Iterative):
    """Gradient ascent on :math:`D_f` (default: the recipe's epochs at half its learning rate; D_f is small)."""

    epochs_fraction = 1.0
    lr_factor = 0.5

    def unlearn(self, model, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        r = context.recipe
        t = context.target_index(forget)

        def schedule(epoch: int):
            for idx in index_batches(len(forget), r.batch_size, context.seed, epoch, stream=1):
                yield "forget", load_batch(forget, idx, t)

        def ascent(model, payload):
            loss, stats = _ce(model, payload)
            return -loss, stats

        task = UnlearnTask(copy_model(model), r, self._lr(r), schedule, {"forget": ascent})
        return _train(task, None, self._epochs(r), r.batch_size, context, "neggrad")


@register_unlearner("neggrad-plus")
class NegGradPlus(_Iterative):
    """:math:`\\alpha\\,\\ell(D_r) - (1-\\alpha)\\,\\ell(D_f)`, a forget batch with every retain batch."""

    epochs_fraction = 0.5
    lr_factor = 1.0

    def __init__(self, epochs: int | None = None, lr: float | None = None, alpha: float = 0.95):
        super().__init__(epochs, lr)
        self.alpha = alpha

    def unlearn(self, model, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha={self.alpha} must be strictly between 0 and 1")
        r = context.recipe
        t = context.target_index(retain)
        forget_batches = _Cycle(forget, r.batch_size, context.seed, 1, t)

        def schedule(epoch: int):
            for idx in index_batches(len(retain), r.batch_size, context.seed, epoch, stream=0):
                yield "pair", (load_batch(retain, idx, t), forget_batches.next())

        def loss(model, payload):
            (xr, yr), (xf, yf) = payload
            lr_, stats = _ce(model, (xr, yr))
            lf, _ = _ce(model, (xf, yf))
            return self.alpha * lr_ - (1 - self.alpha) * lf, dict(stats, forget_ce=float(lf.detach()))

        task = UnlearnTask(copy_model(model), r, self._lr(r), schedule, {"pair": loss})
        return _train(task, None, self._epochs(r), r.batch_size, context, "neggrad-plus")


# -- random labels, l1-sparse, SalUn ------------------------------------------------------------

def _mixed_schedule(retain, forget, batch_size: int, seed: int, target_index: int):
    """Batches over :math:`D_r \\cup D_f` with a flag marking forget samples."""
    n_r = len(retain)

    def schedule(epoch: int):
        for idx in index_batches(n_r + len(forget), batch_size, seed, epoch, stream=2):
            ir, jf = idx[idx < n_r], idx[idx >= n_r] - n_r
            parts = [load_batch(retain, ir, target_index)] if len(ir) else []
            if len(jf):
                parts.append(load_batch(forget, jf, target_index))
            x = torch.cat([p[0] for p in parts])
            y = torch.cat([p[1] for p in parts])
            is_forget = torch.cat([torch.zeros(len(ir), dtype=torch.bool), torch.ones(len(jf), dtype=torch.bool)])
            yield "mixed", (x, y, is_forget)

    return schedule


def _random_label_loss(num_classes: int, seed: int):
    g = torch.Generator().manual_seed(int(seed) + 0x5A1)

    def loss(model, payload):
        x, y, is_forget = payload
        # a random label different from the true one: y + U{1..C-1} mod C
        shift = torch.randint(1, num_classes, (int(is_forget.sum()),), generator=g)
        y = y.clone()
        y[is_forget] = (y[is_forget] + shift) % num_classes
        logits = model(x)
        return F.cross_entropy(logits, y), {"forget_fraction": float(is_forget.float().mean())}

    return loss


@register_unlearner("random-label")
class RandomLabel(_Iterative):
    """Fine-tune on :math:`D_f` with random wrong labels together with :math:`D_r`."""

    epochs_fraction = 0.5
    lr_factor = 1.0

    def _mask(self, model, forget, context) -> dict[str, torch.Tensor] | None:
        return None

    def unlearn(self, model, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        r = context.recipe
        t = context.target_index(retain)
        num_classes = retain.schema.attribute(context.target).num_classes
        student = copy_model(model)
        mask = self._mask(student, forget, context)
        schedule = _mixed_schedule(retain, forget, r.batch_size, context.seed, t)
        task = UnlearnTask(student, r, self._lr(r), schedule, {"mixed": _random_label_loss(num_classes, context.seed)},
                           grad_mask=mask)
        return _train(task, None, self._epochs(r), r.batch_size, context, self.name)


@register_unlearner("l1-sparse")
class L1Sparse(_Iterative):
    """Fine-tune on :math:`D_r` with :math:`\\gamma_t\\lVert\\theta\\rVert_1`, :math:`\\gamma_t` decaying linearly to 0."""

    epochs_fraction = 0.5
    lr_factor = 1.0

    def __init__(self, epochs: int | None = None, lr: float | None = None, gamma: float = 1e-4):
        super().__init__(epochs, lr)
        self.gamma = gamma

    def unlearn(self, model, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        if not self.gamma >= 0:
            raise ConfigError(f"gamma={self.gamma} must be >= 0")
        r = context.recipe
        epochs = self._epochs(r)
        total_steps = epochs * math.ceil(len(retain) / r.batch_size)
        counter = {"step": 0}

        def loss(model, payload):
            ce, stats = _ce(model, payload)
            gamma_t = self.gamma * (1 - counter["step"] / total_steps)
            counter["step"] += 1
            l1 = sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
            return ce + gamma_t * l1, dict(stats, l1=float(l1.detach()))

        schedule = _retain_schedule(retain, r.batch_size, context.seed, context.target_index(retain))
        task = UnlearnTask(copy_model(model), r, self._lr(r), schedule, {"retain": loss})
        return _train(task, None, epochs, r.batch_size, context, "l1-sparse")


def saliency_mask(model: nn.Module, forget, target_index: int, fraction: float, trainable: list[str] | None,
                  batch_size: int = 256) -> dict[str, torch.Tensor]:
    """SalUn's weight-saliency mask: 1 where :math:`|\\nabla_\\theta \\ell(D_f)|` is in the top ``fraction``.

    The gradient of the mean forget cross-entropy at the original weights, accumulated over the
    whole forget set (eval mode); one global threshold over all trainable entries.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"saliency fraction {fraction} must be in (0, 1]")
    names = set(trainable) if trainable else None
    params = {n: p for n, p in model.named_parameters() if names is None or n in names}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    n_total = len(forget)
    for _, x, a in forget.batches(batch_size):
        loss = F.cross_entropy(model(x), a[:, target_index], reduction="sum") / n_total
        for (n, g) in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                grads[n] += g
    model.train(was_training)
    flat = torch.cat([g.abs().reshape(-1) for g in grads.values()])
    k = max(1, int(round(fraction * flat.numel())))
    threshold = torch.topk(flat, k).values.min()
    return {n: (g.abs() >= threshold).to(g.dtype) for n, g in grads.items()}


@register_unlearner("salun")
class SalUn(RandomLabel):
    """Random-label training restricted to the salient weights (top ``fraction`` of the forget gradient)."""

    def __init__(self, epochs: int | None = None, lr: float | None = None, fraction: float = 0.5):
        super().__init__(epochs, lr)
        self.fraction = fraction

    def _mask(self, model, forget, context):
        mask = saliency_mask(model, forget, context.target_index(forget), self.fraction, context.recipe.trainable)
        context.info["salun_mask_fraction"] = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
        return mask


# -- SCRUB ------------------------------------------------------------------------------------------

def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """:math:`T^2\\,\\mathrm{KL}(p_{teacher} \\Vert p_{student})` at temperature :math:`T` (batch mean)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean") * t * t


@register_unlearner("scrub")
class Scrub(_Iterative):
    """SCRUB (Kurmanji et al., NeurIPS 2023): max-KL steps on :math:`D_f`, min KL + CE steps on :math:`D_r`.

    Parameters
    ----------
    max_epochs : int, optional
        Epochs that start with a pass of max steps over :math:`D_f` (default: half of ``epochs``).
    alpha, gamma : float
        Weights of the KL and cross-entropy terms of the min step.
    temperature : float
        Distillation temperature :math:`T`.
    """

    epochs_fraction = 0.5
    lr_factor = 1.0

    def __init__(self, epochs: int | None = None, lr: float | None = None, max_epochs: int | None = None,
                 alpha: float = 1.0, gamma: float = 1.0, temperature: float = 4.0):
        super().__init__(epochs, lr)
        self.max_epochs = max_epochs
        self.alpha = alpha
        self.gamma = gamma
        self.temperature = temperature

    def unlearn(self, model, retain, forget, val, *, context: UnlearnContext) -> nn.Module:
        r = context.recipe
        epochs = self._epochs(r)
        max_epochs = self.max_epochs if self.max_epochs is not None else max(1, epochs // 2)
        t = context.target_index(retain)
        teacher = copy_model(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

        def schedule(epoch: int):
            if epoch < max_epochs:
                for idx in index_batches(len(forget), r.batch_size, context.seed, epoch, stream=1):
                    yield "max", load_batch(forget, idx, t)
            for idx in index_batches(len(retain), r.batch_size, context.seed, epoch, stream=0):
                yield "min", load_batch(retain, idx, t)

        def max_step(model, payload):
            x, _ = payload
            with torch.no_grad():
                teacher_logits = teacher(x)
            kl = _kl(model(x), teacher_logits, self.temperature)
            return -kl, {"forget_kl": float(kl.detach())}

        def min_step(model, payload):
            x, y = payload
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = model(x)
            kl = _kl(logits, teacher_logits, self.temperature)
            return self.alpha * kl + self.gamma * F.cross_entropy(logits, y), {"retain_kl": float(kl.detach())}

        task = UnlearnTask(copy_model(model), r, self._lr(r), schedule, {"max": max_step, "min": min_step})
        return _train(task, None, epochs, r.batch_size, context, "scrub")
