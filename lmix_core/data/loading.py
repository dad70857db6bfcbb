"""Read local jsonl/json/csv/parquet files with ``datasets`` into Examples, and render prompts.

Only the packaged ``json``, ``csv`` and ``parquet`` builders are used, on files checked to exist, so nothing is
fetched from the hub (a test runs the loader with sockets disabled).

Every error names the setting the way the user wrote it: ``data.train`` and ``data.adapter`` for a recipe,
``--data`` and ``--adapter`` for ``lmix eval`` (:class:`Names`).
"""

from __future__ import annotations

import difflib
import logging
import random
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import datasets
import pyarrow
import pyarrow.parquet

from lmix_core.data.adapters import adapter_for
from lmix_core.data.config import DataConfig
from lmix_core.data.errors import DataError
from lmix_core.data.example import Example

logger = logging.getLogger(__name__)

_EXTENSIONS: Mapping[str, str] = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_KINDS = ".jsonl, .json, .csv or .parquet"


@attrs.frozen(kw_only=True)
class Names:
    """How the user wrote the data settings, so that an error names what they typed.

    Attributes:
        train: how the training file was given.
        eval: how the held-out file was given.
        cli: settings are command-line options (``--adapter gsm8k``) rather than ``[data]`` keys
            (``data.adapter = "gsm8k"``).
    """

    train: str = "data.train"
    eval: str = "data.eval"
    cli: bool = False

    def setting(self, key: str) -> str:
        """``data.adapter`` or ``--adapter``."""
        return "--" + key.replace("_", "-") if self.cli else f"data.{key}"

    def assign(self, key: str, value: str) -> str:
        """``data.adapter = "gsm8k"`` or ``--adapter gsm8k``."""
        return f"{self.setting(key)} {value}" if self.cli else f'data.{key} = "{value}"'

    def source(self, split: str) -> str:
        return self.train if split == "train" else self.eval


RECIPE_NAMES = Names()
"""The names of a recipe's ``[data]`` table."""


def _files(source: str, fmt: str, label: str, names: Names) -> tuple[str, list[Path]]:
    """The builder name and the files to read for one ``[data]`` path."""
    path = Path(source).expanduser()
    if not path.exists():
        where = "" if names.cli else " (relative paths are resolved against the recipe's folder)"
        raise DataError(
            f"{label}: {str(path)!r} does not exist; give a local {_KINDS} file or a folder of them{where}"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _EXTENSIONS)
        if not files:
            raise DataError(f"{label}: folder {str(path)!r} holds no {_KINDS} file")
    else:
        files = [path]
    if fmt != "auto":
        return fmt, files
    kinds = {_EXTENSIONS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) != 1:
        raise DataError(
            f"{label}: cannot tell the format of {[p.name for p in files]!r} from their extensions; "
            f"set {names.setting('format')} to 'json' (JSON lines or a JSON array), 'csv' (a header row) or "
            "'parquet'"
        )
    return kinds.pop(), files  # type: ignore[return-value]  # None was refused above


def _known_schema(columns: Sequence[str]) -> str | None:
    """The adapter whose dataset these columns look like, or None.

    MMLU (``question``, ``choices``, ``answer``) is told from GSM8K (``question``, ``answer``) by ``choices``, and
    NuminaMath's cn-k12 (``problem``, ``solution``, ``source``) from MATH (``problem``, ``solution``) by ``source``.
    """
    have = set(columns)
    if {"question", "choices", "answer"} <= have:
        return "mmlu"
    if {"question", "answer"} <= have:
        return "gsm8k"
    if {"problem", "solution", "source"} <= have:
        return "numina_cn_k12"
    if {"problem", "solution"} <= have:
        return "math"
    return None


_SCHEMA_TITLES: Mapping[str, str] = {
    "mmlu": "MMLU",
    "gsm8k": "GSM8K",
    "numina_cn_k12": "NuminaMath cn-k12",
    "math": "MATH",
}


