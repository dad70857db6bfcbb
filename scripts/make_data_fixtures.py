"""Write the binary and generated data fixtures under lmix_core/data/fixtures (run once; outputs are committed).

.venv/bin/python scripts/make_data_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import datasets

from lmix_core.demo.task import generate, write_jsonl

FIXTURES = Path(__file__).resolve().parents[1] / "lmix_core" / "data" / "fixtures"

NUMINA_ROWS = [
    {
        "source": "cn_k12",
        "problem": "已知 $a=2$, $b=3$, 求 $a^2+b^2$ 的值。",
        "solution": "$a^2+b^2=4+9=13$, 所以答案是 $\\boxed{13}$。",
        "messages": [{"role": "user", "content": "已知 $a=2$, $b=3$, 求 $a^2+b^2$ 的值。"}],
    },
    {
        "source": "olympiads",
        "problem": "Find the smallest prime greater than 20.",
        "solution": "21 and 22 are composite, 23 is prime: $\\boxed{23}$.",
        "messages": [{"role": "user", "content": "Find the smallest prime greater than 20."}],
    },
    {
        "source": "cn_k12",
        "problem": "The function $f(x)=x^2-4x$ has its minimum at $x=$?",
        "solution": "Completing the square, $f(x)=(x-2)^2-4$, so the minimum is at $x=\\boxed{2}$.",
        "messages": [{"role": "user", "content": "The function $f(x)=x^2-4x$ has its minimum at $x=$?"}],
    },
]


def main() -> None:
    datasets.Dataset.from_list(NUMINA_ROWS).to_parquet(FIXTURES / "numina_cn_k12.parquet")
    write_jsonl(FIXTURES / "arithmetic.jsonl", generate(6, levels=(1, 2, 3), seed=0, split="train"))


if __name__ == "__main__":
    main()
