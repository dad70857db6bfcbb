"""The per-micro-batch loss a backend differentiates: the policy loss on RL rows, weighted NLL on SFT rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import attrs
import torch

from lmix_core.interfaces.loss import PolicyLoss
from lmix_core.interfaces.mixer import Mixer
from lmix_core.types import LossInputs, LossOutput, MicroBatch, TokenStats


@final
@attrs.frozen(kw_only=True)
class StepObjective:
    """``loss(mb) = Σ token_weights · ℓ`` with ℓ the policy loss (RL rows) or ``−φ · log π_θ`` (SFT rows).

    Token weights arrive precomputed in ``mb.tensors["token_weights"]`` (aggregation × mixer × combiner weights), so
    the sum over a step's micro-batches is the step's loss whatever the micro-batch split.

    Temperature: the backend scores every row, SFT rows included, at ``temperature`` (the sampling temperature),
    so the SFT term is the NLL of the demonstrations under ``softmax(z_θ / T)``, the distribution the rollouts come
    from (verl's actor likewise divides every row's logits by the rollout temperature, so verl-based mixed methods
    train their off-policy rows at it). Its metric is named for that: ``sft_nll_tempered``, the token mean of
    ``−log softmax(z_θ / T)(y*)``; it is the plain NLL only at ``T = 1``.

    Attributes:
        loss: the recipe's policy loss.
        mixer: the recipe's mixer (its ``sft_token_weights`` shapes the SFT NLL, e.g. CHORD's φ).
        temperature: the sampling temperature the backend divides combined logits by.
        offpolicy_gamma: the combiner's LUFFY shaping constant for forced tokens this step, or None.
    """

    loss: PolicyLoss
    mixer: Mixer
    temperature: float = 1.0
    offpolicy_gamma: float | None = None

    @property
    def needs_entropy(self) -> bool:
        return True  # logged every step; the chunked kernel computes it alongside the log-probs

    @property
    def needs_ref_logp(self) -> bool:
        return self.loss.needs_ref_logp

    def __call__(self, stats: TokenStats, batch: MicroBatch, /) -> LossOutput:
        handlers: dict[str, Callable[[TokenStats, MicroBatch], LossOutput]] = {
            "rl": self._rl,
            "sft": self._sft,
        }
        return handlers[batch.role](stats, batch)

    def _rl(self, stats: TokenStats, batch: MicroBatch) -> LossOutput:
        t = batch.tensors
        mask = batch.tokens.loss_mask  # [N, S]
        old = t.get("old_logp")
        inputs = LossInputs(
            logp=stats.logp,  # [N, S]
            old_logp=stats.logp.detach() if old is None else old,  # [N, S]; one pass per step: ratio 1
            advantages=t["advantages"],  # [N, S]
            mask=mask,
            token_weights=t["token_weights"],  # [N, S]
            ref_logp=stats.ref_logp,
            entropy=stats.entropy,
            offpolicy=t.get("offpolicy"),
            offpolicy_gamma=self.offpolicy_gamma,
        )
        out = self.loss(inputs)
        metrics = dict(out.metrics)
        if stats.entropy is not None:
            metrics.setdefault("entropy", _masked_mean(stats.entropy.detach(), mask))
        return LossOutput(loss=out.loss, metrics=metrics)

    def _sft(self, stats: TokenStats, batch: MicroBatch) -> LossOutput:
        mask = batch.tokens.loss_mask  # [N, S]
        phi = self.mixer.sft_token_weights(stats.logp.detach())  # [N, S], no gradient through φ
        w = batch.tensors["token_weights"] * phi  # [N, S]
        nll = -(w * stats.logp).sum()  # []
        # at the sampling temperature (see the class docstring), hence the name
        return LossOutput(loss=nll, metrics={"sft_nll_tempered": _masked_mean(-stats.logp.detach(), mask)})


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)  # [N, S]
    return (x * m).sum() / m.sum().clamp_min(1.0)  # []