def _missing_columns_error(
    label: str,
    source: str,
    missing: Sequence[str],
    available: Sequence[str],
    *,
    names: Names,
    adapter: str,
    text: bool = False,
) -> DataError:
    lines = [f"{label}: {source!r} has no column {', '.join(repr(m) for m in missing)}"]
    lines.append(f"  its columns: {', '.join(available) or 'none'}")
    schema = None if text else _known_schema(available)
    if schema is not None and schema != adapter:
        lines.append(
            f"  these are the columns of the {_SCHEMA_TITLES[schema]} dataset: set "
            f"{names.assign('adapter', schema)} to read them"
        )
    for name in missing:
        close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.75)
        if close:
            lines.append(f"  did you mean {close[0]!r} instead of {name!r}?")
    if text:
        lines.append(f"  set {names.setting('text_column')} to the column holding the documents")
    elif schema is not None and schema != adapter:
        pass  # the adapter line above says what to set
    elif adapter == "none":
        columns = " / ".join(
            names.setting(k) for k in ("prompt_column", "answer_column", "demonstration_column")
        )
        lines.append(f"  set {columns}, or pick {names.setting('adapter')} ({', '.join(_SCHEMA_TITLES)})")
    else:
        lines.append(
            f"  the {adapter!r} adapter reads its dataset's own columns: pick another {names.setting('adapter')}, "
            f"or {names.assign('adapter', 'none')} with the column settings"
        )
    return DataError("\n".join(lines))


def read_table(
    source: str,
    *,
    fmt: Literal["auto", "json", "csv", "parquet"] = "auto",
    field: str = "train",
    names: Names = RECIPE_NAMES,
) -> datasets.Dataset:
    """Load a local file or folder as one ``datasets.Dataset`` (rows in file order, files in name order).

    Raises:
        DataError: missing path, unknown format, unreadable file.
    """
    label = names.source(field)
    builder, files = _files(source, fmt, label, names)
    files = [p for p in files if not _is_empty(p, builder)]
    if not files:
        raise DataError(f"{label}: {source!r} has no rows")
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        cause = exc.__cause__ or exc
        raise DataError(
            f"{label}: cannot read {source!r} as {builder}: {type(cause).__name__}: {cause}"
        ) from exc
    finally:
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


def _is_empty(path: Path, builder: str) -> bool:
    """Whether a file holds no rows (an empty or blank json/csv file, ``[]``, or a parquet file of 0 rows)."""
    if builder == "parquet":
        try:
            return pyarrow.parquet.ParquetFile(path).metadata.num_rows == 0
        except (OSError, pyarrow.ArrowException):
            return False  # let the reader report what is wrong with it
    with path.open("rb") as f:
        head = f.read(4096)
    return head.strip() in (b"", b"[]") and path.stat().st_size <= len(head)


