"""Errors raised while reading datasets."""

from __future__ import annotations

from lmix_core.errors import LmixError


class DataError(LmixError, ValueError):
    """A dataset cannot be read as the ``[data]`` table asks: missing file, missing column, no rows, bad format."""
