"""Fault injection for checkpoint writes: stop a process at the n-th file-system operation.

:func:`inject` replaces the file-system calls a checkpoint write makes (``os.replace``, ``os.rename``, ``os.fsync``,
``os.unlink``, ``os.open``, ``shutil.rmtree``, ``torch.save``, ``Path.mkdir``, ``Path.write_text``, ``Path.unlink``
and ``open`` for writing) with wrappers that count them (calls made inside another counted call are not counted
again) and, at the chosen one, act:

* ``raise``: raise :class:`Killed` (a ``BaseException``, so no ``except Exception`` absorbs it) before the call;
* ``torn``: make the call, cut the file it wrote to half its size, then raise (a kill in the middle of a write);
* ``sigkill``: send this process SIGKILL before the call (a real kill: nothing after it runs).

``python tests/train/faults.py N MODE STEP -- lmix run ...`` runs the ``lmix`` command with the fault at the N-th
operation of the checkpoint write of step STEP (the real-kill form used by the subprocess tests).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class Killed(BaseException):
    """The injected fault."""


def _target(name: str, args: tuple[Any, ...]) -> str | None:
    """The file an operation writes (for ``torn``), when it writes one."""
    if name == "torch.save":
        dest = args[1]
        return str(getattr(dest, "name", dest))
    if name in ("Path.write_text", "open"):
        return str(args[0])
    return None


@contextlib.contextmanager
def inject(at: int | None, mode: str = "raise") -> Iterator[list[str]]:
    """Count file-system operations inside the block; fault at operation ``at`` (1-based; None: only count).

    Yields the list of operations seen so far (``"3 os.replace step_000003.tmp"``).
    """
    seen: list[str] = []
    depth = [0]
    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attr: str, name: str, *, writes_only: bool = False) -> None:
        fn = getattr(owner, attr)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if depth[0] or (writes_only and not _is_write(args, kwargs)):
                return fn(*args, **kwargs)
            n = len(seen) + 1
            where = _target(name, args) if name == "torch.save" else (str(args[0]) if args else "")
            seen.append(f"{n} {name} {Path(where).name}")
            if n == at and mode == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if n == at and mode == "raise":
                raise Killed(seen[-1])
            depth[0] += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                depth[0] -= 1
            if n == at and mode == "torn":
                if hasattr(out, "flush"):
                    out.flush()
                target = _target(name, args)
                if target is not None and os.path.isfile(target):
                    os.truncate(target, os.path.getsize(target) // 2)
                raise Killed(seen[-1] + " (torn)")
            return out

        originals.append((owner, attr, fn))
        setattr(owner, attr, counted)

    for owner, attr in ((os, "replace"), (os, "rename"), (os, "fsync"), (os, "unlink"), (os, "open")):
        wrap(owner, attr, f"os.{attr}")
    wrap(shutil, "rmtree", "shutil.rmtree")
    wrap(torch, "save", "torch.save")
    for attr in ("mkdir", "write_text", "unlink"):
        wrap(Path, attr, f"Path.{attr}")
    wrap(builtins, "open", "open", writes_only=True)
    try:
        yield seen
    finally:
        for owner, attr, fn in reversed(originals):
            setattr(owner, attr, fn)


def _is_write(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
    return isinstance(mode, str) and any(c in mode for c in "wax+")


@contextlib.contextmanager
def during_save(step: int, at: int | None, mode: str = "raise") -> Iterator[list[str]]:
    """:func:`inject` active only inside ``Trainer.save(step)``."""
    from lmix_core.train.loop import Trainer

    original = Trainer.save
    seen: list[str] = []

    def save(self: Trainer, s: int) -> Path:
        if s != step:
            return original(self, s)
        with inject(at, mode) as ops:
            try:
                return original(self, s)
            finally:
                seen.extend(ops)

    Trainer.save = save  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Trainer.save = original  # type: ignore[method-assign]


if __name__ == "__main__":
    n, how, when = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    from lmix_core.cli import main

    with during_save(when, n, how):
        sys.exit(main(sys.argv[5:]))
