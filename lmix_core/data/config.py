"""The recipe's ``[data]`` table: where the problems are and how to turn their rows into prompts."""

from __future__ import annotations

import string
from typing import Any, Literal

import attrs

Format = Literal["auto", "json", "csv", "parquet"]
AdapterName = Literal["none", "math", "gsm8k", "numina_cn_k12", "mmlu"]
ChatTemplate = Literal["auto", "none"]


def _non_empty(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{attribute.name}' must be a non-empty string (got {value!r})")


def _template(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError as exc:
        raise ValueError(f"'{attribute.name}' is not a valid format string: {exc} (got {value!r})") from None
    if "prompt" not in names:
        raise ValueError(f"'{attribute.name}' must contain '{{prompt}}' (got {value!r})")
    unnamed = sorted(n for n in names if not n.isidentifier())
    if unnamed:
        raise ValueError(
            f"'{attribute.name}' may only name fields such as {{prompt}} or a metadata column, not "
            f"{', '.join('{' + n + '}' for n in unnamed)}; write literal braces as {{{{ }}}} (got {value!r})"
        )


def _column_or_none(value: str | Literal[False] | None) -> str | None:
    """TOML has no null: a recipe writes ``false`` for "no such column"."""
    return None if value is False else value


def _positive_or_none(instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"'{attribute.name}' must be >= 1 or unset (got {value!r})")


@attrs.frozen(kw_only=True)
class DataConfig:
    """Where the train/eval problems are and how their rows become :class:`~lmix_core.data.example.Example`.

    Attributes:
        train: local ``.jsonl``/``.json``/``.csv``/``.parquet`` file, or a folder of such files (read in name
            order). Relative paths are resolved by the recipe loader against the recipe's folder.
        eval: held-out problems, same rules; ``None``: no held-out evaluation.
        format: ``auto`` picks by extension (``.jsonl`` and ``.json`` are ``json``, ``.csv`` is ``csv`` with a
            header row); or force ``json``/``csv``/``parquet``.
        adapter: ``none`` reads the columns named below; ``math``, ``gsm8k``, ``numina_cn_k12`` and ``mmlu`` read
            those datasets' native columns (see ``docs/data.md``) and ignore the three column names.
        prompt_column: column holding the problem text (adapter ``none``).
        answer_column: column holding the reference final answer (adapter ``none``); numbers become strings.
        demonstration_column: column holding a worked solution, or ``None`` when there is none (adapter ``none``;
            a TOML recipe, which has no null, writes ``false``). A configured column that the file lacks is an
            error.
        metadata_columns: further columns copied into ``Example.metadata`` (any adapter).
        prompt_template: Python format string applied to the prompt; must contain ``{prompt}`` and may name
            metadata columns, e.g. ``"{prompt}\\nAnswer with \\\\boxed{{}}."``.
        system_prompt: system message (chat) or text put before the prompt with a blank line (plain).
        chat_template: ``auto`` applies the tokenizer's chat template, with the generation prompt, when it has one;
            ``none`` always uses plain text (system prompt, blank line, templated prompt).
        limit: keep only this many training examples (after shuffling).
        eval_limit: keep only the first this many held-out examples (file order).
        shuffle_seed: seed of the one-off shuffle of the training examples at load time (eval keeps file order).
        text_column: plain-text language modelling (pretraining): the column holding each document. Set, every row
            becomes an Example whose demonstration is the whole text and whose prompt is empty (rendered as ``""``:
            no template, chat turn or BOS), so SFT is next-token prediction over the document. The prompt, answer
            and demonstration columns and the templates are then ignored. Needs ``adapter = "none"`` and no
            ``eval`` (evaluation samples from prompts).
    """

    train: str = attrs.field(validator=[attrs.validators.instance_of(str), _non_empty])
    eval: str | None = attrs.field(
        default=None, validator=attrs.validators.optional([attrs.validators.instance_of(str), _non_empty])
    )
    format: Format = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "json", "csv", "parquet"))
    )
    adapter: AdapterName = attrs.field(
        default="none", validator=attrs.validators.in_(("none", "math", "gsm8k", "numina_cn_k12", "mmlu"))
    )
    prompt_column: str = attrs.field(default="prompt", validator=_non_empty)
    answer_column: str = attrs.field(default="answer", validator=_non_empty)
    demonstration_column: str | None = attrs.field(
        default="solution",
        converter=_column_or_none,
        metadata={"recipe_type": str | Literal[False] | None},
        # attrs' types infer the field's type from the default alone (str), so they refuse optional(...) here
        validator=attrs.validators.optional(_non_empty),  # type: ignore[arg-type]
    )
    metadata_columns: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, validator=attrs.validators.deep_iterable(_non_empty)
    )
    prompt_template: str = attrs.field(default="{prompt}", validator=_template)
    system_prompt: str | None = attrs.field(default=None)
    chat_template: ChatTemplate = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "none"))
    )
    limit: int | None = attrs.field(default=None, validator=_positive_or_none)
    eval_limit: int | None = attrs.field(default=None, validator=_positive_or_none)
    shuffle_seed: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    text_column: str | None = attrs.field(default=None, validator=attrs.validators.optional(_non_empty))

    def __attrs_post_init__(self) -> None:
        if self.text_column is not None and self.adapter != "none":
            raise ValueError(
                f"'text_column' needs adapter 'none' (plain-text documents have no dataset schema) "
                f"(got adapter {self.adapter!r})"
            )
        if self.text_column is not None and self.eval is not None:
            raise ValueError(
                "'eval' must be unset with 'text_column': held-out evaluation samples answers from prompts, and "
                f"plain-text documents have none (got eval {self.eval!r})"
            )
