"""The safe entry point for scoring: verifiers run in worker processes, each sample under a time limit.

A verifier can hang (sympy on ``9^{9^{9^{9}}}``), crash its process (a segfault in a C extension, ``os._exit``) or
raise. None of these may reach the training loop. :class:`RewardPool` runs :meth:`RewardVerifier.score_one` in
worker processes and turns every failure into a verdict for that sample only:

* a sample that uses more than ``timeout_s`` of CPU time (``DEFAULT_TIMEOUT_S`` = 1 s by default), or more than
  ``WALL_LIMIT_FACTOR`` times ``timeout_s`` of its own wall time (wall time less the time it waited for a core,
  from ``/proc/PID/schedstat``: a sample that sleeps or blocks): the sample scores ``Verdict(0, "timeout")`` and
  its worker is killed (SIGKILL) and replaced, taking its caches with it. Neither measure grows when the machine is
  busy, so the verdict does not depend on load; a sample that finishes past its limit before the parent looks (the
  parent was slow to run) is a timeout too, and its worker is replaced all the same. The worker reports its clocks
  at the start and end of each sample, so the parent's own delays are not charged to it. Where CPU time cannot be
  read (no ``/proc``), the limit is ``timeout_s`` of wall time; where the wait for a core cannot be read, the
  second limit counts all wall time;
* a worker that dies (signal, ``os._exit``): the sample it was judging scores ``Verdict(0, "crashed: ...")``, the
  worker is replaced and its other samples are retried;
* ``score_one`` raising (``MemoryError`` and ``RecursionError`` included), returning something other than a
  :class:`Verdict`, or a non-finite score: ``Verdict(0, "crashed: <what>")``.

Why processes and not threads: a thread cannot be killed. Each worker runs ``score_one`` on its main thread, and the
parent enforces the limit by killing the worker. It is the only limit: verifiers must not bound their own time with a
wall clock (the ``math`` verifier turns math-verify's ``signal.alarm`` timeouts off), since a wall-clock alarm fires
earlier on a busy machine and would turn a slow answer into a wrong one. Caches in a worker only ever hold results of
samples judged within the limit, but they make a repeated answer cheaper: a sample whose cost lies right at the limit
may be judged in a worker that has seen its answer and time out in one that has not.

Workers start from a ``forkserver`` by default, so the training process (CUDA, many threads) is never forked; the fork server pre-imports math-verify so that replacing a killed worker is cheap. As
with every ``spawn``/``forkserver`` use of :mod:`multiprocessing`, the main script is imported (as ``__mp_main__``)
by each worker: keep a training script's work under ``if __name__ == "__main__":``.

Signals: workers ignore SIGINT and SIGTERM, and so does the fork server (:mod:`lmix_core.rewards.fork_server`), so
that a Ctrl-C, or a scheduler that sends SIGTERM to every process of a job, leaves scoring to finish while the
training process ends its step and writes a checkpoint (:mod:`lmix_core.train.stop`). Workers never outlive the
process that started the pool, however it died (SIGKILL included): each watches that process's sentinel from a
thread and exits when it closes (and asks Linux for SIGKILL when its own parent dies); the fork server then exits
too.

Usage::

    with RewardPool(timeout_s=1.0) as pool:          # start-up paid once, reused every step
        verdicts = pool.score([("math", Math.Config()), Format.default()], samples)
        verdicts[0][j]                               # the first verifier's verdict on samples[j]

or :func:`score`, which keeps one process-wide pool (closed at exit). ``workers=0`` judges in the calling process,
still turning exceptions into verdicts but with no time limit (for debugging).

Samples are sent to workers in chunks and judged one at a time; the time limit applies to each sample, measured from
the end of the previous one. Results come back in sample order whatever order the workers finish in. When a verifier
first reaches a worker it judges one ordinary sample (a boxed ``1/2``) outside the time limit, so that lazy imports
and parser set-up are not charged to the first real sample; a verifier that hangs there costs the worker's start-up
limit (``STARTUP_LIMIT_S``) and the first sample's verdict is ``crashed: worker did not start in time``.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast, final

import attrs

from lmix_core.errors import ComponentTypeError, LmixError
from lmix_core.interfaces.reward import RewardVerifier
from lmix_core.types import RewardInput, Verdict

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext

#: A verifier to run: an instance (must be picklable), or ``(registered name, Config or parameter mapping)``.
VerifierSpec = RewardVerifier | tuple[str, Any]
StartMethod = Literal["forkserver", "spawn", "fork"]

#: Modules the fork server imports once, so that every (re)started worker has them already.
DEFAULT_PRELOAD = ("lmix_core.rewards.pool", "lmix_core.rewards.math", "math_verify")
#: Always preloaded first: makes the fork server ignore SIGTERM (see that module).
FORK_SERVER_MODULE = "lmix_core.rewards.fork_server"
#: How long a worker may take to start and load its verifiers before it judges the first sample of a chunk.
STARTUP_LIMIT_S = 60.0
#: Per-sample CPU-time limit by default: with the wall-time cap below, no sample costs more than about 1.5 s of wall
#: time on an idle machine. No legitimate answer in the benchmark takes more than a few tenths of a second.
DEFAULT_TIMEOUT_S = 1.0
#: A sample is stopped after this many times ``timeout_s`` of its own wall time (time spent waiting for a core not
#: counted) even if it used less CPU time (it sleeps or blocks).
WALL_LIMIT_FACTOR = 1.5
#: Longest reason kept from a verifier (longer ones are cut, so logs stay readable).
MAX_REASON_CHARS = 300
#: A sample each verifier judges once when it reaches a worker, outside the time limit.
_WARM_UP = pickle.dumps(
    RewardInput(
        prompt="",
        completion="<think>.</think> The answer is \\boxed{\\frac{1}{2}}",
        reference="0.5",
        num_tokens=9,
    )
)
#: Most samples sent to a worker in one message.
MAX_CHUNK = 64


def default_workers() -> int:
    """Number of CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _describe(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not escape either
        message = "<unprintable>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def judge(verifier: RewardVerifier, sample: RewardInput) -> Verdict:
    """``verifier.score_one(sample)`` with every exception and malformed result turned into a 0 (no time limit).

    Returns:
        The verifier's verdict with its reason cut to ``MAX_REASON_CHARS``, or ``Verdict(0, "crashed: ...")``.
    """
    try:
        verdict = verifier.score_one(sample)
    except Exception as exc:
        return Verdict(score=0.0, reason=_short(f"crashed: {_describe(exc)}"))
    return _checked(verdict)


def _checked(verdict: object) -> Verdict:
    if not isinstance(verdict, Verdict):
        return Verdict(
            score=0.0, reason=f"crashed: score_one returned {type(verdict).__name__}, not a Verdict"
        )
    try:
        value = float(verdict.score)
    except (TypeError, ValueError, OverflowError):
        return Verdict(score=0.0, reason=f"crashed: score {verdict.score!r:.40} is not a number")
    if not math.isfinite(value):
        return Verdict(score=0.0, reason=f"crashed: non-finite score {value}")
    reason = verdict.reason if isinstance(verdict.reason, str) else repr(verdict.reason)
    return Verdict(score=value, reason=_short(reason))


# -- worker side ---------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Make sure this worker dies with the process that started the pool, however that process ends.

    Two guards, because the worker's parent is that process only under ``spawn`` and ``fork``:

    * ``PR_SET_PDEATHSIG``: Linux sends SIGKILL when the parent dies (under ``forkserver`` the parent is the fork
      server);
    * a thread that waits on that process's sentinel (a pipe end that closes when it dies) and ends the worker. This
      is what works under ``forkserver``: the fork server exits only once every process holding its "alive" pipe
      has gone, and its children hold one, so it does not exit first.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass
    creator = mp.parent_process()
    if creator is not None:
        threading.Thread(
            target=_exit_when_gone, args=(creator.sentinel,), daemon=True, name="lmix-parent-watch"
        ).start()


def _exit_when_gone(sentinel: int) -> None:
    mpc.wait([sentinel])
    os._exit(1)


def _worker_main(conn: mpc.Connection) -> None:
    """Judge samples sent by the parent until told to stop or the pipe closes.

    Messages in: ``("verifier", key, blob)``, ``("score", [(task, key, sample_blob), ...])``, ``("stop",)``.
    Messages out: ``("tick", clock)`` when a chunk starts, ``("done", task, score, reason, clock)`` after each
    sample, where ``clock`` is :func:`_clock` read in this process at that moment.
    """
    # Ctrl-C, and a SIGTERM sent to every process of the job, are the parent's business: it finishes its step
    # (scoring included) before it stops, and its workers die with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    verifiers: dict[int, RewardVerifier | str] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] == "verifier":
            _, key, blob = message
            try:
                verifiers[key] = pickle.loads(blob)
            except BaseException as exc:
                verifiers[key] = f"crashed: could not load the verifier: {_describe(exc)}"
                continue
            _judge_blob(verifiers[key], _WARM_UP)  # lazy imports and caches are paid before the clock starts
            continue
        pid = os.getpid()
        conn.send(("tick", _clock(pid)))
        for task, key, blob in message[1]:
            verdict = _judge_blob(verifiers.get(key, "crashed: verifier missing"), blob)
            conn.send(("done", task, verdict.score, verdict.reason, _clock(pid)))


def _judge_blob(verifier: RewardVerifier | str, blob: bytes) -> Verdict:
    if isinstance(verifier, str):
        return Verdict(score=0.0, reason=_short(verifier))
    try:
        sample = pickle.loads(blob)
        verdict = verifier.score_one(sample)
    except BaseException as exc:  # SystemExit too: a verifier must not end its worker quietly
        return Verdict(score=0.0, reason=_short(f"crashed: {_describe(exc)}"))
    return _checked(verdict)


# -- parent side ---------------------------------------------------------------------------------------------
#: ``(wall, cpu, waited)``: ``time.monotonic()``, the process's CPU seconds and the seconds its main thread has waited
#: for a core; the last two None where they cannot be read.
_Clock = tuple[float, float | None, float | None]


def _clock(pid: int) -> _Clock:
    return time.monotonic(), _cpu_seconds(pid), _waited_seconds(pid)


@attrs.define
class _Worker:
    """A worker process and what it is doing.

    Attributes:
        proc: the process.
        conn: the parent's end of its pipe.
        known: verifier keys already sent to it.
        outstanding: task ids sent and not yet answered, in the order it judges them.
        sent_at: when the current chunk was sent.
        start: the worker's clock when its current sample started (None until the chunk's tick arrives).
        grace: seconds added to the current sample's wall deadline because it has not used up its limits.
        overran: the current sample was reported done, but past its limit.
    """

    proc: Any
    conn: mpc.Connection
    known: set[int] = attrs.field(factory=set)
    outstanding: deque[int] = attrs.field(factory=deque)
    sent_at: float = 0.0
    start: _Clock | None = None
    grace: float = 0.0
    overran: bool = False

    def deadline(self, timeout_s: float) -> float:
        """When the parent next looks at the current sample (wall clock)."""
        if self.start is None:
            return self.sent_at + STARTUP_LIMIT_S
        return self.start[0] + timeout_s + self.grace

    def start_sample(self, clock: _Clock) -> None:
        self.start, self.grace = clock, 0.0

    def left(self, timeout_s: float, clock: _Clock) -> float:
        """Seconds the current sample may still run at ``clock``: the least of its CPU time left and its own wall
        time left (wall time less waiting for a core); <= 0 when it is over a limit."""
        assert self.start is not None
        wall0, cpu0, waited0 = self.start
        wall, cpu, waited = clock
        if cpu is None or cpu0 is None:
            return timeout_s - (wall - wall0)
        own_wall = wall - wall0
        if waited is not None and waited0 is not None:
            own_wall -= waited - waited0
        return min(timeout_s - (cpu - cpu0), WALL_LIMIT_FACTOR * timeout_s - own_wall)

    def extend_if_within(self, timeout_s: float) -> bool:
        """At the wall deadline: when the sample is within both limits, move the deadline on by the least time it
        has left (at least 10 ms); True if it moved."""
        if self.start is None:
            return False
        left = self.left(timeout_s, _clock(self.proc.pid))
        if left <= 0:
            return False
        self.grace += max(0.01, left)
        return True


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` from ``/proc/PID/stat``; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return None


def _waited_seconds(pid: int) -> float | None:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a core (``/proc/PID/schedstat``, second
    field, in ns); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _stop(workers: list[_Worker]) -> None:
    """Ask every worker to stop, then kill the ones still running (also runs at interpreter exit)."""
    for w in workers:
        try:
            w.conn.send(("stop",))
        except Exception:
            pass
    end = time.monotonic() + 1.0
    for w in workers:
        w.proc.join(max(0.0, end - time.monotonic()))
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(1.0)
        try:
            w.conn.close()
        except Exception:
            pass
    workers.clear()


def _exit_reason(proc: Any) -> str:
    proc.join(1.0)  # the pipe can close a moment before the process is reaped
    code = proc.exitcode
    if code is None:
        return "crashed: worker stopped answering"
    if code < 0:
        try:
            return f"crashed: worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"crashed: worker killed by signal {-code}"
    return f"crashed: worker exited with code {code}"


@final
class RewardPool:
    """Worker processes that judge samples with reward verifiers, never raising on a sample.

    Args:
        workers: number of worker processes (default: the CPUs this process may use); 0 judges in the calling
            process with no time limit (exceptions still become verdicts).
        timeout_s: per-sample CPU-time limit (see the module docstring), the default for :meth:`score`.
        start_method: how workers start; ``forkserver`` (default) never forks the caller, ``spawn`` starts each from
            scratch (slow to replace), ``fork`` copies the caller (fast, unsafe once CUDA or threads are running).
        preload: modules the fork server imports once (``forkserver`` only).
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        start_method: StartMethod = "forkserver",
        preload: Sequence[str] = DEFAULT_PRELOAD,
    ) -> None:
        n = default_workers() if workers is None else workers
        if n < 0:
            raise LmixError(f"'workers' must be >= 0 (got {n})")
        if not timeout_s > 0:
            raise LmixError(f"'timeout_s' must be > 0 (got {timeout_s})")
        self.workers = n
        self.timeout_s = float(timeout_s)
        # the concrete context of a start method (BaseContext, what a Literal union gets typed as, has no Process)
        self._ctx = cast("ForkContext | SpawnContext | ForkServerContext", mp.get_context(start_method))
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(
                [FORK_SERVER_MODULE, *(m for m in preload if m != FORK_SERVER_MODULE)]
            )
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._keys: dict[bytes, int] = {}
        self._pool: list[_Worker] = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop, self._pool)
        for _ in range(n):
            self._pool.append(self._start())

    # -- public API ----------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def score(
        self,
        verifiers: Sequence[VerifierSpec],
        samples: Sequence[RewardInput],
        *,
        timeout_s: float | None = None,
    ) -> list[list[Verdict]]:
        """Judge every sample with every verifier.

        Args:
            verifiers: instances, or ``(registered name, Config or parameter mapping)`` pairs.
            samples: the samples, in any number.
            timeout_s: per-sample time limit for this call (default: the pool's).

        Returns:
            ``verdicts[i][j]``: verifier ``i``'s verdict on ``samples[j]``.

        Raises:
            UnknownComponentError, ConfigError, ComponentTypeError: a verifier spec is wrong (checked before any
                sample is judged). Nothing a sample does raises.
        """
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        if not limit > 0:
            raise LmixError(f"'timeout_s' must be > 0 (got {timeout_s})")
        if self._closed:
            raise LmixError("this RewardPool is closed; create a new one")
        if os.getpid() != self._pid:
            raise LmixError("a RewardPool cannot be used from a forked child process; create one there")
        instances = [resolve(v) for v in verifiers]
        if self.workers == 0:
            return [[judge(v, s) for s in samples] for v in instances]
        with self._lock:
            try:
                return self._score(instances, samples, limit)
            except BaseException:  # Ctrl-C mid-call: workers still busy with this call's samples are replaced
                for w in list(self._pool):
                    if w.outstanding:
                        w.outstanding.clear()
                        self._replace(w)
                raise

    def close(self) -> None:
        """Stop the workers (idempotent; also done at interpreter exit and by ``with``)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pool)} workers"
        return f"RewardPool({state}, timeout_s={self.timeout_s})"

    # -- internals -----------------------------------------------------------------------------------------
    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="lmix-reward-worker")
        proc.start()
        child.close()
        return _Worker(proc=proc, conn=parent)

    def _replace(self, w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(1.0)
        try:
            w.conn.close()
        except Exception:
            pass
        self._pool[self._pool.index(w)] = self._start()

    def _key(self, verifier: RewardVerifier) -> tuple[int, bytes]:
        try:
            blob = pickle.dumps(verifier)
        except Exception as exc:
            raise ComponentTypeError(
                f"reward verifier {verifier!r} cannot be sent to worker processes: {_describe(exc)}\n"
                f"  Make it a module-level class whose Config holds plain values."
            ) from exc
        return self._keys.setdefault(blob, len(self._keys)), blob

    def _score(
        self, verifiers: list[RewardVerifier], samples: Sequence[RewardInput], limit: float
    ) -> list[list[Verdict]]:
        keyed = [self._key(v) for v in verifiers]
        blobs: dict[int, bytes] = {key: blob for key, blob in keyed}
        results: list[Verdict | None] = [None] * (len(verifiers) * len(samples))
        tasks: list[tuple[int, bytes]] = []  # task t = verifier t // len(samples) on sample t % len(samples)
        sample_blobs: list[bytes | None] = []
        for j, sample in enumerate(samples):
            try:
                sample_blobs.append(pickle.dumps(sample))
            except Exception as exc:
                sample_blobs.append(None)
                for i in range(len(verifiers)):
                    results[i * len(samples) + j] = Verdict(
                        score=0.0, reason=_short(f"crashed: sample cannot be pickled: {_describe(exc)}")
                    )
        for key, _ in keyed:
            for blob in sample_blobs:
                tasks.append((key, blob or b""))
        pending = deque(t for t in range(len(tasks)) if results[t] is None)
        while pending or any(w.outstanding for w in self._pool):
            for w in list(self._pool):
                if pending and not w.outstanding:
                    self._dispatch(w, pending, tasks, blobs, results)
            busy = [w for w in self._pool if w.outstanding]
            if not busy:
                continue
            now = time.monotonic()
            wait_s = max(0.0, min(w.deadline(limit) for w in busy) - now)
            mpc.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s)
            for w in busy:
                alive = self._drain(w, results, limit)
                if w.overran:
                    self._fail(w, "timeout", pending, results)  # it finished, but past its limit
                    continue
                if not w.outstanding:
                    if not alive:
                        self._replace(w)
                    continue
                if not alive:
                    self._fail(w, _exit_reason(w.proc), pending, results)
                elif time.monotonic() > w.deadline(limit) and not w.extend_if_within(limit):
                    reason = "timeout" if w.start is not None else "crashed: worker did not start in time"
                    self._fail(w, reason, pending, results)
        n = len(samples)
        return [
            [
                r if r is not None else Verdict(score=0.0, reason="crashed: lost")
                for r in results[i * n : (i + 1) * n]
            ]
            for i in range(len(verifiers))
        ]

    def _dispatch(
        self,
        w: _Worker,
        pending: deque[int],
        tasks: list[tuple[int, bytes]],
        blobs: Mapping[int, bytes],
        results: list[Verdict | None],
    ) -> None:
        size = max(1, min(MAX_CHUNK, math.ceil(len(pending) / (2 * len(self._pool)))))
        chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
        try:
            for key in sorted({tasks[t][0] for t in chunk} - w.known):
                w.conn.send(("verifier", key, blobs[key]))
                w.known.add(key)
            w.conn.send(("score", [(t, tasks[t][0], tasks[t][1]) for t in chunk]))
        except (OSError, EOFError, ValueError):
            pending.extendleft(reversed(chunk))  # the worker died before taking the work; retry elsewhere
            self._replace(w)
            return
        w.outstanding.extend(chunk)
        w.sent_at, w.start = time.monotonic(), None

    def _drain(self, w: _Worker, results: list[Verdict | None], limit: float) -> bool:
        """Read every message the worker has sent; False when it is gone.

        A sample reported done past its limit (by the worker's own clocks) stays at the head of ``outstanding``
        and ``overran`` is set: the caller scores it a timeout and replaces the worker, as if it had been killed.
        """
        try:
            while w.conn.poll():
                message = w.conn.recv()
                if message[0] == "tick":
                    w.start_sample(message[1])
                    continue
                _, task, value, reason, clock = message
                if not (w.outstanding and w.outstanding[0] == task and w.start is not None):
                    continue
                if w.left(limit, clock) <= 0:
                    w.overran = True
                    return True
                w.outstanding.popleft()
                results[task] = Verdict(score=value, reason=reason)
                w.start_sample(clock)
        except (EOFError, OSError):
            return False
        return w.proc.is_alive()

    def _fail(self, w: _Worker, reason: str, pending: deque[int], results: list[Verdict | None]) -> None:
        """Blame the sample the worker was judging, retry the rest of its chunk elsewhere, replace it."""
        culprit = w.outstanding.popleft()
        results[culprit] = Verdict(score=0.0, reason=reason)
        pending.extendleft(reversed(w.outstanding))
        w.outstanding.clear()
        self._replace(w)


def resolve(spec: VerifierSpec) -> RewardVerifier:
    """An instance from a verifier spec: an instance, or ``(registered name, Config or parameter mapping)``.

    Raises:
        UnknownComponentError: no reward verifier has that name.
        ConfigError: the parameters do not fit its Config.
        ComponentTypeError: the spec is neither form.
    """
    if isinstance(spec, RewardVerifier):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        from lmix_core.config import build
        from lmix_core.registries import rewards

        name, config = spec
        cls = rewards.get(name)
        if config is None or isinstance(config, Mapping):
            config = build(cls.Config, config or {})
        return cls(config)
    raise ComponentTypeError(
        f"a reward verifier spec must be a RewardVerifier or a (name, Config) pair (got {spec!r:.80})"
    )


_shared: RewardPool | None = None
_shared_lock = threading.Lock()


def score(
    verifiers: Sequence[VerifierSpec],
    samples: Sequence[RewardInput],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
) -> list[list[Verdict]]:
    """Judge ``samples`` with ``verifiers`` in the process-wide pool (started on first use, closed at exit).

    Args:
        verifiers: instances, or ``(registered name, Config or parameter mapping)`` pairs.
        samples: the samples.
        timeout_s: per-sample time limit.
        workers: worker processes (default: the CPUs available); a different number than the running pool's
            restarts it; 0 judges in this process.

    Returns:
        ``verdicts[i][j]``: verifier ``i``'s verdict on ``samples[j]``.
    """
    global _shared
    n = default_workers() if workers is None else workers
    with _shared_lock:
        pool = _shared
        if pool is None or pool.closed or pool.workers != n or pool._pid != os.getpid():
            if pool is not None and pool._pid == os.getpid():
                pool.close()
            pool = _shared = RewardPool(workers=n, timeout_s=timeout_s)
    return pool.score(verifiers, samples, timeout_s=timeout_s)


def _close_shared() -> None:
    if _shared is not None and _shared._pid == os.getpid():
        _shared.close()


atexit.register(_close_shared)
