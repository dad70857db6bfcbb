"""Tiny random-init models: architectures, determinism under seed, vocabulary, save/reload as an HF folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from lmix_core.errors import ConfigError
from lmix_core.synthetic.model import build_tiny_model, save_tiny_model_dir
from lmix_core.synthetic.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()


@pytest.mark.parametrize(
    ("arch", "cls"),
    [
        ("qwen2", transformers.Qwen2ForCausalLM),
        ("llama", transformers.LlamaForCausalLM),
        ("qwen3", transformers.Qwen3ForCausalLM),
    ],
)
def test_architectures(arch: str, cls: type) -> None:
    """Each arch builds its transformers class in float32 eval mode, with vocab and ids from the tokenizer."""
    model = build_tiny_model(TOKENIZER, arch=arch)
    assert isinstance(model, cls)
    assert model.dtype == torch.float32 and not model.training
    assert model.config.vocab_size == len(TOKENIZER) == 262
    assert model.config.pad_token_id == 256 and model.config.eos_token_id == 260
    logits = model(torch.tensor([[49, 43, 50]])).logits  # [1, 3, 262]
    assert logits.shape == (1, 3, 262)


def test_deterministic_under_seed_and_global_rng_untouched() -> None:
    """Same seed → identical parameters; another seed differs; the global torch RNG is not advanced."""
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_model(TOKENIZER, seed=5)
    after = torch.rand(1)
    b = build_tiny_model(TOKENIZER, seed=5)
    c = build_tiny_model(TOKENIZER, seed=6)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_vocab_padding_and_sizes() -> None:
    """vocab_size pads the embedding; tying shares storage; a smaller vocab or bad heads are rejected."""
    model = build_tiny_model(TOKENIZER, vocab_size=2048, tie_word_embeddings=True, intermediate_size=96)
    assert model.get_input_embeddings().weight.shape == (2048, 64)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.config.intermediate_size == 96
    with pytest.raises(ConfigError, match="vocab_size"):
        build_tiny_model(TOKENIZER, vocab_size=100)
    with pytest.raises(ConfigError, match="divisible"):
        build_tiny_model(TOKENIZER, hidden_size=64, num_heads=3)


def test_save_dir_reloads_with_auto_classes(tmp_path: Path) -> None:
    """save_tiny_model_dir writes a folder that AutoModelForCausalLM/AutoTokenizer load to the same logits."""
    path = save_tiny_model_dir(tmp_path / "m", arch="llama", seed=3)
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tokenizer("7*8=")["input_ids"]])  # [1, 4]
    expected = build_tiny_model(TOKENIZER, arch="llama", seed=3)(ids).logits  # [1, 4, 262]
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert tokenizer.chat_template == TOKENIZER.chat_template


def test_testing_tiny_reexports_the_demo_builders() -> None:
    """lmix_core.testing.tiny exposes the very same builders the demo uses."""
    from lmix_core.testing import tiny

    assert tiny.build_tokenizer is build_tokenizer
    assert tiny.build_tiny_model is build_tiny_model
    assert tiny.save_tiny_model_dir is save_tiny_model_dir
