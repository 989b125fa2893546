"""Properties of BiometricAnonymizer on synthetic Gaussian-cluster data (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from privkit.anonymize import BiometricAnonymizer, counter_uniform
from privkit.errors import ArtifactError, ConfigError, SchemaError

N_IDENTITIES, PER_IDENTITY, DIM, KEEP_FEATURES = 20, 20, 40, 4


def make_data(seed: int = 0, n_identities: int = N_IDENTITIES, per_identity: int = PER_IDENTITY, dim: int = DIM):
    """Identity clusters in every feature but the first KEEP_FEATURES, which carry the kept
    attribute (a per-record binary label independent of identity)."""
    rng = np.random.default_rng(seed)
    identity = np.repeat(np.arange(n_identities), per_identity)
    centers = rng.normal(0.0, 1.0, (n_identities, dim))
    keep = rng.integers(0, 2, len(identity))
    x = centers[identity] + rng.normal(0.0, 0.5, (len(identity), dim))
    x[:, :KEEP_FEATURES] = rng.normal(0.0, 0.5, (len(identity), KEEP_FEATURES)) + 1.5 * (2 * keep[:, None] - 1)
    return x.astype(np.float32), keep, identity


@pytest.fixture(scope="module")
def data():
    return make_data()


def closed_set_accuracy(x, y, identity, seed=0):
    """A fresh logistic-regression attacker, trained and tested within the same identities."""
    train, test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=identity)
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    return model.score(x[test], y[test])


# -- reference implementation: a plain per-record loop with its own scalar RNG ------------------
MASK = (1 << 64) - 1


def splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def scalar_uniform(seed: int, row: int, slot: int, stream: int) -> float:
    h = splitmix64(splitmix64(splitmix64(seed) ^ row) ^ (2 * slot + stream))
    return (h >> 11) * 2.0 ** -53


def reference_transform(est: BiometricAnonymizer, x, keep, identity):
    """x'_i = w_j x_i + (1 - w_j) mean(R_i), R_i drawn record by record from the public pool state."""
    pool_x, pool_keep, pool_identity = est.pool_x_, est.pool_keep_, est.pool_identity_
    out = np.empty(x.shape, dtype=np.float64)
    for i in range(len(x)):
        used = {identity[i]}
        members = []
        for slot in range(est.k - 1):
            in_group = pool_keep == keep[i] if est.same_class else np.ones(len(pool_x), dtype=bool)
            free = sorted(set(pool_identity[in_group].tolist()) - used)
            chosen = free[int(scalar_uniform(est.seed, i, slot, 0) * len(free))]
            used.add(chosen)
            records = np.flatnonzero(in_group & (pool_identity == chosen))  # ascending pool index
            members.append(records[int(scalar_uniform(est.seed, i, slot, 1) * len(records))])
        set_mean = (x[i].astype(np.float64) + sum(pool_x[m].astype(np.float64) for m in members)) / est.k
        w = est.feature_weights_
        out[i] = w * x[i] + (1.0 - w) * set_mean
    return out


def test_counter_uniform_matches_scalar_reference():
    rows = np.array([0, 1, 7, 123456789, 2**40 + 3])
    for seed, slot, stream in [(0, 0, 0), (3, 2, 1), (2**31 + 11, 5, 0)]:
        vec = counter_uniform(seed, rows, slot, stream)
        ref = [scalar_uniform(seed, int(r), slot, stream) for r in rows]
        np.testing.assert_array_equal(vec, ref)
    u = counter_uniform(0, np.arange(20000), 0, 0)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01


def test_identity_attack_drops_keep_accuracy_stays(data):
    x, keep, identity = data
    chance = 1.0 / N_IDENTITIES
    id_before = closed_set_accuracy(x, identity, identity)
    keep_before = closed_set_accuracy(x, keep, identity)
    released = BiometricAnonymizer(k=5, weight=0.5, top_features=0.1).fit_transform(x, keep, identity)
    id_after = closed_set_accuracy(released, identity, identity)
    keep_after = closed_set_accuracy(released, keep, identity)
    assert id_before > 0.9
    # at least 3x closer to chance than before, and far from the original attack
    assert id_after - chance < (id_before - chance) / 3
    assert keep_after >= keep_before - 0.03


