"""The recipe file and the typed recipe agree, and mistakes fail at the edge."""

import pytest
from pydantic import ValidationError

from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import Recipe


def test_default_yaml_is_the_default_recipe():
    assert Recipe.from_yaml(PROJECT_ROOT / "recipes/default.yaml") == Recipe()


def test_unknown_keys_are_rejected():
    with pytest.raises(ValidationError, match="lerning_rate"):
        Recipe.from_text("training: {lerning_rate: 0.1}")


def test_out_of_range_values_are_rejected():
    with pytest.raises(ValidationError):
        Recipe.from_text("data: {heldout_fraction: 1.5}")


def test_fingerprint_follows_the_values():
    assert Recipe().fingerprint() == Recipe().fingerprint()
    assert Recipe().fingerprint() != Recipe.from_text("training: {seed: 1}").fingerprint()


def test_a_time_split_without_its_start_is_rejected():
    with pytest.raises(ValidationError, match="heldout_from"):
        Recipe.from_text("data: {split_by: time}")
