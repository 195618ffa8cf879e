"""The 222 training names, synonyms and colours."""

import pytest

from SegVolSlicerLib.vocabulary import SYNONYMS, category_names, colour_for, resolve_name


def test_the_222_training_names():
    names = category_names()
    assert len(names) == 222 and len(set(names)) == 222
    assert names[0] == "liver" and "postcava" in names and "gall bladder" in names


@pytest.mark.parametrize(
    "typed, expected",
    [
        ("liver", "liver"),
        ("  Liver ", "liver"),
        ("SPLEEN", "spleen"),
        ("gallbladder", "gall bladder"),
        ("Gallbladder", "gall bladder"),
        ("IVC", "postcava"),
        ("left_kidney", "left kidney"),
        ("L1", "vertebrae L1"),
        ("vertebra t12", "vertebrae T12"),
        ("small intestine", "small bowel"),
        ("kidney left", "kidney left"),
    ],
)
def test_known_names_and_synonyms(typed, expected):
    assert resolve_name(typed) == (expected, True)


def test_every_synonym_points_at_a_training_name():
    names = set(category_names())
    assert all(target in names for target in SYNONYMS.values())


def test_unknown_text_runs_as_typed():
    assert resolve_name("  my   weird organ ") == ("my weird organ", False)


def test_colours_are_fixed_and_valid():
    assert colour_for("liver") == pytest.approx((221 / 255, 130 / 255, 101 / 255))
    assert colour_for("IVC") == colour_for("postcava")
    for name in ("rib left 7", "something unknown"):
        colour = colour_for(name)
        assert colour == colour_for(name) and all(0 <= c <= 1 for c in colour)
    assert colour_for("rib left 7") != colour_for("rib left 8")
