"""Contract suite for trainer backends (cf. scikit-learn's ``check_estimator``).

:func:`check_backend` takes a factory, ``BackendContext -> TrainerBackend``, whose Config points at a small local
Hugging Face model (e.g. :func:`lmix_core.testing.tiny.save_tiny_model_dir`) and has a learning rate large enough
for one AdamW step to lower a fixed batch's loss (``lr = 1e-3`` does for the tiny models). It builds the context
itself: the built-in ``logit_average`` combiner (α = 0.5) with one reference. Every process of a distributed
backend calls it with the same arguments (the checks call collectives in the same order on every rank) and the
same ``tmp_dir``, a folder every rank can read.

Checks, in order (an ``AssertionError`` names the one that failed):
    * ``context_checks``: a context whose ``update_weights`` do not match its optimiser states is refused with a
      :class:`~lmix_core.errors.BackendError`;
    * ``declared_models``: ``models(config)`` names the policy; ``with_models`` replaces the policy and references;
    * ``collectives``: ``all_sum`` sums over ranks, ``all_mean`` averages, ``0 ≤ rank < world_size``;
    * ``generate_layout``: ``[prompt][response][pad]`` rows, ``loss_mask`` exactly the response, ``prefix_mask``
      the forced tokens, ``logp`` 0 outside the response, one completion and one ``truncated`` flag per row;
    * ``seeded``: the same request and seed give the same tokens;
    * ``score_matches_generate``: ``score`` of generated rows equals the sampler's ``logp`` and ``ref_logp``;
    * ``nonfinite_step_skipped``: a non-finite loss reports ``skipped`` and leaves the scores unchanged;
    * ``train_step_lowers_loss``: one step on a fixed batch lowers its NLL and reports a finite, positive norm;
    * ``save_pretrained``: the export loads with plain ``transformers`` and scores the batch like ``score``;
    * ``checkpoint_round_trip``: a fresh backend that loads a checkpoint samples the same tokens (its rollout
      engine got the loaded weights) and takes the same next step as the backend that saved it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import attrs
import torch
from torch import Tensor

from lmix_core.errors import BackendError
from lmix_core.interfaces.backend import BackendContext, BackendModels, TrainerBackend
from lmix_core.testing import _suite
from lmix_core.types import GenerationRequest, LossOutput, MicroBatch, TokenBatch, TokenStats

_SUITE = "check_backend"
TEMPERATURE = 0.7
_ATOL = 1e-4

Factory = Callable[[BackendContext], TrainerBackend]

#: The checks :func:`check_backend` runs, in order.
BACKEND_CHECKS = (
    "context_checks",
    "declared_models",
    "collectives",
    "generate_layout",
    "seeded",
    "score_matches_generate",
    "nonfinite_step_skipped",
    "train_step_lowers_loss",
    "save_pretrained",
    "checkpoint_round_trip",
)


@attrs.frozen
class _NLL:
    """``loss = −Σ token_weights · logp`` at temperature 1 (or a non-finite loss, for the skip check)."""

    needs_entropy: bool = False
    needs_ref_logp: bool = False
    temperature: float = 1.0
    poison: bool = False

    def __call__(self, stats: TokenStats, batch: MicroBatch, /) -> LossOutput:
        loss = -(batch.tensors["token_weights"].to(stats.logp.device) * stats.logp).sum()
        return LossOutput(loss=loss * float("nan") if self.poison else loss)


def _context(**changes: Any) -> BackendContext:
    from lmix_core.combiners.logit_average import LogitAverage

    return BackendContext(combiner=LogitAverage(LogitAverage.Config(alpha=0.5)), num_references=1, **changes)


def _fixed_batch(tokenizer: Any) -> TokenBatch:
    """Four right-padded rows of text, every real token but the first scored, distribution ``policy``."""
    texts = ["The quick brown fox jumps", "12 + 30 = 42", "hello world, hello", "abc"]
    rows = [tokenizer.encode(t) for t in texts]
    S = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), S), int(pad), dtype=torch.long)  # [N, S]
    am = torch.zeros(len(rows), S, dtype=torch.long)  # [N, S]
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        am[i, : len(r)] = 1
    mask = am.bool()  # [N, S]
    mask[:, 0] = False
    return TokenBatch(input_ids=ids, attention_mask=am, loss_mask=mask, distribution="policy")


def _nll(backend: TrainerBackend, batch: TokenBatch) -> float:
    logp = backend.score(batch).logp  # [N, S]
    return float(-(logp * batch.loss_mask).sum() / batch.loss_mask.sum())


def _micro_batch(batch: TokenBatch) -> MicroBatch:
    w = batch.loss_mask.float() / batch.loss_mask.sum()  # [N, S], the mean NLL
    return MicroBatch(tokens=batch, role="sft", tensors={"token_weights": w})


def _request(tokenizer: Any) -> GenerationRequest:
    prompts = tuple(tuple(tokenizer.encode(t)) for t in ("Once upon", "2+2=", "x", "lorem ipsum dolor"))
    forced = ((), tuple(tokenizer.encode("yes")), (), tuple(tokenizer.encode("no")))
    return GenerationRequest(
        prompt_ids=prompts, forced=forced, max_new_tokens=6, temperature=TEMPERATURE, seed=17, step=1
    )


def _fail(backend: Any, check: str, detail: str) -> NoReturn:
    _suite.fail(_SUITE, backend, check, detail)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def check_backend(factory: Factory, *, tmp_dir: Path) -> None:
    """Run every check of :data:`BACKEND_CHECKS` on backends built by ``factory`` (see the module docstring)."""
    tmp_dir = Path(tmp_dir)
    try:
        factory(_context(num_optimizer_states=1, update_weights=(0.5, 0.5)))
    except BackendError:
        pass
    else:
        _suite.fail(
            _SUITE, factory, "context_checks", "update_weights of length 2 for 1 optimiser state passed"
        )

    backend = factory(_context())
    _check_declared_models(backend)
    _check_collectives(backend)
    request = _request(backend.tokenizer)
    gen = backend.generate(request)
    _check_layout(backend, request, gen)
    again = backend.generate(request)
    if not torch.equal(gen.tokens.input_ids, again.tokens.input_ids):
        _fail(backend, "seeded", "the same request and seed gave different tokens")
    stats = backend.score(gen.tokens, temperature=TEMPERATURE, ref_logp=True, step=request.step)
    mask = gen.tokens.loss_mask
    assert gen.logp is not None
    err = _max_diff(stats.logp[mask], gen.logp[mask])
    if not err <= _ATOL:
        _fail(
            backend, "score_matches_generate", f"score's logp differs from the sampler's by up to {err:.2e}"
        )
    if gen.ref_logp is not None and stats.ref_logp is not None:
        err = _max_diff(stats.ref_logp[mask], gen.ref_logp[mask])
        if not err <= _ATOL:
            _fail(
                backend, "score_matches_generate", f"score's ref_logp differs from the sampler's by {err:.2e}"
            )

    batch = _fixed_batch(backend.tokenizer)
    before = backend.score(batch).logp
    report = backend.train_step([[_micro_batch(batch)]], _NLL(poison=True), step=0)
    if not report.skipped or _max_diff(backend.score(batch).logp, before) != 0.0:
        _fail(backend, "nonfinite_step_skipped", f"a NaN loss gave {report} and/or changed the scores")

    nll0 = _nll(backend, batch)
    report = backend.train_step([[_micro_batch(batch)]], _NLL(), step=0)
    nll1 = _nll(backend, batch)
    norm_ok = all(n > 0 and torch.isfinite(torch.tensor(n)) for n in report.grad_norms)
    if report.skipped or not norm_ok or not nll1 < nll0:
        _fail(
            backend,
            "train_step_lowers_loss",
            f"NLL {nll0:.5f} -> {nll1:.5f}, grad norms {report.grad_norms}, skipped={report.skipped}",
        )

    _check_save_pretrained(backend, batch, tmp_dir / "export")

    ckpt = tmp_dir / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    backend.save_checkpoint(ckpt)
    saved_gen = backend.generate(request)
    backend.train_step([[_micro_batch(batch)]], _NLL(), step=1)
    saved_next = backend.score(batch).logp
    backend.close()
    fresh = factory(_context())
    try:
        fresh.load_checkpoint(ckpt)
        loaded_gen = fresh.generate(request)
        if not torch.equal(loaded_gen.tokens.input_ids, saved_gen.tokens.input_ids):
            _fail(fresh, "checkpoint_round_trip", "after load_checkpoint the backend samples other tokens")
        fresh.train_step([[_micro_batch(batch)]], _NLL(), step=1)
        err = _max_diff(fresh.score(batch).logp, saved_next)
        if not err <= 1e-6:
            _fail(fresh, "checkpoint_round_trip", f"the step after loading differs by up to {err:.2e}")
    finally:
        fresh.close()


def _check_declared_models(backend: TrainerBackend) -> None:
    cls, config = type(backend), backend.config
    models = cls.models(config)
    if not (isinstance(models, BackendModels) and models.policy):
        _fail(backend, "declared_models", f"models(config) gave {models!r}")
    moved = cls.models(cls.with_models(config, policy="/elsewhere/policy", references=("/r0", "/r1")))
    if moved != BackendModels(policy="/elsewhere/policy", references=("/r0", "/r1")):
        _fail(backend, "declared_models", f"with_models then models gave {moved!r}")


def _check_collectives(backend: TrainerBackend) -> None:
    r, w = backend.rank, backend.world_size
    if not 0 <= r < w:
        _fail(backend, "collectives", f"rank {r} of world size {w}")
    total = backend.all_sum(torch.tensor([r + 1.0, 2.0], dtype=torch.float64))
    expected = torch.tensor([w * (w + 1) / 2, 2.0 * w], dtype=torch.float64)
    if not torch.equal(total.double(), expected):
        _fail(backend, "collectives", f"all_sum gave {total.tolist()}, expected {expected.tolist()}")
    mean = backend.all_mean({"x": float(r)})
    if abs(mean["x"] - (w - 1) / 2) > 1e-12:
        _fail(backend, "collectives", f"all_mean of the ranks gave {mean}")


def _check_layout(backend: TrainerBackend, request: GenerationRequest, gen: Any) -> None:
    ids, am, lm = gen.tokens.input_ids, gen.tokens.attention_mask, gen.tokens.loss_mask  # [N, S] each
    N = len(request.prompt_ids)
    if not (ids.shape == am.shape == lm.shape == gen.prefix_mask.shape and ids.shape[0] == N):
        _fail(
            backend, "generate_layout", f"shapes {[tuple(t.shape) for t in (ids, am, lm, gen.prefix_mask)]}"
        )
    if len(gen.completions) != N or tuple(gen.truncated.shape) != (N,):
        _fail(backend, "generate_layout", "one completion and one truncated flag per row are required")
    if gen.logp is None or bool((gen.logp[~lm.bool()] != 0).any()):
        _fail(backend, "generate_layout", "logp must be set, and 0 outside the response")
    for i, (p, f) in enumerate(zip(request.prompt_ids, request.forced)):
        n = int(am[i].sum())
        where = f"row {i}"
        if not (am[i, :n].all() and not am[i, n:].any() and ids[i, : len(p)].tolist() == list(p)):
            _fail(backend, "generate_layout", f"{where} is not [prompt][response][pad]")
        if not (lm[i, len(p) : n].all() and not lm[i, : len(p)].any() and not lm[i, n:].any()):
            _fail(backend, "generate_layout", f"{where}: loss_mask is not exactly the response")
        if ids[i, len(p) : len(p) + len(f)].tolist() != list(f):
            _fail(backend, "generate_layout", f"{where}: the forced prefix {f} is not the response's start")
        if gen.prefix_mask[i].nonzero().flatten().tolist() != list(range(len(p), len(p) + len(f))):
            _fail(backend, "generate_layout", f"{where}: prefix_mask does not mark exactly the forced tokens")


def _check_save_pretrained(backend: TrainerBackend, batch: TokenBatch, path: Path) -> None:
    backend.save_pretrained(path)
    expected = backend.score(batch).logp  # [N, S], every rank takes part
    if not backend.is_main:
        return
    import transformers

    from lmix_core.progress_bars import quiet_progress

    with quiet_progress():
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        z = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()  # [N, S, V]
    lp = torch.log_softmax(z[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # [N, S-1]
    mask = batch.loss_mask[:, 1:]  # [N, S-1]
    err = _max_diff(lp[mask], expected[:, 1:][mask])
    if not err <= _ATOL:
        _fail(backend, "save_pretrained", f"the exported model scores the batch {err:.2e} away from score")
