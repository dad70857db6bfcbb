"""Single-process unit tests of the megatron backend's pure parts (no torchrun, no process groups)."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmix_core.config import build
from lmix_core.errors import BackendError, ConfigError
from lmix_core.types import MicroBatch, TokenBatch
from lmix_megatron import batching
from lmix_megatron.backend import MegatronBackend
from lmix_megatron.checkpoint import _with_bucket_padding
from lmix_megatron.compat import _cpu_device, _TorchOnCPU
from lmix_megatron.convert import _group_qkv, _ungroup_qkv
from lmix_megatron.model import Arch
from lmix_megatron.vocab_parallel import is_vocab_local

pytestmark = pytest.mark.megatron


@st.composite
def padded_rows(draw: Any) -> TokenBatch:
    """Rows with left or right padding (one contiguous block of real tokens each) and a random loss mask."""
    n = draw(st.integers(1, 4))
    s = draw(st.integers(1, 9))
    ids = torch.tensor(draw(st.lists(st.integers(1, 50), min_size=n * s, max_size=n * s))).view(n, s)
    am = torch.zeros(n, s, dtype=torch.long)
    for i in range(n):
        length = draw(st.integers(0, s))
        start = draw(st.sampled_from([0, s - length]))  # right or left padding
        am[i, start : start + length] = 1
    lm = torch.tensor(draw(st.lists(st.booleans(), min_size=n * s, max_size=n * s))).view(n, s) & am.bool()
    return TokenBatch(input_ids=ids * am, attention_mask=am, loss_mask=lm)


@given(padded_rows(), st.sampled_from([1, 2, 4]))
def test_pack_left_aligns_and_indexes_predecessors(tokens: TokenBatch, multiple: int) -> None:
    """Packed rows hold each row's real tokens from column 0; every scored token's hidden index points at its
    predecessor's aligned column; exactly the loss-mask tokens with a real predecessor are scored."""
    pk = batching.pack(tokens, multiple=multiple)
    n, s = tokens.input_ids.shape
    assert pk.seq_len % multiple == 0
    am = tokens.attention_mask.bool()
    expected = 0
    for i in range(n):
        real = tokens.input_ids[i][am[i]]
        assert torch.equal(pk.input_ids[i, : real.numel()], real)
        first = int(am[i].float().argmax()) if am[i].any() else 0
        for c in range(s):
            if tokens.loss_mask[i, c] and am[i, c] and c > first:
                expected += 1
    assert pk.target.numel() == expected
    aligned_pos = pk.h_index // n  # [T]
    rows = pk.h_index % n  # [T]
    assert torch.equal(rows, pk.rows)
    assert torch.equal(pk.input_ids[rows, aligned_pos + 1], pk.target)  # the predecessor predicts the target
    assert torch.equal(tokens.input_ids[pk.rows, pk.cols], pk.target)


@given(padded_rows())
def test_unpack_scatters_to_the_original_layout(tokens: TokenBatch) -> None:
    """unpack puts value j at (rows[j], cols[j]) and zeros elsewhere."""
    pk = batching.pack(tokens)
    values = torch.arange(1, pk.target.numel() + 1, dtype=torch.float32)  # [T]
    out = batching.unpack(values, pk)  # [N, S]
    assert out.shape == tokens.input_ids.shape
    assert torch.equal(out[pk.rows, pk.cols], values)
    assert float(out.sum()) == pytest.approx(float(values.sum()))


def test_pack_refuses_holes_in_the_attention_mask() -> None:
    """A row whose real tokens are not contiguous cannot be left-aligned: BackendError."""
    ids = torch.ones(1, 4, dtype=torch.long)
    am = torch.tensor([[1, 0, 1, 1]])
    with pytest.raises(BackendError, match="contiguous"):
        batching.pack(TokenBatch(input_ids=ids, attention_mask=am, loss_mask=am.bool()))


def test_split_rows_keeps_per_row_tensors_aligned() -> None:
    """Splitting 5 rows by 2 gives pieces of 2, 2, 1 rows whose tensors are the matching row slices."""
    ids = torch.arange(15).view(5, 3)
    tokens = TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(5, 3).bool())
    w = torch.arange(15.0).view(5, 3)
    parts = batching.split_rows(MicroBatch(tokens=tokens, role="rl", tensors={"token_weights": w}), 2)
    assert [p.tokens.num_rows for p in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([p.tensors["token_weights"] for p in parts]), w)
    assert torch.equal(torch.cat([p.tokens.input_ids for p in parts]), ids)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.booleans())
def test_qkv_grouping_round_trips(groups: int, per_group: int, head_dim: int, bias: bool) -> None:
    """HF q, k, v → megatron's per-KV-group [q_g; k_g; v_g] → back is the identity; group g holds q heads
    g·(nq/ng) … and KV head g."""
    h = 3
    arch = Arch(
        model_type="qwen2", num_layers=1, hidden_size=h, ffn_hidden_size=4, num_heads=groups * per_group,
        num_kv_heads=groups, head_dim=head_dim, vocab_size=8, qkv_bias=True, qk_norm=False, tied=False,
        rope_theta=1e4, norm_eps=1e-6, max_positions=16,
    )  # fmt: skip
    tail = () if bias else (h,)
    q = torch.randn(groups * per_group * head_dim, *tail)
    k = torch.randn(groups * head_dim, *tail)
    v = torch.randn(groups * head_dim, *tail)
    fused = _group_qkv(q, k, v, arch)
    rows = (per_group + 2) * head_dim
    assert torch.equal(fused[:rows][: per_group * head_dim], q[: per_group * head_dim])
    assert torch.equal(fused[:rows][per_group * head_dim : (per_group + 1) * head_dim], k[:head_dim])
    q2, k2, v2 = _ungroup_qkv(fused, arch)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_vocab_locality_probe() -> None:
    """Linear mixes are vocab-local; a mix with a full-vocabulary normalisation is not."""
    from lmix_core.registries import combiners

    la = combiners.get("logit_average")
    average = la(build(la.Config, {"alpha": 0.3}))
    assert is_vocab_local(lambda z, r: average.mix_logits(z, r), 1)
    assert is_vocab_local(lambda z, r: z, 0)
    assert not is_vocab_local(lambda z, r: torch.log_softmax(z, -1) + r[0], 1)


