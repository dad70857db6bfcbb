"""The ``lmix`` command (also ``python -m lmix``).

Subcommands: ``components`` and ``validate`` live here; ``run``, ``demo``, ``recipes``, ``eval``, ``plot`` and
``convert`` dispatch to functions in other modules, imported only when the subcommand runs (so ``lmix components``
never imports torch, megatron or any component module).

Exit status: 0 success; 1 an error lmix raised on purpose (the message is printed, no traceback); 2 a recipe
problem or a usage error. ``LMIX_DEBUG=1`` re-raises instead, with the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmix_core.errors import LmixError, RecipeError, RunInterrupted, UsageError

#: Where the subcommands that live elsewhere are implemented: ``command -> (module, function)``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("lmix_core.train.run", "run_command"),
    "demo": ("lmix_core.demo.command", "demo_command"),
    "recipes": ("lmix_core.shipped_recipes", "recipes_command"),
    "eval": ("lmix_core.evaluation", "eval_command"),
    "plot": ("lmix_core.plotting", "plot_command"),
    "compare": ("lmix_core.compare.command", "compare_command"),
}


class CommandUnavailableError(LmixError):
    """A subcommand whose implementing module is not part of this installation (yet)."""


# -- components --------------------------------------------------------------------------------------------------


def _entry_row(entry: Any, problem: str = "") -> dict[str, Any]:
    row = {
        "kind": entry.kind.name,
        "name": entry.name,
        "distribution": entry.dist,
        "version": entry.version,
        "entry_point": entry.value,
        "first_party": entry.first_party,
    }
    if problem:
        row["problem"] = problem
    return row


def _list_kind(registry: Any, *, check: bool) -> list[dict[str, Any]]:
    """Rows for every entry of one registry (conflicting and malformed ones flagged), importing only if ``check``."""
    problems = registry.problems()
    rows = []
    for entry in registry.entries():
        if entry.name in problems:
            continue
        row = _entry_row(entry)
        if check:
            error = registry.check(entry.name)
            row["status"] = "ok" if error is None else "error"
            if error:
                row["error"] = error
        rows.append(row)
    for name, offers in registry.conflicts().items():
        for entry in offers:
            rows.append(_entry_row(entry, problems.get(name, "")))
    return sorted(rows, key=lambda r: (r["name"], r["distribution"]))


def _summary(doc: str) -> str:
    return doc.strip().split("\n\n")[0].replace("\n", " ") if doc else ""


def _details(registry: Any, name: str) -> dict[str, Any]:
    from lmix_core.config import describe_fields, field_docs

    entry = registry.entry(name)
    cls = registry.get(name)
    doc = inspect.getdoc(cls) or ""
    helps = {**field_docs(cls), **field_docs(cls.Config)}
    fields = [
        {"name": n, "type": t, "default": d, "help": helps.get(n, "")}
        for n, t, d in describe_fields(cls.Config)
    ]
    return {**_entry_row(entry), "summary": _summary(doc), "doc": doc, "fields": fields}


def _print_table(rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]
        print((indent + "  ".join(cells)).rstrip())


def components_command(args: argparse.Namespace) -> int:
    """``lmix components [KIND] [NAME] [--json] [--check]``."""
    from lmix_core.registries import KINDS, REGISTRIES, kind_named

    kind_word, name = args.kind, args.name
    if kind_word is not None:
        try:
            kinds = [kind_named(kind_word)]
        except KeyError:
            owners = [k for k, r in REGISTRIES.items() if kind_word in r.names()]
            if name is None and len(owners) == 1:  # `lmix components logit_average`
                kinds, name = [KINDS[owners[0]]], kind_word
            elif name is None and owners:
                raise UsageError(
                    f"{kind_word!r} names a component of several kinds ({', '.join(owners)}); "
                    f"say which: lmix components {owners[0]} {kind_word}"
                ) from None
            else:
                import difflib

                words = [w for k in KINDS.values() for w in (k.name, k.plural)]
                close = difflib.get_close_matches(kind_word, words, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(
                    f"no component kind {kind_word!r}{hint}; kinds: {', '.join(KINDS)}"
                ) from None
    else:
        kinds = list(KINDS.values())

    if name is not None:
        info = _details(REGISTRIES[kinds[0].name], name)
        if args.json:
            print(json.dumps(info, indent=2, ensure_ascii=False))
            return 0
        print(f"{info['kind']} {info['name']}: {info['summary']}")
        print(f"  provided by {info['distribution']} {info['version']} (entry point {info['entry_point']})")
        print()
        if info["fields"]:
            print("  Config fields:")
            _print_table(
                [("name", "type", "default", "meaning")]
                + [(f["name"], f["type"], f["default"], f["help"].replace("``", "")) for f in info["fields"]],
                indent="    ",
            )
        else:
            print("  Config fields: none")
        return 0

    listing = {k.name: _list_kind(REGISTRIES[k.name], check=args.check) for k in kinds}
    if args.json:
        print(json.dumps(listing, indent=2, ensure_ascii=False))
    else:
        for kind in kinds:
            rows = listing[kind.name]
            print(f"{kind.plural} ({kind.group}):")
            if not rows:
                print("  (none registered)")
            table = []
            for r in rows:
                status = ""
                if "problem" in r:
                    status = "PROBLEM: " + r["problem"].splitlines()[0]
                elif r.get("status") == "error":
                    status = "ERROR: " + r["error"].splitlines()[0]
                elif r.get("status") == "ok":
                    status = "ok"
                table.append((r["name"], f"{r['distribution']} {r['version']}", r["entry_point"], status))
            _print_table(table)
            print()
        print(
            "`lmix components KIND NAME` shows a component's Config; --check imports each one and reports failures."
        )
    bad = any("problem" in r or r.get("status") == "error" for rows in listing.values() for r in rows)
    return 1 if bad and args.check else 0


# -- validate ----------------------------------------------------------------------------------------------------


def _split_targets(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Recipe files and ``KEY=VALUE`` overrides, from one list of positional arguments."""
    recipes, overrides = [], []
    for item in items:
        if "=" in item and not Path(item).exists():
            overrides.append(item)
        else:
            recipes.append(item)
    return recipes, overrides


