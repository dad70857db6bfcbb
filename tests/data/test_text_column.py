"""``[data] text_column``: plain-text documents as SFT demonstrations with a BOS prompt (pretraining)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmix_core.data.config import DataConfig
from lmix_core.data.errors import DataError
from lmix_core.data.example import Example
from lmix_core.data.loading import load_examples, render_prompt
from lmix_core.demo.task import generate_corpus, write_jsonl
from lmix_core.errors import RecipeError
from lmix_core.recipe import load_recipe
from lmix_core.synthetic.tokenizer import build_tokenizer
from lmix_core.train.batching import demonstration_batch

TOKENIZER = build_tokenizer()


def test_rows_become_documents_and_empty_texts_are_skipped(tmp_path: Path) -> None:
    """Each non-empty text is one Example (empty prompt and answer, the text as demonstration), file order kept."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "other": 1}) + "\n" for t in ["a b", "", "7*8=56"]))
    config = DataConfig(train=str(path), text_column="text")
    examples = sorted(load_examples(config, "train"), key=lambda e: e.index)
    assert examples == [
        Example(index=0, prompt="", answer="", demonstration="a b"),
        Example(index=2, prompt="", answer="", demonstration="7*8=56"),
    ]


def test_the_prompt_is_empty_whatever_the_templates() -> None:
    """The rendered prompt is empty: no prompt template, system prompt, chat turn or BOS token."""
    example = Example(index=0, prompt="", answer="", demonstration="Compute 1+2.\n1+2=3")
    config = DataConfig(train="x", text_column="text", system_prompt="S", prompt_template="Q: {prompt}")
    assert render_prompt(TOKENIZER, example, config) == ""
    assert (
        render_prompt(TOKENIZER, example, DataConfig(train="x", text_column="text", chat_template="none"))
        == ""
    )


def test_every_document_token_after_the_first_is_trained() -> None:
    """The row is the document then EOS; the loop's loss mask covers it, the backend scores all but token 0."""
    ids = TOKENIZER(render_prompt(TOKENIZER, Example(0, "", ""), DataConfig(train="x", text_column="t")))[
        "input_ids"
    ]
    assert ids == []
    doc = TOKENIZER("7*8=56", add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
    batch = demonstration_batch([ids], [doc], TOKENIZER.pad_token_id)
    assert batch.input_ids[0].tolist() == doc and batch.loss_mask[0].all()


def test_missing_text_column_names_the_columns(tmp_path: Path) -> None:
    """A file without the text column fails like any missing column, listing the file's columns."""
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(
        DataError, match=r"(?s)has no column 'text'.*its columns: prompt, answer.*data\.text_column"
    ):
        load_examples(DataConfig(train=str(path), text_column="text"), "train")


@pytest.mark.parametrize(
    ("extra", "message"),
    [('adapter = "gsm8k"', "text_column.*adapter 'none'"), ('eval = "e.jsonl"', "'eval' must be unset")],
)
def test_text_column_conflicts_are_recipe_problems(tmp_path: Path, extra: str, message: str) -> None:
    """text_column with a dataset adapter, or with held-out evaluation, is refused when the recipe loads."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'schema = 1\n[backend]\ntype = "hf"\nmodel = "m"\n[mixer]\ntype = "sft"\n[[rewards]]\ntype = "math"\n'
        f'[train]\nsteps = 1\n[data]\ntrain = "c.jsonl"\ntext_column = "text"\n{extra}\n'
    )
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_pretraining_run_lowers_the_document_nll(tmp_path: Path) -> None:
    """End to end: an sft recipe over a corpus with text_column trains a from-scratch model (loss decreases)."""
    from lmix_core.synthetic.model import save_tiny_model_dir
    from lmix_core.train.run import train

    model = save_tiny_model_dir(tmp_path / "base", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", generate_corpus(32, levels=(1,), items_per_document=1))
    recipe = tmp_path / "pretrain.toml"
    recipe.write_text(
        f'schema = 1\n[backend]\ntype = "hf"\nmodel = {json.dumps(str(model))}\nlr = 1e-2\n'
        'micro_batch_size = 16\n[mixer]\ntype = "sft"\n[[rewards]]\ntype = "math"\n'
        "[train]\nsteps = 12\nprompts_per_step = 16\ngroup_size = 1\n"
        f'[data]\ntrain = {json.dumps(str(corpus))}\ntext_column = "text"\n'
        '[logging]\nwandb = "disabled"\nprogress = false\n'
    )
    summary = train(load_recipe(recipe), tmp_path / "run", quiet=True)
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert summary["steps"] == 12 and (tmp_path / "run" / "model" / "config.json").exists()
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
