"""Configs validate themselves and name the wrong value."""

import pytest

from lowbit import recipes
from lowbit.config import (
    MSE, MovingAverage, PerChannel, PerEmbeddingGroup, PerGroup, Percentile, PerToken,
    QuantSpec, Recipe,
)
from lowbit.errors import ConfigError


@pytest.mark.parametrize("bits", [1, 9, 0, 8.0, "8"])
def test_bad_bits_named(bits):
    with pytest.raises(ConfigError, match=r"QuantSpec.bits.*got"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("make, field", [
    (lambda: PerGroup(size=96), "PerGroup.size"),
    (lambda: PerGroup(size=1), "PerGroup.size"),
    (lambda: PerEmbeddingGroup(groups=0), "PerEmbeddingGroup.groups"),
    (lambda: MovingAverage(momentum=0.0), "MovingAverage.momentum"),
    (lambda: Percentile(percentile=40.0), "Percentile.percentile"),
    (lambda: Percentile(bins=1000), "Percentile.bins"),
    (lambda: MSE(grid=3), "MSE.grid"),
    (lambda: QuantSpec(granularity="per_tensor"), "QuantSpec.granularity"),
    (lambda: QuantSpec(observer="minmax"), "QuantSpec.observer"),
    (lambda: QuantSpec(granularity=PerGroup(64), dynamic=True), "QuantSpec.dynamic"),
    (lambda: QuantSpec(granularity=PerToken()), "QuantSpec.granularity"),
])
def test_bad_values_named(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_grids():
    assert (QuantSpec(bits=8, symmetric=True).qmin, QuantSpec(bits=8).qmax) == (-128, 127)
    assert (QuantSpec(bits=4, symmetric=False).qmin, QuantSpec(bits=4, symmetric=False).qmax) == (0, 15)


def test_specs_are_frozen_and_hashable():
    s = QuantSpec(bits=4, granularity=PerGroup(32))
    with pytest.raises(Exception):
        s.bits = 8
    assert s == QuantSpec(bits=4, granularity=PerGroup(32))
    assert len({s, QuantSpec(bits=4, granularity=PerGroup(32))}) == 1


def test_recipe_validation():
    w = QuantSpec(granularity=PerChannel())
    with pytest.raises(ConfigError, match="quantizes nothing"):
        Recipe("x", weight=None, activation=None)
    with pytest.raises(ConfigError, match="unknown linear role 'attn.qq'"):
        Recipe("x", weight=w, activation=None, roles=("attn.qq",))
    with pytest.raises(ConfigError, match="unknown site 'residuals'"):
        Recipe("x", weight=w, activation=QuantSpec(), sites=("residuals",))
    with pytest.raises(ConfigError, match="weight granularity"):
        Recipe("x", weight=w, activation=QuantSpec(granularity=PerChannel()))
    with pytest.raises(ConfigError, match="activation granularity"):
        Recipe("x", weight=QuantSpec(granularity=PerEmbeddingGroup(4)), activation=None)


def test_builtin_recipes_by_name():
    assert recipes.get("w8a8-full") is recipes.W8A8_FULL
    assert recipes.get("W4A16_G128").weight.granularity == PerGroup(128)
    with pytest.raises(ConfigError, match="unknown recipe 'w9a9'"):
        recipes.get("w9a9")
