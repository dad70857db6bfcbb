"""Resumable run checkpoints, crash-safe at every instant, and the safe readers of every file lmix reads back.

Layout: ``<run>/checkpoints/step_000010/{backend/, trainer.pt}`` and ``<run>/checkpoints/latest`` (a text file
naming the newest checkpoint). Writing checkpoint ``N`` goes through these file-system operations, in order:

1. :func:`begin`: remove a stale ``step_N.tmp`` left by an earlier attempt and create ``step_N.tmp/backend``;
2. the backend writes its files under ``step_N.tmp/backend`` (every rank its part);
3. :func:`commit`: write ``trainer.pt`` (the loop's state) into ``step_N.tmp`` (through ``trainer.pt.tmp``,
   flushed to disk, then renamed);
4. when ``step_N`` already exists (the step is saved again), rename it to ``step_N.old``;
5. rename ``step_N.tmp`` to ``step_N``;
6. replace ``latest`` (written to ``latest.tmp``, flushed, renamed);
7. delete ``step_N.old``, and each checkpoint beyond ``keep``: renamed to ``step_K.del`` first, then deleted.

Invariant: a directory named exactly ``step_NNNNNN`` is always complete (it only ever appears by a rename of a
finished directory, and only disappears by a rename); ``step_N.old`` is complete whenever ``step_N`` is missing.
:func:`latest` returns the checkpoint ``latest`` names when it is complete (or its ``.old`` copy), else the newest
complete one (with a warning); it never answers "no checkpoint" while a complete one exists, and raises :class:`CheckpointError` when
``latest`` exists but no complete checkpoint does, so a damaged directory never restarts a run silently.

Every file lmix reads back is read by :func:`read_torch` (``torch.load(weights_only=True)``: tensors and plain
values only, never code) or :func:`read_json`; a missing, corrupt or tampered file raises
:class:`~lmix_core.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmix_core.errors import CheckpointError

#: Name of a complete checkpoint directory.
STEP_DIR = re.compile(r"step_(\d{6,})")
#: The scalar types ``torch.load(weights_only=True)`` reads (subclasses such as numpy's float64 are not among them).
PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)
#: Keys of ``trainer.pt`` and their types.
TRAINER_KEYS: dict[str, type] = {
    "step": int,
    "mixer": dict,
    "python_rng": tuple,
    "torch_rng": torch.Tensor,
    "nonfinite": int,
}


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f"step_{step:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.tmp`` (flushed, then renamed): readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def staging(run_dir: Path, step: int) -> Path:
    """The temporary directory checkpoint ``step`` is written into before it is renamed into place."""
    return checkpoint_root(run_dir) / f"step_{step:06d}.tmp"


def begin(run_dir: Path, step: int) -> Path:
    """Create the empty temporary directory checkpoint ``step`` is written into; returns it.

    The backend writes its state under ``<tmp>/backend`` (every rank its part), then :func:`commit` finishes.
    """
    tmp = staging(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "backend").mkdir(parents=True)
    return tmp


def check_plain(value: Any, where: str) -> None:
    """Raise CheckpointError unless ``value`` holds only tensors and plain values (what ``weights_only`` loads)."""
    if type(value) in PLAIN_SCALARS or isinstance(value, torch.Tensor):  # exact types: no numpy scalars
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                raise CheckpointError(
                    f"{where} has a key of type {type(k).__name__} ({k!r}); keys must be str or int"
                )
            check_plain(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; checkpoint state must hold only tensors "
        "and plain values (None, bool, int, float, str, list, tuple, dict), which load without running code"
    )


def commit(run_dir: Path, step: int, trainer_state: dict[str, Any], keep: int) -> Path:
    """Add the loop's state to the temporary directory, rename it into place, point ``latest`` at it and prune.

    Args:
        run_dir: the run directory.
        step: completed optimiser steps.
        trainer_state: the loop's own state (step, mixer, RNG): tensors and plain values only.
        keep: how many checkpoints to keep.
    """
    check_plain(trainer_state, "trainer state")
    root = checkpoint_root(run_dir)
    final = step_dir(run_dir, step)
    tmp = staging(run_dir, step)
    part = tmp / "trainer.pt.tmp"
    with open(part, "wb") as f:
        torch.save(trainer_state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, tmp / "trainer.pt")
    _fsync_dir(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_atomic_text(root / "latest", final.name + "\n")
    shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.del"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob("step_*.old"):  # left by a re-save that was stopped after its step_N was in place
        if stale.with_suffix("").is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    for path, _ in complete_checkpoints(run_dir)[:-keep]:
        if path != final:
            doomed = path.with_name(path.name + ".del")
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[tuple[Path, int]]:
    """Every complete checkpoint, oldest first: ``step_N`` directories, and ``step_N.old`` where ``step_N`` is missing."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for path in root.iterdir():
        name = path.name.removesuffix(".old")
        m = STEP_DIR.fullmatch(name)
        if m is None or not path.is_dir() or not (path / "trainer.pt").is_file():
            continue
        step = int(m.group(1))
        if step not in found or found[step].name.endswith(".old"):
            found[step] = path
    return [(found[s], s) for s in sorted(found)]


