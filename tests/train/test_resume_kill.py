"""Kill anywhere: one run directory is SIGKILLed again and again, at timer-driven points and inside a checkpoint write,
an evaluation and the model export, and resumed each time; it ends exactly like the uninterrupted run.

Each attempt is a process forked from a server that has already imported torch, transformers and lmix (a
``forkserver`` context with preloaded modules), so an attempt costs the run's own start-up (model and reward pool),
not Python's imports. Every attempt runs ``train(..., start="resume_if_possible")``, the command a preemptible job
repeats. After every kill the lines already in ``metrics.jsonl`` must equal the uninterrupted run's (a line cut by
the kill excepted), and at the end the metrics, evaluations, final evaluation and exported weights must be equal.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from tests.train.helpers import write_recipe

WALL_CLOCK = {"step_time_s", "wall_time_s", "time_s"}
STEPS = 4
#: Imported once by the fork server, so an attempt does not import them again.
PRELOAD = [
    "lmix_core.train.run",
    "lmix_core.data.loading",
    "lmix_core.evaluation",
    "lmix_core.rewards.math",
    "lmix_hf.backend",
    "lmix_hf.loading",
    "lmix_hf.sampler",
    "datasets",
    "accelerate",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.qwen2.tokenization_qwen2",
    "transformers.generation.utils",
    "safetensors.torch",
    "math_verify",
    "tests.train.faults",
]


def _attempt(recipe: str, out: str, kill: tuple) -> None:
    """One ``lmix run --resume-if-possible`` attempt, in a forked process; ``kill`` makes it SIGKILL itself at a
    chosen point: ``("save", step, n)`` at the n-th file-system operation of checkpoint ``step``, ``("eval", step)``
    once evaluation ``step`` is computed but before it is recorded, ``("export",)`` after the model files are
    written, ``()`` never (the parent's timer may)."""
    import contextlib

    from lmix_core.recipe import load_recipe
    from lmix_core.train import run as run_module
    from tests.train.faults import during_save

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    guard = contextlib.nullcontext()
    if kill and kill[0] == "save":
        guard = during_save(kill[1], kill[2], "sigkill")
    if kill and kill[0] == "eval":
        original = run_module.evaluate

        def evaluate(*args, **kwargs):
            result = original(*args, **kwargs)
            if kwargs.get("step") == kill[1]:
                die()
            return result

        run_module.evaluate = evaluate
    if kill and kill[0] == "export":
        from lmix_hf.backend import HFBackend

        original_export = HFBackend.save_pretrained

        def save_pretrained(self, path):
            original_export(self, path)
            die()

        HFBackend.save_pretrained = save_pretrained
    with guard:
        run_module.train(load_recipe(recipe), Path(out), start="resume_if_possible", quiet=True)


def _lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line the kill cut short
        rows.append({k: v for k, v in row.items() if k not in WALL_CLOCK})
    return rows


def _weights(model: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model / "model.safetensors"))


def _phase(run: Path) -> str:
    """Where a kill landed, read from what the run directory holds."""
    ck = run / "checkpoints"
    if ck.is_dir() and any(p.name.endswith((".tmp", ".old", ".del")) for p in ck.iterdir()):
        return "checkpoint write"
    steps = len(_lines(run / "metrics.jsonl"))
    evals = [r["step"] for r in _lines(run / "eval.jsonl")]
    if (run / "model").exists() and not (run / "summary.json").exists():
        return "model export"
    if steps == 0:
        return "start-up (no step yet)"
    if steps == STEPS and STEPS not in evals:
        return "final checkpoint or evaluation"
    return f"after step {steps - 1} (evaluations {evals})"


def _noop() -> None:
    """Starts the fork server (and its imports) before anything is timed."""


@pytest.fixture(scope="module")
def forked():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    proc = ctx.Process(target=_noop)
    proc.start()
    proc.join(300)
    return ctx


def _start(ctx, recipe: Path, out: Path, kill: tuple = ()):
    proc = ctx.Process(target=_attempt, args=(str(recipe), str(out), kill))
    proc.start()
    return proc


def _checkpointed(run: Path) -> int:
    from lmix_core.train import checkpoint

    found = checkpoint.latest(run, warn=lambda m: None)
    return 0 if found is None else int(found.name[5:11])


