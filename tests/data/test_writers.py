"""Writing released data back in each input layout: round trips, atomicity, subsets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privkit.data import load_dataset, write_released
from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError, SchemaError

sys.path.insert(0, str(Path(__file__).parent))
from test_loaders import BUILDERS  # noqa: E402

#: Largest per-value difference after a round trip: 8-bit PNG for images, float WAV / CSV text otherwise.
TOLERANCE = {"image_csv": 0.5 / 255 + 1e-6, "celeba": 0.5 / 255 + 1e-6, "utkface": 0.5 / 255 + 1e-6,
             "fsdd": 1e-6, "audiomnist": 1e-6, "motionsense": 1e-6, "npz": 0.0}


def identity_batches(ds, batch_size=4):
    for idx, x, _ in ds.batches(batch_size):
        yield idx, x


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_round_trip_identity_transform(tmp_path, layout):
    kwargs = {"window": 100, "stride": 50} if layout == "motionsense" else {}
    ds = load_dataset(BUILDERS[layout](tmp_path / "in"), **kwargs)
    out = write_released(ds, identity_batches(ds), tmp_path / "out")
    back = load_dataset(out)
    assert back.schema == ds.schema
    key = {sid: i for i, sid in enumerate(back.sample_ids)}
    # released files may be renamed (images become .png, motion windows their own files): match by order
    assert len(back) == len(ds) and len(key) == len(ds)
    order = np.argsort([s for s in ds.sample_ids]) if layout != "npz" else np.arange(len(ds))
    back_order = np.argsort([s for s in back.sample_ids]) if layout != "npz" else np.arange(len(ds))
    if layout == "motionsense":
        # windows of one recording keep their order; compare by (trial, subject, start row)
        def k(sid, window_stride):
            trial, rest = sid.split("/")
            name, w = rest.split("#")
            base = name[:-4].split("_w")
            start = (int(base[1]) if len(base) > 1 else 0) + int(w) * window_stride
            return (trial, int(base[0][4:]), start)
        order = np.argsort([str(k(s, 50)) for s in ds.sample_ids])
        back_order = np.argsort([str(k(s, 100)) for s in back.sample_ids])
    np.testing.assert_array_equal(back.labels[back_order], ds.labels[order])
    xa, _ = ds.materialize(order)
    xb, _ = back.materialize(back_order)
    assert float((xa - xb).abs().max()) <= TOLERANCE[layout]


def test_subset_release_writes_only_those_samples(tmp_path):
    ds = load_dataset(BUILDERS["fsdd"](tmp_path / "in"))
    keep = np.nonzero(ds.attr("speaker") != ds.schema.attribute("speaker").index("theo"))[0]
    sub = ds.subset(keep)
    out = write_released(sub, identity_batches(sub), tmp_path / "out")
    back = load_dataset(out)
    assert len(back) == len(keep)
    assert set(back.schema.attribute("speaker").classes) == {"jackson", "nicolas"}
    assert "theo" not in (out / "speakers.csv").read_text()


def test_transformed_values_are_written(tmp_path):
    ds = load_dataset(BUILDERS["image_csv"](tmp_path / "in"))
    batches = ((idx, 1.0 - x) for idx, x in identity_batches(ds))
    back = load_dataset(write_released(ds, batches, tmp_path / "out"))
    a, _ = ds.materialize()
    b, _ = back.materialize()
    assert float(((1.0 - a) - b).abs().max()) <= 0.5 / 255 + 1e-6


def test_out_dir_must_not_exist(tmp_path):
    ds = load_dataset(BUILDERS["npz"](tmp_path / "in"))
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        write_released(ds, identity_batches(ds), tmp_path / "out")


def test_failure_leaves_nothing_behind(tmp_path):
    ds = load_dataset(BUILDERS["image_csv"](tmp_path / "in"))

    def bad():
        yield from identity_batches(ds, 2)
        yield np.array([0]), torch.zeros(1, 3, 5, 5)  # wrong shape

    with pytest.raises(SchemaError, match="shape"):
        write_released(ds, bad(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_npz_from_plain_array_dataset_streams_class_names(tmp_path):
    rng = np.random.default_rng(0)
    schema = Schema("audio", (Attribute("spk", ("a", "b"), identity=True), Attribute("y", ("0", "1", "2"))), (1, 20),
                    sample_rate=100)
    labels = np.stack([np.arange(9) % 2, np.arange(9) % 3], 1)
    ds = ArrayDataset(schema, rng.normal(size=(9, 1, 20)).astype(np.float32), labels)
    out = write_released(ds, identity_batches(ds, 4), tmp_path / "out")
    back = load_dataset(out)
    assert back.schema.modality == "audio" and back.schema.sample_rate == 100
    assert back.schema.identity_attribute == "spk"
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.materialize()[0].numpy(), ds.x)
    assert isinstance(back._reader.x, np.memmap)  # written uncompressed: memory-mapped on load
