"""``format``: does the completion have the required shape (tags, one boxed answer, a regex)?"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal, final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.types import RewardInput, Verdict

_TAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*$")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _compiles(instance: object, attribute: attrs.Attribute, value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(
            f"'{attribute.name}' must be a valid regular expression (got {value!r}: {exc})"
        ) from None


def _as_tags(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _tag_names(instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    for tag in value:
        if not isinstance(tag, str) or _TAG_RE.fullmatch(tag) is None:
            raise ValueError(f"'{attribute.name}' must hold bare tag names like 'think' (got {tag!r})")


@final
class Format(RewardVerifier):
    r"""Whether the completion has the required shape: 1.0 when every check passes, else 0.0.

    Checks, in order, the first failure giving the reason:

    1. ``required_tags``: each ``<tag>…</tag>`` block appears exactly once, opened before it is closed, and the
       blocks come in the listed order (DeepSeek-R1's ``<think>`` format reward);
    2. ``boxed``: the number of ``\boxed{`` after the last required block (in the whole text when there is none):
       ``exactly_one`` (default), ``at_least_one`` or ``any``;
    3. ``pattern``: a regular expression that must ``fullmatch`` or ``search`` the completion (empty: no check).
       Python's ``re`` has no time limit: the reward pool's per-sample limit bounds a pathological pattern.

    The defaults check that the completion has exactly one boxed answer. "A reasoning block followed by exactly
    one boxed answer" (``<think>…</think> … \boxed{…}``) is ``required_tags = ["think"]``; DeepSeek-R1's format is
    ``required_tags = ["think", "answer"]`` with ``boxed = "any"``. Role ``format``: the score feeds the format
    rate, not accuracy.
    """

    role = "format"

    @attrs.frozen(kw_only=True)
    class Config:
        """Parameters of :class:`Format`.

        Attributes:
            required_tags: tag names whose ``<tag>…</tag>`` block must appear once each, in this order.
            boxed: how many ``\\boxed{`` answers must follow the last required block.
            pattern: a regular expression the completion must match (``""`` = no check); use inline flags such
                as ``(?s)`` for DOTALL.
            mode: ``fullmatch`` (the whole completion, the usual choice for format rewards) or ``search``.
        """

        required_tags: tuple[str, ...] = attrs.field(default=(), converter=_as_tags, validator=_tag_names)
        boxed: Literal["exactly_one", "at_least_one", "any"] = attrs.field(
            default="exactly_one", validator=attrs.validators.in_(("exactly_one", "at_least_one", "any"))
        )
        pattern: str = attrs.field(default="", validator=_compiles)
        mode: Literal["fullmatch", "search"] = attrs.field(
            default="fullmatch", validator=attrs.validators.in_(("fullmatch", "search"))
        )

    config: Config

    def score_one(self, sample: RewardInput, /) -> Verdict:
        text = sample.completion
        after = 0
        for tag in self.config.required_tags:
            opened, closed = f"<{tag}>", f"</{tag}>"
            n_open, n_close = text.count(opened), text.count(closed)
            if n_open == 0 or n_close == 0:
                return Verdict(score=0.0, reason=f"missing {opened}…{closed}")
            if n_open > 1 or n_close > 1:
                return Verdict(score=0.0, reason=f"{opened}…{closed} appears more than once")
            start, end = text.index(opened), text.index(closed)
            if end < start:
                return Verdict(score=0.0, reason=f"{closed} comes before {opened}")
            if start < after:
                return Verdict(score=0.0, reason=f"{opened} is out of order")
            after = end + len(closed)
        n_boxed = len(_BOXED_RE.findall(text, after))
        where = f" after </{self.config.required_tags[-1]}>" if self.config.required_tags else ""
        if self.config.boxed == "exactly_one" and n_boxed != 1:
            what = "no" if n_boxed == 0 else str(n_boxed)
            return Verdict(score=0.0, reason=f"{what} boxed answers{where} (expected exactly one)")
        if self.config.boxed == "at_least_one" and n_boxed == 0:
            return Verdict(score=0.0, reason=f"no boxed answer{where}")
        if self.config.pattern:
            match = re.fullmatch if self.config.mode == "fullmatch" else re.search
            if match(self.config.pattern, text) is None:
                return Verdict(score=0.0, reason=f"does not {self.config.mode} the pattern")
        return Verdict(score=1.0, reason="well formed")
