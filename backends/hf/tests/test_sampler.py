"""The sampler: KV-cached decoding, padding, sampling options, stop conditions, forced prefixes, mixing."""

from __future__ import annotations

import functools

import attrs
import pytest
import torch
from hf_helpers import load_plain, make_backend, naive_logp, prompts

from lmix_core.combiners.logit_average import LogitAverage
from lmix_core.errors import BackendError
from lmix_core.types import GenerationRequest
from lmix_hf.sampler import Sampler

ATOL = 1e-5


def ascii_only(tokenizer):
    """A mix function that keeps only printable-ASCII byte tokens (and EOS when ``keep_eos``), so greedy text is
    readable and stop strings can be chosen from it."""
    allowed = torch.zeros(tokenizer.pad_token_id + 8, dtype=torch.bool)
    allowed[ord("a") : ord("z") + 1] = True

    def mix(z, z_refs):
        keep = allowed[: z.shape[-1]].to(z.device)
        return z.masked_fill(~keep, float("-inf"))

    return mix


@pytest.mark.parametrize("arch", ["policy", "llama", "qwen3", "tied"])
def test_greedy_matches_transformers_generate(model_dirs, tokenizer, arch):
    """Greedy tokens of a padded batch equal transformers' own greedy generate on each prompt alone."""
    model = load_plain(model_dirs[arch])
    model.generation_config.eos_token_id = None
    ps = prompts(tokenizer, 3)
    sample = Sampler(tokenizer, eos_token_ids=()).sample(
        GenerationRequest(prompt_ids=ps, max_new_tokens=8, temperature=0.0), model
    )
    gen = sample.generation
    for i, p in enumerate(ps):
        expected = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, pad_token_id=0)[0]
        row = gen.tokens.input_ids[i][gen.tokens.attention_mask[i].bool()]
        torch.testing.assert_close(row, expected, rtol=0, atol=0)


def test_layout_is_prompt_response_pad(model_dirs, tokenizer):
    """Rows are ``[prompt][response][pad]``: contiguous attention mask, loss mask exactly on the response."""
    ps = prompts(tokenizer, 4)
    backend = make_backend(model_dirs["policy"])
    gen = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=6, seed=3))
    ids, am, lm = gen.tokens.input_ids, gen.tokens.attention_mask, gen.tokens.loss_mask
    for i, p in enumerate(ps):
        n_real = int(am[i].sum())
        assert am[i, :n_real].all() and not am[i, n_real:].any()
        assert ids[i, : len(p)].tolist() == list(p)
        assert not lm[i, : len(p)].any() and lm[i, len(p) : n_real].all() and not lm[i, n_real:].any()
        assert (ids[i, n_real:] == tokenizer.pad_token_id).all()
    assert gen.prefix_mask.sum() == 0
    assert gen.tokens.distribution == "combined"


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_sampler_logp_matches_score_policy(model_dirs, tokenizer, temperature):
    """Log-probs the sampler records equal ``backend.score`` on the generated rows (policy alone)."""
    backend = make_backend(model_dirs["policy"])
    request = GenerationRequest(
        prompt_ids=prompts(tokenizer, 4),
        max_new_tokens=10,
        temperature=temperature,
        seed=5,
        distribution="policy",
    )
    sample = backend.sample(request)
    stats = backend.score(sample.generation.tokens, temperature=temperature or 1.0)
    torch.testing.assert_close(stats.logp, sample.logp, rtol=0, atol=ATOL)
    assert sample.logp[sample.generation.tokens.loss_mask].lt(0).all()
    assert sample.generation.ref_logp is None  # no reference ran


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampler_logp_matches_score_combined(model_dirs, tokenizer, top_p):
    """Sampling from logit averaging of two models: the sampler's log-probs equal ``score`` under the combined
    distribution, and equal a naive full-logits computation with plain transformers."""
    combiner = LogitAverage(LogitAverage.Config(alpha=0.3))
    backend = make_backend(
        model_dirs["policy"], combiner=combiner, references=(model_dirs["reference"],), num_references=1
    )
    sample = backend.sample(
        GenerationRequest(
            prompt_ids=prompts(tokenizer, 4), max_new_tokens=10, temperature=0.9, top_p=top_p, seed=2
        )
    )
    tokens = sample.generation.tokens
    stats = backend.score(tokens, temperature=0.9, ref_logp=True)
    torch.testing.assert_close(stats.logp, sample.logp, rtol=0, atol=ATOL)
    # the generation carries the same log-probs, and the reference's alone, so the loop needs no scoring pass
    assert sample.generation.logp is sample.logp
    torch.testing.assert_close(stats.ref_logp, sample.generation.ref_logp, rtol=0, atol=ATOL)
    assert (sample.generation.ref_logp - sample.logp).abs().max() > 1e-3
    mix = functools.partial(combiner.mix_logits, step=0)
    with torch.no_grad():
        naive = naive_logp(
            load_plain(model_dirs["policy"]), tokens, 0.9, refs=[load_plain(model_dirs["reference"])], mix=mix
        )
    torch.testing.assert_close(naive, sample.logp, rtol=0, atol=ATOL)


