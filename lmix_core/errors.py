"""The errors lmix raises on purpose.

Every user-facing error derives from :class:`LmixError`. None subclasses ``KeyError``: its ``str()`` would quote the
message and escape its newlines. Messages start lower-case, show values with ``repr()``, name the place the problem
comes from (a recipe path, a distribution) and end with one actionable hint.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


class LmixError(Exception):
    """Base class of every error lmix raises on purpose."""


class UnknownComponentError(LmixError, LookupError):
    """A recipe or a call named a component that no installed distribution registers."""


class DuplicateComponentError(LmixError):
    """Two different distributions register the same name in one entry-point group."""


class PluginLoadError(LmixError, ImportError):
    """A registered entry point failed to import."""


class ComponentTypeError(LmixError, TypeError):
    """A registered object does not implement its kind's interface."""


class ConfigError(LmixError, ValueError):
    """A component's Config could not be built from the given parameters."""


class NonFiniteError(LmixError, FloatingPointError):
    """Training produced non-finite losses or gradients too many times in a row."""


class BackendError(LmixError, RuntimeError):
    """A backend cannot do what the recipe asks (missing model files, unsupported feature, ...)."""


class CheckpointError(LmixError, RuntimeError):
    """A checkpoint, or another file lmix reads back from a run directory, is missing, corrupt or not lmix's."""


class UsageError(LmixError, ValueError):
    """Bad command-line arguments, or a command that does not fit what it finds (exit status 2)."""


class RunDirectoryError(UsageError):
    """``--out`` holds a run when a new one was asked for, or no checkpoint when ``--resume`` was."""


class RunInterrupted(LmixError):
    """SIGTERM or SIGINT stopped a run after it wrote a checkpoint; ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@attrs.frozen
class Problem:
    """One problem found in a recipe.

    Attributes:
        path: dotted location in the recipe, e.g. ``combiner.alpha`` or ``rewards[1].weight``.
        message: what is wrong, e.g. ``'alpha' must be in [0, 1] (got 1.5)``.
        hint: an optional suggestion, printed indented below the message.
    """

    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        head = f"  {self.path}: {self.message}" if self.path else f"  {self.message}"
        if not self.hint:
            return head
        return head + "\n" + "\n".join("      " + line for line in self.hint.splitlines())


class RecipeError(LmixError, ValueError):
    """Every problem found in a recipe, reported at once."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        n = len(self.problems)
        lines = [f"{source} has {n} problem{'s' if n != 1 else ''}:"]
        lines += [p.render() for p in self.problems]
        super().__init__("\n".join(lines))
