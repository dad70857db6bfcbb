"""The demo tokenizer: deterministic byte-level vocabulary, special tokens, chat template, save/reload."""

from __future__ import annotations

from pathlib import Path

import transformers
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.synthetic.tokenizer import MULTI_CHAR_TOKENS, SPECIAL_TOKENS, build_tokenizer

TOKENIZER = build_tokenizer()


def test_vocabulary_layout() -> None:
    """256 byte tokens, then the 5 special tokens, then the multi-char tokens; pad/eos/bos point at them."""
    assert len(TOKENIZER) == 256 + len(SPECIAL_TOKENS) + len(MULTI_CHAR_TOKENS) == 262
    assert TOKENIZER.pad_token == "<|pad|>" and TOKENIZER.pad_token_id == 256
    assert TOKENIZER.bos_token_id == 257
    assert TOKENIZER.eos_token == "<|im_end|>" and TOKENIZER.eos_token_id == 260
    assert TOKENIZER.convert_tokens_to_ids("<|im_start|>") == 259


def test_ascii_is_one_token_per_character() -> None:
    """'12+34' is five tokens whose ids are the ASCII codes; '\\boxed{' is a single token (id 261)."""
    assert TOKENIZER("12+34")["input_ids"] == [49, 50, 43, 51, 52]
    assert TOKENIZER("\\boxed{7}")["input_ids"] == [261, 55, 125]


@given(st.text(max_size=40))
def test_roundtrip_any_text(text: str) -> None:
    """Any unicode text decodes back to itself (byte-level: nothing is unknown)."""
    assert TOKENIZER.decode(TOKENIZER(text)["input_ids"]) == text


def test_chat_template_with_generation_prompt() -> None:
    """The Qwen-like template renders system and user turns and ends with the assistant header."""
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "1+1"}]
    rendered = TOKENIZER.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        rendered
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n"
    )


def test_save_and_reload(tmp_path: Path) -> None:
    """A saved tokenizer reloads through AutoTokenizer with the same ids, specials and chat template."""
    build_tokenizer(tmp_path / "tok")
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = "<|im_start|>user\nWhat is 12*3?<|im_end|>\n\\boxed{36}"
    assert reloaded(text)["input_ids"] == TOKENIZER(text)["input_ids"]
    assert reloaded.chat_template == TOKENIZER.chat_template
    assert (reloaded.pad_token_id, reloaded.eos_token_id) == (256, 260)
