"""A local byte-level tokenizer for tiny models, built without the hub.

The vocabulary is fixed by construction, so the tokenizer is identical on every machine:

* ids ``0..255``: one token per byte (GPT-2's printable byte-to-unicode map), so every ASCII character is one
  token and any other text round-trips exactly through its UTF-8 bytes;
* then the special tokens :data:`SPECIAL_TOKENS` (``<|pad|>``, ``<|bos|>``, ``<|eos|>``, ``<|im_start|>``,
  ``<|im_end|>``);
* then a few multi-character tokens :data:`MULTI_CHAR_TOKENS` that the demo's solutions use often
  (``\\boxed{``), matched before the byte split, so they are always one token.

There are no BPE merges: digits stay one token each, which keeps multi-digit arithmetic learnable by a tiny
model.

The chat template is Qwen-like, without a default system message::

    <|im_start|>system\\n{system}<|im_end|>\\n      (only when a system message is given)
    <|im_start|>user\\n{prompt}<|im_end|>\\n
    <|im_start|>assistant\\n                       (the generation prompt)

``eos_token`` is ``<|im_end|>`` (as in Qwen2-Instruct), so generation stops at the end of the assistant turn;
``<|eos|>`` separates documents in plain-text pretraining corpora; ``pad_token`` is ``<|pad|>``.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers

PAD, BOS, EOS, IM_START, IM_END = "<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, IM_START, IM_END)
MULTI_CHAR_TOKENS: tuple[str, ...] = ("\\boxed{",)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) map to ``chr(256 + k)`` in
    byte order, so that no byte becomes whitespace or a control character inside the vocabulary.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer(directory: Path | None = None) -> transformers.PreTrainedTokenizerFast:
    """Build the deterministic byte-level demo tokenizer (vocabulary 256 bytes + 5 special + 1 multi-char).

    Args:
        directory: where to save it with ``save_pretrained`` (created if missing); ``None``: memory only.
            The saved folder reloads with ``transformers.AutoTokenizer.from_pretrained(directory)``.

    Returns:
        A fast tokenizer with ``pad_token='<|pad|>'``, ``eos_token='<|im_end|>'``, ``bos_token='<|bos|>'``
        (not added automatically) and a Qwen-like chat template.
    """
    byte_map = _byte_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    model = models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False)
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    backend.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in MULTI_CHAR_TOKENS])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=IM_END,
        additional_special_tokens=[EOS, IM_START],
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if directory is not None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(directory)
    return tokenizer
