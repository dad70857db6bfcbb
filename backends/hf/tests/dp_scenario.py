"""A fixed two-rank RL + SFT step with unequal response lengths, for the data-parallel normalisation tests.

Rank ``r`` holds ``Q = 2`` questions × ``G = 2`` rollouts and ``2`` demonstrations. Rank 0's responses are short
(one is empty), rank 1's long, and rank 1 drops a question (RL weight 0) and halves another, so every count the
loss normalises by (tokens, non-empty rows, all rows, demonstration tokens) differs between the ranks and between
the two minibatches. :func:`local_step` is rank ``r``'s share; :func:`global_step` is the same rows in one process,
ordered so that its minibatch ``k`` holds exactly the rows of the ranks' minibatch ``k``. :func:`run_step` goes
through the loop's own micro-batch building (``Trainer._optimise``) and returns the gradient of every optimiser
step, as the backend hands it to the optimiser (after averaging over ranks).

Used by ``test_dp_normalization.py`` (HF, 2 gloo ranks) and ``workers/dp_norm_megatron_worker.py`` of the megatron
tests (DP2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from lmix_core.combiners.policy import Policy
from lmix_core.data.example import Example
from lmix_core.interfaces.backend import TrainerBackend
from lmix_core.interfaces.combiner import LossMasks
from lmix_core.losses.ppo_clip import PPOClip
from lmix_core.mixers.constant import Constant
from lmix_core.settings import EvalConfig, LoggingConfig, SamplingConfig, TrainConfig
from lmix_core.train.components import Components
from lmix_core.train.loop import Trainer
from lmix_core.types import Generation, MixDecision, TokenBatch

Q, G, MINIBATCHES, MAX_NEW = 2, 2, 2, 12
RL_COEF, SFT_COEF = 0.7, 0.3
#: per rank, per question: the G response lengths; 0 is an empty response (no loss token)
LENGTHS = (((1, 3), (0, 2)), ((7, 9), (11, 5)))
#: per rank, per question: the mixer's RL weight (0 drops the question's rollouts before normalising)
RL_WEIGHTS = ((1.0, 1.0), (0.5, 0.0))
#: per rank: demonstrations (dataset index, weight); their lengths differ by rank
SFT = (((0, 1.0), (1, 0.6)), ((2, 1.0), (3, 0.8)))
DEMOS = (
    "4",
    "7 then 9",
    "the sum of two and two is four, so the answer is four",
    "a b c d e f g h i j k l m n",
)


@attrs.frozen(kw_only=True)
class Question:
    """One question's rollouts: which rank holds it, its position there, its RL weight."""

    rank: int
    index: int
    weight: float


def _rows(questions: Sequence[Question], pad_id: int) -> TokenBatch:
    """Right-padded ``[prompt][response]`` rows; every token id drawn from a generator seeded by (rank, q, g)."""
    rows, prompt_lens = [], []
    for qu in questions:
        for g in range(G):
            gen = torch.Generator().manual_seed(1000 * qu.rank + 10 * qu.index + g)
            prompt = torch.randint(3, 200, (3 + qu.index,), generator=gen)  # [P]
            response = torch.randint(3, 200, (LENGTHS[qu.rank][qu.index][g],), generator=gen)  # [L]
            rows.append(torch.cat([prompt, response]))
            prompt_lens.append(len(prompt))
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), pad_id, dtype=torch.long)  # [N, S]
    attn = torch.zeros(len(rows), S, dtype=torch.long)  # [N, S]
    loss = torch.zeros(len(rows), S, dtype=torch.bool)  # [N, S]
    for i, (row, p) in enumerate(zip(rows, prompt_lens, strict=True)):
        ids[i, : len(row)] = row
        attn[i, : len(row)] = 1
        loss[i, p : len(row)] = True
    return TokenBatch(input_ids=ids, attention_mask=attn, loss_mask=loss)


