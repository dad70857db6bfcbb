"""How a demo run's models answer held-out problems: bare ``\\boxed{N}`` or worked, and how accurate each kind is.

    python scripts/demo_answer_styles.py runs/demo

Greedy decoding of ``RUN/data/eval.jsonl`` with plain transformers, for the SFT model (``RUN/sft/model``) and the
RL-trained policy alone (``RUN/rl/model``). See docs/demo.md.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

BOXED = re.compile(r"\\boxed\{(-?[0-9]+)\}")


def answer_styles(model_dir: Path, rows: list[dict], batch: int = 100) -> dict[str, tuple[int, int]]:
    """``{"bare" | "worked": (count, correct)}`` over ``rows`` under greedy decoding."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    stats = {"bare": [0, 0], "worked": [0, 0]}
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
            )
            for r in chunk
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=64, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for row, text in zip(chunk, texts):
            kind = "bare" if text.lstrip().startswith("\\boxed") else "worked"
            found = BOXED.findall(text)
            stats[kind][0] += 1
            stats[kind][1] += bool(found and found[-1] == row["answer"])
    return {k: (v[0], v[1]) for k, v in stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="an `lmix demo --out` folder")
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.run / "data" / "eval.jsonl").open()]
    for name in ("sft", "rl"):
        stats = answer_styles(args.run / name / "model", rows)
        parts = [f"{k} {n / len(rows):.1%} (accuracy {c / max(n, 1):.1%})" for k, (n, c) in stats.items()]
        print(f"{name}/model: " + ", ".join(parts))


if __name__ == "__main__":
    main()
