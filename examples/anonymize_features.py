"""Model-agnostic anonymization with the Python API, on a feature array: hide who each record
belongs to while keeping the attribute the data is for.

Run: python examples/anonymize_features.py [OUT_FOLDER]
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from privkit.anonymize import BiometricAnonymizer


def accuracy(x, y, seed=0):
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return LogisticRegression(max_iter=2000).fit(x_tr, y_tr).score(x_te, y_te)


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    people, per_person, d = 30, 20, 40
    identity = np.repeat(np.arange(people), per_person)
    keep = rng.integers(0, 2, identity.size)                     # e.g. "wears glasses", per record
    x = rng.normal(size=(people, d))[identity] * 1.5 + rng.normal(size=(identity.size, d))
    x[:, :4] += 2.0 * keep[:, None]                              # the kept attribute lives in 4 features
    anonymizer = BiometricAnonymizer(k=5, weight=0.5, top_features=0.1, seed=0).fit(x, keep, identity)
    released = anonymizer.transform(x, keep, identity)
    print(f"re-identification: {accuracy(x, identity):.2f} -> {accuracy(released, identity):.2f} (chance {1 / people:.2f})")
    print(f"kept attribute:    {accuracy(x, keep):.2f} -> {accuracy(released, keep):.2f}")
    print(f"distinct identities per set: {anonymizer.achieved_k_['min']} (requested {anonymizer.k})")
    anonymizer.save(out / "anonymizer")
    again = BiometricAnonymizer.load(out / "anonymizer").transform(x, keep, identity)
    print("saved and reloaded: identical output" if np.array_equal(again, released) else "MISMATCH after reload")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example-anonymize"))
