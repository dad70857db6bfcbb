"""One training or evaluation problem, whatever file schema it came from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class Example:
    """A prompt with its reference answer and, optionally, a worked demonstration.

    Attributes:
        index: row number in the source (after concatenating a folder's files in name order), stable across
            shuffles and filters, so runs can log and resume by it.
        prompt: the problem text, before the prompt template and chat template are applied.
        answer: the reference final answer the reward verifiers compare against (``"72"``, ``"\\frac{1}{2}"``,
            ``"B"``).
        demonstration: the worked solution used by SFT and mixed policies; ``None`` when the data has none.
        metadata: extra columns (``level``, ``choices``, ...), available to rewards and to the prompt template.
    """

    index: int = attrs.field(validator=attrs.validators.ge(0))
    prompt: str = attrs.field(validator=attrs.validators.instance_of(str))
    answer: str = attrs.field(validator=attrs.validators.instance_of(str))
    demonstration: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    metadata: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
