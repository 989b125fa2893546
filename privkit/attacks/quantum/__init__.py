"""Gradient inversion on variational quantum neural networks (Papadopoulos et al., 2025).

Public API: :func:`run_qnn_attack`, :func:`make_figures`, :func:`validate_attack_config`,
:class:`VQNN`, :class:`FiniteDifferenceInversion`, :func:`dlg_attack` (optimisers registered by
:func:`register_dlg_optimizer`), the attack's step rules :data:`STEP_RULES`
(:func:`register_step_rule`), :func:`gradient_input_jacobian`, :class:`TanhMLP`,
the registries :data:`ANSATZE` / :data:`TASKS` and their decorators.
"""

from privkit.attacks.quantum.api import (
    clip_and_noise,
    defence_sweep,
    gaussian_mechanism_epsilon,
    make_figures,
    run_qnn_attack,
    validate_attack_config,
)
from privkit.attacks.quantum.circuits import ANSATZE, CircuitSpec, Op, build_circuit, register_ansatz, run_circuit
from privkit.attacks.quantum.dlg import DLG_OPTIMIZERS, TanhMLP, dlg_attack, register_dlg_optimizer
from privkit.attacks.quantum.inversion import (STEP_RULES, FiniteDifferenceInversion, gradient_input_jacobian,
                                              gradient_matching_loss, matched_mse, register_step_rule)
from privkit.attacks.quantum.models import VQNN
from privkit.attacks.quantum.tasks import TASKS, load_task, register_task

__all__ = [
    "ANSATZE", "DLG_OPTIMIZERS", "STEP_RULES", "TASKS", "CircuitSpec", "FiniteDifferenceInversion", "Op", "TanhMLP", "VQNN",
    "build_circuit", "clip_and_noise", "defence_sweep", "dlg_attack", "gaussian_mechanism_epsilon",
    "gradient_input_jacobian", "gradient_matching_loss", "load_task", "make_figures", "matched_mse", "register_ansatz",
    "register_dlg_optimizer", "register_step_rule", "register_task", "run_circuit", "run_qnn_attack", "validate_attack_config",
]
