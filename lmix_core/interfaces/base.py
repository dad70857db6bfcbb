"""What every component shares: a frozen attrs ``Config`` and nothing else."""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar, Self


class Component(ABC):
    """A registered part. Concrete parts are ``@typing.final`` and define a nested ``@attrs.frozen`` ``Config``.

    The component keeps ``self.config`` and reads its parameters from it; it never copies fields onto ``self``.
    A concrete part declares ``config: Config`` under its ``Config`` class, so that a type checker reads its fields.
    """

    Config: ClassVar[type]
    config: Any

    def __init__(self, config: Any) -> None:
        if not isinstance(config, type(self).Config):
            raise TypeError(f"{type(self).__name__} takes a {type(self).__name__}.Config (got {config!r})")
        self.config = config

    @classmethod
    def default(cls) -> Self:
        """The component with its default Config (every field must have a default)."""
        return cls(cls.Config())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
