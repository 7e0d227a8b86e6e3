"""Recipes: each is a valid gpubp train command, its listing says measured or not, and names are checked."""

import shlex

import pytest

from gpubp.cli import build_parser
from gpubp.errors import GpubpError
from gpubp.recipes import RECIPES, get_recipe, listing


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_is_the_train_command_it_prints(name):
    """The recipe's flags, written as its command, parse back to the same values with gpubp train's parser:
    every destination exists and every value passes the flag's own checks."""
    recipe = RECIPES[name]
    args = build_parser().parse_args(shlex.split(recipe.command())[1:])
    for dest, value in recipe.flags.items():
        assert getattr(args, dest) == value, (name, dest)


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_measured_recipe_gives_its_command_and_machine_and_an_unmeasured_one_says_so(name):
    recipe = RECIPES[name]
    text = recipe.describe()
    if recipe.measured is None:
        assert "ours:      not measured" in text
    else:
        m = recipe.measured
        assert 0 < m["test_accuracy"] <= 1 and 0 < m["seconds_per_epoch"] <= m["total_seconds"]
        assert m["command"].startswith("gpubp train --recipe " + name) and m["machine"]
        assert m["command"] in text


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(GpubpError, match="no recipe named 'lenet': choose one of network.py, network2"):
        get_recipe("lenet")
    assert all(name in listing() for name in RECIPES)
