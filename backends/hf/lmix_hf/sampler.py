"""Batched incremental sampling from one model or from a combination of models run in lockstep.

At every step each model (the policy and ``K`` frozen references) forwards the previous token with its own KV
cache, and the next token is drawn from

    p(· | x_<t) = softmax( mix(z_θ, z_ref_1 … z_ref_K) / T )

where ``z`` are the models' last-position logits and ``mix`` is the combiner's ``mix_logits`` (the policy's logits
alone when ``mix`` is None). Rollouts therefore come from the distribution that is trained (logit averaging,
arXiv 2605.20555: "the behaviour policy is the mixture"). Forced prefix tokens (Prefix-RFT, arXiv 2507.01679) go
through the same path: while a row is inside its forced prefix the forced token is fed instead of the sampled one,
and its log-prob under ``p`` is still recorded.

Layout and conventions:
    * Prompts are left-padded for decoding; positions are ``cumsum(attention_mask) - 1`` and masks are built by
      :mod:`lmix_hf.masks`, so padding changes nothing.
    * The returned rows are right-padded ``[prompt][response][pad]`` (the :class:`~lmix_core.types.Generation`
      layout); ``loss_mask`` marks response tokens (the EOS token or the token that completed a stop string
      included), ``prefix_mask`` the forced ones.
    * ``temperature = 0`` is greedy decoding; log-probs are then reported at temperature 1.
    * ``top_p < 1`` samples from the nucleus, but the reported log-probs are those of the full tempered
      distribution, which is what :meth:`TrainerBackend.score` recomputes.
    * A row ends at its first EOS token (forced or sampled) or at the sampled token whose text completes a stop
      string; the stop string, and anything else that token decodes to, is kept. Stop strings are searched in the
      sampled text only: a forced prefix (a demonstration) that contains one is fed whole, never cut.
    * Shared prefill (``prefill="shared"``): rows with the same prompt (a group's rollouts) share one prompt pass;
      each distinct prompt is forwarded once per model and its keys, values and last logits are copied to its
      rows before decoding, which gives the same tokens as a pass per row.
    * Seeding: one ``torch.Generator`` seeded with ``request.seed`` drives every draw, so the same request, seed,
      models and device give the same tokens. A row's tokens depend on the whole batch (draws are made for the
      batch at once, in row order), so the same prompt in a different batch may get a different sample.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.types import Generation, GenerationRequest, TokenBatch
from lmix_hf.fused_decoder import FusedDecoder
from lmix_hf.kv_cache import KVBuffer
from lmix_hf.loading import check_supported, eos_token_ids, head_weight
from lmix_hf.masks import as_kind, causal_mask, mask_kind, position_ids
from lmix_hf.stop_strings import StopStrings

#: ``mix(z_policy [B, V], z_refs: K × [B, V]) -> [B, V]`` combined logits (before the temperature).
MixFn = Callable[[Tensor, Sequence[Tensor]], Tensor]
#: How decoding steps run: ``fused`` (:class:`~lmix_hf.fused_decoder.FusedDecoder` where the architecture is
#: supported, transformers' forward otherwise) or ``transformers`` (always the model's own forward).
Decoder = Literal["fused", "transformers"]


@attrs.frozen(kw_only=True)
class Sample:
    """What :meth:`Sampler.sample` returns.

    Attributes:
        generation: the rows, in the :class:`~lmix_core.types.Generation` layout, with the sampler's log-probs
            (``generation.logp``, and ``generation.ref_logp`` when a reference ran).
    """

    generation: Generation

    @property
    def logp(self) -> Tensor:
        """``[N, S]`` float32 log-prob of each response token under the sampling distribution ``softmax(mix / T)``
        (``T = 1`` when greedy), aligned with ``generation.tokens.input_ids``; 0 elsewhere."""
        assert self.generation.logp is not None  # the sampler always records them
        return self.generation.logp


class Sampler:
    """Samples responses from Hugging Face causal LMs: the ``hf`` rollout engine's sampler (:mod:`lmix_hf.engine`).

    Backends reach it only through the engine; it takes any transformers models, so tests drive it directly.

    Args:
        tokenizer: decodes completions and stop-string tails; its ``pad_token_id`` fills finished rows.
        eos_token_ids: tokens that end a response; None reads them from the policy's generation config and the
            tokenizer when sampling.
        decoder: ``fused`` (default) or ``transformers``; both give the same tokens up to float rounding.
        prefill: ``shared`` (default) runs the prompt pass once per distinct prompt; ``per_row`` once per row.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token_ids: Sequence[int] | None = None,
        decoder: Decoder = "fused",
        prefill: Literal["shared", "per_row"] = "shared",
    ) -> None:
        if decoder not in ("fused", "transformers"):
            raise BackendError(f"'decoder' must be 'fused' or 'transformers' (got {decoder!r})")
        if prefill not in ("shared", "per_row"):
            raise BackendError(f"'prefill' must be 'shared' or 'per_row' (got {prefill!r})")
        self.prefill = prefill
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.eos_token_ids = None if eos_token_ids is None else tuple(int(i) for i in eos_token_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise BackendError("the sampler needs a tokenizer with a pad or an eos token")
        self.pad_token_id = int(pad)

    def sample(
        self,
        request: GenerationRequest,
        policy: Any,
        references: Sequence[Any] = (),
        mix: MixFn | None = None,
    ) -> Sample:
        """Sample one response per prompt of ``request``.

        Args:
            request: prompts, forced prefixes and sampling settings (``request.distribution`` is the caller's
                business: it decides which ``references`` and ``mix`` to pass).
            policy: the trainable model (a transformers causal LM).
            references: frozen models run in lockstep with the policy; their logits go to ``mix``.
            mix: combines ``z_policy`` and ``z_refs``; None samples the policy alone (``references`` must then
                be empty).

        Returns:
            The generation and the sampled tokens' log-probs.
        """
        _check_request(request)
        if mix is None and references:
            raise BackendError("the sampler got reference models but no mix function to combine their logits")
        models = (policy, *references)
        for m in models:
            check_supported(m)
        device = next(policy.parameters()).device
        eos = self.eos_token_ids if self.eos_token_ids is not None else eos_token_ids(policy, self.tokenizer)
        with torch.inference_mode():
            steps = _decode(self, request, models, mix, device, eos)
        return _assemble(self, request, *steps)


def _check_request(request: GenerationRequest) -> None:
    problems = []
    n = len(request.prompt_ids)
    if n == 0:
        problems.append("'prompt_ids' must hold at least one prompt")
    if any(len(p) == 0 for p in request.prompt_ids):
        problems.append("every prompt must have at least one token")
    if request.forced and len(request.forced) != n:
        problems.append(
            f"'forced' must be empty or hold one entry per prompt ({n}), got {len(request.forced)}"
        )
    if any(len(f) > request.max_new_tokens for f in request.forced):
        problems.append(f"a forced prefix is longer than 'max_new_tokens' ({request.max_new_tokens})")
    if request.max_new_tokens < 1:
        problems.append(f"'max_new_tokens' must be >= 1 (got {request.max_new_tokens})")
    if not request.temperature >= 0:
        problems.append(f"'temperature' must be >= 0 (got {request.temperature})")
    if not 0 < request.top_p <= 1:
        problems.append(f"'top_p' must be in (0, 1] (got {request.top_p})")
    if problems:
        raise BackendError("invalid generation request: " + "; ".join(problems))


class _Model:
    """One model's prompt pass: transformers' forward into the model's own KV buffer."""

    def __init__(self, model: Any, max_length: int) -> None:
        mask_kind(model)  # raises for attention implementations whose masks are not built here
        self.model = model
        self.weight = head_weight(model)  # [V, H]
        self.dtype = self.weight.dtype
        self.cache = KVBuffer(max_length)
        # transformers 5.x renamed the cache argument `past_key_values` to `cache` (the old name warns on every call)
        params = inspect.signature(model.base_model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """Feed ``[B, q]`` tokens through transformers' forward; return the last position's float32 logits."""
        out = self.model.base_model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_arg: self.cache},
        )
        self.cache.advance(input_ids.shape[1])
        return torch.nn.functional.linear(out.last_hidden_state[:, -1], self.weight).float()  # [B, V]


