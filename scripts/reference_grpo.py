"""A reference GRPO written with transformers' ``generate`` and plain torch only, to cross-check lmix's loop.

    python scripts/reference_grpo.py runs/demo --steps 40 --lr 1e-4 [--optimizer sgd] [--freeze embed_tokens]

It trains ``RUN/sft/model`` on ``RUN/data/train.jsonl`` (16 prompts x 8 rollouts per step, temperature 1, reward 1
when the last ``\\boxed{N}`` equals the answer, group-normalised advantages, token-mean ``-A log p``, gradient
clipping at 1, one optimiser step per batch) and prints greedy and sampled held-out accuracy before and after.
Nothing is saved. docs/demo.md reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

BOXED = re.compile(r"\\boxed\{(-?[0-9]+)\}")


def reward(text: str, answer: str) -> float:
    found = BOXED.findall(text)
    return float(bool(found) and found[-1] == answer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="an `lmix demo --out` folder")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    ap.add_argument("--freeze", default="", help="regex of parameter names to keep frozen")
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    tok = AutoTokenizer.from_pretrained(a.run / "sft" / "model")
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.run / "sft" / "model")
    train = [json.loads(line) for line in (a.run / "data" / "train.jsonl").open()]
    held_out = [json.loads(line) for line in (a.run / "data" / "eval.jsonl").open()][: a.eval_size]

    def encode(prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    @torch.no_grad()
    def generate(enc: dict[str, torch.Tensor], sample: bool, n: int = 1) -> torch.Tensor:
        model.eval()
        kw = (
            {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
            if sample
            else {"do_sample": False}
        )
        return model.generate(
            **enc, max_new_tokens=64, num_return_sequences=n, pad_token_id=tok.pad_token_id, **kw
        )  # [n*B, P+T]

    def accuracy(sample: bool) -> float:
        hits = 0.0
        for i in range(0, len(held_out), 100):
            rows = held_out[i : i + 100]
            enc = encode([r["prompt"] for r in rows])
            out = generate(enc, sample)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            hits += sum(reward(t, r["answer"]) for t, r in zip(texts, rows))
        return hits / len(held_out)

    print(f"before: greedy {accuracy(False):.3f}, sampled {accuracy(True):.3f}", flush=True)
    params = [p for n, p in model.named_parameters() if not (a.freeze and re.search(a.freeze, n))]
    opt = (
        torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        if a.optimizer == "adamw"
        else torch.optim.SGD(params, lr=a.lr)
    )
    order = list(range(len(train)))
    rng.shuffle(order)
    Q, G = a.prompts, a.group
    for step in range(a.steps):
        rows = [train[order[(step * Q + i) % len(train)]] for i in range(Q)]
        enc = encode([r["prompt"] for r in rows])
        out = generate(enc, True, G)  # [Q*G, P+T]
        P = enc["input_ids"].shape[1]
        completion = out[:, P:]  # [Q*G, T]
        texts = tok.batch_decode(completion, skip_special_tokens=True)
        r = torch.tensor([reward(t, rows[i // G]["answer"]) for i, t in enumerate(texts)]).view(
            Q, G
        )  # [Q, G]
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)  # [Q*G]
        is_eos = completion == tok.eos_token_id  # [Q*G, T]
        seen = is_eos.int().cumsum(1)  # [Q*G, T]
        mask = ((seen == 0) | ((seen == 1) & is_eos)).float()  # [Q*G, T]: up to and including the first EOS
        attn = torch.cat([enc["attention_mask"].repeat_interleave(G, 0), mask.long()], 1)  # [Q*G, P+T]
        model.train()
        logits = model(
            input_ids=out, attention_mask=attn, position_ids=(attn.cumsum(1) - 1).clamp_min(0)
        ).logits
        logp = torch.log_softmax(logits[:, P - 1 : -1].float(), -1).gather(-1, completion[..., None])[..., 0]
        loss = -(adv[:, None] * logp * mask).sum() / mask.sum()  # token mean of -A log p
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        print(f"step {step}: reward {r.mean():.3f}, grad norm {grad_norm:.3f}", flush=True)
    print(f"after: greedy {accuracy(False):.3f}, sampled {accuracy(True):.3f}", flush=True)


if __name__ == "__main__":
    main()