def test_combined_differs_from_policy(model_dirs, tokenizer):
    """The combined distribution's log-probs are not the policy's (the reference really takes part)."""
    combiner = LogitAverage(LogitAverage.Config(alpha=0.5))
    backend = make_backend(
        model_dirs["policy"], combiner=combiner, references=(model_dirs["reference"],), num_references=1
    )
    sample = backend.sample(GenerationRequest(prompt_ids=prompts(tokenizer, 2), max_new_tokens=6, seed=0))
    alone = backend.score(attrs.evolve(sample.generation.tokens, distribution="policy"))
    assert (alone.logp - sample.logp).abs().max() > 1e-2


def test_same_seed_same_tokens_other_seed_other_tokens(model_dirs, tokenizer):
    """A request and seed reproduce their tokens exactly; another seed gives other tokens."""
    backend = make_backend(model_dirs["policy"])
    ps = prompts(tokenizer, 4)
    a = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=12, seed=11))
    b = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=12, seed=11))
    c = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=12, seed=12))
    torch.testing.assert_close(a.tokens.input_ids, b.tokens.input_ids, rtol=0, atol=0)
    assert a.completions == b.completions
    assert a.tokens.input_ids.shape != c.tokens.input_ids.shape or not torch.equal(
        a.tokens.input_ids, c.tokens.input_ids
    )


def test_padding_does_not_change_greedy_rows(model_dirs, tokenizer):
    """A prompt decoded alone and inside a batch of longer prompts (left-padded internally) gives the same tokens."""
    backend = make_backend(model_dirs["policy"])
    ps = prompts(tokenizer, 4)
    short = min(ps, key=len)
    alone = backend.generate(GenerationRequest(prompt_ids=(short,), max_new_tokens=8, temperature=0.0))
    batch = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=8, temperature=0.0))
    i = ps.index(short)
    n = int(alone.tokens.attention_mask[0].sum())
    torch.testing.assert_close(batch.tokens.input_ids[i, :n], alone.tokens.input_ids[0, :n], rtol=0, atol=0)


def test_eos_ends_row(model_dirs, tokenizer):
    """A row ends at its first EOS (kept in the loss mask); it is not truncated; later tokens are padding."""
    model = load_plain(model_dirs["policy"])
    eos = tokenizer.eos_token_id
    sampler = Sampler(tokenizer)

    def eos_at_once(z, z_refs):  # EOS is the argmax everywhere
        return z.index_fill(-1, torch.tensor([eos]), 1e4)

    ps = prompts(tokenizer, 2)
    forced = ((97, 98, eos, 99), ())  # row 0: "ab" then a forced EOS; row 1: EOS sampled first
    sample = sampler.sample(
        GenerationRequest(prompt_ids=ps, forced=forced, max_new_tokens=6, temperature=0.0),
        model,
        mix=eos_at_once,
    )
    gen = sample.generation
    assert gen.tokens.loss_mask.sum(-1).tolist() == [3, 1]
    assert gen.tokens.input_ids[0, len(ps[0]) : len(ps[0]) + 3].tolist() == [97, 98, eos]
    assert gen.tokens.input_ids[1, len(ps[1])].item() == eos
    assert gen.truncated.tolist() == [False, False]
    assert gen.completions == ("ab", "")


