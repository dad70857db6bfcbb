"""Contract suite for rollout engines (cf. scikit-learn's ``check_estimator``).

A plugin author passes a factory, ``EngineContext -> RolloutEngine`` (e.g. ``lambda ctx: MyEngine(MyEngine.Config(),
ctx)``), to :func:`check_rollout_engine` from their own tests, or parametrises over :data:`ENGINE_CHECKS` with
:func:`parametrize_with_checks`. The suite builds its own fixture once per process: three tiny random-init Qwen2
models saved as Hugging Face directories (a policy, a reference, and "updated" weights), their LM heads scaled so
that next-token distributions are peaked and far apart, and the built-in ``logit_average`` combiner (α = 0.5). The
engine runs on the CPU in float32, built from the directories (``EngineContext.shared`` is None) except in the
check that lends it in-process models. The exact distributions come from plain transformers forwards.

Checks:
    * the first sampled token follows ``softmax(mix_logits(z_θ, z_ref) / T)`` (combined) and ``softmax(z_θ / T)``
      (policy alone): over :data:`SAMPLES` rows of one prompt, the total-variation distance between the empirical
      frequencies and the exact distribution is below a bound several times the sampling noise, while the
      fixture's wrong candidates (the other distribution, the reference alone) are far outside it;
    * forced prefixes: each row's response starts with its forced tokens, ``prefix_mask`` marks exactly them, and
      a stop string inside a forced prefix does not cut it; the rows are ``[prompt][response][pad]``;
    * ``Generation.logp`` (and ``ref_logp``) equal a scoring pass of the returned tokens: ``log_softmax`` of the
      mixed (reference) logits at the request's temperature, on every response token, 0 elsewhere;
    * the same request and seed give the same tokens; another seed gives other tokens;
    * :meth:`~lmix_core.interfaces.rollout_engine.RolloutEngine.load_policy_weights` takes effect: after loading
      the "updated" weights, ``logp`` equals scoring under them; with in-process models lent through
      ``EngineContext.shared`` and changed in place, the same holds after the notice.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from lmix_core.interfaces.combiner import PolicyCombiner
from lmix_core.interfaces.rollout_engine import EngineContext, RolloutEngine, SharedModels
from lmix_core.testing import _suite
from lmix_core.types import Distribution, Generation, GenerationRequest

_SUITE = "check_rollout_engine"
#: Rows drawn for the distribution checks (one decoding step each).
SAMPLES = 2000
#: Sampling temperature of every check.
TEMPERATURE = 0.7
#: Factor on the tiny models' LM-head weights: peaked next-token distributions, far apart between models.
HEAD_SCALE = 40.0
_ATOL = 1e-4

Factory = Callable[[EngineContext], RolloutEngine]
Check = Callable[[Factory], None]


@attrs.frozen
class _Fixture:
    root: Path
    tokenizer: Any
    combiner: PolicyCombiner

    def path(self, name: str) -> Path:
        return self.root / name

    def model(self, name: str) -> Any:
        import transformers

        from lmix_core.progress_bars import quiet_progress

        with quiet_progress():
            model = transformers.AutoModelForCausalLM.from_pretrained(self.path(name), dtype=torch.float32)
        return model.eval().requires_grad_(False)


@functools.cache
def _fixture() -> _Fixture:
    from lmix_core.combiners.logit_average import LogitAverage
    from lmix_core.progress_bars import quiet_progress
    from lmix_core.synthetic.model import build_tiny_model
    from lmix_core.synthetic.tokenizer import build_tokenizer

    root = Path(tempfile.mkdtemp(prefix="lmix-engine-contract-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    tokenizer = build_tokenizer()
    for name, seed in (("policy", 1), ("reference", 2), ("updated", 3)):
        model = build_tiny_model(
            tokenizer, arch="qwen2", hidden_size=32, num_layers=1, num_heads=4, seed=seed
        )
        with torch.no_grad():
            model.lm_head.weight.mul_(HEAD_SCALE)
        with quiet_progress():
            model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return _Fixture(root=root, tokenizer=tokenizer, combiner=LogitAverage(LogitAverage.Config(alpha=0.5)))


def _context(fx: _Fixture, shared: SharedModels | None = None) -> EngineContext:
    return EngineContext(
        combiner=fx.combiner,
        tokenizer=fx.tokenizer,
        policy_dir=fx.path("policy"),
        reference_dirs=(fx.path("reference"),),
        dtype="float32",
        device=torch.device("cpu"),
        shared=shared,
    )


def _engine(factory: Factory, fx: _Fixture, weights: str = "policy") -> RolloutEngine:
    """An engine over the fixture, with ``weights`` loaded as its policy (the backend's first sync)."""
    engine = factory(_context(fx))
    if not isinstance(engine, RolloutEngine):
        raise AssertionError(f"{_SUITE}: the factory returned {engine!r}, which is not a RolloutEngine")
    engine.load_policy_weights(fx.model(weights).state_dict() if engine.needs_weights else None)
    return engine


def _prompts(fx: _Fixture, n: int) -> tuple[tuple[int, ...], ...]:
    texts = ["abc", "hello wor", "x", "the quick brown", "12+3=", "zz top"]
    return tuple(tuple(fx.tokenizer.encode(texts[i % len(texts)])) for i in range(n))


def _mixed_logits(
    fx: _Fixture, policy: Any, reference: Any, gen: Generation, step: int
) -> tuple[Tensor, Tensor]:
    """Combined and reference logits ``[N, S, V]`` of the generated rows under plain transformers forwards."""
    ids, am = gen.tokens.input_ids, gen.tokens.attention_mask  # [N, S], [N, S]
    with torch.no_grad():
        z_pol = policy(input_ids=ids, attention_mask=am).logits.float()  # [N, S, V]
        z_ref = reference(input_ids=ids, attention_mask=am).logits.float()  # [N, S, V]
        return fx.combiner.mix_logits(z_pol, [z_ref], step=step), z_ref  # [N, S, V], [N, S, V]


def _scored(logits: Tensor, gen: Generation, temperature: float) -> Tensor:
    """``log_softmax(logits / T)`` at each next token, aligned with ``input_ids``, 0 outside the response."""
    ids, mask = gen.tokens.input_ids, gen.tokens.loss_mask  # [N, S], [N, S]
    lp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)  # [N, S-1, V]
    out = torch.zeros(ids.shape, dtype=torch.float32)  # [N, S]
    out[:, 1:] = lp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [N, S-1]
    return out.masked_fill(~mask.bool(), 0.0)  # [N, S]