class _Group:
    """Models decoded together: one stacked :class:`FusedDecoder`, or one model through transformers' forward."""

    def __init__(
        self, members: Sequence[_Model], step_positions: Tensor, step_mask: Tensor, fused: bool
    ) -> None:
        self.members = members
        self.step_positions = step_positions  # [B, M]
        K = len(members)
        self.fused = FusedDecoder([m.model for m in members]) if fused else None
        self.mask = step_mask.repeat(K, 1, 1, 1) if K > 1 else step_mask  # [K·B, 1, 1, P + M]
        if self.fused is not None:
            self.cache = KVBuffer.concat([m.cache for m in members])
            if K > 1:
                for m in members:
                    m.cache = KVBuffer(0)  # the prompt's keys and values now live in the stacked buffer
            self.cos, self.sin = self.fused.rotary_tables(step_positions)  # [K·B, M, D] each

    def step(self, j: int, tokens: Tensor, length: int) -> list[Tensor]:
        """Feed decoding step ``j``'s ``[B]`` tokens; return each member's float32 logits ``[B, V]``."""
        mask = self.mask[..., :length]  # [K·B, 1, 1, L]
        if self.fused is None:
            return [self.members[0].forward(tokens[:, None], mask, self.step_positions[:, j : j + 1])]
        return list(self.fused.step(tokens, self.cos[:, j], self.sin[:, j], self.cache, mask).unbind(0))


