"""The saved-transform registry: dispatch on the artifact kind, checks before writing, streamed release."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privkit.errors import ArtifactError, ConfigError, SchemaError
from privkit.io.artifacts import save_artifact
from privkit.io.atomic import atomic_write_json
from privkit.transforms import apply_transform, list_transform_kinds, register_transform_kind


class _Halve:
    """A toy transform: ``x' = scale * x`` (scale stored in the artifact's weights)."""

    def __init__(self, schema, scale):
        self.schema, self.scale = schema, scale
        self.batch_sizes = []

    def transform_batch(self, x, attrs, indices=None, schema=None):
        self.batch_sizes.append(len(x))
        return x * self.scale


_LOADED = []


@register_transform_kind("test-halve")
def _load_halve(folder):
    from privkit.data.schema import Schema
    from privkit.io.artifacts import load_artifact

    tensors, meta = load_artifact(folder, "test-halve")
    t = _Halve(Schema.from_dict(meta["schema"]), float(tensors["scale"]))
    _LOADED.append(t)
    return t


def _make_run(folder, schema, kind="test-halve"):
    save_artifact(folder, {"scale": torch.tensor(0.5)}, {"kind": kind, "schema": schema.to_dict(), "config": {}})
    atomic_write_json(folder / "complete", {"command": "test"})
    return folder


@pytest.fixture(scope="module")
def digits():
    from privkit.data import load_dataset

    return load_dataset("digits", size=120)


def test_kinds_include_mass_and_registered():
    kinds = list_transform_kinds()
    assert "mass" in kinds and "test-halve" in kinds


def test_apply_streams_batches_and_writes_input_format(digits, tmp_path):
    from privkit.data import load_dataset

    run = _make_run(tmp_path / "run", digits.schema)
    out = apply_transform(run, digits, tmp_path / "rel", batch_size=50)
    assert _LOADED[-1].batch_sizes == [50, 50, 20]  # never the whole dataset at once
    rel = load_dataset(out)
    assert rel.schema == digits.schema
    x0, _ = digits.materialize()
    x1, _ = rel.materialize()
    assert np.allclose(x1.numpy(), 0.5 * x0.numpy(), atol=1e-5)


def test_checks_before_writing(digits, tmp_path):
    from privkit.data.schema import Attribute, Schema

    other = Schema("features", (Attribute("digit", tuple(str(i) for i in range(10))),), (64,))
    run = _make_run(tmp_path / "run", other)
    with pytest.raises(SchemaError, match="transform"):
        apply_transform(run, digits, tmp_path / "rel")
    assert not (tmp_path / "rel").exists()
    good = _make_run(tmp_path / "good", digits.schema)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        apply_transform(good, digits, tmp_path / "exists")
    unknown = _make_run(tmp_path / "unknown", digits.schema, kind="classifier")
    with pytest.raises(ArtifactError, match="not a transform"):
        apply_transform(unknown, digits, tmp_path / "rel2")
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ArtifactError, match="complete"):
        apply_transform(tmp_path / "unfinished", digits, tmp_path / "rel3")
    assert not any(p.name.startswith("rel") for p in tmp_path.iterdir())


def test_mass_release_does_not_depend_on_batching():
    """Per-sample noise is drawn from (seed, sample index): splitting the data differently changes nothing."""
    import numpy as np
    import torch

    from privkit.data.datasets import ArrayDataset
    from privkit.data.schema import Attribute, Schema
    from privkit.suppress import MaSS

    rng = np.random.default_rng(0)
    n = 120
    g, t = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 2 * g
    schema = Schema("features", (Attribute("gender", ("f", "m")), Attribute("task", ("a", "b"))), (6,))
    ds = ArrayDataset(schema, x, np.stack([g, t], 1))
    mass = MaSS(suppress=["gender"], preserve=["task"], epochs=1, pretrain_epochs=1, seed=0).fit(ds)
    xs = torch.from_numpy(x)
    idx = np.arange(n)
    whole = mass.transform(xs, indices=idx)
    halves = torch.cat([mass.transform(xs[:50], indices=idx[:50]), mass.transform(xs[50:], indices=idx[50:])])
    assert torch.allclose(whole, halves, atol=1e-6)
    assert not torch.allclose(mass.transform(xs[:10], indices=idx[:10]), mass.transform(xs[:10], indices=idx[10:20]))