def _tv(p: Tensor, q: Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def _noise_bound(p: Tensor, n: int) -> float:
    """Four times the expected total-variation distance of ``n`` draws from ``p`` (normal approximation), plus
    one count per sample."""
    expected = 0.5 * float(torch.sqrt(2.0 * p * (1.0 - p) / (torch.pi * n)).sum())
    return 4.0 * expected + 1.0 / n


def check_combined_distribution(factory: Factory) -> None:
    """The first sampled token follows the combined distribution, and the policy's alone when asked for."""
    fx = _fixture()
    engine = _engine(factory, fx)
    prompt = _prompts(fx, 1)[0]
    policy, reference = fx.model("policy"), fx.model("reference")
    with torch.no_grad():
        z_pol = policy(input_ids=torch.tensor([prompt])).logits[0, -1].float()  # [V]
        z_ref = reference(input_ids=torch.tensor([prompt])).logits[0, -1].float()  # [V]
    exact: dict[Distribution, Tensor] = {
        "combined": torch.softmax(fx.combiner.mix_logits(z_pol, [z_ref], step=3) / TEMPERATURE, -1),  # [V]
        "policy": torch.softmax(z_pol / TEMPERATURE, -1),  # [V]
    }
    wrong = {"combined": exact["policy"], "policy": exact["combined"]}
    ref_alone = torch.softmax(z_ref / TEMPERATURE, -1)  # [V]
    for distribution, p in exact.items():
        bound = _noise_bound(p, SAMPLES)
        for label, q in (("the other distribution", wrong[distribution]), ("the reference alone", ref_alone)):
            if _tv(p, q) < 3 * bound:  # the suite's own fixture must be able to tell them apart
                raise AssertionError(f"{_SUITE}: fixture error: {distribution} is too close to {label}")
        gen = engine.generate(
            GenerationRequest(
                prompt_ids=(prompt,) * SAMPLES,
                max_new_tokens=1,
                temperature=TEMPERATURE,
                seed=11,
                distribution=distribution,
                step=3,
            )
        )
        first = gen.tokens.input_ids[:, len(prompt)]  # [SAMPLES]
        freq = torch.bincount(first, minlength=p.shape[0]).double()[: p.shape[0]] / SAMPLES  # [V]
        tv = _tv(freq, p.double())
        if tv > bound:
            _suite.fail(
                _SUITE,
                engine,
                "combined_distribution",
                f"{distribution}: first tokens of {SAMPLES} samples are {tv:.3f} (total variation) from the exact "
                f"distribution; sampling noise stays below {bound:.3f} (the wrong candidates are "
                f"{_tv(freq, wrong[distribution].double()):.3f} and {_tv(freq, ref_alone.double()):.3f} away)",
            )


def check_forced_prefixes(factory: Factory) -> None:
    """Forced tokens open the response whole, are marked in ``prefix_mask``, and a stop string does not cut them."""
    fx = _fixture()
    engine = _engine(factory, fx)
    tok = fx.tokenizer
    stop = "ab"
    forced = (tuple(tok.encode("xaby")), (), tuple(tok.encode("q")), tuple(tok.encode("ababab")))
    prompts = _prompts(fx, len(forced))
    gen = engine.generate(
        GenerationRequest(
            prompt_ids=prompts,
            forced=forced,
            max_new_tokens=6,
            temperature=TEMPERATURE,
            seed=5,
            stop=(stop,),
        )
    )
    ids, am, lm, pm = (
        gen.tokens.input_ids,
        gen.tokens.attention_mask,
        gen.tokens.loss_mask,
        gen.prefix_mask,
    )  # [N, S] each
    for i, (p, f) in enumerate(zip(prompts, forced)):
        n_real = int(am[i].sum())
        response = ids[i, len(p) : n_real].tolist()
        where = f"row {i} (forced {f}, response {response})"
        if not (am[i, :n_real].all() and not am[i, n_real:].any() and ids[i, : len(p)].tolist() == list(p)):
            _suite.fail(
                _SUITE, engine, "forced_prefixes", f"{where}: not laid out as [prompt][response][pad]"
            )
        if not (lm[i, len(p) : n_real].all() and not lm[i, : len(p)].any() and not lm[i, n_real:].any()):
            _suite.fail(_SUITE, engine, "forced_prefixes", f"{where}: loss_mask is not exactly the response")
        if response[: len(f)] != list(f):
            _suite.fail(
                _SUITE, engine, "forced_prefixes", f"{where}: the response does not start with it whole"
            )
        marked = pm[i].nonzero().flatten().tolist()
        if marked != list(range(len(p), len(p) + len(f))):
            _suite.fail(_SUITE, engine, "forced_prefixes", f"{where}: prefix_mask marks positions {marked}")


def check_logp_matches_scoring(factory: Factory) -> None:
    """``logp`` and ``ref_logp`` equal log-probs of the returned tokens under a scoring pass."""
    fx = _fixture()
    engine = _engine(factory, fx)
    request = GenerationRequest(
        prompt_ids=_prompts(fx, 5),
        forced=((), tuple(fx.tokenizer.encode("ok")), (), (), ()),
        max_new_tokens=7,
        temperature=TEMPERATURE,
        seed=2,
        step=4,
    )
    gen = engine.generate(request)
    mixed, z_ref = _mixed_logits(fx, fx.model("policy"), fx.model("reference"), gen, step=4)
    _close(engine, "logp_matches_scoring", "logp", gen.logp, _scored(mixed, gen, TEMPERATURE))
    _close(engine, "logp_matches_scoring", "ref_logp", gen.ref_logp, _scored(z_ref, gen, TEMPERATURE))
    alone = engine.generate(attrs.evolve(request, distribution="policy"))
    with torch.no_grad():
        z_pol = fx.model("policy")(
            input_ids=alone.tokens.input_ids, attention_mask=alone.tokens.attention_mask
        ).logits.float()  # [N, S, V]
    _close(
        engine, "logp_matches_scoring", "logp (policy alone)", alone.logp, _scored(z_pol, alone, TEMPERATURE)
    )


def _close(engine: RolloutEngine, check: str, name: str, got: Tensor | None, expected: Tensor) -> None:
    if got is None:
        _suite.fail(_SUITE, engine, check, f"Generation.{name} is None")
    assert got is not None
    if got.shape != expected.shape:
        _suite.fail(
            _SUITE,
            engine,
            check,
            f"Generation.{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}",
        )
    err = float((got.float() - expected).abs().max())
    if not err <= _ATOL:
        _suite.fail(
            _SUITE, engine, check, f"Generation.{name} differs from a scoring pass by up to {err:.2e}"
        )


def check_seeded(factory: Factory) -> None:
    """The same request and seed give the same tokens; another seed gives other tokens."""
    fx = _fixture()
    engine = _engine(factory, fx)
    request = GenerationRequest(
        prompt_ids=_prompts(fx, 6), max_new_tokens=8, temperature=TEMPERATURE, seed=123, step=1
    )
    a, b = engine.generate(request), engine.generate(request)
    if not torch.equal(a.tokens.input_ids, b.tokens.input_ids):
        _suite.fail(_SUITE, engine, "seeded", "the same request and seed gave different tokens")
    c = engine.generate(attrs.evolve(request, seed=124))
    if a.tokens.input_ids.shape == c.tokens.input_ids.shape and torch.equal(
        a.tokens.input_ids, c.tokens.input_ids
    ):
        _suite.fail(
            _SUITE, engine, "seeded", "seeds 123 and 124 gave the same 48 tokens: the seed is ignored"
        )


def check_weight_loading(factory: Factory) -> None:
    """Loaded policy weights take effect, from tensors or, for lent in-process models, after the notice."""
    fx = _fixture()
    request = GenerationRequest(
        prompt_ids=_prompts(fx, 4), max_new_tokens=6, temperature=TEMPERATURE, seed=9, step=2
    )
    engine = _engine(factory, fx)
    engine.generate(request)  # sample the old weights once, so that any cache of them exists
    updated, reference = fx.model("updated"), fx.model("reference")
    engine.load_policy_weights(updated.state_dict() if engine.needs_weights else None)
    if engine.needs_weights:
        gen = engine.generate(request)
        mixed, _ = _mixed_logits(fx, updated, reference, gen, step=2)
        _close(
            engine,
            "weight_loading",
            "logp after load_policy_weights",
            gen.logp,
            _scored(mixed, gen, TEMPERATURE),
        )

    # in-process models lent by the backend, changed in place (an optimiser step)
    policy = fx.model("policy")
    lent = factory(_context(fx, SharedModels(policy=policy, references=(fx.model("reference"),))))
    lent.load_policy_weights(policy.state_dict() if lent.needs_weights else None)
    lent.generate(request)
    with torch.no_grad():
        for name, tensor in updated.state_dict().items():
            policy.state_dict()[name].copy_(tensor)
    lent.load_policy_weights(policy.state_dict() if lent.needs_weights else None)
    gen = lent.generate(request)
    mixed, _ = _mixed_logits(fx, updated, reference, gen, step=2)
    _close(
        lent, "weight_loading", "logp after an in-place update", gen.logp, _scored(mixed, gen, TEMPERATURE)
    )


#: Every check, in the order :func:`check_rollout_engine` runs them.
ENGINE_CHECKS: tuple[Check, ...] = (
    check_combined_distribution,
    check_forced_prefixes,
    check_logp_matches_scoring,
    check_seeded,
    check_weight_loading,
)


def check_rollout_engine(factory: Factory, *, checks: Sequence[Check] = ENGINE_CHECKS) -> None:
    """Run every check on engines built by ``factory``; raises ``AssertionError`` naming the check that failed."""
    for check in checks:
        check(factory)


def parametrize_with_checks(
    factories: Mapping[str, Factory] | Iterable[Factory], checks: Sequence[Check] = ENGINE_CHECKS
) -> Any:
    """A ``pytest.mark.parametrize("factory, check", ...)`` decorator: one test per (engine, check)."""
    return _suite.parametrize_with_checks("factory", factories, checks)
