"""Privacy attacks used by privkit's audits."""

from privkit.attacks.quantum import make_figures, run_qnn_attack, validate_attack_config

__all__ = ["make_figures", "run_qnn_attack", "validate_attack_config"]
