"""Misbehaving verifiers for the pool tests, in a module the worker processes can import."""

from __future__ import annotations

import ctypes
import os
import time
from typing import final

import attrs

from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.types import RewardInput, Verdict

_started = False


@final
class Scripted(RewardVerifier):
    """Does what the completion says: ``hang``, ``spin``, ``exit``, ``segv``, ``raise``, ``memory``, ``nan``,
    ``none``, ``sleep:<seconds>``, ``cpu:<seconds>`` (compute for that much CPU time, then score 1), ``pid``;
    anything else scores 1 with reason ``ok <completion>``.

    With ``slow_start_s > 0`` the first sample a process judges takes that long (the warm-up sample absorbs it).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        slow_start_s: float = 0.0

    def score_one(self, sample: RewardInput, /) -> Verdict:
        global _started
        if not _started:
            _started = True
            time.sleep(self.config.slow_start_s)
        what = sample.completion
        if what == "hang":
            time.sleep(3600)
        if what == "spin":
            while True:
                pass
        if what == "exit":
            os._exit(3)
        if what == "segv":
            ctypes.string_at(0)
        if what == "raise":
            raise ValueError("boom")
        if what == "memory":
            raise MemoryError("out of memory")
        if what == "nan":
            return Verdict(score=float("nan"), reason="nan")
        if what == "none":
            return None  # type: ignore[return-value]
        if what.startswith("sleep:"):
            time.sleep(float(what.split(":", 1)[1]))
            return Verdict(score=1.0, reason=f"slept {os.getpid()}")
        if what.startswith("cpu:"):
            end = time.process_time() + float(what.split(":", 1)[1])
            while time.process_time() < end:
                pass
            return Verdict(score=1.0, reason=f"computed {what}")
        if what == "pid":
            return Verdict(score=1.0, reason=str(os.getpid()))
        return Verdict(score=1.0, reason=f"ok {what}")


def samples(*completions: str) -> list[RewardInput]:
    """One sample per completion (no reference)."""
    return [RewardInput(prompt="", completion=c) for c in completions]
