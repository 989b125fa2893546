"""Train/validation/test splits and forget-set selection.

Splits work on labels only (no sample is read). By default samples of one identity (person,
speaker, subject) all land in the same split, so a model is never tested on people it trained on;
``group_by=None`` gives the closed-set variant where the same people appear in every split but with
disjoint samples (needed to audit identity recognition).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privkit.data.datasets import AttributeDataset, AttributeSubset
from privkit.errors import ConfigError, DataError

FORGET_FORMS = "class=NAME (needs a target attribute), attr=ATTRIBUTE:VALUE, ids=FILE (one sample index per line), random=FRACTION"


@dataclass(frozen=True)
class Split:
    """Sorted index arrays of the train, validation and test samples (disjoint)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def subsets(self, dataset: AttributeDataset) -> tuple[AttributeSubset, AttributeSubset, AttributeSubset]:
        """``(train, val, test)`` views of ``dataset``."""
        return dataset.subset(self.train), dataset.subset(self.val), dataset.subset(self.test)

    def to_dict(self) -> dict:
        return {"train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist()}


def _resolve_group(dataset: AttributeDataset, group_by: str | None) -> str | None:
    if group_by == "auto":
        return dataset.schema.identity_attribute
    if group_by is None:
        return None
    dataset.schema.attribute(group_by)  # unknown name -> SchemaError listing the known ones
    return group_by


def split_dataset(dataset: AttributeDataset, val: float = 0.15, test: float = 0.15, seed: int = 0,
                  group_by: str | None = "auto", stratify: str | None = None) -> Split:
    """Split ``dataset`` into train / validation / test index sets.

    Parameters
    ----------
    dataset : AttributeDataset
    val, test : float
        Target fractions of samples in validation and test (``0 <= val, test`` and ``val + test < 1``).
    seed : int
        The split is a deterministic function of the labels and ``seed``.
    group_by : "auto", attribute name or None
        ``"auto"``: the schema's identity attribute if any. Samples sharing a value of the group
        attribute go to the same split (no identity leaks between splits). None: samples are split
        individually (closed-set: every identity may appear in every split).
    stratify : str, optional
        Keep the class proportions of this attribute similar across splits: groups (or samples) are
        dealt out separately within each class (a group's class is its most frequent one).

    Returns
    -------
    Split
    """
    val, test = float(val), float(test)
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"split fractions val={val}, test={test} must be in [0, 1) with val + test < 1")
    n = len(dataset)
    group_attr = _resolve_group(dataset, group_by)
    groups = dataset.attr(group_attr) if group_attr is not None else np.arange(n)
    uniq, group_of = np.unique(groups, return_inverse=True)
    group_sizes = np.bincount(group_of, minlength=len(uniq))
    if stratify is not None:
        y = dataset.attr(stratify)
        k = dataset.schema.attribute(stratify).num_classes
        # majority class of each group (for sample-level splits this is just the sample's class)
        table = np.zeros((len(uniq), k), dtype=np.int64)
        np.add.at(table, (group_of, y), 1)
        stratum = table.argmax(axis=1)
    else:
        stratum = np.zeros(len(uniq), dtype=np.int64)
    rng = np.random.default_rng(seed)
    assign = np.zeros(len(uniq), dtype=np.int64)  # 0 train, 1 val, 2 test
    for s in np.unique(stratum):
        members = rng.permutation(np.nonzero(stratum == s)[0])
        total = group_sizes[members].sum()
        want_test, want_val = test * total, val * total
        got_test = got_val = 0
        for g in members:
            # Deal a group to test/val while that split is further below its target than half the group.
            size = group_sizes[g]
            if got_test + size / 2 <= want_test:
                assign[g], got_test = 2, got_test + size
            elif got_val + size / 2 <= want_val:
                assign[g], got_val = 1, got_val + size
    what = f"{len(uniq)} groups of {group_attr!r}" if group_attr is not None else f"{n} samples"
    for code, frac, name in ((2, test, "test"), (1, val, "val")):
        if frac > 0 and not np.any(assign == code):
            raise ConfigError(f"{name}={frac} gives an empty {name} split with {what}; raise the fraction or "
                              f"split without grouping (group_by=None)")
    if not np.any(assign == 0):
        raise ConfigError(f"val={val}, test={test} leave no training data with {what}; lower the fractions")
    sample_assign = assign[group_of]
    return Split(*(np.nonzero(sample_assign == c)[0].astype(np.int64) for c in (0, 1, 2)))


