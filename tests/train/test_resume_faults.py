"""Fault injection at every file-system operation of a checkpoint write: resume always continues exactly.

One reference run (4 steps, a checkpoint after every step) gives the expected metrics. Each case starts from a copy
of its directory cut back to the checkpoint after step 2, with the complete ``step_000003`` left in place (so the
write of step 3 is a re-save, the path with the most operations: it moves the old directory aside). The resumed run
then fails at the n-th file-system operation of that write (before it, or in the middle of it: the file cut to half),
for every n; a second resume must find a complete checkpoint and produce the reference metrics, line for line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmix_core.recipe import load_recipe
from lmix_core.train import checkpoint
from lmix_core.train.loop import Trainer
from lmix_core.train.run import build
from tests.train.faults import Killed, during_save
from tests.train.helpers import write_recipe

WALL_CLOCK = {"step_time_s"}


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def _no_eval(step: int) -> dict:
    return {}


@pytest.fixture(scope="module")
def reference(tiny_run_inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    path = write_recipe(
        root / "r.toml", tiny_run_inputs, steps=4, extra_train="save_every = 1\nkeep_checkpoints = 3"
    )
    parts = build(load_recipe(path), root)
    ref = root / "ref"
    ref.mkdir()
    Trainer(parts, ref).run(resume=False, evaluate=_no_eval)
    yield parts, ref
    parts.rewards.close()
    parts.backend.close()


def _cut(ref: Path, dest: Path) -> Path:
    """The reference run as a kill during step 2 (after a resume from step 2) leaves it: latest -> step 2."""
    shutil.copytree(ref, dest)
    shutil.rmtree(dest / "checkpoints" / "step_000004")
    (dest / "checkpoints" / "latest").write_text("step_000002\n")
    return dest


def test_a_fault_at_every_operation_of_a_checkpoint_write_resumes_exactly(reference, tmp_path):
    parts, ref = reference
    expected = _metrics(ref)
    with during_save(3, None) as ops:
        Trainer(parts, _cut(ref, tmp_path / "count")).run(resume=True, evaluate=_no_eval)
    names = [op.split()[1] for op in ops]
    # the write goes through the backend's files, trainer.pt, the move aside, the rename, latest and the pruning
    for name in ("torch.save", "os.replace", "shutil.rmtree", "Path.mkdir", "Path.write_text", "os.fsync"):
        assert name in names, (name, ops)
    assert len(ops) >= 15, ops
    cases = [(n, "raise") for n in range(1, len(ops) + 1)]
    cases += [
        (n, "torn") for n, op in enumerate(ops, 1) if op.split()[1] in ("torch.save", "Path.write_text")
    ]
    outcomes = []
    for n, mode in cases:
        run = _cut(ref, tmp_path / f"{mode}{n}")
        with during_save(3, n, mode), pytest.raises(Killed):
            Trainer(parts, run).run(resume=True, evaluate=_no_eval)
        found = checkpoint.latest(run, warn=lambda m: None)
        assert found is not None and found.name.removesuffix(".old") in ("step_000002", "step_000003"), (
            n,
            mode,
        )
        Trainer(parts, run).run(resume=True, evaluate=_no_eval)
        assert _metrics(run) == expected, (n, mode, ops[n - 1])
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == ["latest", "step_000002", "step_000003", "step_000004"], (n, mode, names)
        outcomes.append((ops[n - 1], mode, found.name))
    # every operation was a fault point, and some faults left step 3 as the checkpoint to resume from
    assert {o[2] for o in outcomes} >= {"step_000002", "step_000003"}


def _files(ckpt: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ckpt)): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()}


def test_resaving_the_step_latest_names_is_safe_at_every_operation(reference, tmp_path):
    """Writing step 3 again while ``latest`` names step 3: a fault anywhere leaves a complete step 3 to resume from
    (the old directory until the new one is in place), with the files of one of the two writes, never a mix."""
    parts, ref = reference
    run = tmp_path / "count"
    shutil.copytree(ref, run)
    (run / "checkpoints" / "latest").write_text("step_000003\n")
    trainer = Trainer(parts, run)
    assert trainer.restore() == 3
    before = _files(run / "checkpoints" / "step_000003")
    with during_save(3, None) as ops:
        trainer.save(3)
    assert any(".old" in op for op in ops) or any("step_000003" in op and "os.replace" in op for op in ops), (
        ops
    )
    for n in range(1, len(ops) + 1):
        run = tmp_path / f"k{n}"
        shutil.copytree(ref, run)
        (run / "checkpoints" / "latest").write_text("step_000003\n")
        trainer = Trainer(parts, run)
        trainer.restore()
        with during_save(3, n, "raise"), pytest.raises(Killed):
            trainer.save(3)
        found = checkpoint.latest(run, warn=lambda m: None)
        assert found is not None and found.name.removesuffix(".old") == "step_000003", (n, ops[n - 1])
        assert _files(found) == before, (n, ops[n - 1])
        assert Trainer(parts, run).restore() == 3
