"""Read local jsonl/json/parquet files with ``datasets`` into Examples, and render prompts.

Only the packaged ``json`` and ``parquet`` builders are used, on files checked to exist, so nothing is fetched from
the hub (a test runs the loader with sockets disabled).
"""

from __future__ import annotations

import difflib
import logging
import random
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

_EXTENSIONS: Mapping[str, str] = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _files(source: str, fmt: str, field: str) -> tuple[str, list[Path]]:
    """The builder name and the files to read for one ``[data]`` path."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data.{field}: {str(path)!r} does not exist; give a local .jsonl, .json or .parquet file or a folder "
            "of them (relative paths are resolved against the recipe's folder)"
        )
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _EXTENSIONS)
        if not files:
            raise DataError(f"data.{field}: folder {str(path)!r} holds no .jsonl, .json or .parquet file")
    else:
        files = [path]
    if fmt != "auto":
        return fmt, files
    kinds = {_EXTENSIONS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) != 1:
        raise DataError(
            f"data.{field}: cannot tell the format of {[p.name for p in files]!r} from their extensions; "
            "set data.format to 'json' or 'parquet'"
        )
    return kinds.pop(), files  # type: ignore[return-value]


def _missing_columns_error(
    field: str, source: str, missing: Sequence[str], available: Sequence[str], *, text: bool = False
) -> DataError:
    lines = [f"data.{field}: {source!r} has no column {', '.join(repr(m) for m in missing)}"]
    lines.append(f"  its columns: {', '.join(available) or 'none'}")
    for name in missing:
        close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.5)
        if close:
            lines.append(f"  did you mean {close[0]!r} instead of {name!r}?")
    if text:
        lines.append("  set data.text_column to the column holding the documents")
    else:
        lines.append(
            "  set data.prompt_column / answer_column / demonstration_column, or pick a data.adapter"
        )
    return DataError("\n".join(lines))


def read_table(
    source: str, *, fmt: Literal["auto", "json", "parquet"] = "auto", field: str = "train"
) -> datasets.Dataset:
    """Load a local file or folder as one ``datasets.Dataset`` (rows in file order, files in name order).

    Raises:
        DataError: missing path, unknown format, unreadable file.
    """
    builder, files = _files(source, fmt, field)
    files = [p for p in files if not _is_empty(p, builder)]
    if not files:
        raise DataError(f"data.{field}: {source!r} has no rows")
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        cause = exc.__cause__ or exc
        raise DataError(
            f"data.{field}: cannot read {source!r} as {builder}: {type(cause).__name__}: {cause}"
        ) from exc
    finally:
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


def _is_empty(path: Path, builder: str) -> bool:
    """Whether a file holds no rows (an empty or blank json file, ``[]``, or a parquet file of 0 rows)."""
    if builder == "parquet":
        try:
            return pyarrow.parquet.ParquetFile(path).metadata.num_rows == 0
        except (OSError, pyarrow.ArrowException):
            return False  # let the reader report what is wrong with it
    with path.open("rb") as f:
        head = f.read(4096)
    return head.strip() in (b"", b"[]") and path.stat().st_size <= len(head)


def load_examples(config: DataConfig, split: Literal["train", "eval"]) -> list[Example]:
    """Read the ``train`` or ``eval`` problems of a ``[data]`` table.

    The training examples are shuffled once with ``config.shuffle_seed`` and cut to ``config.limit``; the eval
    examples keep file order and are cut to ``config.eval_limit``. ``Example.index`` is the row number in the
    source either way.

    Raises:
        DataError: no ``eval`` path for the eval split, a missing file or column (the message lists the columns
            and suggests the closest), or no example left.
    """
    source = config.train if split == "train" else config.eval
    if source is None:
        raise DataError("data.eval is not set, so there are no held-out examples; set data.eval to a file")
    table = read_table(source, fmt=config.format, field=split)
    if table.num_rows == 0:
        raise DataError(f"data.{split}: {source!r} has no rows")
    adapter = adapter_for(config)
    needed = (*adapter.required, *config.metadata_columns)
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise _missing_columns_error(
            split, source, missing, table.column_names, text=config.text_column is not None
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
            "data.%s: skipped %d of %d rows of %r (%s)",
            split,
            skipped,
            table.num_rows,
            source,
            adapter.skip_reason,
        )
    if not examples:
        raise DataError(
            f"data.{split}: no usable example in {source!r}: the {adapter.name!r} adapter skipped all "
            f"{table.num_rows} rows ({adapter.skip_reason})"
        )
    if split == "train":
        random.Random(config.shuffle_seed).shuffle(examples)
        return examples[: config.limit]
    return examples[: config.eval_limit]


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