def load_examples(
    config: DataConfig, split: Literal["train", "eval"], *, names: Names = RECIPE_NAMES
) -> list[Example]:
    """Read the ``train`` or ``eval`` problems of a ``[data]`` table.

    The training examples are shuffled once with ``config.shuffle_seed`` and cut to ``config.limit``; the eval
    examples keep file order and are cut to ``config.eval_limit``. ``Example.index`` is the row number in the
    source either way. Every example is checked against ``config.prompt_template`` (:func:`check_template`).

    Args:
        names: how the user wrote the settings, for the error messages (``lmix eval`` passes its options).

    Raises:
        DataError: no ``eval`` path for the eval split, a missing file or column (the message lists the columns
            and names the adapter of a known dataset, or suggests the closest column), no example left, or a
            template naming a field an example lacks.
    """
    source = config.train if split == "train" else config.eval
    label = names.source(split)
    if source is None:
        raise DataError(f"{label} is not set, so there are no held-out examples; set {label} to a file")
    table = read_table(source, fmt=config.format, field=split, names=names)
    if table.num_rows == 0:
        raise DataError(f"{label}: {source!r} has no rows")
    adapter = adapter_for(config)
    needed = (*adapter.required, *config.metadata_columns)
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise _missing_columns_error(
            label,
            source,
            missing,
            table.column_names,
            names=names,
            adapter=config.adapter,
            text=config.text_column is not None,
        )
    extra = list(config.metadata_columns)
    examples: list[Example] = []
    for index, row in enumerate(table):
        example = adapter.convert(row, index)
        if example is None:
            continue
        if extra:
            example = attrs.evolve(example, metadata={**example.metadata, **{c: row[c] for c in extra}})
        examples.append(example)
    skipped = table.num_rows - len(examples)
    if skipped:
        logger.warning(
            "%s: skipped %d of %d rows of %r (%s)",
            label,
            skipped,
            table.num_rows,
            source,
            adapter.skip_reason,
        )
    if not examples:
        raise DataError(
            f"{label}: no usable example in {source!r}: the {adapter.name!r} adapter skipped all "
            f"{table.num_rows} rows ({adapter.skip_reason})"
        )
    check_template(examples, config, label=label, names=names)
    if split == "train":
        random.Random(config.shuffle_seed).shuffle(examples)
        return examples[: config.limit]
    return examples[: config.eval_limit]


def template_fields(config: DataConfig) -> set[str]:
    """The fields ``config.prompt_template`` names besides ``{prompt}`` (metadata columns)."""
    fields = {f for _, f, _, _ in string.Formatter().parse(config.prompt_template) if f is not None}
    return fields - {"prompt"}


def check_template(
    examples: Sequence[Example], config: DataConfig, *, label: str, names: Names = RECIPE_NAMES
) -> None:
    """Raise :class:`DataError` when the prompt template names a field that some example's metadata lacks.

    Run on every example at load time, so the mistake is reported by ``lmix validate`` and before any model loads,
    rather than when the first prompt is rendered.
    """
    if config.text_column is not None:
        return
    fields = template_fields(config)
    for example in examples:
        lacking = sorted(fields - set(example.metadata))
        if lacking:
            raise DataError(
                f"{names.setting('prompt_template')} names {{{lacking[0]}}}, which row {example.index} of {label} "
                f"lacks (its fields: prompt{''.join(', ' + k for k in sorted(example.metadata))}); add the column to "
                f"{names.setting('metadata_columns')}"
            )


def build_messages(example: Example, config: DataConfig) -> list[dict[str, str]]:
    """Chat messages for ``example``: an optional system message, then the templated prompt as the user turn."""
    user = config.prompt_template.format_map({**example.metadata, "prompt": example.prompt})
    system = [] if config.system_prompt is None else [{"role": "system", "content": config.system_prompt}]
    return [*system, {"role": "user", "content": user}]


def render_prompt(tokenizer: Any, example: Example, config: DataConfig) -> str:
    """The text the policy continues: chat-templated with the generation prompt, or plain.

    With ``chat_template = "auto"`` and a tokenizer that has a chat template, the messages of
    :func:`build_messages` go through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.
    Otherwise the prompt is plain text: the system prompt and a blank line (when set), then the templated prompt.
    A template that names a missing metadata column raises :class:`DataError`.

    With ``config.text_column`` set (plain-text documents), the prompt is empty: no template, no chat turn and no
    BOS token (lmix never adds one to prompts either, so a model pretrained this way sees its post-training prompts
    start the way its documents did). Every document token after the first is trained; the first has no context.
    """
    if config.text_column is not None:
        return ""
    try:
        messages = build_messages(example, config)
    except KeyError as exc:
        raise DataError(
            f"data.prompt_template names {exc.args[0]!r}, which example {example.index} lacks; "
            f"add it to data.metadata_columns (has: {', '.join(sorted(example.metadata)) or 'none'})"
        ) from None
    if config.chat_template == "auto" and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)
