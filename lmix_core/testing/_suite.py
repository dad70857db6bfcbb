"""What the contract suites share: failure messages, the run-every-check entry point, and the pytest decorator.

Each suite module (``combiner``, ``advantage``, ``loss``) keeps its own checks and its own public
``check_<kind>`` and ``parametrize_with_checks``; these helpers only keep the wording and the mechanics identical
across suites (scikit-learn's ``check_estimator`` / ``parametrize_with_checks`` pair).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


def message(suite: str, component: object, check: str, detail: str) -> str:
    """``"<suite>(<Class>): <check>: <detail>"``, the one format every suite's failures use."""
    return f"{suite}({type(component).__name__}): {check}: {detail}"


def fail(suite: str, component: object, check: str, detail: str) -> NoReturn:
    """Raise ``AssertionError`` with :func:`message`."""
    raise AssertionError(message(suite, component, check, detail))


def run_checks(
    suite: str, interface: type, component: object, checks: Sequence[Callable[[Any], None]]
) -> None:
    """Run every check on ``component`` after checking it implements ``interface``.

    Raises:
        AssertionError: ``component`` is not an ``interface``, or a check failed.
    """
    if not isinstance(component, interface):
        article = "an" if interface.__name__[:1] in "AEIOU" else "a"
        raise AssertionError(f"{suite}: {component!r} is not {article} {interface.__name__}")
    for check in checks:
        check(component)


def parametrize_with_checks(
    argname: str, components: Mapping[str, T] | Iterable[T], checks: Sequence[Callable[[T], None]]
) -> Any:
    """A ``pytest.mark.parametrize(f"{argname}, check", ...)`` decorator: one test per (component, check).

    Args:
        argname: the test's parameter name for the component (``combiner``, ``estimator``, ``loss``).
        components: the instances; a mapping gives each its test id (e.g. the registered name), otherwise the id
            is the class name.
        checks: the suite's checks.
    """
    import pytest

    named = (
        list(components.items())
        if isinstance(components, Mapping)
        else [(type(c).__name__, c) for c in components]
    )
    params = [
        pytest.param(c, check, id=f"{label}-{check.__name__.removeprefix('check_')}")
        for label, c in named
        for check in checks
    ]
    return pytest.mark.parametrize(f"{argname}, check", params)