def _lookup_value(dataset: AttributeDataset, attribute: str, value: str) -> int:
    """Label of ``value`` in ``attribute``: a class name, else an integer label."""
    a = dataset.schema.attribute(attribute)
    if value in a.classes:
        return a.classes.index(value)
    try:
        label = int(value)
    except ValueError:
        label = -1
    if 0 <= label < a.num_classes:
        return label
    return a.index(value)  # raises SchemaError listing the known values


def _read_ids(dataset: AttributeDataset, path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"forget id file {path} does not exist; give a text file with one sample index per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read forget id file {path} ({e}); give a UTF-8 text file") from None
    ids = []
    base_n = len(dataset.base)
    for lineno, line in enumerate(lines, start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            v = int(s)
        except ValueError:
            raise DataError(f"{path} line {lineno}: {s[:40]!r} is not an integer sample index; "
                            f"write one index per line") from None
        if not 0 <= v < base_n:
            raise DataError(f"{path} line {lineno}: sample index {v} is out of range 0..{base_n - 1}; "
                            f"use indices as 'privkit datasets info' numbers them")
        ids.append(v)
    if not ids:
        raise DataError(f"forget id file {path} lists no sample index; write one index per line")
    wanted = np.unique(np.asarray(ids, dtype=np.int64))
    base_idx = dataset.base_indices
    mask = np.isin(base_idx, wanted)
    absent = np.setdiff1d(wanted, base_idx)
    if absent.size:
        raise DataError(f"{path}: sample index {int(absent[0])} (and {absent.size - 1} more) is not in this data "
                        f"selection; remove it")
    return mask


def select_forget(dataset: AttributeDataset, spec: str, *, target: str | None = None,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(forget, retain)`` of the samples to unlearn and to keep.

    Parameters
    ----------
    spec : str
        ``class=NAME`` (a class name or label of ``target``), ``attr=ATTRIBUTE:VALUE``,
        ``ids=FILE`` (one sample index per line, numbered as ``describe`` numbers them) or
        ``random=FRACTION`` (``0 < FRACTION < 1``, drawn with ``seed``).
    target : str, optional
        The attribute ``class=`` refers to.
    seed : int

    Returns
    -------
    forget, retain : int64 arrays, sorted and disjoint, covering the dataset.
    """
    kind, sep, value = str(spec).partition("=")
    kind, value = kind.strip(), value.strip()
    if not sep or not value or kind not in ("class", "attr", "ids", "random"):
        raise ConfigError(f"cannot parse forget selection {spec!r}; use one of: {FORGET_FORMS}")
    n = len(dataset)
    if kind == "class":
        if target is None:
            raise ConfigError(f"forget selection {spec!r} needs the target attribute (--target); or use "
                              f"attr=ATTRIBUTE:VALUE")
        mask = dataset.attr(target) == _lookup_value(dataset, target, value)
    elif kind == "attr":
        name, sep2, v = value.partition(":")
        if not sep2 or not name.strip() or not v.strip():
            raise ConfigError(f"cannot parse forget selection {spec!r}; write attr=ATTRIBUTE:VALUE "
                              f"(valid forms: {FORGET_FORMS})")
        mask = dataset.attr(name.strip()) == _lookup_value(dataset, name.strip(), v.strip())
    elif kind == "ids":
        mask = _read_ids(dataset, Path(value).expanduser())
    else:
        try:
            fraction = float(value)
        except ValueError:
            raise ConfigError(f"random={value!r} is not a number; give a fraction like random=0.1") from None
        if not 0 < fraction < 1:
            raise ConfigError(f"random={value} must be a fraction strictly between 0 and 1, e.g. random=0.1")
        k = max(1, int(round(fraction * n)))
        mask = np.zeros(n, dtype=bool)
        mask[np.random.default_rng(seed).choice(n, size=min(k, n), replace=False)] = True
    forget = np.nonzero(mask)[0].astype(np.int64)
    if forget.size == 0:
        raise ConfigError(f"forget selection {spec!r} matches no sample; choose a value that occurs in the data")
    if forget.size == n:
        raise ConfigError(f"forget selection {spec!r} matches all {n} samples, leaving nothing to retain; "
                          f"choose a smaller selection")
    retain = np.nonzero(~mask)[0].astype(np.int64)
    return forget, retain


__all__ = ["Split", "split_dataset", "select_forget", "FORGET_FORMS"]
