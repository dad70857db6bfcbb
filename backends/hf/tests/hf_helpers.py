"""Test helpers: prompts, a weighted-NLL objective and naive (full-logits) reference computations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
import transformers
from torch import Tensor

from lmix_core.combiners.policy import Policy
from lmix_core.interfaces.backend import BackendContext
from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.types import LossOutput, MicroBatch, TokenBatch, TokenStats
from lmix_hf.backend import HFBackend

QUESTIONS = ("hi", "What is 12+7?", "Add 3 and 45, then double it.", "ok")


def prompts(tokenizer: Any, n: int = 4) -> tuple[tuple[int, ...], ...]:
    """``n`` chat-templated prompts of different lengths."""
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i // len(QUESTIONS))}]
        out.append(tuple(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]))
    return tuple(out)


def make_backend(
    model: Path,
    *,
    combiner: PolicyCombiner | None = None,
    references: tuple[Path, ...] = (),
    num_references: int = 0,
    num_optimizer_states: int = 1,
    update_weights: tuple[float, ...] = (1.0,),
    **config: Any,
) -> HFBackend:
    cfg = HFBackend.Config(
        model=str(model), references=tuple(str(r) for r in references), device="cpu", **config
    )
    context = BackendContext(
        combiner=combiner if combiner is not None else Policy(Policy.Config()),
        num_references=num_references,
        num_optimizer_states=num_optimizer_states,
        update_weights=update_weights,
    )
    return HFBackend(cfg, context)


@attrs.frozen
class WeightedNLL:
    """``loss = −Σ weights · logp`` (+ ``entropy_coef · Σ weights · H``, + ``kl_coef · Σ weights · (logp − ref)``)."""

    needs_entropy: bool = False
    needs_ref_logp: bool = False
    temperature: float = 1.0
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    scale: float = 1.0

    def __call__(self, stats: TokenStats, batch: MicroBatch) -> LossOutput:
        w = batch.tensors["weights"] * self.scale  # [N, S]
        loss = -(stats.logp * w).sum()
        if self.needs_entropy and stats.entropy is not None:
            loss = loss + self.entropy_coef * (stats.entropy * w).sum()
        if self.needs_ref_logp and stats.ref_logp is not None:
            loss = loss + self.kl_coef * ((stats.logp - stats.ref_logp) * w).sum()
        return LossOutput(loss=loss, metrics={"logp_mean": stats.logp.sum().detach() / w.gt(0).sum()})


def micro_batch(tokens: TokenBatch, weights: Tensor | None = None) -> MicroBatch:
    """An RL micro-batch whose loss weights are a token mean over ``tokens.loss_mask`` unless given."""
    if weights is None:
        weights = tokens.loss_mask.float() / tokens.loss_mask.sum()
    return MicroBatch(tokens=tokens, role="rl", tensors={"weights": weights})


def naive_logp(model: Any, tokens: TokenBatch, temperature: float = 1.0, refs=(), mix=None) -> Tensor:
    """``[N, S]`` log-probs from full logits of plain ``model(...)`` calls (no lmix code), zero off the loss mask.

    Positions are passed explicitly as ``cumsum(mask) − 1`` so any padding side works.
    """
    pos = (tokens.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def logits(m: Any) -> Tensor:
        return m(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, position_ids=pos
        ).logits.float()

    z = logits(model)
    if mix is not None:
        with torch.no_grad():
            z_refs = [logits(r) for r in refs]
        z = mix(z, z_refs)
    lp = torch.log_softmax(z[:, :-1] / temperature, -1).gather(-1, tokens.input_ids[:, 1:, None])[..., 0]
    lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
    return lp * tokens.loss_mask


def load_plain(path: Path) -> Any:
    """A model loaded by plain transformers, in float32 and eval mode."""
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def right_to_left(tokens: TokenBatch) -> TokenBatch:
    """The same rows, left-padded instead of right-padded."""
    n, s = tokens.input_ids.shape
    lengths = tokens.attention_mask.sum(-1)
    idx = (torch.arange(s)[None] + lengths[:, None]) % s  # rotate each row right by its padding
    return attrs.evolve(
        tokens,
        input_ids=tokens.input_ids.gather(1, idx),
        attention_mask=tokens.attention_mask.gather(1, idx),
        loss_mask=tokens.loss_mask.gather(1, idx),
    )