def _step(questions: Sequence[Question], sft: Sequence[tuple[int, float]], pad_id: int) -> dict[str, Any]:
    tokens = _rows(questions, pad_id)
    N, S = tokens.input_ids.shape
    adv = torch.tensor(
        [float(torch.randn(1, generator=torch.Generator().manual_seed(7 + 1000 * qu.rank + 10 * qu.index + g)))
         for qu in questions for g in range(G)]
    )  # [N]  # fmt: skip
    mask = tokens.loss_mask
    rl = {
        "gen": Generation(
            tokens=tokens,
            prefix_mask=torch.zeros(N, S, dtype=torch.bool),
            completions=("",) * N,
            truncated=torch.zeros(N, dtype=torch.bool),
        ),
        "advantages": adv[:, None] * mask,  # [N, S]
        "old_logp": None,
        "masks": LossMasks(token_weight=mask.float(), offpolicy=torch.zeros(N, S, dtype=torch.bool)),
    }
    decision = MixDecision(
        rl_coef=RL_COEF,
        sft_coef=SFT_COEF,
        rl_weights=tuple(qu.weight for qu in questions),
        sft=tuple(sft),
        label="mixed",
    )
    return {"rl": rl, "decision": decision, "questions": len(questions)}


def local_step(rank: int, pad_id: int) -> dict[str, Any]:
    """Rank ``rank``'s rollouts, advantages and mixer decision."""
    return _step(
        [Question(rank=rank, index=q, weight=RL_WEIGHTS[rank][q]) for q in range(Q)], SFT[rank], pad_id
    )


def global_step(pad_id: int) -> dict[str, Any]:
    """Both ranks' rows in one process. Minibatch ``k`` of the loop takes questions ``[k·Q', (k+1)·Q')`` and
    demonstrations ``k::M``, so the questions are interleaved by minibatch and the demonstrations listed rank by
    rank: minibatch ``k`` then holds each rank's minibatch ``k``."""
    per_mb = Q // MINIBATCHES
    questions = [
        Question(rank=r, index=q, weight=RL_WEIGHTS[r][q])
        for k in range(MINIBATCHES)
        for r in range(2)
        for q in range(k * per_mb, (k + 1) * per_mb)
    ]
    return _step(questions, [item for r in range(2) for item in SFT[r]], pad_id)


def run_step(
    backend: TrainerBackend,
    data: dict[str, Any],
    run_dir: Path,
    capture: Callable[[], list[torch.Tensor]],
    *,
    agg: str = "token-mean",
    agg_rows: str = "nonempty",
    dp_normalization: str = "global",
) -> list[torch.Tensor]:
    """One loop step (``Trainer._optimise``) with ppo_clip (``agg``, ``agg_rows``) and the decision above.

    Args:
        backend: the backend, its optimiser set up so that ``capture()`` returns the gradient of each optimiser
            step taken so far (and the parameters stay put).
        data: :func:`local_step` or :func:`global_step`.
        run_dir: scratch directory for the trainer.
        capture: returns (and forgets) the gradients recorded since the last call.

    Returns:
        One flat float32 gradient per optimiser step.
    """
    examples = [Example(index=i, prompt=f"q{i}", answer="0", demonstration=d) for i, d in enumerate(DEMOS)]
    parts = Components(
        backend=backend,
        combiner=Policy(Policy.Config()),
        advantage=None,
        loss=PPOClip(PPOClip.Config(agg=agg, agg_rows=agg_rows)),
        mixer=Constant(Constant.Config(mu=SFT_COEF)),
        rewards=None,
        train=TrainConfig(
            steps=1,
            prompts_per_step=data["questions"],
            group_size=G,
            minibatches=MINIBATCHES,
            dp_normalization=dp_normalization,
        ),
        sampling=SamplingConfig(max_new_tokens=MAX_NEW),
        eval=EvalConfig(),
        logging=LoggingConfig(wandb="disabled", progress=False),
        train_examples=examples,
        eval_examples=[],
        render_prompt=lambda tokenizer, ex: ex.prompt,
    )
    trainer = Trainer(parts, run_dir)
    qids = tuple(range(data["questions"]))
    reports = trainer._optimise(0, qids, data["rl"], data["decision"])
    grads = capture()
    assert len(grads) == len(reports) == MINIBATCHES, (len(grads), len(reports))
    return grads