def _groups(
    members: Sequence[_Model], decoder: Decoder, step_positions: Tensor, step_mask: Tensor
) -> list[_Group]:
    """All models stacked into one fused group when they can be; else each fused alone, or through transformers."""
    models = [m.model for m in members]
    if decoder == "fused" and FusedDecoder.stackable(models):
        return [_Group(members, step_positions, step_mask, fused=True)]
    return [
        _Group([m], step_positions, step_mask, fused=decoder == "fused" and FusedDecoder.supports(m.model))
        for m in members
    ]


def _decode(
    sampler: Sampler,
    request: GenerationRequest,
    models: Sequence[Any],
    mix: MixFn | None,
    device: torch.device,
    eos: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    """The decoding loop; returns left-padded prompts, their mask, tokens, log-probs (of the sampled distribution
    and, when a reference runs, of the first reference alone), lengths, forced and ended."""
    B = len(request.prompt_ids)
    M = request.max_new_tokens
    P = max(len(p) for p in request.prompt_ids)
    pad = sampler.pad_token_id
    prompt = torch.full((B, P), pad, dtype=torch.long)  # [B, P]
    prompt_mask = torch.zeros(B, P, dtype=torch.long)  # [B, P]
    for i, p in enumerate(request.prompt_ids):
        prompt[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        prompt_mask[i, P - len(p) :] = 1
    prompt, prompt_mask = prompt.to(device), prompt_mask.to(device)
    prompt_len = prompt_mask.sum(-1)  # [B]

    # Forced prefixes: forced[b, j] is fed at step j when is_forced[b, j].
    F = max((len(f) for f in request.forced), default=0)
    forced = torch.full((B, max(F, 1)), pad, dtype=torch.long)  # [B, F]
    is_forced = torch.zeros(B, max(F, 1), dtype=torch.bool)  # [B, F]
    for i, f in enumerate(request.forced):
        if f:
            forced[i, : len(f)] = torch.tensor(f, dtype=torch.long)
            is_forced[i, : len(f)] = True
    forced, is_forced = forced.to(device), is_forced.to(device)
    n_forced = [len(f) for f in request.forced] if request.forced else [0] * B

    prompt_pos = position_ids(prompt_mask)  # [B, P]
    step_pos = prompt_len[:, None] + torch.arange(M, device=device)[None]  # [B, M]
    state = [_Model(m, P + M) for m in models]
    if len({s.dtype for s in state}) != 1:
        raise BackendError(
            f"the sampled models must share one dtype (got {sorted(str(s.dtype) for s in state)})"
        )
    dtype = state[0].dtype
    # Additive masks (SDPA is faster with them than with boolean ones at one query): the prompt pass's
    # [B, 1, P, P], and for decoding views [B, 1, 1, L] of one [B, 1, 1, P + M] buffer in which every generated
    # position is real (finished rows keep feeding padding, which no live row reads).
    key_real = torch.ones(B, P + M, dtype=torch.bool, device=device)  # [B, P + M]
    key_real[:, :P] = prompt_mask.bool()
    prefill_mask = causal_mask(prompt_mask, "additive", dtype)  # [B, 1, P, P]
    step_mask = as_kind(key_real[:, None, None, :], "additive", dtype)  # [B, 1, 1, P + M]

    vocab = state[0].weight.shape[0]
    is_eos = torch.zeros(vocab, dtype=torch.bool, device=device)  # [V]
    for i in eos:
        if 0 <= i < vocab:
            is_eos[i] = True
    stops = StopStrings(sampler.tokenizer, request.stop)
    generator = torch.Generator(device=device).manual_seed(request.seed)
    greedy = request.temperature == 0
    inv_t = 1.0 if greedy else 1.0 / request.temperature

    tokens = torch.full((B, M), pad, dtype=torch.long, device=device)  # [B, M]
    logp = torch.zeros(B, M, dtype=torch.float32, device=device)  # [B, M]
    ref_logp = torch.zeros(B, M, dtype=torch.float32, device=device) if len(state) > 1 else None  # [B, M]
    lengths = torch.zeros(B, dtype=torch.long, device=device)  # [B]
    done = torch.zeros(B, dtype=torch.bool, device=device)  # [B]
    ended = torch.zeros(B, dtype=torch.bool, device=device)  # [B], by EOS or a stop string
    rows = torch.arange(B, device=device)  # [B]

    if sampler.prefill == "shared":
        z = _shared_prefill(state, request.prompt_ids, prompt, prefill_mask, prompt_pos)  # K+1 × [B, V]
    else:
        z = [s.forward(prompt, prefill_mask, prompt_pos) for s in state]  # K+1 × [B, V]
    groups = _groups(state, sampler.decoder, step_pos, step_mask)
    for j in range(M):
        logits = z[0] if mix is None else mix(z[0], z[1:])  # [B, V]
        lp_all = torch.log_softmax(logits if greedy else logits * inv_t, dim=-1)  # [B, V]
        if greedy:
            tok = logits.argmax(-1)  # [B]
        else:
            tok = _draw(lp_all, request.top_p, generator)  # [B]
        if j < F:
            tok = torch.where(is_forced[:, j], forced[:, j], tok)  # [B]
        tok = tok.masked_fill_(done, pad)  # [B]
        tokens[:, j] = tok
        logp[:, j] = lp_all[rows, tok].masked_fill_(done, 0.0)
        if ref_logp is not None:
            lp_ref = torch.log_softmax(z[1] if greedy else z[1] * inv_t, dim=-1)  # [B, V]
            ref_logp[:, j] = lp_ref[rows, tok].masked_fill_(done, 0.0)
        lengths += ~done
        finished = is_eos[tok] & ~done  # [B]
        if stops:
            # only sampled tokens can complete a stop string: a row's forced prefix (a demonstration) is never
            # searched, like the prompt, so a stop string inside it cannot cut it
            live = [b for b in (~done).nonzero().flatten().tolist() if j >= n_forced[b]]
            lo = max(0, j + 1 - stops.window)
            window = tokens[live, lo : j + 1].tolist()
            tails = [row[max(0, n_forced[b] - lo) :] for b, row in zip(live, window)]
            for b, hit in zip(live, stops.hits(tails) if live else []):
                if hit:
                    finished[b] = True
        ended |= finished
        done |= finished
        if j == M - 1 or bool(done.all()):
            break
        z = [logits for g in groups for logits in g.step(j, tok, P + j + 1)]  # K+1 × [B, V]
    return prompt, prompt_len, tokens, logp, ref_logp, lengths, is_forced, ended


def _shared_prefill(
    state: Sequence[_Model],
    prompt_ids: Sequence[Sequence[int]],
    prompt: Tensor,
    mask: Tensor,
    positions: Tensor,
) -> list[Tensor]:
    """Each model's prompt pass over the distinct prompts only, its keys, values and logits copied to every row.

    Shapes: ``prompt``, ``positions`` ``[B, P]`` (left-padded), ``mask`` ``[B, 1, P, P]``; returns ``K+1 × [B, V]``.
    """
    first: dict[tuple[int, ...], int] = {}
    row_of = [first.setdefault(tuple(p), len(first)) for p in prompt_ids]  # distinct prompt of each row
    if len(first) == len(row_of):
        return [s.forward(prompt, mask, positions) for s in state]
    device = prompt.device
    distinct = torch.tensor([row_of.index(u) for u in range(len(first))], device=device)  # [U] a row of each
    index = torch.tensor(row_of, device=device)  # [B]
    out = []
    for s in state:
        z = s.forward(prompt[distinct], mask[distinct], positions[distinct])  # [U, V]
        s.cache.select_rows(index)  # [U, …] → [B, …]
        out.append(z[index])  # [B, V]
    return out


def _draw(lp: Tensor, top_p: float, generator: torch.Generator) -> Tensor:
    """One token per row from ``exp(lp)``, restricted to the nucleus of mass ``top_p`` when ``top_p < 1``.

    Inverse-CDF sampling (one uniform draw per row against a float64 cumulative sum) rather than
    ``torch.multinomial``, which draws an exponential variate for every vocabulary entry and costs more than a
    decoder layer's forward at small batch sizes.
    """
    probs = lp.exp()  # [B, V]
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V], [B, V]
        outside = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # [B, V], keeps the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill_(outside, 0.0)  # [B, V]
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)  # [B, V]
    cdf = probs.cumsum(-1, dtype=torch.float64)  # [B, V]
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=torch.float64)  # [B, 1]
    tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # [B, 1], first index with cdf > u·total
    return tok.clamp_(max=cdf.shape[1] - 1).squeeze(1)  # [B]


