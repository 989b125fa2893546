"""privkit: privacy and machine-unlearning toolkit.

Attribute suppression (MaSS), model-agnostic anonymization, classifier and image-to-image
unlearning (NTK, Fast-NTK, RURK and baselines), and audits (fresh attackers, residual knowledge,
membership inference, gradient inversion on variational quantum neural networks), all on one
dataset interface (:mod:`privkit.data`) and one report format (:mod:`privkit.evaluate.report`).
"""

__version__ = "0.1.0"
