"""Tiny tokenizer and models for tests: re-exports of :mod:`lmix_core.synthetic.tokenizer` and
:mod:`lmix_core.synthetic.model`, so backend and plugin tests share one definition with the demo.

Example::

    from lmix_core.testing.tiny import build_tokenizer, build_tiny_model, save_tiny_model_dir

    tok = build_tokenizer()
    model = build_tiny_model(tok, arch="llama", seed=1)
    path = save_tiny_model_dir(tmp_path / "tiny", arch="qwen2")  # AutoModelForCausalLM.from_pretrained(path)
"""

from lmix_core.synthetic.model import Arch, build_tiny_model, save_tiny_model_dir
from lmix_core.synthetic.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

__all__ = [
    "Arch",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "build_tokenizer",
    "save_tiny_model_dir",
]
