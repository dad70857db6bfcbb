"""Cost of the reference model under logit averaging on the megatron backend (option 2b with the rollout cache).

Run (CPU, 4 gloo processes, TP2×PP2)::

    torchrun --nproc_per_node 4 backends/megatron/benchmarks/bench_reference.py [--hidden 128 --layers 4]

A tiny Qwen2 (demo size by default) scores a rollout-sized batch and trains on it for ``k`` PPO passes
(``ppo_epochs × minibatches``), three ways:

* ``policy``: no reference at all (the lower bound);
* ``2b+cache``: ``score`` runs the reference once and keeps its final hidden states; the ``k`` steps reuse them;
* ``2b, no cache`` (``reference_cache = "none"``): the reference runs again in every step, which is the reference
  compute of option 1 (a dual-stage model recomputes the reference forward on every pass).

It prints median wall times and the bytes the last stage stores for the reference (hidden states) next to what
storing its logits would take (option 2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


class Objective:
    needs_entropy = True
    needs_ref_logp = False
    temperature = 1.0

    def __call__(self, stats: Any, batch: Any) -> Any:
        from lmix_core.types import LossOutput

        return LossOutput(loss=-(batch.tensors["token_weights"] * stats.logp).sum())


def backend(model: Path, combiner: Any, cache: str) -> Any:
    from lmix_core.config import build
    from lmix_core.interfaces.backend import BackendContext
    from lmix_megatron.backend import MegatronBackend

    cfg = build(
        MegatronBackend.Config,
        {"model": str(model), "tp": 2, "pp": 2, "micro_batch_size": 16, "lr": 1e-4, "reference_cache": cache},
    )
    return MegatronBackend(cfg, BackendContext(combiner=combiner, num_references=combiner.num_references))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--length", type=int, default=96)
    p.add_argument(
        "--passes", type=int, default=4, help="train_step calls per scored batch (ppo_epochs × minibatches)"
    )
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    dist.init_process_group("gloo")
    from lmix_core.config import build
    from lmix_core.registries import combiners
    from lmix_core.testing.tiny import save_tiny_model_dir
    from lmix_core.types import MicroBatch, TokenBatch

    tmp = Path(tempfile.gettempdir()) / "lmix_bench_reference"
    if dist.get_rank() == 0:
        save_tiny_model_dir(
            tmp, arch="qwen2", hidden_size=a.hidden, num_layers=a.layers, num_heads=4, num_kv_heads=2
        )
    dist.barrier()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 250, (a.rows, a.length), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, : a.length // 3] = False  # a prompt third, a response two thirds
    tokens = TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask)
    mb = MicroBatch(tokens=tokens, role="rl", tensors={"token_weights": mask.float() / mask.sum()})
    la = combiners.get("logit_average")
    average = la(build(la.Config, {"alpha": 0.5}))
    policy = combiners.get("policy")
    cases = {
        "policy": (policy(policy.Config()), "rollouts"),
        "2b+cache": (average, "rollouts"),
        "2b, no cache": (average, "none"),
    }
    rows = []
    for name, (combiner, cache) in cases.items():
        be = backend(tmp, combiner, cache)
        times = []
        for rep in range(a.repeats + 1):
            dist.barrier()
            t0 = time.perf_counter()
            be.score(tokens, entropy=True)
            for k in range(a.passes):
                be.train_step([[mb]], Objective(), step=rep * a.passes + k)
            dist.barrier()
            if rep:  # the first repetition warms up
                times.append(time.perf_counter() - t0)
        rows.append((name, statistics.median(times), be.reference_passes))
        hidden = be.arch.hidden_size
        vocab_shard = be.arch.padded_vocab_size(be.config.tp) // be.config.tp
        be.close()
    if dist.get_rank() == 0:
        t_tokens = int(mask[:, 1:].sum())
        print(
            f"model: qwen2 h={a.hidden} L={a.layers}; batch {a.rows}×{a.length}, {a.passes} train passes per score"
        )
        for name, seconds, passes in rows:
            print(
                f"  {name:<14} {seconds:7.2f} s per scored batch + {a.passes} steps  (reference passes: {passes})"
            )
        print(
            f"  stored on the last stage per reference: hidden {t_tokens * hidden * 4 / 2**20:.2f} MiB "
            f"(cache keeps every position: {a.rows * a.length * hidden * 4 / 2**20:.2f} MiB) vs logits "
            f"{t_tokens * vocab_shard * 4 / 2**20:.2f} MiB (V/TP = {vocab_shard})"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
