"""The ``lmix`` command: listing (lazy), details, validation exit codes, dispatch, and error handling.

Subprocess tests run ``python -m lmix`` (the same ``main`` as the ``lmix`` script) so that ``sys.modules`` and exit
codes are real. A fake plugin (``lmix-fakes 0.3``, names ``t_*`` in the real ``lmix.*`` groups) is put on
``PYTHONPATH`` of those subprocesses only.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lmix_core import cli
from lmix_core.errors import LmixError
from lmix_core.registries import KINDS

from .distinfo import write_dist, write_fakes

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
schema = 1

[backend]
type = "t_toy"
model = "org/model"

[combiner]
type = "t_logit_average"
alpha = 0.5

[advantage]
type = "t_grpo"

[loss]
type = "t_ppo_clip"

[mixer]
type = "t_rl"

[[rewards]]
type = "t_math"

[train]
steps = 2

[data]
train = "train.jsonl"
"""


def lmix(*args: str, pythonpath: Path | None = None, env: dict[str, str] | None = None):
    """Run ``python -m lmix ARGS`` and return the completed process."""
    full = {
        k: v for k, v in os.environ.items() if k not in ("LMIX_PLUGINS", "LMIX_PLUGIN_AUTOLOAD", "LMIX_DEBUG")
    }
    if pythonpath is not None:
        full["PYTHONPATH"] = os.pathsep.join([str(pythonpath), full.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lmix", *args], capture_output=True, text=True, env=full, cwd=ROOT, timeout=300
    )


def mains(
    *calls: list[str], pythonpath: Path | None = None, preamble: str = ""
) -> list[tuple[int, str, str]]:
    """Run ``main(argv)`` for each argv in one fresh interpreter; ``(exit status, stdout, stderr)`` for each."""
    code = (
        "import contextlib, io, json, sys\n"
        "import lmix_core.cli as cli\n"
        f"{preamble}\n"
        "results = []\n"
        f"for argv in {[list(c) for c in calls]!r}:\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        code = cli.main(argv)\n"
        "    results.append([code, out.getvalue(), err.getvalue()])\n"
        "sys.__stdout__.write(json.dumps(results))\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("LMIX_PLUGINS", "LMIX_PLUGIN_AUTOLOAD", "LMIX_DEBUG")
    }
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout)]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the fake plugin ``lmix-fakes`` registered in the real groups under ``t_*`` names."""
    root = tmp_path_factory.mktemp("cli-site")
    write_fakes(root, "lmix", name=lambda n: f"t_{n}")
    return root


def _declared_first_party() -> dict[str, dict[str, str]]:
    """``group -> {name: distribution}`` from the pyprojects of lmix, lmix-hf and lmix-megatron."""
    out: dict[str, dict[str, str]] = {}
    for pyproject in (ROOT / "pyproject.toml", *sorted(ROOT.glob("backends/*/pyproject.toml"))):
        project = tomllib.loads(pyproject.read_text())["project"]
        for group, eps in project.get("entry-points", {}).items():
            for name in eps:
                out.setdefault(group, {})[name] = project["name"]
    return out


# -- components --------------------------------------------------------------------------------------------------


def test_components_json_lists_every_builtin_by_kind_with_provider():
    """``lmix components --json`` has every first-party entry point under its kind, with distribution and version."""
    proc = lmix("components", "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert set(listing) == {
        "combiner",
        "advantage",
        "loss",
        "mixer",
        "reward",
        "backend",
        "rollout_engine",
    }
    declared = _declared_first_party()
    assert sum(len(v) for v in declared.values()) >= 29
    for group, names in declared.items():
        kind = {k.group: k.name for k in KINDS.values()}[group]
        rows = {r["name"]: r for r in listing[kind]}
        for name, dist in names.items():
            assert rows[name]["distribution"] == dist, (group, name)
            assert rows[name]["version"] == md.version(dist)
            assert rows[name]["first_party"] is True
            assert "problem" not in rows[name]


def test_listing_imports_no_component_module():
    """Listing every kind, as text or JSON, imports no component module, no backend, no torch."""
    code = (
        "import sys, contextlib, io, json\n"
        "from lmix_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [main(['components']), main(['components', '--json']), main(['components', 'reward'])]\n"
        "heavy = ('lmix_core.combiners.', 'lmix_core.advantages.', 'lmix_core.losses.', 'lmix_core.mixers.',\n"
        "         'lmix_core.rewards.', 'lmix_hf', 'lmix_megatron', 'lmix_example', 'megatron', 'torch')\n"
        "print(json.dumps([codes, sorted(m for m in sys.modules if m.startswith(heavy))]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    codes, imported = json.loads(proc.stdout)
    assert codes == [0, 0, 0]
    assert imported == []


def test_components_name_shows_config_fields(capsys):
    """``lmix components combiner logit_average`` imports it and shows its summary and Config fields."""
    assert cli.main(["components", "combiner", "logit_average"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("combiner logit_average: ")
    assert "provided by lmix " in out
    assert "Config fields:" in out and "alpha" in out
    assert cli.main(["components", "combiner", "logit_average", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "alpha" in [f["name"] for f in info["fields"]]
    assert info["distribution"] == "lmix" and info["summary"]


def test_components_details_as_json_with_types_and_defaults(capsys):
    """The JSON details give each field's type and default; a bare NAME finds its kind."""
    assert cli.main(["components", "grpo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["name"], info["entry_point"]) == (
        "advantage",
        "grpo",
        "lmix_core.advantages.grpo:GRPO",
    )
    fields = {f["name"]: f for f in info["fields"]}
    assert fields["eps"]["type"] == "number" and fields["eps"]["default"] == "1e-06"


def test_components_usage_errors(capsys):
    """An unknown kind exits 2 with "did you mean"; an unknown name exits 1 with suggestions."""
    assert cli.main(["components", "combinr"]) == 2
    assert "did you mean 'combiner'?" in capsys.readouterr().err
    assert cli.main(["components", "combiner", "logit_avg"]) == 1
    err = capsys.readouterr().err
    assert "no combiner named 'logit_avg'" in err and "Did you mean: 'logit_average'?" in err


def test_broken_plugins_and_conflicts_are_listed_not_fatal(plugin_site, tmp_path):
    """A plugin that fails to import is listed (and flagged by --check); a name clash is shown as a problem."""
    rival = tmp_path / "rival"
    write_dist(rival, "lmix-rival", "9.9", {"lmix.rewards": {"t_math": "lmt_fakes:Math"}})
    pythonpath = Path(os.pathsep.join([str(plugin_site), str(rival)]))
    (code, listing, err), (check_code, checked, _) = mains(
        ["components", "reward"], ["components", "reward", "--check", "--json"], pythonpath=pythonpath
    )
    assert code == 0, err
    assert "t_broken" in listing
    assert "PROBLEM: reward 't_math' is registered twice: by lmix-fakes 0.3" in listing
    assert check_code == 1  # --check fails when something is broken
    rows = {r["name"]: r for r in json.loads(checked)["reward"]}
    assert rows["t_format"]["status"] == "ok"
    broken = rows["t_broken"]
    assert (
        broken["status"] == "error"
        and "failed to import" in broken["error"]
        and "lmix-fakes 0.3" in broken["error"]
    )
    assert "registered twice" in rows["t_math"]["problem"]


# -- validate ----------------------------------------------------------------------------------------------------


def test_validate_ok_exits_0_and_names_providers(plugin_site, tmp_path):
    """A valid recipe prints "ok:" with every component and its provider, and exits 0."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(VALID)
    # --no-data: the fake components cannot plan a step, and VALID's train.jsonl does not exist
    proc = lmix(
        "validate", str(recipe), "combiner.alpha=0.25", "--resolved", "--no-data", pythonpath=plugin_site
    )
    assert proc.returncode == 0, proc.stderr
    first, _, rest = proc.stdout.partition("\n")
    assert first.startswith(f"ok: {recipe} (backend=t_toy (lmix-fakes 0.3), combiner=t_logit_average")
    assert tomllib.loads(rest)["combiner"] == {"type": "t_logit_average", "alpha": 0.25}


def test_validate_problems_exit_2_without_traceback(plugin_site, tmp_path):
    """Every sort of bad recipe, or a bad override, exits 2 with the RecipeError text and no traceback."""
    good = tmp_path / "good.toml"
    good.write_text(VALID)
    bad = tmp_path / "bad.toml"
    bad.write_text(VALID.replace("t_logit_average", "t_logit_avg").replace("steps = 2", "steps = 0"))
    broken = tmp_path / "broken.toml"
    broken.write_text("schema = 1\n[backend\n")
    proc = lmix(
        "validate",
        "--no-data",
        str(good),
        str(bad),
        str(broken),
        str(tmp_path / "missing.toml"),
        pythonpath=plugin_site,
    )
    assert proc.returncode == 2
    assert proc.stdout.startswith(f"ok: {good}")
    assert f"{bad} has 2 problems:\n  combiner.type: no combiner named 't_logit_avg'" in proc.stderr
    assert "train.steps: 'steps' must be >= 1 (got 0)" in proc.stderr
    assert f"{broken} has 1 problem:\n  not valid TOML" in proc.stderr
    assert "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_validate_reports_bad_overrides_with_exit_2(tmp_path, capsys):
    """A malformed override is a recipe problem: exit 2, listed with the recipe's other problems."""
    recipe = tmp_path / "r.toml"
    recipe.write_text("schema = 1\n")
    assert cli.main(["validate", str(recipe), "rewards.5.weight=1", "combiner..alpha=1"]) == 2
    err = capsys.readouterr().err
    assert "  override 'rewards.5.weight=1': rewards[5] is out of range: rewards has 0 entries" in err
    assert "  override 'combiner..alpha=1': has a malformed key 'combiner..alpha'" in err
    assert "  backend: missing table [backend]" in err


def test_run_without_training_loop_validates_then_says_so(plugin_site, tmp_path):
    """If the training module is absent, ``lmix run`` validates the recipe and exits 1 saying it is unavailable."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(VALID)
    [(code, out, err)] = mains(
        ["run", str(recipe), "train.steps=3"],
        pythonpath=plugin_site,
        preamble="cli.COMMANDS['run'] = ('lmt_no_such_training_module', 'run_command')",
    )
    assert code == 1
    assert "`lmix run` is not available yet" in err
    assert "The recipe itself is valid: backend=t_toy" in err
    assert "Traceback" not in err


# -- dispatch and error handling (in process) --------------------------------------------------------------------


@pytest.fixture
def command_module(tmp_path, monkeypatch):
    """A module ``lmt_cli_cmd`` on sys.path whose ``go(args)`` records its args and raises what ``args`` ask."""
    (tmp_path / "lmt_cli_cmd.py").write_text(
        "from lmix_core.errors import LmixError, Problem, RecipeError\n"
        "seen = []\n"
        "def go(args):\n"
        "    seen.append(args)\n"
        "    what = getattr(args, 'out', None)\n"
        "    if what == 'lmix-error':\n"
        "        raise LmixError('the model folder is empty')\n"
        "    if what == 'recipe-error':\n"
        "        raise RecipeError('r.toml', [Problem('train.steps', 'bad')])\n"
        "    return 0\n"
    )
    (tmp_path / "lmt_cli_needs_dep.py").write_text("import lmt_dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LMIX_DEBUG", raising=False)
    yield
    for name in ("lmt_cli_cmd", "lmt_cli_needs_dep"):
        sys.modules.pop(name, None)


def test_dispatch_passes_parsed_options(command_module, monkeypatch):
    """Each delegated subcommand gets its documented options; overrides may come before or after options."""
    monkeypatch.setitem(cli.COMMANDS, "run", ("lmt_cli_cmd", "go"))
    for name in ("demo", "eval", "plot"):
        monkeypatch.setitem(cli.COMMANDS, name, ("lmt_cli_cmd", "go"))
    import lmt_cli_cmd

    assert cli.main(["run", "r.toml", "a=1", "--out", "o", "b=2", "--resume"]) == 0
    run = lmt_cli_cmd.seen[-1]
    assert (run.recipe, run.overrides, run.out, run.start) == ("r.toml", ["a=1", "b=2"], "o", "resume")
    assert cli.main(["demo"]) == 0
    demo = lmt_cli_cmd.seen[-1]
    assert (demo.out, demo.seed, demo.quick) == ("runs/demo", 0, False)
    assert (
        cli.main(["eval", "runs/x", "--data", "d.jsonl", "--rewards", "math,format", "--samples", "4"]) == 0
    )
    ev = lmt_cli_cmd.seen[-1]
    assert (ev.target, ev.data, ev.rewards, ev.samples, ev.deploy, ev.out) == (
        "runs/x",
        "d.jsonl",
        "math,format",
        4,
        "auto",
        None,
    )
    assert cli.main(["plot", "a", "b", "--out", "p.png"]) == 0
    assert (lmt_cli_cmd.seen[-1].run_dirs, lmt_cli_cmd.seen[-1].out) == (["a", "b"], "p.png")


def test_convert_goes_through_the_backends_entry_point(registries, monkeypatch, capsys):
    """``lmix convert`` calls the registered backend's ``convert`` (``--to BACKEND`` or ``--to hf --from BACKEND``,
    the one backend with a format of its own by default); unknown names and format-less backends are usage errors."""
    import lmix_core.registries

    monkeypatch.setattr(lmix_core.registries, "backends", registries["backend"])
    assert cli.main(["convert", "--to", "toy", "src", "dst", "--tp", "2"]) == 0
    assert capsys.readouterr().out == "toy convert src dst to_native=True tp=2 pp=1\n"
    assert cli.main(["convert", "--to", "hf", "a", "b", "--pp", "3"]) == 0
    assert capsys.readouterr().out == "toy convert a b to_native=False tp=1 pp=3\n"
    assert cli.main(["convert", "--to", "hf", "--from", "toy", "a", "b"]) == 0
    assert cli.main(["convert", "--to", "tyo", "a", "b"]) == 2
    assert "--to: no backend named 'tyo'" in capsys.readouterr().err
    real = lmix_core.registries.REGISTRIES["backend"]
    monkeypatch.setattr(lmix_core.registries, "backends", real)
    assert cli.main(["convert", "--to", "hf", "--from", "hf", "a", "b"]) == 2
    assert "trains Hugging Face checkpoints directly" in capsys.readouterr().err


def test_missing_implementation_is_not_available_yet(command_module, monkeypatch, capsys):
    """A subcommand whose module or function is absent exits 1 with "not available yet", never pretending."""
    monkeypatch.setitem(cli.COMMANDS, "plot", ("lmt_no_such_module", "plot_command"))
    assert cli.main(["plot", "runs/a"]) == 1
    assert "`lmix plot` is not available yet" in capsys.readouterr().err
    monkeypatch.setitem(cli.COMMANDS, "plot", ("lmt_cli_cmd", "plot_command"))
    assert cli.main(["plot", "runs/a"]) == 1
    assert "lmt_cli_cmd has no plot_command()" in capsys.readouterr().err


def test_missing_dependency_of_a_command_is_not_disguised(command_module, monkeypatch, capsys):
    """A command module that exists but cannot import a dependency says which, rather than "not available"."""
    monkeypatch.setitem(cli.COMMANDS, "plot", ("lmt_cli_needs_dep", "plot_command"))
    assert cli.main(["plot", "runs/a"]) == 1
    err = capsys.readouterr().err
    assert "failed to import lmt_cli_needs_dep" in err and "lmt_dependency_nobody_installed" in err
    assert "not available" not in err


def test_errors_map_to_exit_codes_without_traceback(command_module, monkeypatch, capsys):
    """LmixError → 1 and RecipeError → 2, message on stderr only; LMIX_DEBUG=1 re-raises for the traceback."""
    monkeypatch.setitem(cli.COMMANDS, "plot", ("lmt_cli_cmd", "go"))
    assert cli.main(["plot", "x", "--out", "lmix-error"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "lmix plot: error: the model folder is empty\n" and captured.out == ""
    assert cli.main(["plot", "x", "--out", "recipe-error"]) == 2
    assert capsys.readouterr().err == "r.toml has 1 problem:\n  train.steps: bad\n"
    monkeypatch.setenv("LMIX_DEBUG", "1")
    with pytest.raises(LmixError, match="folder is empty"):
        cli.main(["plot", "x", "--out", "lmix-error"])


def test_usage(capsys):
    """No subcommand or a bad option exits 2 with usage; --version and --help exit 0."""
    assert cli.main([]) == 2
    assert "usage: lmix" in capsys.readouterr().err
    assert cli.main(["validate"]) == 2
    assert cli.main(["convert", "a", "b"]) == 2  # --to is required
    assert cli.main(["run", "r.toml", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lmix {md.version('lmix')}"
    assert cli.main(["--help"]) == 0
    assert "LMIX_PLUGINS" in capsys.readouterr().out


def test_console_script_and_module_agree():
    """The installed ``lmix`` script and ``python -m lmix`` are the same command."""
    script = Path(sys.executable).parent / "lmix"
    if not script.exists():
        pytest.skip("the lmix console script is not installed next to this interpreter")
    direct = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert direct.returncode == 0
    assert direct.stdout == lmix("--version").stdout
