"""Tolerance lint: no test compares numbers with an explicit tolerance looser than 1e-2.

A loose ``atol``/``rtol`` lets a wrong formula pass (cf. a peer's ``rtol=1e6``). Scanned: ``tests/``,
``backends/*/tests/`` and ``plugins/*/tests/``; keywords ``atol``, ``rtol`` (and ``math.isclose``'s ``abs_tol``,
``rel_tol``) set to a numeric literal. Expressions (``atol=2 * ATOL``) are not evaluated. ``pytest.approx``'s
``rel``/``abs`` are left out on purpose: tests of sampling frequencies state binomial bounds with them, and those are
justified in the test's docstring instead.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1e-2
_NUMBER = r"([0-9][0-9_]*\.?[0-9_]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
_KEYWORD = re.compile(rf"\b(atol|rtol|abs_tol|rel_tol)\s*=\s*{_NUMBER}(?=\s*[,)#\n])")


def loose_tolerances(text: str) -> list[tuple[int, str, float]]:
    """``(line, keyword, value)`` for every literal tolerance above :data:`LIMIT` in ``text``."""
    found = []
    for m in _KEYWORD.finditer(text):
        value = float(m.group(2).replace("_", ""))
        if value > LIMIT:
            found.append((text.count("\n", 0, m.start(1)) + 1, m.group(1), value))
    return found


def test_scanner_flags_loose_and_passes_tight_values():
    """The scanner catches loose literals in every supported form and lets tight ones and expressions through."""
    sample = (
        "torch.testing.assert_close(a, b, atol=1e-5, rtol=0.05)\n"
        "assert_close(a, b, atol=2 * ATOL, rtol=RTOL)\n"
        "math.isclose(a, b, rel_tol=1e6)\n"
        "np.allclose(a, b, atol=1e-2)\n"
        "torch.allclose(a, b, atol=.5)\n"
        "torch.allclose(a, b,\n    rtol=1_000\n)\n"
    )
    assert loose_tolerances(sample) == [
        (1, "rtol", 0.05),
        (3, "rel_tol", 1e6),
        (5, "atol", 0.5),
        (7, "rtol", 1000.0),
    ]


def test_no_loose_tolerances_in_tests():
    """No test file in the repository uses an explicit tolerance above 1e-2."""
    files = [
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("backends/*/tests/**/*.py"),
        *ROOT.glob("plugins/*/tests/**/*.py"),
    ]
    assert files
    offenders = []
    for path in files:
        if path.resolve() == Path(__file__).resolve():
            continue
        for line, keyword, value in loose_tolerances(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {keyword}={value:g}")
    assert not offenders, "tolerances above 1e-2:\n" + "\n".join(offenders)