def validate_command(args: argparse.Namespace) -> int:
    """``lmix validate RECIPE... [KEY=VALUE...] [--no-data]``: 0 when every recipe is valid, 2 otherwise.

    Besides the recipe itself, its data is read and checked (files, columns, prompt template, demonstrations for
    the mixer: :func:`~lmix_core.data.checks.load_recipe_data`) unless ``--no-data``; no model is loaded.
    """
    from lmix_core.recipe import load_recipe

    recipes, overrides = _split_targets([*args.targets, *args.overrides])
    if not recipes:
        raise UsageError("lmix validate: name at least one recipe file")
    status = 0
    for path in recipes:
        try:
            recipe = load_recipe(path, overrides)
        except RecipeError as exc:
            print(str(exc), file=sys.stderr)
            status = 2
            continue
        if not args.no_data:
            from lmix_core.data.checks import load_recipe_data
            from lmix_core.data.errors import DataError

            try:
                load_recipe_data(recipe)
            except DataError as exc:
                print(f"{path}: data problem:\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
                status = 2
                continue
        print(f"ok: {path} ({recipe.summary()})")
        if args.resolved:
            print(recipe.to_toml())
    return status


# -- commands implemented elsewhere ------------------------------------------------------------------------------


def _load(command: str) -> Callable[[argparse.Namespace], int]:
    module, func = COMMANDS[command]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise CommandUnavailableError(
                f"`lmix {command}` is not available yet: its implementation ({module}) is not part of this "
                f"installation"
            ) from exc
        raise LmixError(f"`lmix {command}` failed to import {module}: {type(exc).__name__}: {exc}") from exc
    except ImportError as exc:
        raise LmixError(f"`lmix {command}` failed to import {module}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(mod, func, None)
    if fn is None:
        raise CommandUnavailableError(f"`lmix {command}` is not available yet: {module} has no {func}()")
    return fn


def run_command(args: argparse.Namespace) -> int:
    """``lmix run``: the training loop; if it is not installed, validate the recipe and say so."""
    try:
        fn: Callable[[argparse.Namespace], int | None] = _load("run")
    except CommandUnavailableError:
        from lmix_core.recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        raise CommandUnavailableError(
            f"`lmix run` is not available yet: the training loop ({COMMANDS['run'][0]}) is not part of this "
            f"installation. The recipe itself is valid: {recipe.summary()}"
        ) from None
    if _under_torchrun():
        # The failing rank writes its exception and traceback to torchrun's error file; the agent then stops the
        # other workers and prints that rank as the root cause, so the job ends with its message instead of hanging.
        from torch.distributed.elastic.multiprocessing.errors import record

        fn = record(fn)  # returns None where the wrapped call did
    return fn(args) or 0


def convert_command(args: argparse.Namespace) -> int:
    """``lmix convert``: the named backend's :meth:`~lmix_core.interfaces.backend.TrainerBackend.convert`."""
    from lmix_core.registries import backends

    name = args.source if args.to == "hf" else args.to
    if name is None:  # --to hf without --from: the one installed backend that has a format of its own
        owners = [n for n in backends.names() if backends.check(n) is None and backends.get(n).native_format]
        if len(owners) != 1:
            raise UsageError(
                "--to hf: name the backend whose format SRC is in with --from BACKEND (backends with a format of "
                f"their own: {', '.join(owners) or 'none installed'})"
            )
        name = owners[0]
    if name not in backends:
        option = "--from" if args.to == "hf" else "--to"
        raise UsageError(f"{option}: " + backends.unknown_message(name).replace("\n", "\n  "))
    cls = backends.get(name)
    if cls.native_format is None:
        raise UsageError(
            f"backend {name!r} trains Hugging Face checkpoints directly: it has no format to convert to or from"
        )
    return cls.convert(Path(args.src), Path(args.dst), to_native=args.to != "hf", tp=args.tp, pp=args.pp)


def _under_torchrun() -> bool:
    """True in a worker process started by ``torchrun`` (torch.distributed.run)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "TORCHELASTIC_ERROR_FILE" in os.environ


def _rank_tag() -> str:
    """`` [rank R/W]`` in a multi-process launch (so a failing rank's message says which rank), else empty."""
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1:
        return f" [rank {os.environ.get('RANK', '?')}/{world}]"
    return ""


def _dispatch(command: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return _load(command)(args)

    return handler


# -- parser ------------------------------------------------------------------------------------------------------

_EPILOG = """\
environment:
  LMIX_PLUGINS=a,b          only these third-party distributions provide components (first-party ones always do)
  LMIX_PLUGIN_AUTOLOAD=0    ignore every third-party distribution
  LMIX_DEBUG=1              show Python tracebacks instead of plain error messages

exit status: 0 ok, 1 error, 2 recipe problem or usage error. See docs/cli.md."""


def build_parser() -> argparse.ArgumentParser:
    """The ``lmix`` argument parser (documented in ``docs/cli.md``)."""
    from lmix_core import __version__

    parser = argparse.ArgumentParser(
        prog="lmix",
        description="Post-train LLMs by mixing SFT and RL from swappable, registered parts.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lmix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "components",
        help="list registered components, or show one's Config",
        description="List every registered component by kind with its provider, without importing any; with a "
        "NAME, import it and show its docstring summary and Config fields.",
    )
    p.add_argument(
        "kind", nargs="?", metavar="KIND", help="combiner, advantage, loss, mixer, reward or backend"
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a registered name: show its Config fields")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--check", action="store_true", help="import every component and report the ones that fail"
    )
    p.set_defaults(handler=components_command)

    p = sub.add_parser(
        "validate",
        help="validate recipes without building anything",
        description="Validate recipes (every problem at once) and read their data, without building any model. "
        "Positional arguments containing '=' are overrides applied to every recipe.",
    )
    p.add_argument("targets", nargs="+", metavar="RECIPE [KEY=VALUE ...]")
    p.add_argument("--resolved", action="store_true", help="also print the fully resolved recipe as TOML")
    p.add_argument(
        "--no-data",
        action="store_true",
        help="do not read the data files (by default their columns, template and demonstrations are checked)",
    )
    p.set_defaults(handler=validate_command, overrides=[])

    p = sub.add_parser(
        "run", help="train from a recipe", description="Validate a recipe, build it and train."
    )
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. combiner.alpha=0.7"
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<recipe>-<time>)")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        dest="start",
        action="store_const",
        const="resume",
        help="continue the run in --out from its newest complete checkpoint (exit 2 when it has none); a "
        "finished run is left as it is, a raised train.steps extends it",
    )
    start.add_argument(
        "--resume-if-possible",
        dest="start",
        action="store_const",
        const="resume_if_possible",
        help="as --resume when --out holds a checkpoint or a finished run, else start (replacing a run that "
        "stopped before its first checkpoint): one command for a job that may be preempted and restarted",
    )
    start.add_argument(
        "--overwrite",
        dest="start",
        action="store_const",
        const="overwrite",
        help="delete the run files already in --out and start again (without a flag, a run already there is an "
        "error)",
    )
    p.set_defaults(start="new")
    p.set_defaults(handler=run_command)

    p = sub.add_parser("demo", help="the embedded offline demo (SFT, then GRPO with logit averaging)")
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, model and training (default: 0)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a shorter RL stage (10 steps instead of 40)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="every stage at a micro size: a pipeline check, numbers mean nothing",
    )
    p.set_defaults(handler=_dispatch("demo"))

    p = sub.add_parser(
        "recipes",
        help="list the recipes shipped in the package, or print one",
        description="List the shipped recipes (SET:NAME, e.g. demo:grpo_logit_average: `lmix run` and `lmix "
        "validate` take these names from any directory), or print one to start a recipe of your own.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a shipped recipe to print, e.g. demo:grpo")
    p.set_defaults(handler=_dispatch("recipes"))

    p = sub.add_parser(
        "eval",
        help="evaluate a trained model or run directory on held-out data",
        description="Evaluate a run directory (with its own recipe) or a Hugging Face model directory on held-out "
        "questions. The data options are the [data] fields of the same names; trailing KEY=VALUE arguments "
        "override the recipe (e.g. eval.max_new_tokens=512).",
    )
    p.add_argument("target", metavar="MODEL_OR_RUN", help="a run directory or a Hugging Face model directory")
    p.add_argument(
        "--data", metavar="FILE", help="held-out questions (jsonl/json/csv/parquet file or folder)"
    )
    p.add_argument(
        "--recipe", metavar="RECIPE", help="take rewards, data and eval settings from this recipe instead"
    )
    p.add_argument(
        "--rewards", metavar="NAMES", help="comma-separated reward names (default: the run's, or math)"
    )
    p.add_argument(
        "--backend",
        metavar="NAME",
        help="backend that loads a bare model directory (default: hf); a run keeps its recipe's",
    )
    p.add_argument("--samples", type=int, metavar="K", help="completions per question (pass@1 and pass@K)")
    p.add_argument(
        "--deploy", choices=("auto", "combined", "policy"), default="auto", help="distribution to sample"
    )
    p.add_argument("--out", metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--completions",
        metavar="FILE",
        help="write every prompt, completion, extracted answer, gold answer and verdict to this jsonl file",
    )
    d = p.add_argument_group("data options (the [data] fields of the same names)")
    d.add_argument(
        "--adapter",
        choices=("none", "math", "gsm8k", "numina_cn_k12", "mmlu"),
        help="the dataset's schema; none reads the column options below",
    )
    d.add_argument("--format", choices=("auto", "json", "csv", "parquet"), help="file format (default: auto)")
    d.add_argument("--prompt-column", metavar="COL", help="problem text column (adapter none)")
    d.add_argument("--answer-column", metavar="COL", help="reference answer column (adapter none)")
    d.add_argument(
        "--demonstration-column", metavar="COL", help="worked solution column (adapter none), or 'none'"
    )
    d.add_argument("--metadata-columns", metavar="A,B", help="further columns for the prompt template")
    d.add_argument("--prompt-template", metavar="TEXT", help="format string containing {prompt}")
    d.add_argument("--system-prompt", metavar="TEXT", help="system message")
    d.add_argument("--chat-template", choices=("auto", "none"), help="apply the tokenizer's chat template")
    d.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N questions")
    p.set_defaults(handler=_dispatch("eval"), overrides=[])

    p = sub.add_parser(
        "compare",
        help="run your recipes beside built-in baselines on a testbed regime; table with paired CIs",
        description="Run your recipes' methods beside the built-in baselines of one testbed regime (same model, "
        "data, budget and seeds) and print held-out pass@1, format and probe with 95% bootstrap intervals and "
        "paired differences against the baseline. Resumable: the same command continues an interrupted "
        "comparison. See docs/study-design.md.",
    )
    from lmix_core.compare.command import add_arguments as compare_arguments

    compare_arguments(p)
    p.set_defaults(handler=_dispatch("compare"))

    p = sub.add_parser("plot", help="plot reward, accuracy and loss curves of runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--out", metavar="FILE", help="PNG to write (default: RUN_DIR/curves.png of the first run)"
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="the runs follow one another (e.g. SFT, then RL from its model): place each after the previous one",
    )
    p.set_defaults(handler=_dispatch("plot"))

    p = sub.add_parser(
        "convert",
        help="convert checkpoints between Hugging Face format and a backend's own (e.g. megatron)",
        description="Convert a model between Hugging Face format and the format of a registered backend that has "
        "one of its own: --to BACKEND writes it, --to hf reads it back. The backend's entry point does the work.",
    )
    p.add_argument(
        "--to", required=True, metavar="{hf,BACKEND}", help="target: hf, or a backend name (e.g. megatron)"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="BACKEND",
        help="with --to hf: the backend whose format SRC is in (default: the one installed backend that has one)",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the Megatron side (default: 1)")
    p.add_argument(
        "--pp", type=int, default=1, help="pipeline-parallel size of the Megatron side (default: 1)"
    )
    p.set_defaults(handler=convert_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lmix`` command; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if extra:
        overrides = getattr(args, "overrides", None)
        if overrides is not None and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*overrides, *extra]
        else:
            print(f"lmix {args.command}: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
            return 2
    debug = os.environ.get("LMIX_DEBUG", "").strip() not in ("", "0")
    try:
        return int(args.handler(args) or 0)
    except RecipeError as exc:
        if debug:
            raise
        print(str(exc), file=sys.stderr)
        return 2
    except UsageError as exc:
        if debug:
            raise
        print(f"lmix {args.command}: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:  # a checkpoint was written; the command says how to go on where it can
        print(f"lmix {args.command}{_rank_tag()}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except LmixError as exc:
        if debug:
            raise
        print(f"lmix {args.command}{_rank_tag()}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lmix {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmix components | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
