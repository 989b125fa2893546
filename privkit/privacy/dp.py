"""DP-SGD training through Opacus (Abadi et al., 2016) with Opacus's RDP accountant.

Each step clips every per-sample gradient to norm ``C`` and adds Gaussian noise
:math:`\\mathcal N(0, \\sigma^2 C^2 I)` to their sum; batches are Poisson-sampled with rate
``q = B / N``. Opacus picks :math:`\\sigma` so that after ``epochs`` the accountant's
:math:`(\\varepsilon, \\delta)` meets the target, and reports the epsilon actually spent.

BatchNorm mixes samples in a batch, which per-sample clipping cannot bound; privkit models take
``norm="group"`` (GroupNorm) for DP, and the report says so.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from privkit.errors import ConfigError
from privkit.train import ClassifierConfig, ClassifierTask, make_optimizer


@dataclass
class DPConfig:
    target_epsilon: float
    delta: float
    max_grad_norm: float = 1.0

    def validate(self, n: int) -> None:
        if not self.target_epsilon > 0:
            raise ConfigError(f"--target-epsilon {self.target_epsilon} must be positive")
        if not 0 < self.delta < 1:
            raise ConfigError(f"--delta {self.delta} must be in (0, 1); use about 1/N (here {1 / max(1, n):.1e})")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"--max-grad-norm {self.max_grad_norm} must be positive")


def dp_model_kwargs(architecture_factory) -> tuple[dict, str]:
    """Keyword arguments that make a registry model DP-compatible, and a note for the report."""
    if "norm" in inspect.signature(architecture_factory).parameters:
        return {"norm": "group"}, "BatchNorm replaced by GroupNorm (norm=group) so per-sample gradients are defined"
    return {}, "model has no BatchNorm; used as is"


def validate_for_dp(model: nn.Module) -> None:
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"model is not DP-compatible ({type(errors[0]).__name__}: {str(errors[0])[:80]}); "
                          f"use an architecture with norm=group")


def smallest_reachable_epsilon(delta: float) -> float:
    r"""The epsilon the RDP accountant reports as the noise grows without bound.

    Opacus converts RDP to :math:`(\varepsilon, \delta)` by Balle et al. (2020, Thm. 21),
    :math:`\varepsilon = \min_\alpha \mathrm{RDP}(\alpha) - \frac{\log\delta + \log\alpha}{\alpha - 1}
    + \log\frac{\alpha - 1}{\alpha}`, over its default orders; with infinite noise
    :math:`\mathrm{RDP}(\alpha) \to 0`, so no target at or below this value can be met.
    """
    import numpy as np
    from opacus.accountants import RDPAccountant

    orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    return float(np.min(-(np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)))


class DPClassifierTask(ClassifierTask):
    """:class:`~privkit.train.ClassifierTask` made private with Opacus; batches come from Opacus's
    Poisson-sampling loader and the accountant's history is checkpointed for ``--resume``."""

    def __init__(self, model: nn.Module, dataset, target_index: int, cfg: ClassifierConfig, dp: DPConfig, epochs: int,
                 batch_size: int, seed: int):
        from opacus import PrivacyEngine

        dp.validate(len(dataset))
        floor = smallest_reachable_epsilon(dp.delta)
        if dp.target_epsilon <= floor:
            # Opacus would search noise multipliers up to 1e6 for about a minute before saying so
            raise ConfigError(f"--target-epsilon {dp.target_epsilon:g} cannot be reached with --delta {dp.delta:g}: "
                              f"even infinite noise spends {floor:.3g} under the RDP accountant; raise "
                              f"--target-epsilon above {floor:.3g} or raise --delta")
        validate_for_dp(model)
        super().__init__(model, target_index, cfg)
        generator = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
        with warnings.catch_warnings():
            # secure_mode needs torchcsprng; the report states that the RNG is not cryptographic
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            self.engine = PrivacyEngine(accountant="rdp", secure_mode=False)
            try:
                module, optimizer, dp_loader = self.engine.make_private_with_epsilon(
                    module=model, optimizer=self.optimizers["model"], data_loader=loader,
                    target_epsilon=dp.target_epsilon, target_delta=dp.delta, epochs=epochs,
                    max_grad_norm=dp.max_grad_norm,
                )
            except ValueError as e:  # Opacus: "The privacy budget is too low."
                raise ConfigError(f"--target-epsilon {dp.target_epsilon:g} cannot be reached with --delta {dp.delta:g} "
                                  f"in {epochs} epochs ({e}); raise --target-epsilon or train fewer epochs") from None
        self.nets = {"model": module}
        self.optimizers = {"model": optimizer}
        self.dp = dp
        self.noise_multiplier = float(optimizer.noise_multiplier)
        self.sample_rate = 1.0 / len(dp_loader)
        self._loader = dp_loader
        self._sampler_generator = generator  # Opacus's Poisson sampler draws from the loader's generator
        self._seed = int(seed)
        self.batch_source = self._epoch_batches

    def _epoch_batches(self, epoch: int):
        """Opacus's Poisson-sampled batches of ``epoch``. The sampler is reseeded from ``(seed, epoch)``
        so the batches of an epoch do not depend on what ran before: a resumed run replays exactly
        the batches the interrupted one drew (secure_mode is off, so this costs no guarantee that
        the run had)."""
        self._sampler_generator.manual_seed(self._seed * 1_000_003 + int(epoch))
        return self._loader

    def step(self, batch, epoch: int, step: int) -> dict[str, float]:
        x, attrs = batch
        with warnings.catch_warnings():
            # Opacus's hooks fire on module outputs when inputs need no grad: expected here
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            stats = super().step((x, attrs), epoch, step)
        # Poisson sampling can draw an empty batch: the step still happens (Opacus adds the noise
        # and the accountant counts it, as the analysis assumes); only its statistics are undefined
        return stats if len(x) else {}

    def epsilon(self) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(self.engine.get_epsilon(self.dp.delta))

    def extra_state(self) -> dict:
        return {"accountant_history": [list(h) for h in self.engine.accountant.history]}

    def load_extra_state(self, state: dict) -> None:
        self.engine.accountant.history = [tuple(h) for h in state.get("accountant_history", [])]