def latest(run_dir: Path, *, warn: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names when it is complete, else the newest complete one.

    Returns None when the run has no checkpoint. Raises :class:`CheckpointError` when ``checkpoints/latest`` exists
    but no complete checkpoint does (never a silent restart). ``warn`` receives a message when the answer is not the
    one ``latest`` names (default: printed to stderr).
    """
    root = checkpoint_root(run_dir)
    marker = root / "latest"
    note = f"{str(marker)!r} is not a file naming a checkpoint"
    if marker.is_file():
        try:
            named = root / marker.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            note = f"cannot read {str(marker)!r} ({exc})"
        else:
            if STEP_DIR.fullmatch(named.name):
                for path in (named, named.with_name(named.name + ".old")):  # .old: a re-save stopped midway
                    if (path / "trainer.pt").is_file():
                        return path
            note = f"{str(marker)!r} names {named.name!r}, which is not a complete checkpoint"
    complete = complete_checkpoints(run_dir)
    if not complete:
        if marker.exists():
            raise CheckpointError(
                f"{note}, and {str(root)!r} holds no other complete checkpoint; the run cannot be resumed "
                "(start it again with --overwrite)"
            )
        return None
    path = complete[-1][0]
    if marker.exists():
        (warn or _stderr)(f"{note}; resuming from the newest complete checkpoint, {path.name!r}")
    return path


def _stderr(message: str) -> None:
    print(f"lmix run: warning: {message}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.IGNORECASE)
    if m:
        return f"it holds a pickled object ({m.group(1)}), refused: loading it could run code"
    if "Weights only load failed" in text:
        return "it is not a file of tensors and plain values (corrupt, truncated or not written by lmix)"
    if isinstance(exc, PermissionError):
        return f"permission denied ({exc})"
    first = text.strip().splitlines()[0][:120] if text.strip() else ""
    return f"it is truncated or corrupt (not a complete file written by torch.save; {type(exc).__name__}: {first})"


def read_torch(path: Path, *, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``; a missing, corrupt or code-carrying file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"cannot read {str(path)!r}: the file is missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one message naming the file
        raise CheckpointError(f"cannot read {str(path)!r}: {_reason(exc)}") from None


def read_json(path: Path) -> Any:
    """``json.loads`` of a file; a missing or corrupt file raises CheckpointError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"cannot read {str(path)!r}: the file is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}") from None


def load_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer.pt`` of checkpoint directory ``path``, checked key by key."""
    file = path / "trainer.pt"
    state = read_torch(file)
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read {str(file)!r}: it holds a {type(state).__name__}, not a dict")
    for key, kind in TRAINER_KEYS.items():
        if not isinstance(state.get(key), kind):
            got = "nothing" if key not in state else type(state[key]).__name__
            raise CheckpointError(f"cannot read {str(file)!r}: {key!r} must be a {kind.__name__} (got {got})")
    return state
