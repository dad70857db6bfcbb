"""The error classes: one base, no KeyError, and the RecipeError layout."""

from __future__ import annotations

import inspect

import pytest

from lmix_core import errors
from lmix_core.errors import LmixError, Problem, RecipeError


def test_problem_render_indents_hints():
    """A problem renders as "  path: message" with each hint line indented below it."""
    assert Problem("combiner.alpha", "too big").render() == "  combiner.alpha: too big"
    assert Problem("", "not valid TOML").render() == "  not valid TOML"
    assert Problem("a", "m", "one\ntwo").render() == "  a: m\n      one\n      two"


@pytest.mark.parametrize(("count", "header"), [(1, "r.toml has 1 problem:"), (2, "r.toml has 2 problems:")])
def test_recipe_error_header_counts_problems(count, header):
    """The header names the recipe and the number of problems (singular and plural)."""
    err = RecipeError("r.toml", [Problem(f"k{i}", "bad") for i in range(count)])
    assert str(err).splitlines()[0] == header
    assert len(str(err).splitlines()) == count + 1
    assert err.source == "r.toml" and len(err.problems) == count


def test_every_error_is_an_lmix_error_and_none_a_key_error():
    """Every error class derives from LmixError, and none from KeyError (whose str() quotes the message)."""
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) >= 9
    for cls in classes:
        assert issubclass(cls, LmixError), cls
        assert not issubclass(cls, KeyError), cls
    message = "line one\nline two"
    assert str(errors.UnknownComponentError(message)) == message
