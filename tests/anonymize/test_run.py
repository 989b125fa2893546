"""Orchestration of ``privkit anonymize``: checks, EER, release streaming, artifact, transform, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privkit.anonymize import get_representation
from privkit.anonymize.artifact import AnonymizerTransform, load_anonymizer, save_anonymizer
from privkit.anonymize.baselines import apply_baseline, blur_rows, pixelate_rows
from privkit.anonymize.run import (AnonymizeConfig, check_inputs, class_names, equal_error_rate, fit_anonymizer,
                                   max_feasible_k, privacy_utility_curve, release, verification_eer)
from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ArtifactError, ConfigError, SchemaError


def features_dataset(n_people=8, per_person=10, d=12, seed=0, identity=True):
    """Features where people differ in their means (except feature 0) and `keep` (2 classes) shifts feature 0."""
    rng = np.random.default_rng(seed)
    person = np.repeat(np.arange(n_people), per_person)
    keep = np.tile(np.arange(2), n_people * per_person // 2)
    other = (person % 3).astype(np.int64)
    centres = rng.normal(0, 2, size=(n_people, d))
    centres[:, 0] = 0.0  # feature 0 says nothing about the person: keep is readable across people
    x = centres[person] + rng.normal(0, 0.3, size=(len(person), d))
    x[:, 0] += 4.0 * keep
    attrs = (Attribute("keep", ("no", "yes")), Attribute("person", tuple(f"p{i}" for i in range(n_people)), identity=identity),
             Attribute("other", ("a", "b", "c")))
    schema = Schema("features", attrs, (d,), layout="npz")
    labels = np.stack([keep, person, other], axis=1).astype(np.int64)
    return ArrayDataset(schema, x.astype(np.float32), labels)


# -- input checks ---------------------------------------------------------------------------------
def test_check_inputs_accepts_and_picks_other_attribute():
    ds = features_dataset()
    assert check_inputs(ds, "person", "keep", AnonymizeConfig(k=5)) == "other"
    assert max_feasible_k(ds, "person", "keep") == 8


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(sensitive="person", keep="hat"), SchemaError, "keep, person, other"),
    (dict(sensitive="who", keep="keep"), SchemaError, "unknown attribute 'who'"),
    (dict(sensitive="keep", keep="keep"), ConfigError, "both 'keep'"),
    (dict(sensitive="other", keep="keep"), SchemaError, "not an identity attribute"),
    (dict(sensitive="person", keep="keep", k=9), ConfigError, "k=9 is larger than the 8 identities"),
    (dict(sensitive="person", keep="keep", weight=1.5), ConfigError, "weight=1.5 is outside [0, 1]"),
    (dict(sensitive="person", keep="keep", weight=-0.1), ConfigError, "outside [0, 1]"),
    (dict(sensitive="person", keep="keep", top_features=0.0), ConfigError, "top_features"),
    (dict(sensitive="person", keep="keep", curve_k=(0,)), ConfigError, "--curve-k"),
])
def test_check_inputs_rejects(kwargs, error, fragment):
    ds = features_dataset()
    sensitive, keep = kwargs.pop("sensitive"), kwargs.pop("keep")
    with pytest.raises(error) as e:
        check_inputs(ds, sensitive, keep, AnonymizeConfig(**kwargs))
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_check_inputs_needs_identity_attribute():
    ds = features_dataset(identity=False)
    with pytest.raises(SchemaError, match="no identity attribute"):
        check_inputs(ds, "person", "keep", AnonymizeConfig())


# -- EER ------------------------------------------------------------------------------------------
def eer_reference(same, different):
    """Obvious loop over every candidate threshold."""
    best = None
    for t in sorted(set(same) | set(different) | {-np.inf}):
        frr = np.mean([d > t for d in same])
        far = np.mean([d <= t for d in different])
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2)
    return best[1]


def test_equal_error_rate_matches_reference_loop(rng):
    for _ in range(5):
        same = np.round(rng.normal(1.0, 1.0, size=int(rng.integers(5, 40))), 1)  # rounding makes ties
        different = np.round(rng.normal(2.0, 1.0, size=int(rng.integers(5, 40))), 1)
        assert equal_error_rate(same, different) == pytest.approx(eer_reference(same, different))
    assert equal_error_rate(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == 0.0
    assert equal_error_rate(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0


def test_verification_eer_separates_clusters_and_not_noise(rng):
    identity = np.repeat(np.arange(10), 8)
    clustered = rng.normal(0, 10, size=(10, 5))[identity] + rng.normal(0, 0.1, size=(80, 5))
    assert verification_eer(clustered, identity) < 0.02
    noise = rng.normal(size=(80, 5))
    assert abs(verification_eer(noise, identity) - 0.5) < 0.1


# -- fit, release, artifact, transform ------------------------------------------------------------
def test_release_streams_batches_equal_to_one_transform():
    ds = features_dataset()
    x, _ = ds.materialize()
    anonymizer = fit_anonymizer(x, ds, "person", "keep", AnonymizeConfig(k=4, seed=3))
    streamed = release(anonymizer, x, ds, "person", "keep", batch_size=7)
    whole = anonymizer.transform(x, class_names(ds, "keep"), class_names(ds, "person"), batch_size=1000)
    np.testing.assert_allclose(streamed, np.asarray(whole), rtol=0, atol=1e-6)
    assert anonymizer.achieved_k_["min"] == 4
    assert not np.allclose(streamed, x.numpy())


def test_artifact_round_trip_and_transform_by_class_name(tmp_path):
    ds = features_dataset()
    x, _ = ds.materialize()
    anonymizer = fit_anonymizer(x, ds, "person", "keep", AnonymizeConfig(k=3, weight=0.3, seed=1))
    save_anonymizer(tmp_path, anonymizer, ds.schema, sensitive="person", keep="keep")
    loaded, meta = load_anonymizer(tmp_path)
    assert meta["kind"] == "anonymizer" and meta["config"] == {"sensitive": "person", "keep": "keep"}
    np.testing.assert_array_equal(loaded.pool_x_, anonymizer.pool_x_)
    expected = np.asarray(anonymizer.transform(x, class_names(ds, "keep"), class_names(ds, "person")))

    # the same records in a dataset whose attributes come in another order, with people listed backwards
    n_people = ds.schema.attribute("person").num_classes
    person_rev = Attribute("person", tuple(f"p{i}" for i in reversed(range(n_people))), identity=True)
    schema2 = Schema("features", (ds.schema.attribute("other"), person_rev, ds.schema.attribute("keep")), (x.shape[1],))
    labels = np.asarray(ds.labels)
    labels2 = np.stack([labels[:, 2], n_people - 1 - labels[:, 1], labels[:, 0]], axis=1)
    ds2 = ArrayDataset(schema2, x.numpy(), labels2)
    transform = AnonymizerTransform(loaded, meta)
    transform.schema.check_compatible(ds2.schema, what="transform")  # what privkit.transforms does first
    got = torch.cat([transform.transform_batch(xb, ab) for _, xb, ab in ds2.batches(13)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def test_load_refuses_other_artifact_kinds(tmp_path):
    from privkit.io import save_artifact

    save_artifact(tmp_path, {"w": torch.zeros(2)}, {"kind": "classifier"})
    with pytest.raises(ArtifactError, match="'classifier' artifact"):
        load_anonymizer(tmp_path)


def test_curve_reuses_known_points_and_hides_identity():
    ds = features_dataset(n_people=8, per_person=20)
    x, _ = ds.materialize()
    cfg = AnonymizeConfig(k=5, weight=0.5, top_features=0.1, curve_k=(1, 5, 99), curve_attackers=("linear",))
    known = {1: {"person": {"linear": 0.9, "chance": 0.1}, "keep": {"linear": 0.8, "chance": 0.5}}}
    curve = privacy_utility_curve(ds, x, "person", "keep", cfg, get_representation("features", (x.shape[1],)), known)
    assert [p["k"] for p in curve] == [1, 5]  # 99 is infeasible (8 people): left out
    assert curve[0]["reid"] == 0.9 and curve[0]["utility"] == 0.8
    # k=5: identity close to chance (1/8), kept attribute well above chance (0.5) for the briefly-trained attacker
    assert curve[1]["reid"] < 0.5 and curve[1]["utility"] > 0.7


# -- baselines ------------------------------------------------------------------------------------
def test_blur_matches_scipy_and_pixelate_matches_block_loop(rng):
    from scipy.ndimage import gaussian_filter1d

    rep = get_representation("image", (1, 9, 11))
    rows = rng.normal(size=(3, 99))
    expected = rows.reshape(3, 1, 9, 11)
    for axis in (2, 3):
        expected = gaussian_filter1d(expected, sigma=2.0, axis=axis, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(blur_rows(rows, rep, 2.0), expected.reshape(3, -1), atol=1e-10)

    got = pixelate_rows(rows, rep, 4).reshape(3, 9, 11)
    grid = rows.reshape(3, 9, 11)
    for i in range(9):
        for j in range(11):
            bi, bj = i // 4, j // 4
            block = grid[:, 4 * bi:4 * bi + 4, 4 * bj:4 * bj + 4]
            np.testing.assert_allclose(got[:, i, j], block.mean(axis=(1, 2)))
    np.testing.assert_allclose(pixelate_rows(rows, rep, 1), rows)


def test_baselines_per_modality_keep_shape_and_only_blur_time_for_motion(rng):
    motion = get_representation("motion", (2, 16))
    x = torch.as_tensor(rng.normal(size=(4, 2, 16)), dtype=torch.float32)
    out = apply_baseline("blur", x, motion, 1.5)
    assert out.shape == x.shape
    # channels are not mixed: a signal in channel 0 only stays in channel 0
    x0 = torch.zeros(1, 2, 16)
    x0[0, 0, 8] = 1.0
    assert torch.all(apply_baseline("blur", x0, motion, 1.5)[0, 1] == 0)
    feats = get_representation("features", (5,))
    f = torch.as_tensor(rng.normal(size=(50, 5)), dtype=torch.float32)
    quantised = apply_baseline("pixelate", f, feats, 4.0)  # step = 1 feature std: few distinct values
    assert len(np.unique(quantised[:, 0].numpy().round(5))) < 10
    with pytest.raises(ConfigError, match="unknown baseline"):
        apply_baseline("smear", f, feats, 1.0)
    with pytest.raises(ConfigError, match="positive"):
        apply_baseline("blur", f, feats, -1.0)