def _hf_config(**kw: Any) -> Any:
    import transformers

    base = dict(vocab_size=262, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)  # fmt: skip
    return transformers.Qwen2Config(**{**base, **kw})


def test_arch_reads_qwen2_and_pads_the_vocabulary() -> None:
    """A Qwen2 config maps to qkv bias, no qk norm, RoPE θ; the vocabulary 262 pads to 264 at TP 4."""
    arch = Arch.from_hf(_hf_config())
    assert arch.qkv_bias and not arch.qk_norm and arch.head_dim == 16
    assert arch.padded_vocab_size(4) == 264
    assert arch.padded_vocab_size(2) == 262


def test_arch_refuses_what_megatron_cannot_express() -> None:
    """Rope scaling, unknown model types and layouts that do not divide the model are BackendErrors."""
    import transformers

    with pytest.raises(BackendError, match="rope"):
        Arch.from_hf(_hf_config(rope_scaling={"rope_type": "linear", "factor": 2.0}))
    with pytest.raises(BackendError, match="supports HF model types"):
        Arch.from_hf(transformers.GPT2Config())
    arch = Arch.from_hf(_hf_config())
    with pytest.raises(BackendError, match="divisible by tp=4"):
        arch.check_parallel(tp=4, pp=1)
    with pytest.raises(BackendError, match="pp=4"):
        arch.check_parallel(tp=1, pp=4)


def test_config_defaults_and_cross_field_checks() -> None:
    """Every field has a default; a decaying schedule needs total_steps; sequence parallelism needs TP."""
    cfg = MegatronBackend.Config()
    assert (cfg.tp, cfg.pp, cfg.dtype, cfg.lr_schedule) == (1, 1, "float32", "constant")
    with pytest.raises(ConfigError, match="total_steps"):
        build(MegatronBackend.Config, {"lr_schedule": "cosine", "warmup_steps": 2, "total_steps": 2})
    with pytest.raises(ConfigError, match="tp"):
        build(MegatronBackend.Config, {"sequence_parallel": True})
    with pytest.raises(ConfigError, match="betas"):
        build(MegatronBackend.Config, {"betas": [0.9, 1.5]})


def test_compat_maps_cuda_devices_to_cpu() -> None:
    """The proxy's tensor factories and ``cuda.current_device`` answer CPU; other attributes are torch's."""
    proxy = _TorchOnCPU()
    assert proxy.zeros(2, device="cuda").device.type == "cpu"
    assert proxy.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"
    assert proxy.cuda.current_device() == "cpu"
    assert proxy.float32 is torch.float32
    assert _cpu_device("cpu") == "cpu"


def test_bucket_padding_is_reinserted() -> None:
    """Buckets [0, 128) and [128, 256) holding 100 and 50 real elements: the unpadded concatenation
    (150 values) is laid out at offsets 0 and 128 of a 256-long tensor, zeros in between (bug 4's fix)."""
    buckets = [types.SimpleNamespace(numel_unpadded=100), types.SimpleNamespace(numel_unpadded=50)]
    buffer = types.SimpleNamespace(buckets=buckets, bucket_indices=[(0, 128), (128, 256)], numel=256)
    opt = types.SimpleNamespace(buffers=[buffer])
    values = torch.arange(1.0, 151.0)  # [150]
    state = {"buckets_coalesced": True, 0: {torch.float32: {"param": values.clone(), "numel_unpadded": 150}}}
    out = _with_bucket_padding(opt, state)[0][torch.float32]["param"]
    assert out.shape == (256,)
    assert torch.equal(out[:100], values[:100])
    assert torch.equal(out[128:178], values[100:])
    assert float(out[100:128].abs().sum()) == 0.0 and float(out[178:].abs().sum()) == 0.0


@given(padded_rows())
def test_gather_rows_matches_the_flat_index(tokens: TokenBatch) -> None:
    """Scored hidden states assembled from per-row caches equal those picked from the [L·b] layout."""
    pk = batching.pack(tokens)
    n, length = pk.num_rows, pk.seq_len
    h = torch.randn(length, n, 3)  # [s, b, h]
    per_row = [h[: int(m), i] for i, m in enumerate(pk.lengths.tolist())]
    assert torch.equal(batching.gather_rows(per_row, pk), h.reshape(-1, 3)[pk.h_index])


def test_row_keys_depend_only_on_real_tokens() -> None:
    """The same tokens give the same key under left or right padding; other tokens another key."""
    ids = torch.tensor([[0, 5, 6, 7], [5, 6, 7, 0], [5, 6, 8, 0]])
    am = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]])
    keys = batching.pack(TokenBatch(input_ids=ids, attention_mask=am, loss_mask=am.bool())).row_keys()
    assert keys[0] == keys[1] != keys[2]
