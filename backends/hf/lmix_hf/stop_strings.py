"""Stop-string detection during decoding, by decoding a short tail of each active row's response.

A stop string that appears for the first time at step ``t`` ends inside the token sampled at ``t`` and starts at
most ``len(stop.encode())`` tokens earlier (each token decodes to at least one byte), so decoding the last
``max_bytes + 1`` response tokens of each row finds it exactly, at a cost independent of the response length.
Tails are decoded with special tokens kept, so a stop string may name one (``"<|im_end|>"``); the prompt and a
row's forced prefix are never searched (the sampler passes only the sampled tokens of each row's tail), so only a
sampled token can complete a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StopStrings:
    """Which rows' responses have just completed one of ``stops``.

    Args:
        tokenizer: the tokenizer whose ``batch_decode`` turns token ids into text.
        stops: stop strings; empty strings are ignored.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 1

    def __bool__(self) -> bool:
        return bool(self.stops)

    def hits(self, tails: Sequence[Sequence[int]]) -> list[bool]:
        """For each row's most recent response tokens (at least :attr:`window` of them, or all), whether a stop
        string occurs in their decoded text."""
        texts = self.tokenizer.batch_decode(
            [list(t)[-self.window :] for t in tails],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        return [any(s in text for s in self.stops) for text in texts]