def _resolve(kill: tuple, run: Path) -> tuple:
    """A planned kill with relative steps made absolute from the run's newest checkpoint ``c``: ``("save", "next",
    n)`` is the write of checkpoint ``c + 1``, ``("eval", "next")`` the next evaluation after ``c``. Once every step
    is checkpointed, the kills that need a step to come (or a timer, which could outlast the rest) kill the export."""
    c = _checkpointed(run)
    if c == STEPS and kill[0] in ("save", "line", "timer"):
        return ("export",)
    if kill[:2] == ("save", "next"):
        return ("save", c + 1, kill[2])
    if kill == ("eval", "next"):
        return ("eval", min((c // 2 + 1) * 2, STEPS))
    return kill


def test_sigkill_anywhere_then_resume_equals_the_uninterrupted_run(tiny_run_inputs, tmp_path, forked):
    recipe = write_recipe(
        tmp_path / "r.toml",
        tiny_run_inputs,
        steps=STEPS,
        extra_train="save_every = 1\neval_every = 2\nkeep_checkpoints = 2",
    )
    full = tmp_path / "full"
    t0 = time.perf_counter()
    proc = _start(forked, recipe, full)
    first_step = None
    while proc.exitcode is None:
        proc.join(0.02)
        if first_step is None and (full / "metrics.jsonl").exists():
            first_step = time.perf_counter() - t0
    assert proc.exitcode == 0 and first_step is not None
    step_time = (time.perf_counter() - t0 - first_step) / STEPS
    expected = _lines(full / "metrics.jsonl")
    assert len(expected) == STEPS

    run = tmp_path / "cut"
    # ("timer", s): SIGKILL s seconds after the attempt starts; ("line", s): s seconds after the attempt writes its
    # first metrics line (a step done: the kill lands in the next step, an evaluation or a checkpoint write); the
    # others the attempt makes itself where a timer rarely lands: at the n-th file-system operation of the next
    # checkpoint write, after the next evaluation is computed but before it is recorded, after the model is written
    planned = [
        ("timer", first_step * 0.5),
        ("line", 0.0),
        ("save", "next", 3),
        ("line", 0.3 * step_time),
        ("eval", "next"),
        ("timer", first_step * 0.9),
        ("save", "next", 14),
        ("save", "next", 17),
        ("eval", STEPS),
        ("export",),
    ]
    landed = []
    for plan in planned:
        kill = _resolve(plan, run)
        metrics = run / "metrics.jsonl"
        c, stamp = _checkpointed(run), (metrics.stat().st_mtime_ns if metrics.exists() else 0)
        proc = _start(forked, recipe, run, () if kill[0] in ("timer", "line") else kill)
        if kill[0] in ("timer", "line"):
            # "line" waits for a line this attempt wrote (the file changed: the resume first cuts it back to c lines,
            # and has more), then kill[1] seconds; "timer" kills after kill[1] seconds or at that line, whichever
            # comes first, so that a faster attempt than the reference cannot finish the run before its kill
            t_start = time.perf_counter()
            while proc.is_alive():
                if kill[0] == "timer" and time.perf_counter() - t_start >= kill[1]:
                    break
                if metrics.exists() and metrics.stat().st_mtime_ns != stamp and len(_lines(metrics)) > c:
                    break
                proc.join(0.01)
            if kill[0] == "line":
                proc.join(kill[1])
        if kill[0] in ("timer", "line") and proc.is_alive():
            proc.kill()
        proc.join(300)
        landed.append((kill, proc.exitcode, _phase(run)))
        got = _lines(run / "metrics.jsonl")
        assert got == expected[: len(got)], (kill, landed)
        assert not (run / "summary.json").exists(), landed  # every attempt so far was killed
    assert all(x[1] == -signal.SIGKILL for x in landed), landed

    proc = _start(forked, recipe, run)
    proc.join(300)
    assert proc.exitcode == 0, landed
    assert _lines(run / "metrics.jsonl") == expected
    assert _lines(run / "eval.jsonl") == _lines(full / "eval.jsonl")
    assert [r["step"] for r in _lines(run / "eval.jsonl")] == [2, 4]
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert a["final_eval"] == b["final_eval"]
    wa, wb = _weights(full / "model"), _weights(run / "model")
    assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)
    print("kill points:", *landed, sep="\n  ")