def test_max_new_tokens_truncates(model_dirs, tokenizer):
    """Rows that never meet EOS or a stop string stop at max_new_tokens and are marked truncated."""
    model = load_plain(model_dirs["policy"])
    sample = Sampler(tokenizer, eos_token_ids=()).sample(
        GenerationRequest(prompt_ids=prompts(tokenizer, 3), max_new_tokens=5, seed=0), model
    )
    assert sample.generation.tokens.loss_mask.sum(-1).tolist() == [5, 5, 5]
    assert sample.generation.truncated.all()


def test_stop_string_ends_row_and_is_kept(model_dirs, tokenizer):
    """A stop string taken from the greedy text ends the row at the token that completes it, the string kept."""
    model = load_plain(model_dirs["policy"])
    sampler = Sampler(tokenizer, eos_token_ids=())
    mix = ascii_only(tokenizer)
    ps = prompts(tokenizer, 2)
    free = sampler.sample(
        GenerationRequest(prompt_ids=ps, max_new_tokens=12, temperature=0.0), model, mix=mix
    )
    text = free.generation.completions[0]
    stop = text[3:6]  # a 3-letter string first completed at some token t ≤ 6 of row 0
    end = text.index(stop) + len(stop)
    stopped = sampler.sample(
        GenerationRequest(prompt_ids=ps, max_new_tokens=12, temperature=0.0, stop=(stop,)), model, mix=mix
    )
    assert stopped.generation.completions[0] == text[:end]
    assert stopped.generation.completions[0].endswith(stop)
    assert stopped.generation.truncated[0].item() is False
    other = free.generation.completions[1]
    expected_other = other[: other.index(stop) + len(stop)] if stop in other else other
    assert stopped.generation.completions[1] == expected_other


def test_stop_string_inside_a_forced_prefix_does_not_cut_it(model_dirs, tokenizer):
    """Only sampled tokens can stop a row: a forced prefix "abcabc" containing the stop string "bc" is fed whole,
    and the row then stops at the first "bc" of the sampled text (or runs to max_new_tokens). Checked for a stop
    string inside the prefix and for one taken from the sampled continuation, against the unstopped greedy run."""
    model = load_plain(model_dirs["policy"])
    sampler = Sampler(tokenizer, eos_token_ids=())
    mix = ascii_only(tokenizer)
    ps = prompts(tokenizer, 2)
    prefix = "abcabc"
    forced = (tuple(ord(c) for c in prefix), ())
    request = GenerationRequest(prompt_ids=ps, forced=forced, max_new_tokens=12, temperature=0.0)
    free = sampler.sample(request, model, mix=mix).generation.completions[0]
    assert free.startswith(prefix) and len(free) == 12

    def expected(stop: str) -> str:
        i = free[len(prefix) :].find(stop)  # the sampled text only
        return free if i < 0 else free[: len(prefix) + i + len(stop)]

    for stop in ("bc", free[8:10]):
        out = sampler.sample(attrs.evolve(request, stop=(stop,)), model, mix=mix).generation
        assert out.completions[0] == expected(stop), stop
        assert out.prefix_mask[0].sum().item() == len(prefix)
    # the stop string of the sampled continuation does stop the row before max_new_tokens
    assert len(expected(free[8:10])) <= 10


def test_forced_prefix_is_fed_and_marked(model_dirs, tokenizer):
    """Forced tokens are fed as the first response tokens, marked in prefix_mask, and their log-probs under the
    sampling distribution equal ``score``; unforced rows in the same batch sample normally."""
    backend = make_backend(model_dirs["policy"])
    ps = prompts(tokenizer, 3)
    forced = ((104, 105, 106), (), (120,))
    sample = backend.sample(GenerationRequest(prompt_ids=ps, forced=forced, max_new_tokens=7, seed=4))
    gen = sample.generation
    for i, f in enumerate(forced):
        start = len(ps[i])
        assert gen.tokens.input_ids[i, start : start + len(f)].tolist() == list(f)
        assert gen.prefix_mask[i].sum().item() == len(f)
        assert gen.prefix_mask[i, start : start + len(f)].all()
    assert not (gen.prefix_mask & ~gen.tokens.loss_mask).any()
    stats = backend.score(gen.tokens)
    torch.testing.assert_close(stats.logp, sample.logp, rtol=0, atol=ATOL)


