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

from lmix_core.errors import CheckpointError
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


class _Payload:
    """Unpickling this would create a directory: the proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def _tampered(ref: Path, dest: Path) -> Path:
    shutil.copytree(ref, dest)
    return dest / "checkpoints" / "step_000004"


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("trainer.pt", "pickle", "holds a pickled object (posix.mkdir), refused"),
        ("trainer.pt", "truncate", "it is truncated or corrupt"),
        ("trainer.pt", "wrong", "'nonfinite' must be a int (got str)"),
        ("backend/model.pt", "truncate", "it is truncated or corrupt"),
        ("backend/model.pt", "wrong", "cannot restore"),
        ("backend/optimizer_0.pt", "pickle", "holds a pickled object"),
        ("backend/optimizer_0.pt", "wrong", "cannot restore"),
        ("backend/optimizer_0.pt", "delete", "the file is missing"),
        ("backend/rng_rank0.pt", "wrong", "cannot restore"),
        ("backend/backend.json", "truncate", "JSONDecodeError"),
    ],
)
def test_a_damaged_checkpoint_file_is_refused_naming_it(reference, tmp_path, file, damage, message):
    """Every file a resume reads: a pickled object is refused without running it, a corrupt or foreign one gives
    one CheckpointError that names the file."""
    import torch

    from lmix_core.errors import CheckpointError

    parts, ref = reference
    ckpt = _tampered(ref, tmp_path / "run")
    path = ckpt / file
    marker = tmp_path / "payload-ran"
    if damage == "pickle":
        torch.save({"step": 4, "x": _Payload(marker)}, path)
    elif damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        path.unlink()
    elif file == "trainer.pt":
        state = torch.load(path, weights_only=True)
        torch.save({**state, "nonfinite": "0"}, path)
    else:
        torch.save({"cpu": torch.zeros(3)} if "rng" in file else {"not": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as info:
        Trainer(parts, tmp_path / "run").restore()
    text = str(info.value)
    assert str(path) in text and message in text, text
    assert len(text.splitlines()) <= 3 and len(text) < 600, text
    assert not marker.exists()


def test_cli_resume_of_a_pickled_trainer_state_is_a_one_screen_error(reference, tmp_path, capsys):
    """`lmix run --resume` over a crafted trainer.pt: exit 1, the file named, no traceback, the payload not run."""
    import torch

    from lmix_core.cli import main

    parts, ref = reference
    ckpt = _tampered(ref, tmp_path / "run")
    (ckpt.parent.parent / "metrics.jsonl").write_text("")
    marker = tmp_path / "payload-ran"
    torch.save({"step": 4, "x": _Payload(marker)}, ckpt / "trainer.pt")
    recipe = ref.parent / "r.toml"
    status = main(["run", str(recipe), "--out", str(tmp_path / "run"), "--resume", "train.steps=5"])
    err = capsys.readouterr().err
    assert status == 1
    assert f"lmix run: error: cannot read '{ckpt / 'trainer.pt'}': it holds a pickled object" in err, err
    assert "Traceback" not in err and not marker.exists()


def test_state_that_would_need_unpickling_is_refused_when_saved(tmp_path):
    """A mixer whose state_dict holds an arbitrary object fails at the save, not at the resume."""
    from lmix_core.errors import CheckpointError

    (tmp_path / "checkpoints" / "step_000001.tmp" / "backend").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"trainer state\['mixer'\]\['buffer'\] is a pathlib"):
        checkpoint.commit(tmp_path, 1, {"step": 1, "mixer": {"buffer": tmp_path}}, keep=2)
    assert checkpoint.latest(tmp_path) is None


def test_latest_falls_back_to_the_newest_complete_checkpoint_and_never_restarts_silently(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_000002", "step_000004", "step_000006.tmp"):
        (root / name).mkdir(parents=True)
        if not name.endswith(".tmp"):
            (root / name / "trainer.pt").write_bytes(b"")
    (root / "latest").write_text("step_000006\n")  # named, never completed
    warnings = []
    assert checkpoint.latest(tmp_path, warn=warnings.append) == root / "step_000004"
    assert "'step_000006', which is not a complete checkpoint" in warnings[0]
    for name in ("step_000002", "step_000004"):
        shutil.rmtree(root / name)
    with pytest.raises(CheckpointError, match="holds no other complete checkpoint"):
        checkpoint.latest(tmp_path)
    (root / "latest").unlink()
    assert checkpoint.latest(tmp_path) is None
