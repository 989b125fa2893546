"""Model-agnostic biometric anonymization (Chen et al., 2024, arXiv 2405.15062).

:class:`BiometricAnonymizer` replaces every record by a selective weighted mean over a random set of
``k`` records of distinct identities, keeping the features relevant to an attribute of interest;
:mod:`privkit.anonymize.representations` turns samples of each modality into the fixed-length
vectors it works on and back. See ``docs/anonymize.md``.
"""

from privkit.anonymize.estimator import (
    BiometricAnonymizer,
    counter_uniform,
    register_relevance,
    register_weighting,
)
from privkit.anonymize.artifact import AnonymizerTransform, load_anonymizer, save_anonymizer  # registers kind "anonymizer"
from privkit.anonymize.representations import (
    Representation,
    available_representations,
    get_representation,
    register_representation,
    representation_from_dict,
)

__all__ = [
    "AnonymizerTransform",
    "BiometricAnonymizer",
    "Representation",
    "available_representations",
    "counter_uniform",
    "get_representation",
    "load_anonymizer",
    "register_relevance",
    "register_representation",
    "register_weighting",
    "representation_from_dict",
    "save_anonymizer",
]
