"""The shared name -> implementation registry."""

import numpy as np
import pytest

from privkit.audit.residual import bootstrap_ci, t_ci
from privkit.errors import ConfigError
from privkit.registry import Registry


def test_register_sets_name_refuses_duplicates_and_lookup_names_the_known_ones():
    reg = Registry("widget", name_attribute="name")

    @reg.register("round")
    class Round:
        pass

    assert Round.name == "round" and reg["round"] is Round and reg.names() == ["round"]
    with pytest.raises(ValueError, match="widget 'round' registered twice"):
        reg.register("round")(type("Other", (), {}))
    with pytest.raises(ConfigError, match=r"unknown widget 'square'; choose one of round \(draw one\)"):
        reg.lookup("square", "draw one")


def test_registries_of_the_package_are_registries():
    from privkit.audit.residual import CI_METHODS, SAMPLERS
    from privkit.data.writers import WRITERS
    from privkit.unlearn.base import UNLEARNERS, list_unlearners

    list_unlearners()
    for reg in (CI_METHODS, SAMPLERS, WRITERS, UNLEARNERS):
        assert isinstance(reg, Registry) and len(reg) > 0
    assert UNLEARNERS["fast-ntk"].name == "fast-ntk"


def test_confidence_intervals_of_several_radii_at_once_match_one_at_a_time():
    values = np.random.default_rng(0).gamma(2.0, size=(3, 50))
    low, high = t_ci(values, 0.95, np.random.default_rng(0))
    for row, lo, hi in zip(values, low, high):
        lo1, hi1 = t_ci(row, 0.95, np.random.default_rng(0))
        assert np.isclose(lo, lo1) and np.isclose(hi, hi1)
    # the bootstrap resamples every row with the same indices: a row repeated gives the same interval
    low, high = bootstrap_ci(np.stack([values[0], values[0]]), 0.95, np.random.default_rng(1))
    assert low[0] == low[1] and high[0] == high[1] and low[0] < values[0].mean() < high[0]
    low1, high1 = bootstrap_ci(values[0], 0.95, np.random.default_rng(1))
    assert np.isclose(low1, low[0]) and np.isclose(high1, high[0])