def test_larger_k_hides_more(data):
    x, keep, identity = data
    accs = [closed_set_accuracy(BiometricAnonymizer(k=k, top_features=0.1).fit_transform(x, keep, identity), identity, identity)
            for k in (2, 10)]
    assert accs[1] < accs[0]


def test_achieved_k_equals_requested_and_sets_respect_constraints(data):
    x, keep, identity = data
    est = BiometricAnonymizer(k=6, seed=3).fit(x, keep, identity)
    assert est.achieved_k_["requested"] == 6
    assert est.achieved_k_["min"] == est.achieved_k_["max"] == 6 and est.achieved_k_["fraction_below_k"] == 0.0
    members, distinct = est.reference_sets(keep, identity)
    assert members.shape == (len(x), 5)
    np.testing.assert_array_equal(distinct, 6)
    member_identity = est.pool_identity_[members]
    assert np.all(member_identity != identity[:, None])  # never the record's own person
    assert all(len(set(row)) == 5 for row in member_identity.tolist())
    assert np.all(est.pool_keep_[members] == keep[:, None])  # same kept class


def test_sets_are_drawn_anew_and_cover_the_pool(data):
    x, keep, identity = data
    est = BiometricAnonymizer(k=5).fit(x, keep, identity)
    members, _ = est.reference_sets(keep, identity)
    assert len({tuple(sorted(r)) for r in members.tolist()}) > 0.95 * len(x)
    # identities drawn about uniformly: every identity is used, none dominates
    counts = np.bincount(est.pool_identity_[members].ravel(), minlength=N_IDENTITIES)
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()


@pytest.mark.parametrize("relevance", ["linear", "mutual_info"])
def test_relevant_features_carry_the_kept_signal(data, relevance):
    x, keep, identity = data
    est = BiometricAnonymizer(top_features=KEEP_FEATURES / DIM, relevance=relevance).fit(x, keep, identity)
    np.testing.assert_array_equal(np.flatnonzero(est.relevant_mask_), np.arange(KEEP_FEATURES))
    assert est.relevance_[:KEEP_FEATURES].min() > 3 * est.relevance_[KEEP_FEATURES:].max()


def test_weight_one_keeps_relevant_features_and_weight_zero_gives_set_means(data):
    x, keep, identity = data
    keep_all = BiometricAnonymizer(k=4, weight=1.0, top_features=0.1).fit(x, keep, identity)
    released = keep_all.transform(x, keep, identity)
    mask = keep_all.relevant_mask_
    np.testing.assert_array_equal(released[:, mask], x[:, mask])
    members, _ = keep_all.reference_sets(keep, identity)
    set_mean = (x.astype(np.float64) + keep_all.pool_x_[members].astype(np.float64).sum(axis=1)) / 4
    np.testing.assert_allclose(released[:, ~mask], set_mean[:, ~mask], rtol=1e-6, atol=1e-6)

    pure_mean = BiometricAnonymizer(k=4, weight=0.0, top_features=0.1).fit(x, keep, identity)
    np.testing.assert_allclose(pure_mean.transform(x, keep, identity), set_mean, rtol=1e-6, atol=1e-6)


def test_soft_weights_grow_with_relevance(data):
    x, keep, identity = data
    est = BiometricAnonymizer(weight=0.6, top_features=0.1, weighting="soft").fit(x, keep, identity)
    order = np.argsort(est.relevance_)
    assert np.all(np.diff(est.feature_weights_[order]) >= -1e-12)
    np.testing.assert_allclose(est.feature_weights_[est.relevant_mask_], 0.6)
    assert est.feature_weights_[~est.relevant_mask_].max() < 0.6


