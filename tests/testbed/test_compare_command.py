"""``lmix compare``: a plugin's combiner beside the GRPO baseline at micro sizes, through the real command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmix_core.cli import main
from lmix_core.compare.command import user_method

RECIPE = Path(__file__).resolve().parents[2] / "studies" / "mixing" / "methods" / "entropy_gated.toml"


def test_a_recipe_contributes_its_method_tables_only():
    m = user_method(RECIPE)
    assert m.name == "entropy_gated" and set(m.tables) == {"combiner", "advantage", "loss", "mixer"}
    assert m.deployments == ("default", "policy")
    assert m.reasons["combiner.*"] == "from entropy_gated.toml"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--regime", "nope"], "'--regime' must be one of"),
        (["--baselines", "grpo,zzz"], "'--baselines' must name built-in methods"),
        (["missing.toml"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_before_any_work(tmp_path, capsys, args, message):
    assert main(["compare", *args, "--tiny", "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plugin_combiner_beside_grpo_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", str(RECIPE), "--baselines", "grpo", "--tiny", "--train-seeds", "0", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "gate (grpo_improves):" in text
    assert (
        "| entropy_gated (your recipe) | " in text
        and "| entropy_gated (your recipe), policy alone | " in text
    )
    assert (
        "| entropy_gated | `combiner.type` | 'policy' | 'entropy_gated' | from entropy_gated.toml |" in text
    )
    result = json.loads((out / "format_worked" / "entropy_gated" / "d0-t0" / "result.json").read_text())
    assert result["evals"]["default"]["deploy"] == "combined"
    # the same command again finds everything done: nothing trains, the same table comes back
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "entropy_gated d0-t0" not in again and again.split("\n\n", 1)[1] == text.split("\n\n", 1)[1]


def test_sigterm_mid_comparison_then_the_same_command_continues_exactly(tmp_path):
    """SIGTERM inside a compared run's training: the run writes a checkpoint, the command exits 143 and says to run
    it again; the same command then finishes, and every run's evaluation equals an uninterrupted comparison's."""
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def argv(out: Path) -> list[str]:
        tail = ["--baselines", "grpo", "--tiny", "--train-seeds", "0", "--out", str(out)]
        return [sys.executable, "-m", "lmix", "compare", *tail]

    cut, full = tmp_path / "cut", tmp_path / "full"
    subprocess.run(argv(full), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(argv(cut), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = cut / "format_worked" / "grpo" / "d0-t0" / "metrics.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert (
        re.search(r"stopped by SIGTERM after step [12] of 2", err) and "run the same command again" in err
    ), err
    assert "--resume" not in err and "Traceback" not in err, err
    assert not (metrics.parent / "result.json").exists()
    done = subprocess.run(argv(cut), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = Path("format_worked", "grpo", "d0-t0", "result.json")
    got, want = (json.loads((root / path).read_text())["evals"] for root in (cut, full))
    assert got == want
