"""Model loading checks: unsupported heads and attention layouts fail loudly."""

from __future__ import annotations

import pytest
import torch
from hf_helpers import load_plain

from lmix_core.errors import BackendError
from lmix_hf.loading import check_supported, eos_token_ids, model_dir


def test_plain_head_is_supported(model_dirs):
    """The tiny Qwen2, Llama, Qwen3 and tied models pass the checks."""
    for name in ("policy", "llama", "qwen3", "tied"):
        check_supported(load_plain(model_dirs[name]))


def test_head_bias_is_refused(model_dirs):
    """An LM head with a bias would be scored wrongly by the fused path, so it is refused."""
    model = load_plain(model_dirs["policy"])
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with pytest.raises(BackendError, match="bias"):
        check_supported(model)


@pytest.mark.parametrize(("name", "value"), [("final_logit_softcapping", 30.0), ("logit_scale", 0.5)])
def test_logit_transforms_are_refused(model_dirs, name, value):
    """Soft-capping or scaling of the logits after the head is refused."""
    model = load_plain(model_dirs["policy"])
    setattr(model.config, name, value)
    with pytest.raises(BackendError, match=name):
        check_supported(model)


def test_sliding_window_layers_are_refused(model_dirs):
    """Sliding-window attention layers are refused (the masks are full causal)."""
    model = load_plain(model_dirs["policy"])
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    with pytest.raises(BackendError, match="sliding"):
        check_supported(model)


def test_model_dir_needs_config_json(tmp_path):
    """A directory without config.json is not a model directory."""
    with pytest.raises(BackendError, match="no config.json"):
        model_dir(tmp_path, field="backend.model")


def test_eos_ids_merge_generation_config_and_tokenizer(model_dirs, tokenizer):
    """EOS ids come from the generation config (a list here: <|im_end|> and <|eos|>) and the tokenizer, once each."""
    ids = eos_token_ids(load_plain(model_dirs["policy"]), tokenizer)
    assert ids == (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eos|>"))
