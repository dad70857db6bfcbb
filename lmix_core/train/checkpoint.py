"""Resumable run checkpoints, written atomically.

Layout: ``<run>/checkpoints/step_000010/{backend/, trainer.pt}`` and ``<run>/checkpoints/latest`` (a text file
naming the newest complete checkpoint). A checkpoint is written into ``step_000010.tmp`` and renamed when complete,
then ``latest`` is replaced with ``os.replace``; a run killed at any point leaves either the previous or the new
checkpoint, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as f:
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


def commit(run_dir: Path, step: int, trainer_state: dict[str, Any], keep: int) -> Path:
    """Add the loop's state to the temporary directory, rename it into place, point ``latest`` at it and prune.

    Args:
        run_dir: the run directory.
        step: completed optimiser steps.
        trainer_state: the loop's own state (step, mixer, RNG), saved with ``torch.save``.
        keep: how many checkpoints to keep.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:06d}"
    tmp = staging(run_dir, step)
    torch.save(trainer_state, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_atomic_text(root / "latest", final.name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    marker = checkpoint_root(run_dir) / "latest"
    if not marker.exists():
        return None
    path = checkpoint_root(run_dir) / marker.read_text().strip()
    return path if (path / "trainer.pt").exists() else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "trainer.pt", weights_only=False)
