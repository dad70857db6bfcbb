"""The FSDP scenario of test_fsdp.py, run by fsdp_worker.py on 2 ranks and by the test on 1 process.

Five steps of logit averaging (α = 0.5 with one reference) with two optimiser states (``parallel_average``,
weights ½, ½) and a KL term against the reference: group 0 holds RL rows sampled from the combined distribution,
group 1 SFT-like rows scored under the policy alone. Rank 0 holds 3 RL rows and the SFT rows, rank 1 one RL row and
no SFT row (unequal chunk counts and an empty group on one rank: the padding passes). Weights are normalised over
each rank's own rows (the DDP convention); one process on the union takes them halved, i.e. the same gradient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from hf_helpers import WeightedNLL, make_backend, micro_batch, prompts

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.types import GenerationRequest, MicroBatch, TokenBatch

STEPS = 5
#: rows of the four rollouts each rank trains on (world size 2)
RL_ROWS = {0: slice(0, 3), 1: slice(3, 4)}
SFT_ROWS = {0: slice(0, 2), 1: slice(0, 0)}
OBJECTIVE = WeightedNLL(needs_ref_logp=True, kl_coef=0.3)


def backend(policy: Path, reference: Path, **config: Any):
    return make_backend(
        policy,
        combiner=LogitAverage(LogitAverage.Config(alpha=0.5)),
        references=(reference,),
        num_references=1,
        num_optimizer_states=2,
        update_weights=(0.5, 0.5),
        lr=1e-2,
        adam_eps=1.0,
        micro_batch_size=1,
        **config,
    )


def rollouts(b) -> TokenBatch:
    """Four greedy rollouts of the combined distribution (identical on every rank)."""
    request = GenerationRequest(prompt_ids=prompts(b.tokenizer, 4), max_new_tokens=6, temperature=0.0)
    return b.generate(request).tokens


def groups(tokens: TokenBatch, ranks: tuple[int, ...], scale: float) -> list[list[MicroBatch]]:
    """The micro-batch groups of ``ranks`` (one rank: its own; both: the union with weights × ``scale``)."""
    out: list[list[MicroBatch]] = [[], []]
    for r in ranks:
        rl = micro_batch(tokens.select(RL_ROWS[r]))
        out[0].append(attrs.evolve(rl, tensors={"weights": rl.tensors["weights"] * scale}))
        if SFT_ROWS[r].stop > SFT_ROWS[r].start:
            sft_tokens = attrs.evolve(tokens.select(SFT_ROWS[r]), distribution="policy")
            sft = micro_batch(sft_tokens)
            out[1].append(attrs.evolve(sft, role="sft", tensors={"weights": sft.tensors["weights"] * scale}))
    return out


def train(b, tokens: TokenBatch, ranks: tuple[int, ...], scale: float, steps: range) -> list[dict[str, Any]]:
    reports = []
    for s in steps:
        r = b.train_step(groups(tokens, ranks, scale), OBJECTIVE, step=s)
        reports.append({"loss": r.loss, "grad_norms": list(r.grad_norms), "skipped": r.skipped, **r.metrics})
    return reports
