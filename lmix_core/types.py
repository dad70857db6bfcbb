"""Frozen data exchanged between component kinds and backends.

Token layout used everywhere: a row holds ``[prompt][response][pad]`` (or left padding before the prompt; layout is
free because positions are always ``cumsum(attention_mask) - 1``). Per-token tensors are aligned with
``input_ids``: ``logp[i, t] = log p(input_ids[i, t] | input_ids[i, :t])``; position 0 and every position outside
``loss_mask`` hold 0.

Shapes: ``N`` sequences, ``S`` tokens per row, ``V`` vocabulary, ``Q`` questions in a step, ``G`` rollouts per
question (group size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

if TYPE_CHECKING:
    from torch import Tensor

Distribution = Literal["combined", "policy"]
Role = Literal["rl", "sft"]


@attrs.frozen(kw_only=True)
class TokenBatch:
    """Token rows a backend forwards.

    Attributes:
        input_ids: ``[N, S]`` int64.
        attention_mask: ``[N, S]`` int64, 1 on real tokens.
        loss_mask: ``[N, S]`` bool, the tokens whose log-probs are scored (response or demonstration tokens).
        distribution: ``combined`` scores the combiner's distribution (RL rollouts); ``policy`` the trainable
            policy alone (SFT on demonstrations, deploying the trained policy).
    """

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor
    distribution: Distribution = "combined"

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Tensor | slice) -> TokenBatch:
        return attrs.evolve(
            self,
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            loss_mask=self.loss_mask[rows],
        )


@attrs.frozen(kw_only=True)
class TokenStats:
    """Per-token statistics of a forward pass, each ``[N, S]`` float32 and zero outside ``loss_mask``.

    Attributes:
        logp: log-prob of each token under the batch's distribution (grad flows into the policy in training).
        entropy: entropy of that distribution at each position, or None when not asked for.
        ref_logp: log-prob under the first frozen reference alone (for KL penalties), or None.
    """

    logp: Tensor
    entropy: Tensor | None = None
    ref_logp: Tensor | None = None


@attrs.frozen(kw_only=True)
class MicroBatch:
    """One forward/backward unit handed to :meth:`TrainerBackend.train_step`.

    Attributes:
        tokens: the rows to forward.
        role: ``rl`` (policy-gradient rows) or ``sft`` (demonstration rows).
        tensors: what the objective needs besides the forward pass, e.g. ``old_logp [N, S]``,
            ``advantages [N, S]``, ``token_weights [N, S]``, ``offpolicy [N, S]``.
    """

    tokens: TokenBatch
    role: Role
    tensors: Mapping[str, Tensor]


@attrs.frozen(kw_only=True)
class LossInputs:
    """What a policy loss sees for one micro-batch. Every tensor is ``[N, S]``.

    Attributes:
        logp: log π(token) under the trained distribution, with gradient.
        old_logp: the same under the behaviour parameters (detached).
        advantages: per-token advantages (detached).
        mask: bool, tokens that take part in the loss.
        token_weights: aggregation weights (see ``lmix_core.ops.aggregation.aggregation_weights``) already multiplied by any
            mixer or combiner weight; the loss is ``Σ token_weights · ℓ`` so that micro-batches add up exactly.
        ref_logp: log π_ref(token) of the frozen reference, for KL penalties.
        entropy: entropy of the trained distribution, with gradient, for entropy bonuses.
        offpolicy: bool, tokens not sampled from the behaviour policy (forced demonstration prefixes).
        offpolicy_gamma: when set, off-policy tokens use LUFFY's shaping ``ℓ = −A · p/(p + γ)`` instead of the
            clipped ratio; None treats them like every other token.
    """

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    token_weights: Tensor
    ref_logp: Tensor | None = None
    entropy: Tensor | None = None
    offpolicy: Tensor | None = None
    offpolicy_gamma: float | None = None


@attrs.frozen(kw_only=True)
class LossOutput:
    """A scalar loss and detached scalar metrics (``clip_frac``, ``kl``, ``entropy`` ...)."""

    loss: Tensor
    metrics: Mapping[str, Tensor] = attrs.field(factory=dict)


def one_process_sum(values: Tensor, /) -> Tensor:
    """The sum over a single process: ``values`` itself (the default :attr:`AdvantageInputs.all_sum`)."""
    return values


@attrs.frozen(kw_only=True)
class AdvantageInputs:
    """Outcome rewards of a batch of rollouts: this rank's share of the step's batch.

    Attributes:
        rewards: ``[N]`` float32 scalar rewards; NaN marks a reward that could not be computed.
        group_ids: ``[N]`` int64, rollouts of the same question share an id.
        mask: ``[N, S]`` bool response tokens (lengths are ``mask.sum(-1)``).
        all_sum: elementwise sum over data-parallel ranks of a CPU float64 tensor of the same shape on every rank
            (the backend's ``all_sum``; the identity in one process). Each rank holds whole groups, so group
            statistics need no reduction; an estimator with statistics over the whole batch (a batch std, a
            whitening, a fit over questions) computes them from counts and sums reduced with it, so that the
            advantages do not depend on how the groups are split over ranks. Every rank calls it the same number
            of times with the same shapes: never branch on local data before a call.
    """

    rewards: Tensor
    group_ids: Tensor
    mask: Tensor
    all_sum: Callable[[Tensor], Tensor] = attrs.field(default=one_process_sum, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class RewardInput:
    """One sample to score.

    Attributes:
        prompt: the prompt text the model saw.
        completion: the generated text (the response only).
        reference: the reference answer ("" when there is none).
        metadata: free per-sample fields from the dataset (choices, numbers, target ...).
        num_tokens: the completion's length in tokens (what length-based rewards such as ``overlong`` read);
            0 when unknown.
    """

    prompt: str
    completion: str
    reference: str = ""
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    num_tokens: int = 0


@attrs.frozen(kw_only=True)
class Verdict:
    """A verifier's judgement of one sample: a score and a short reason (``"no boxed answer"``, ``"timeout"``)."""

    score: float
    reason: str


@attrs.frozen(kw_only=True)
class StepPlan:
    """A mixer's plan for a step, made before anything is sampled.

    Attributes:
        rollouts: sample rollouts and run the RL branch this step.
        sft: the step may train on demonstrations named in ``MixDecision.sft``, possibly of questions from
            other steps (ReLIFT's buffer).
    """

    rollouts: bool
    sft: bool


@attrs.frozen(kw_only=True)
class MixerInputs:
    """What a mixer sees after rollouts are scored.

    Attributes:
        step: 0-based loop step.
        question_ids: ``Q`` dataset indices of this step's questions.
        rewards: ``[Q, G]`` rewards, or None when the plan had no rollouts.
        correct: ``[Q, G]`` bool, rollouts judged correct, or None.
    """

    step: int
    question_ids: tuple[int, ...]
    rewards: Tensor | None = None
    correct: Tensor | None = None


@attrs.frozen(kw_only=True)
class MixDecision:
    """How the RL and SFT signals combine in one step.

    The step's loss is ``rl_coef · Σ_q rl_weights[q] · RL_q  +  sft_coef · Σ_k w_k · SFT_k`` where RL_q and SFT_k
    are aggregated per the loss's and the SFT token-mean conventions.

    Attributes:
        rl_coef: scale of the RL term (0 drops it).
        sft_coef: scale of the SFT term (0 drops it).
        rl_weights: ``Q`` per-question multipliers of each question's share of the RL term: 1 as usual, 0 drops
            the question's rollouts before the loss is normalised (HPT's gate).
        sft: ``(dataset index, weight)`` pairs of demonstrations to train on; may name questions outside this
            step (ReLIFT's buffer).
        label: the decision as one word for ``metrics.jsonl`` (``rl``, ``sft``, ``mixed`` ...).
    """

    rl_coef: float
    sft_coef: float
    rl_weights: tuple[float, ...] = ()
    sft: tuple[tuple[int, float], ...] = ()
    label: str = "mixed"


@attrs.frozen(kw_only=True)
class StepFeedback:
    """What the loop reports back to a mixer after the backend step.

    Attributes:
        step: the step just taken.
        decision: the decision that was applied.
        grad_norm_rl: pre-clip gradient norm of the RL term alone, when it could be measured separately.
        grad_norm_sft: likewise for the SFT term.
        grad_norm: pre-clip norm of the whole step's gradient (per optimiser state summed in quadrature).
        kl_to_initial: mean KL of the policy from the initial (reference) model on this step's rollouts, if known.
    """

    step: int
    decision: MixDecision
    grad_norm_rl: float | None = None
    grad_norm_sft: float | None = None
    grad_norm: float | None = None
    kl_to_initial: float | None = None


@attrs.frozen(kw_only=True)
class StepReport:
    """What a backend returns from :meth:`TrainerBackend.train_step`.

    Attributes:
        loss: the summed loss over every micro-batch (sum over ranks' means under data parallelism).
        grad_norms: pre-clip gradient norm of each optimiser state's group, in group order.
        skipped: True when the loss or a gradient was not finite and no parameter changed.
        metrics: means of the objective's metrics over micro-batches.
    """

    loss: float
    grad_norms: tuple[float, ...]
    skipped: bool = False
    metrics: Mapping[str, float] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class GenerationRequest:
    """Rows to sample, one per rollout.

    Attributes:
        prompt_ids: ``N`` token-id lists (already chat-templated).
        forced: ``N`` token-id lists forced as the first response tokens (Prefix-RFT's demonstration prefix);
            empty for ordinary rollouts. Forced tokens count towards ``max_new_tokens``.
        max_new_tokens: response length limit, forced tokens included.
        temperature: logits are divided by it after combining; 0 means greedy.
        top_p: nucleus threshold (1.0 = off).
        stop: strings that end a response (the stop string is kept).
        seed: seeds the sampling generator; the same request and seed give the same tokens.
        distribution: ``combined`` samples the combiner's distribution, ``policy`` the trained policy alone.
        step: the loop step (combiners with schedules read it).
    """

    prompt_ids: tuple[tuple[int, ...], ...]
    forced: tuple[tuple[int, ...], ...] = ()
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    distribution: Distribution = "combined"
    step: int = 0


@attrs.frozen(kw_only=True)
class Generation:
    """Sampled rollouts.

    Attributes:
        tokens: rows ``[prompt][response][pad]``; ``loss_mask`` marks response tokens (forced prefix included),
            ``distribution`` echoes the request.
        prefix_mask: ``[N, S]`` bool, the forced prefix tokens.
        completions: ``N`` decoded responses (special tokens skipped).
        truncated: ``[N]`` bool, rows that hit ``max_new_tokens`` without EOS or a stop string.
        logp: ``[N, S]`` float32 log-prob of each response token under the sampled distribution at the request's
            temperature, as the sampler computed it (0 elsewhere); None when the backend does not provide it.
        ref_logp: ``[N, S]`` the same under the first reference model alone, when the sampled distribution ran a
            reference; None otherwise. With ``logp`` it gives the loop the KL to the reference without a scoring
            pass.
    """

    tokens: TokenBatch
    prefix_mask: Tensor
    completions: tuple[str, ...]
    truncated: Tensor
    logp: Tensor | None = None
    ref_logp: Tensor | None = None
