"""Machine unlearning for classifiers: NTK / Fast-NTK forgetting, baselines, metrics, erasure receipts.

>>> from privkit.unlearn import list_unlearners
>>> list_unlearners()[:3]
['retrain', 'finetune', 'neggrad']

The NTK mathematics lives in :mod:`privkit.unlearn.jacobian` and :mod:`privkit.unlearn.ntk`; the
registry, the methods and ``privkit unlearn``'s orchestration in the modules imported here.
"""

from privkit.unlearn.base import (UNLEARNERS, TrainingRecipe, UnlearnContext, Unlearner, get_unlearner,
                                  list_unlearners, register_unlearner)
from privkit.unlearn.metrics import METRIC_KEYS, avg_gap, unlearning_metrics
from privkit.unlearn.receipt import build_receipt, forget_ids_sha256, model_sha256, write_receipt

__all__ = [
    "UNLEARNERS", "TrainingRecipe", "UnlearnContext", "Unlearner", "get_unlearner", "list_unlearners",
    "register_unlearner", "METRIC_KEYS", "avg_gap", "unlearning_metrics", "build_receipt", "forget_ids_sha256",
    "model_sha256", "write_receipt",
]