def test_tiny_top_p_is_greedy(model_dirs, tokenizer):
    """With top_p → 0 only the most likely token remains, so sampling equals greedy decoding."""
    backend = make_backend(model_dirs["policy"])
    ps = prompts(tokenizer, 3)
    greedy = backend.generate(GenerationRequest(prompt_ids=ps, max_new_tokens=8, temperature=0.0))
    nucleus = backend.generate(
        GenerationRequest(prompt_ids=ps, max_new_tokens=8, temperature=1.0, top_p=1e-6)
    )
    torch.testing.assert_close(nucleus.tokens.input_ids, greedy.tokens.input_ids, rtol=0, atol=0)


def test_eager_attention_matches_sdpa(model_dirs, tokenizer):
    """Eager attention (additive masks) samples the same greedy tokens with the same log-probs as SDPA."""
    ps = prompts(tokenizer, 3)
    request = GenerationRequest(prompt_ids=ps, max_new_tokens=8, temperature=0.0)
    sdpa = make_backend(model_dirs["policy"]).sample(request)
    eager = make_backend(model_dirs["policy"], attn_implementation="eager").sample(request)
    torch.testing.assert_close(
        eager.generation.tokens.input_ids, sdpa.generation.tokens.input_ids, rtol=0, atol=0
    )
    torch.testing.assert_close(eager.logp, sdpa.logp, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt_ids": ()},
        {"prompt_ids": ((1, 2), ())},
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"forced": ((1,),)},
        {"forced": ((1, 2, 3), ()), "max_new_tokens": 2},
    ],
)
def test_invalid_requests_fail_loudly(model_dirs, tokenizer, change):
    """Malformed requests raise BackendError before any decoding."""
    model = load_plain(model_dirs["policy"])
    fields = {"prompt_ids": ((1, 2), (3,)), "max_new_tokens": 4, **change}
    with pytest.raises(BackendError, match="invalid generation request"):
        Sampler(tokenizer).sample(GenerationRequest(**fields), model)


def test_references_without_mix_are_refused(model_dirs, tokenizer):
    """Passing reference models without a mix function is an error, not a silent policy-only sample."""
    model = load_plain(model_dirs["policy"])
    with pytest.raises(BackendError, match="no mix function"):
        Sampler(tokenizer).sample(GenerationRequest(prompt_ids=((1, 2),)), model, references=[model])


@pytest.mark.parametrize("arch", ["policy", "llama", "qwen3", "tied"])
def test_fused_decoder_matches_transformers_forward(model_dirs, tokenizer, arch):
    """The fused decoding step gives the tokens and log-probs of transformers' own forward (sampling, mixed with
    a second model, forced prefix in one row)."""
    policy = load_plain(model_dirs[arch])
    ref = load_plain(model_dirs["reference"] if arch == "policy" else model_dirs[arch])
    if arch != "policy":
        torch.nn.init.normal_(ref.get_output_embeddings().weight, std=0.05)  # a reference that differs
    mix = functools.partial(LogitAverage(LogitAverage.Config(alpha=0.4)).mix_logits, step=0)
    request = GenerationRequest(
        prompt_ids=prompts(tokenizer, 3),
        forced=((), (100, 101), ()),
        max_new_tokens=9,
        temperature=0.8,
        seed=7,
    )
    out = {
        decoder: Sampler(tokenizer, eos_token_ids=(), decoder=decoder).sample(request, policy, [ref], mix)
        for decoder in ("fused", "transformers")
    }
    torch.testing.assert_close(
        out["fused"].generation.tokens.input_ids,
        out["transformers"].generation.tokens.input_ids,
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(out["fused"].logp, out["transformers"].logp, rtol=0, atol=ATOL)