def _assemble(
    sampler: Sampler,
    request: GenerationRequest,
    prompt: Tensor,
    prompt_len: Tensor,
    tokens: Tensor,
    logp: Tensor,
    ref_logp: Tensor | None,
    lengths: Tensor,
    is_forced: Tensor,
    ended: Tensor,
) -> Sample:
    """Right-pad rows as ``[prompt][response][pad]`` and build the :class:`Generation` (outside inference mode)."""
    prompt, prompt_len, tokens, logp = prompt.clone(), prompt_len.clone(), tokens.clone(), logp.clone()
    ref_logp = None if ref_logp is None else ref_logp.clone()
    lengths, is_forced, ended = lengths.clone(), is_forced.clone(), ended.clone()
    device = tokens.device
    B, P = prompt.shape
    M = tokens.shape[1]
    total = prompt_len + lengths  # [B]
    S = int(total.max())
    col = torch.arange(S, device=device)[None]  # [1, S]
    in_prompt = col < prompt_len[:, None]  # [B, S]
    in_response = (col >= prompt_len[:, None]) & (col < total[:, None])  # [B, S]
    prompt_src = (col + (P - prompt_len)[:, None]).clamp_(
        max=P - 1
    )  # [B, S] column in the left-padded prompt
    resp_src = (col - prompt_len[:, None]).clamp_(0, M - 1)  # [B, S] step that produced the token
    input_ids = torch.full((B, S), sampler.pad_token_id, dtype=torch.long, device=device)  # [B, S]
    input_ids = torch.where(in_prompt, prompt.gather(1, prompt_src), input_ids)  # [B, S]
    input_ids = torch.where(in_response, tokens.gather(1, resp_src), input_ids)  # [B, S]
    row_logp = torch.where(in_response, logp.gather(1, resp_src), 0.0).float().cpu()  # [B, S]
    row_ref_logp = (
        None
        if ref_logp is None
        else torch.where(in_response, ref_logp.gather(1, resp_src), 0.0).float().cpu()
    )  # [B, S]
    F = is_forced.shape[1]
    forced_at = is_forced.gather(1, resp_src.clamp(max=F - 1)) & (resp_src < F)  # [B, S]
    prefix_mask = in_response & forced_at  # [B, S]
    attention_mask = (in_prompt | in_response).long()  # [B, S]
    responses = [tokens[i, : int(lengths[i])].tolist() for i in range(B)]
    completions = tuple(sampler.tokenizer.batch_decode(responses, skip_special_tokens=True))
    generation = Generation(
        tokens=TokenBatch(
            input_ids=input_ids.cpu(),
            attention_mask=attention_mask.cpu(),
            loss_mask=in_response.cpu(),
            distribution=request.distribution,
        ),
        prefix_mask=prefix_mask.cpu(),
        completions=completions,
        truncated=(~ended).cpu(),
        logp=row_logp,
        ref_logp=row_ref_logp,
    )
    return Sample(generation=generation)