def test_vectorised_transform_equals_per_record_loop(data):
    x, keep, identity = data
    for params in [dict(k=5, seed=7), dict(k=3, seed=1, same_class=False, pool_size=150)]:
        est = BiometricAnonymizer(**params).fit(x, keep, identity)
        fast = est.transform(x, keep, identity, batch_size=37)
        np.testing.assert_allclose(fast, reference_transform(est, x, keep, identity), rtol=1e-6, atol=1e-6)


def test_transform_is_deterministic_per_seed_and_independent_of_batch_size(data):
    x, keep, identity = data
    first = BiometricAnonymizer(seed=5).fit_transform(x, keep, identity)
    again = BiometricAnonymizer(seed=5).fit(x, keep, identity).transform(x, keep, identity, batch_size=17)
    np.testing.assert_array_equal(first, again)
    other = BiometricAnonymizer(seed=6).fit_transform(x, keep, identity)
    assert not np.allclose(first, other)


def test_save_load_round_trip_gives_identical_transforms(tmp_path, data):
    x, keep, identity = data
    keep_names = np.array(["no", "yes"])[keep]  # labels may be class names
    person = np.array([f"p{i:02d}" for i in identity])
    est = BiometricAnonymizer(k=4, weighting="soft", pool_size=300, seed=2).fit(x, keep_names, person)
    est.save(tmp_path / "anon")
    loaded = BiometricAnonymizer.load(tmp_path / "anon")
    new_x, new_keep, _ = make_data(seed=1)
    new_keep = np.array(["no", "yes"])[new_keep]
    np.testing.assert_array_equal(loaded.transform(new_x, new_keep), est.transform(new_x, new_keep))
    np.testing.assert_array_equal(loaded.transform(x, keep_names, person), est.transform(x, keep_names, person))
    np.testing.assert_array_equal(loaded.pool_identity_, est.pool_identity_)
    assert loaded.achieved_k_ == est.achieved_k_ and loaded.get_params() == est.get_params()
    assert not list((tmp_path / "anon").glob("*.pkl"))


