"""The testbed's regimes: one per claim about mixing SFT and RL, each fixed before any comparison runs.

A :class:`Regime` says where its runs start, which testbed files (:mod:`lmix_core.testbed.data`) they train and
are evaluated on, and the precondition (``gate``) without which its comparison cannot decide its claim. The
comparison runner checks the gate on the regime's own runs before it trains any variant, and reports it.

* ``format`` (logit averaging, "Logit averaging inside GRPO", arXiv 2605.20555): the SFT model answers in
  ``\\boxed{}`` with short working, learned from the SFT file; the pretrained model answers ``Answer: N`` after
  column working, which is more accurate; the reward checks correctness only (either format), and the format
  verifier measures ``\\boxed{}`` alone. Unanchored GRPO can gain accuracy by drifting back to the pretraining
  format, so "keeps SFT's formatting at comparable accuracy" is a measurable trade-off. Gate: plain GRPO from the
  SFT model improves held-out pass@1 significantly (the base setting: half of the SFT demonstrations are bare
  answers, so RL has room).
* ``format_worked`` (the same claim; a revision of ``format`` after its first runs): the SFT model learns from
  ``sft_worked.jsonl``, whose demonstrations pair ``\\boxed{}`` with the corpus's column working (half of them
  bare), so it keeps much of the pretrained accuracy and answers in ``\\boxed{}``. In ``format``, RL's gain hinged
  on rediscovering the column working the SFT model no longer wrote, which happened for one pretrained model in
  three; here the working is there to reinforce. Gate: as ``format``.
* ``narrow_early`` / ``narrow_final`` (parallel averaging, "RL Excursions during Pre-Training", arXiv 2606.04272):
  SFT on level-1 problems only, for as many steps as RL and at a learning rate of 3e-4 shared by every method of
  the comparison, degrades the probe skills (string manipulation) that only pretraining taught; ``narrow_early`` starts from an early pretraining checkpoint where RL alone has
  little signal, ``narrow_final`` from the final one. Gate: SFT lowers the probe's exact match significantly
  (otherwise "keeps general capability" has nothing to keep).
* ``switch`` (SASR, arXiv 2505.13026): from the final pretrained checkpoint, which never writes ``\\boxed{}``,
  with a reward that pays correctness (1) and the SFT format (0.5): only demonstrations can teach the format, while
  too much imitation of their worse working (short, or none) costs correctness, so when to switch matters. The
  metric is ``strict`` (correct and in the SFT format). Static schedules: SFT→RL with the switch at an eighth, a
  quarter or a half of the run, and constant mixes μ = 0.1 and 0.5. Gate: they differ significantly (best minus
  worst), i.e. the switch point matters, so an adaptive schedule has something to win.
* ``hard`` (Prefix-RFT, arXiv 2507.01679, and LUFFY, arXiv 2504.14945): RL prompts at hard levels (3-4
  operations on 3-digit numbers, never in the corpus) with worked demonstrations, from the SFT model. Gate: the
  starting model's pass@8 on the hard RL prompts is below 0.05, so on-policy sampling rarely sees a reward and the
  demonstrations are the main signal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

Start = Literal["sft", "ck_early", "ck_final"]
Gate = Literal["grpo_improves", "sft_degrades_probe", "static_spread", "hard_start"]

HARD_PASS_AT_8 = 0.05
MIN_SPREAD = 0.02
"""The ``static_spread`` gate's least best-minus-worst difference: significance alone passed 0.002, a spread too
small for the switch point to matter."""
"""The ``hard`` gate's bound on the starting model's pass@8 over the hard RL prompts."""


@attrs.frozen(kw_only=True)
class Regime:
    """One regime of the testbed.

    Attributes:
        name: its short name (``lmix compare --regime``).
        claim: the claim it is built to decide.
        start: the starting model: the SFT model (``sft``, trained on ``sft.jsonl`` from the final checkpoint) or a
            pretraining checkpoint (``ck_early``, ``ck_final``).
        train_file: the training questions (testbed file name); their ``solution`` is the demonstration that SFT
            steps and prefixes imitate, so every method of a comparison sees the same questions.
        sft_file: the testbed file the SFT starting model trains on (``sft`` start only).
        eval_file: the held-out problems.
        gate: the precondition checked before variants run (see the module docstring).
    """

    name: str
    claim: str
    start: Start
    train_file: str
    eval_file: str
    gate: Gate
    sft_file: str = "sft"


REGIMES: Mapping[str, Regime] = {
    r.name: r
    for r in (
        Regime(
            name="format",
            claim="an anchored RL method keeps the SFT model's answer format at comparable accuracy",
            start="sft",
            train_file="rl",
            eval_file="eval",
            gate="grpo_improves",
        ),
        Regime(
            name="format_worked",
            claim="an anchored RL method keeps the SFT model's answer format at comparable accuracy, from an SFT "
            "model that writes the pretraining's working",
            start="sft",
            train_file="rl",
            eval_file="eval",
            gate="grpo_improves",
            sft_file="sft_worked",
        ),
        Regime(
            name="narrow_early",
            claim="parallel averaging keeps the probe skills SFT loses, from an early checkpoint",
            start="ck_early",
            train_file="sft_narrow",
            eval_file="eval",
            gate="sft_degrades_probe",
        ),
        Regime(
            name="narrow_final",
            claim="parallel averaging keeps the probe skills SFT loses, from the final checkpoint",
            start="ck_final",
            train_file="sft_narrow",
            eval_file="eval",
            gate="sft_degrades_probe",
        ),
        Regime(
            name="switch",
            claim="an adaptive SFT/RL schedule beats static schedules whose switch point matters",
            start="ck_final",
            train_file="sft",
            eval_file="eval",
            gate="static_spread",
        ),
        Regime(
            name="hard",
            claim="guidance from demonstrations helps where on-policy sampling finds no reward",
            start="sft",
            train_file="rl_hard",
            eval_file="eval_hard",
            gate="hard_start",
        ),
    )
}
"""Every regime by name."""


__all__ = ["HARD_PASS_AT_8", "MIN_SPREAD", "REGIMES", "Regime"]
