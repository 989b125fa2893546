"""Splits (grouped by identity, closed-set, stratified) and forget-set selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privkit.data import select_forget, split_dataset
from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError, DataError, SchemaError


def make_people(n_people=20, per=10, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    n = n_people * per
    person = np.repeat(np.arange(n_people), per)
    gender = person % 2
    digit = rng.integers(0, 3, n)
    schema = Schema("features", (Attribute("person", [f"p{i}" for i in range(n_people)], identity=True),
                                 Attribute("gender", ("f", "m")), Attribute("digit", ("0", "1", "2"))), (3,))
    return ArrayDataset(schema, rng.normal(size=(n, 3)).astype(np.float32), np.stack([person, gender, digit], 1))


def _check_partition(split, n):
    allidx = np.concatenate([split.train, split.val, split.test])
    assert len(allidx) == n and len(np.unique(allidx)) == n


def test_grouped_split_has_no_identity_leak():
    ds = make_people()
    s = split_dataset(ds, val=0.2, test=0.2, seed=3)
    _check_partition(s, len(ds))
    people = [set(ds.attr("person")[idx].tolist()) for idx in (s.train, s.val, s.test)]
    assert not (people[0] & people[1]) and not (people[0] & people[2]) and not (people[1] & people[2])
    assert len(s.val) == 40 and len(s.test) == 40  # 4 whole people of 10 samples each


def test_split_deterministic_and_seed_dependent():
    ds = make_people()
    a, b = split_dataset(ds, seed=1), split_dataset(ds, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)))
    c = split_dataset(ds, seed=2)
    assert not np.array_equal(a.test, c.test)


def test_closed_set_split_shares_people_with_disjoint_samples():
    ds = make_people()
    s = split_dataset(ds, val=0.1, test=0.2, seed=0, group_by=None, stratify="person")
    _check_partition(s, len(ds))
    train_people = set(ds.attr("person")[s.train].tolist())
    test_people = set(ds.attr("person")[s.test].tolist())
    assert test_people == train_people == set(range(20))
    assert len(s.test) == 40  # 2 of every person's 10 samples


def test_stratified_grouped_split_balances_classes():
    ds = make_people(n_people=40)
    s = split_dataset(ds, val=0.0, test=0.25, seed=0, stratify="gender")
    g = ds.attr("gender")[s.test]
    assert abs(g.mean() - 0.5) <= 0.1 and len(s.val) == 0
    assert not set(ds.attr("person")[s.test].tolist()) & set(ds.attr("person")[s.train].tolist())


@pytest.mark.parametrize("kwargs, match", [
    ({"val": 0.6, "test": 0.5}, "val \\+ test < 1"),
    ({"val": -0.1}, "fractions"),
    ({"val": 0.01, "test": 0.01}, "empty test split"),
])
def test_split_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        split_dataset(make_people(), **kwargs)


def test_split_unknown_group_attribute():
    with pytest.raises(SchemaError, match="person, gender, digit"):
        split_dataset(make_people(), group_by="speaker")


def test_forget_class_attr_random_ids(tmp_path):
    ds = make_people()
    f, r = select_forget(ds, "class=2", target="digit")
    assert np.array_equal(f, np.nonzero(ds.attr("digit") == 2)[0])
    assert np.array_equal(np.sort(np.concatenate([f, r])), np.arange(len(ds)))
    f2, _ = select_forget(ds, "attr=person:p7")
    assert np.array_equal(f2, np.arange(70, 80))
    f3, r3 = select_forget(ds, "random=0.1", seed=4)
    assert len(f3) == 20 and np.array_equal(f3, select_forget(ds, "random=0.1", seed=4)[0])
    assert not np.array_equal(f3, select_forget(ds, "random=0.1", seed=5)[0])
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n3\n\n199\n")
    f4, r4 = select_forget(ds, f"ids={ids}")
    assert f4.tolist() == [3, 5, 199] and len(r4) == 197


def test_forget_ids_on_subset_use_base_numbering(tmp_path):
    ds = make_people()
    sub = ds.subset(np.arange(100, 200))
    ids = tmp_path / "ids.txt"
    ids.write_text("150\n")
    f, _ = select_forget(sub, f"ids={ids}")
    assert f.tolist() == [50]


@pytest.mark.parametrize("spec, kwargs, error, match", [
    ("class=2", {}, ConfigError, "target"),
    ("klass=2", {}, ConfigError, "class=NAME.*attr=ATTRIBUTE:VALUE.*ids=FILE.*random=FRACTION"),
    ("attr=person", {}, ConfigError, "ATTRIBUTE:VALUE"),
    ("attr=height:3", {}, SchemaError, "unknown attribute 'height'"),
    ("attr=person:p99", {}, SchemaError, "p99"),
    ("random=1.5", {}, ConfigError, "between 0 and 1"),
    ("random=abc", {}, ConfigError, "not a number"),
    ("attr=gender:f", {"subset": "f"}, ConfigError, "all"),
    ("attr=gender:m", {"subset": "f"}, ConfigError, "no sample"),
])
def test_forget_errors(spec, kwargs, error, match):
    ds = make_people()
    if kwargs.pop("subset", None):
        ds = ds.subset(np.nonzero(ds.attr("gender") == 0)[0])
    with pytest.raises(error, match=match):
        select_forget(ds, spec, **kwargs)


@pytest.mark.parametrize("content, match", [
    ("1\n2\nabc\n", "line 3.*'abc'"),
    ("1\n200\n", "out of range"),
    ("1.5\n", "not an integer"),
    ("\n\n", "no sample index"),
])
def test_forget_id_file_errors(tmp_path, content, match):
    p = tmp_path / "ids.txt"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        select_forget(make_people(), f"ids={p}")


def test_forget_id_file_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        select_forget(make_people(), f"ids={tmp_path / 'nope.txt'}")


def test_split_on_loaded_layout(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_loaders import make_fsdd

    from privkit.data import load_dataset

    ds = load_dataset(make_fsdd(tmp_path / "fsdd", speakers=("a", "b", "c", "d", "e")), duration=0.1)
    s = split_dataset(ds, val=0.2, test=0.2, seed=0)
    spk = [set(ds.attr("speaker")[i].tolist()) for i in (s.train, s.val, s.test)]
    assert len(spk[1]) == 1 and len(spk[2]) == 1 and not (spk[0] & (spk[1] | spk[2]))