def test_load_rejects_missing_or_foreign_artifacts(tmp_path, data):
    with pytest.raises(ArtifactError, match="missing"):
        BiometricAnonymizer.load(tmp_path / "nothing")
    x, keep, identity = data
    BiometricAnonymizer().fit(x, keep, identity).save(tmp_path / "a")
    meta = (tmp_path / "a" / "anonymizer.json")
    meta.write_text(meta.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(ArtifactError, match="version"):
        BiometricAnonymizer.load(tmp_path / "a")


def test_pool_is_stratified_and_new_records_get_k_identities(data):
    x, keep, identity = data
    est = BiometricAnonymizer(k=5, pool_size=100).fit(x, keep, identity)
    assert len(est.pool_x_) == 100
    assert abs(np.mean(est.pool_keep_ == 1) - np.mean(keep == 1)) < 0.02
    for c in (0, 1):  # one record per identity first: every identity present in each class
        assert len(np.unique(est.pool_identity_[est.pool_keep_ == c])) == N_IDENTITIES
    new_x, new_keep, new_identity = make_data(seed=9)
    new_identity = new_identity + 1000  # people not in the pool
    _, distinct = est.reference_sets(new_keep, new_identity)
    np.testing.assert_array_equal(distinct, 5)
    assert est.transform(new_x, new_keep, new_identity).shape == new_x.shape


def test_predicted_kept_class_when_labels_are_missing(data):
    x, keep, identity = data
    est = BiometricAnonymizer(k=5).fit(x, keep, identity)
    members, _ = est.reference_sets(None, X=x)
    assert np.mean(est.pool_keep_[members[:, 0]] == keep) > 0.95
    np.testing.assert_array_equal(est.transform(x), est.transform(x, est.pool_keep_[members[:, 0]]))


def test_t_close_sets_follow_the_label_mix(data):
    x, keep, identity = data
    est = BiometricAnonymizer(k=6, same_class=False, t_close=0.2).fit(x, keep, identity)
    members, distinct = est.reference_sets(keep, identity)
    share = np.mean(keep == 1)
    set_share = (est.pool_keep_[members].sum(axis=1) + keep) / 6
    assert np.all(np.abs(set_share - share) <= 0.2 + 1e-9)  # TV distance of a binary mix
    np.testing.assert_array_equal(distinct, 6)
    with pytest.raises(ConfigError, match="t_close=0.01"):
        BiometricAnonymizer(k=3, same_class=False, t_close=0.01).fit(x, keep, identity)


def test_n_dimensional_input_is_flattened_and_reshaped_back(data):
    x, keep, identity = data
    images = x.reshape(len(x), 4, 10)
    released = BiometricAnonymizer(seed=4).fit_transform(images, keep, identity)
    assert released.shape == images.shape
    flat = BiometricAnonymizer(seed=4).fit_transform(x, keep, identity)
    np.testing.assert_allclose(released.reshape(len(x), -1), flat, rtol=1e-6)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(k=0), "k=0"),
        (dict(k=2.5), "k=2.5"),
        (dict(weight=1.5), r"weight=1\.5 is outside \[0, 1\]"),
        (dict(weight=-0.1), "weight=-0.1"),
        (dict(top_features=0.0), "top_features=0.0"),
        (dict(top_features=1.2), "top_features=1.2"),
        (dict(relevance="shap"), "relevance='shap'"),
        (dict(weighting="fuzzy"), "weighting='fuzzy'"),
        (dict(t_close=0.2), "t_close needs same_class=False"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(data, params, match):
    x, keep, identity = data
    with pytest.raises(ConfigError, match=match) as err:
        BiometricAnonymizer(**params).fit(x, keep, identity)
    assert "\n" not in str(err.value)


def test_k_larger_than_identities_in_a_class_names_the_class(data):
    x, keep, identity = data
    keep = keep.copy()
    keep[identity < 17] = 0  # class 1 only holds identities 17, 18, 19
    with pytest.raises(ConfigError, match=r"k=5 is larger than the 3 distinct identities in kept class 1; lower k to at most 3"):
        BiometricAnonymizer(k=5).fit(x, keep, identity)
    with pytest.raises(ConfigError, match="raise pool_size"):
        BiometricAnonymizer(k=5, pool_size=8).fit(*data)
    BiometricAnonymizer(k=3).fit(x, keep, identity)  # feasible


def test_bad_data_is_rejected(data):
    x, keep, identity = data
    with pytest.raises(ConfigError, match="empty"):
        BiometricAnonymizer().fit(x[:0], keep[:0], identity[:0])
    for bad in (np.nan, np.inf):
        broken = x.copy()
        broken[3, 5] = bad
        with pytest.raises(ConfigError, match="NaN or Inf"):
            BiometricAnonymizer().fit(broken, keep, identity)
    with pytest.raises(ConfigError, match="keep_labels has 399 entries but X has 400"):
        BiometricAnonymizer().fit(x, keep[:-1], identity)
    with pytest.raises(ConfigError, match="identity_labels"):
        BiometricAnonymizer().fit(x, keep, identity[:10])
    with pytest.raises(ConfigError, match="single class"):
        BiometricAnonymizer().fit(x, np.zeros_like(keep), identity)
    est = BiometricAnonymizer().fit(x, keep, identity)
    with pytest.raises(SchemaError, match="not seen at fit"):
        est.transform(x, np.full(len(x), 7))
    with pytest.raises(SchemaError, match="shape"):
        est.transform(x[:, :10])
    broken = x.copy()
    broken[0, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        est.transform(broken, keep)


def test_without_distinct_identities_members_are_distinct_records(data):
    x, keep, identity = data
    est = BiometricAnonymizer(k=8, distinct_identities=False, seed=1).fit(x, keep, identity)
    members, distinct = est.reference_sets(keep, identity)
    assert all(len(set(row)) == 7 for row in members.tolist())
    assert np.all(est.pool_keep_[members] == keep[:, None])
    # identities may now repeat, so fewer than k people per set happen and are reported
    assert distinct.min() < 8 and est.achieved_k_["min"] == distinct.min()
    assert 0.0 < est.achieved_k_["fraction_below_k"] < 1.0
