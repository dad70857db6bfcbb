"""torchrun worker: HF → megatron → HF round trips for Llama, Qwen2 and Qwen3 (tied and untied) across layouts.

For each model: ``convert(hf2mcore)`` at layout A; a backend built at layout B from the megatron directory scores
the policy's log-probs (compared with HF); ``convert(mcore2hf)`` at layout B writes an HF directory that must equal
the original bit for bit. Rank 0 writes ``result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: model name -> (layout A (tp, pp) for hf2mcore, layout B for loading and mcore2hf)
LAYOUTS = {
    "qwen2": ((2, 2), (1, 1)),
    "qwen2_tied": ((1, 2), (2, 2)),
    "llama": ((2, 1), (1, 2)),
    "llama_tied": ((2, 2), (2, 1)),
    "qwen3": ((1, 1), (2, 2)),
    "qwen3_tied": ((2, 2), (1, 2)),
}


def hf_logp(model_dir: str, tokens: Any) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=tokens.input_ids).logits  # [N, S, V]
    lq = torch.log_softmax(logits, -1)
    out = torch.zeros(tokens.input_ids.shape)
    out[:, 1:] = lq[:, :-1].gather(-1, tokens.input_ids[:, 1:, None]).squeeze(-1)
    return out * tokens.loss_mask


def main(args_path: str) -> None:
    args = json.loads(Path(args_path).read_text())
    dist.init_process_group("gloo")
    from lmix_core.config import build
    from lmix_core.interfaces.backend import BackendContext
    from lmix_core.registries import combiners
    from lmix_core.types import TokenBatch
    from lmix_megatron.backend import MegatronBackend
    from lmix_megatron.convert import HFWeights, convert

    out = Path(args["out"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 250, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[:, 0] = False
    tokens = TokenBatch(
        input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask, distribution="policy"
    )
    policy = combiners.get("policy")
    result: dict[str, Any] = {}
    for name, (a, b) in LAYOUTS.items():
        src = Path(args["models"][name])
        mcore, back = out / f"{name}_mcore", out / f"{name}_hf"
        convert(src, mcore, direction="hf2mcore", tp=a[0], pp=a[1], timeout_s=300)
        cfg = build(MegatronBackend.Config, {"model": str(mcore), "tp": b[0], "pp": b[1]})
        be = MegatronBackend(cfg, BackendContext(combiner=policy(policy.Config())))
        logp = be.score(tokens).logp
        be.close()
        convert(mcore, back, direction="mcore2hf", tp=b[0], pp=b[1], timeout_s=300)
        if dist.get_rank() == 0:
            original, written = HFWeights(src), HFWeights(back)
            same_names = original.names() == written.names()
            exact = same_names and all(torch.equal(original.get(k), written.get(k)) for k in original.names())
            config_same = json.loads((src / "config.json").read_text()) == json.loads(
                (back / "config.json").read_text()
            )
            result[name] = {
                "layouts": [list(a), list(b)],
                "exact": exact,
                "same_names": same_names,
                "config_same": config_same,
                "tokenizer": (back / "tokenizer_config.json").exists(),
                "logp": float((logp - hf_logp(str(src), tokens)).abs().max()),
            }
        dist.barrier()
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
