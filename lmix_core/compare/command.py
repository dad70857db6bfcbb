"""``lmix compare [RECIPE ...] [--regime NAME] [--baselines A,B] [--quick | --tiny] [--out DIR]``.

Runs your recipes beside the built-in baselines of one testbed regime and prints the comparison's table: each
method's held-out pass@1, SFT-format share and probe exact match with 95% bootstrap intervals over problems and
seeds, the paired difference against the baseline (``*``: significant at 5%), and its costs. A recipe contributes
its method, the ``[combiner]``, ``[advantage]``, ``[loss]`` and ``[mixer]`` tables; the model, data, budget,
seeds and evaluation are the regime's, the same for every method, and a table lists every value that differs from
the baseline with its reason. Interrupt it at any point: the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from lmix_core.compare.methods import COMPARISONS, METHODS, Comparison, Method, differences
from lmix_core.compare.sizes import PRESETS
from lmix_core.errors import ConfigError, RunInterrupted, UsageError

METHOD_TABLES = ("combiner", "advantage", "loss", "mixer")
"""The recipe tables that define a method; the rest of a recipe is the regime's."""


def user_method(path: Path) -> Method:
    """A method from a recipe file: its :data:`METHOD_TABLES` (named after the file's stem)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"recipe {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid TOML: {exc}") from None
    tables = {k: data[k] for k in METHOD_TABLES if k in data}
    if not tables:
        raise ConfigError(
            f"recipe {str(path)!r} has none of the tables {', '.join(METHOD_TABLES)}: nothing to compare"
        )
    combined = tables.get("combiner", {}).get("type", "policy") not in ("policy", "prefix")
    return Method(
        name=path.stem,
        label=f"{path.stem} (your recipe)",
        tables=tables,
        reasons={f"{k}.*": f"from {path.name}" for k in tables},
        deployments=("default", "policy") if combined else ("default",),
    )


def comparison_for(regime: str) -> Comparison:
    """The built-in comparison run on ``regime``."""
    found = [c for c in COMPARISONS.values() if c.regime == regime]
    if not found:
        known = sorted({c.regime for c in COMPARISONS.values()})
        raise UsageError(f"'--regime' must be one of {known} (got {regime!r})")
    return found[0]


def compare(
    recipes: list[Path],
    *,
    regime: str,
    baselines: list[str] | None,
    preset: str,
    out: Path,
    train_seeds: tuple[int, ...] | None = None,
    data_seeds: tuple[int, ...] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run (or resume) the comparison and return ``{"table": markdown, "differences": rows, "gate": ...}``."""
    import attrs

    from lmix_core.compare import runner, table
    from lmix_core.recipe import recipe_from_mapping

    comparison = comparison_for(regime)
    sizes = PRESETS[preset]
    if train_seeds:
        sizes = attrs.evolve(sizes, train_seeds=train_seeds)
    if data_seeds:
        sizes = attrs.evolve(sizes, data_seeds=data_seeds)
    names = baselines if baselines is not None else list(comparison.methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UsageError(f"'--baselines' must name built-in methods among {sorted(METHODS)} (got {unknown})")
    if comparison.baseline not in names:
        names = [comparison.baseline, *names]
    for g in comparison.gate_methods:
        if g not in names:
            names.append(g)
    methods = {n: METHODS[n] for n in names}
    for path in recipes:
        m = user_method(path)
        if m.name in methods:
            raise ConfigError(
                f"recipe {str(path)!r}: its name {m.name!r} is a built-in method's; rename the file"
            )
        methods[m.name] = m
    comparison = attrs.evolve(comparison, methods=tuple(methods))
    layout = runner.Layout(out)
    runner.check_out(layout, sizes)
    runner.prepare(layout, sizes, [comparison], log)
    d, t = runner.cells(sizes)[0]
    mappings = {n: runner.method_recipe(layout, sizes, comparison, m, d, t) for n, m in methods.items()}
    for n, mapping in mappings.items():  # every recipe problem now, before hours of runs
        recipe_from_mapping(mapping, source=f"method {n!r}")
    ahead = runner.projection(layout, sizes, [(comparison, list(methods))])
    if ahead["seconds"] is not None:
        log(
            f"{ahead['left']} runs to go: about {ahead['seconds'] / 60:.0f} min at the measured cost per step"
        )
    outcome = runner.run_comparison(layout, sizes, comparison, methods, log, enforce_gate=preset != "tiny")
    rows = table.rows(layout, sizes, comparison, methods)
    diffs = differences(mappings, comparison.baseline, {n: m.reasons for n, m in methods.items()})
    return {
        "gate": outcome["gate"],
        "table": table.render(rows, baseline_label=methods[comparison.baseline].label),
        "differences": diffs,
        "comparison": comparison,
    }


def render_differences(rows: list[dict[str, str]]) -> str:
    lines = ["| method | recipe value | baseline | this method | why |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['method']} | `{r['key']}` | {r['baseline']} | {r['value']} | {r['reason']} |" for r in rows
    ]
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1 (got {text!r})"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``lmix compare``'s arguments."""
    p.add_argument("recipes", nargs="*", type=Path, metavar="RECIPE", help="your recipes (TOML files)")
    p.add_argument(
        "--regime",
        default="format_worked",
        help="testbed regime (default: format_worked; see docs/study-design.md)",
    )
    p.add_argument(
        "--baselines", default=None, help="built-in methods to run beside yours (default: the regime's)"
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes: under 30 min on 2 CPU cores")
    size.add_argument(
        "--tiny",
        action="store_true",
        help="micro sizes: a pipeline check, numbers mean nothing (the gate is reported, not enforced)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/compare-<preset>)")
    p.add_argument("--train-seeds", type=_ints, default=None, help="training seeds (default: the preset's)")
    p.add_argument(
        "--data-seeds", type=_ints, default=None, help="data and pretraining seeds (default: the preset's)"
    )


def compare_command(args: argparse.Namespace) -> int:
    """``lmix compare``: print the table, the differences and the gate; 1 when the gate fails."""
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    out = args.out or Path(f"runs/compare-{preset}")
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"lmix compare [{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    baselines = None if args.baselines is None else [b for b in args.baselines.split(",") if b]
    try:
        result = compare(
            list(args.recipes),
            regime=args.regime,
            baselines=baselines,
            preset=preset,
            out=out,
            train_seeds=args.train_seeds,
            data_seeds=args.data_seeds,
            log=log,
        )
    except RunInterrupted as exc:
        raise RunInterrupted(
            f"{exc}; run the same command again to continue where it stopped", exc.signum
        ) from exc
    gate = result["gate"]
    print(f"\n{result['comparison'].title} (regime {args.regime}, {preset} sizes, {out})")
    print(f"gate ({gate['gate']}): {'passed' if gate['passed'] else 'FAILED'}: {gate['reason']}\n")
    print(result["table"])
    print("\nValues that differ from the baseline's recipe:\n")
    print(render_differences(result["differences"]))
    if not gate["passed"] and preset != "tiny":
        print(
            "\nlmix compare: the regime's precondition failed, so the methods were not compared (see "
            "docs/study-design.md)",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = ["add_arguments", "compare", "compare_command", "comparison_for", "user_method"]
