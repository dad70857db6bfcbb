"""The reward pool: time limits, crashes and exceptions cost one sample each, never the caller."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lmix_core.errors import ConfigError, LmixError, UnknownComponentError
from lmix_core.rewards import pool as pool_module
from lmix_core.rewards.exact_match import ExactMatch
from lmix_core.rewards.pool import RewardPool, resolve, score
from lmix_core.types import RewardInput, Verdict

from .pool_helpers import Scripted, samples

OK = Verdict(score=1.0, reason="ok fine")


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2, timeout_s=1.0) as p:
        yield p


def test_results_keep_sample_and_verifier_order(pool):
    """verdicts[i][j] is verifier i on sample j, whatever order the workers finish in."""
    batch = samples(*(f"s{j}" for j in range(150)))
    out = pool.score([Scripted.default(), ExactMatch.default()], batch)
    assert [v.reason for v in out[0]] == [f"ok s{j}" for j in range(150)]
    assert len(out[1]) == 150 and all(v.reason.startswith("no match") for v in out[1])


def test_hanging_sample_times_out_and_costs_only_itself(pool):
    """A sleeping and a busy-looping sample each score 0 with reason 'timeout'; their neighbours are judged."""
    start = time.monotonic()
    out = pool.score([Scripted.default()], samples("fine", "hang", "fine", "spin", "fine"), timeout_s=0.5)[0]
    assert out == [OK, Verdict(score=0.0, reason="timeout"), OK, Verdict(score=0.0, reason="timeout"), OK]
    # the sleeping sample's wall-time cap (WALL_LIMIT_FACTOR x 0.5 s), the spinning one's 0.5 s of CPU, replacements
    assert time.monotonic() - start < 0.5 * pool_module.WALL_LIMIT_FACTOR + 7.0


def test_a_sleeping_sample_is_stopped_by_its_own_wall_time(pool):
    """A sample that sleeps 0.6 s under a 0.5 s limit uses almost no CPU and less than WALL_LIMIT_FACTOR x 0.5 s of
    its own wall time: it is judged. One that never returns is stopped at WALL_LIMIT_FACTOR times the limit."""
    out = pool.score([Scripted.default()], samples("sleep:0.6", "fine"), timeout_s=0.5)[0]
    assert [v.score for v in out] == [1.0, 1.0]
    start = time.monotonic()
    out = pool.score([Scripted.default()], samples("hang"), timeout_s=0.2)[0]
    waited = time.monotonic() - start
    assert out == [Verdict(score=0.0, reason="timeout")]
    assert 0.2 * pool_module.WALL_LIMIT_FACTOR <= waited < 0.2 * pool_module.WALL_LIMIT_FACTOR + 5.0


def test_verdicts_do_not_depend_on_load(pool):
    """The same batch scored on a machine saturated by busy-looping processes gets the same verdicts as before:
    real math answers (fast, slow, refused), samples computing or sleeping well within the limit, and samples that
    run past it."""
    math_batch = [
        RewardInput(prompt="", completion=c, reference=r)
        for c, r in [
            ("so \\boxed{\\frac{6}{4}}", "1.5"),
            ("The answer is $2\\sqrt{2}$.", "\\sqrt{8}"),
            ("\\boxed{(x+y)^{6}}", "(y+x)^{6}"),
            ("Answer: the smallest such k is 12.", "12"),
            ("$3 $3 $3 $3", "3"),
            ("\\boxed{100000!}", "5"),
            ("\\boxed{13}", "12"),
        ]
    ]
    scripted_batch = samples("fine", "cpu:0.1", "sleep:0.2", "cpu:2", "hang")

    def run(scripted_pool: RewardPool) -> list[list[Verdict]]:
        math_verdicts = pool.score([("math", {})], math_batch, timeout_s=0.3)[0]
        scripted = scripted_pool.score([Scripted.default()], scripted_batch, timeout_s=0.3)[0]
        return [math_verdicts, [Verdict(score=v.score, reason=v.reason.split(" ")[0]) for v in scripted]]

    with RewardPool(workers=1) as scripted_pool:  # its timeouts replace workers; the math pool stays warm
        idle = run(scripted_pool)
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            time.sleep(0.1)
            loaded = run(scripted_pool)
        finally:
            for process in busy:
                process.kill()
                process.wait()
    assert loaded == idle
    assert [v.reason for v in idle[1]] == ["ok", "computed", "slept", "timeout", "timeout"]
    assert [v.score for v in idle[0]] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_a_sample_that_finishes_past_its_limit_is_a_timeout(monkeypatch):
    """When the parent is too slow to look (a loaded machine), a sample that finished after using more than its
    CPU limit is still a timeout, and its worker (and its caches) is replaced as if it had been killed."""
    with RewardPool(workers=1, timeout_s=0.3) as p:
        before = p._pool[0].proc.pid
        real_wait = pool_module.mpc.wait

        def slow_wait(objects, timeout=None):
            monkeypatch.setattr(pool_module.mpc, "wait", real_wait)
            time.sleep(1.5)  # the parent wakes up only after the sample has finished
            return real_wait(objects, timeout=0)

        monkeypatch.setattr(pool_module.mpc, "wait", slow_wait)
        out = p.score([Scripted.default()], samples("cpu:0.6", "fine"))[0]
        assert out == [Verdict(score=0.0, reason="timeout"), OK]
        assert p._pool[0].proc.pid != before


def test_default_worst_case_fits_in_two_seconds():
    """At the default limit a sample that never returns is stopped, and its verdict back, in under 2 s of wall
    time."""
    assert pool_module.DEFAULT_TIMEOUT_S * max(1.0, pool_module.WALL_LIMIT_FACTOR) <= 1.5
    with RewardPool(workers=1) as p:
        p.score([Scripted.default()], samples("fine"))
        start = time.monotonic()
        out = p.score([Scripted.default()], samples("hang"))[0]
        assert time.monotonic() - start < 2.0
        assert out == [Verdict(score=0.0, reason="timeout")]


def test_cpu_seconds_reads_this_process():
    """_cpu_seconds grows while a process computes, _waited_seconds does not shrink; both are None for a process
    that does not exist."""
    before, waited = pool_module._cpu_seconds(os.getpid()), pool_module._waited_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    after = pool_module._cpu_seconds(os.getpid())
    assert before is not None and after is not None and after - before >= 0.1
    assert waited is not None and pool_module._waited_seconds(os.getpid()) >= waited
    assert pool_module._cpu_seconds(2**22 + 12345) is None
    assert pool_module._waited_seconds(2**22 + 12345) is None


def test_worker_exit_costs_only_that_sample(pool):
    """os._exit in score_one: that sample is 'crashed: worker exited with code 3', the rest are judged."""
    out = pool.score([Scripted.default()], samples("fine", "exit", "fine", "fine"))[0]
    assert out == [OK, Verdict(score=0.0, reason="crashed: worker exited with code 3"), OK, OK]


def test_segfault_costs_only_that_sample(pool):
    """A segfault kills the worker: the sample is 'crashed: worker killed by SIGSEGV', the pool goes on."""
    out = pool.score([Scripted.default()], samples("segv", "fine"))[0]
    assert out == [Verdict(score=0.0, reason="crashed: worker killed by SIGSEGV"), OK]


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("raise", "crashed: ValueError: boom"),
        ("memory", "crashed: MemoryError: out of memory"),
        ("nan", "crashed: non-finite score nan"),
        ("none", "crashed: score_one returned NoneType, not a Verdict"),
    ],
)
def test_exceptions_and_bad_results_become_verdicts(pool, completion, reason):
    """A raising verifier or a malformed verdict gives that sample a 0 with a 'crashed: ...' reason."""
    out = pool.score([Scripted.default()], samples("fine", completion, "fine"))[0]
    assert out == [OK, Verdict(score=0.0, reason=reason), OK]


def test_pool_is_reused_across_calls(pool):
    """Calls without incidents keep the same worker processes (start-up is paid once)."""
    before = {w.proc.pid for w in pool._pool}
    first = pool.score([Scripted.default()], samples(*["pid"] * 40))[0]
    second = pool.score([Scripted.default()], samples(*["pid"] * 40))[0]
    assert {int(v.reason) for v in first + second} <= before
    assert {w.proc.pid for w in pool._pool} == before


def test_pool_recovers_for_the_next_call_after_failures(pool):
    """After timeouts and crashes, the next call is judged normally by replacement workers."""
    pool.score([Scripted.default()], samples("exit", "hang", "segv"), timeout_s=0.5)
    assert pool.score([Scripted.default()], samples("fine", "fine"))[0] == [OK, OK]
    assert len(pool._pool) == 2 and all(w.proc.is_alive() for w in pool._pool)


def test_batches_run_in_parallel(pool):
    """Six 0.4 s samples on two workers take about 1.2 s, not 2.4 s, and use both processes."""
    start = time.monotonic()
    out = pool.score([Scripted.default()], samples(*["sleep:0.4"] * 6))[0]
    elapsed = time.monotonic() - start
    assert elapsed < 2.2
    assert len({v.reason for v in out}) == 2  # two different worker pids


def test_time_limit_does_not_count_start_up():
    """A verifier whose first call in a process is slow (lazy imports) is warmed up outside the limit."""
    with RewardPool(workers=1, timeout_s=0.5) as fresh:
        out = fresh.score([Scripted(Scripted.Config(slow_start_s=1.0))], samples("fine"))[0]
    assert out == [OK]


def test_specs_by_name_and_config(pool):
    """(name, Config) and (name, parameter table) pairs build the registered verifier."""
    batch = [RewardInput(prompt="", completion=" Paris ", reference="paris")]
    by_config = pool.score([("exact_match", ExactMatch.Config())], batch)
    by_table = pool.score([("exact_match", {"normalize": ["strip"]})], batch)
    assert by_config == [[Verdict(score=1.0, reason="match")]]
    assert by_table[0][0].score == 0.0  # case kept: 'Paris' != 'paris'


def test_bad_specs_raise_before_scoring(pool):
    """A wrong verifier name or parameter is a recipe error, raised up front with the usual message."""
    with pytest.raises(UnknownComponentError, match="exact_mach"):
        pool.score([("exact_mach", None)], samples("x"))
    with pytest.raises(ConfigError, match="answer"):
        resolve(("exact_match", {"answer": "everything"}))


def test_unpicklable_sample_costs_only_itself(pool):
    """A sample whose metadata cannot be pickled is 'crashed: sample cannot be pickled'; the others are judged."""
    bad = RewardInput(prompt="", completion="fine", metadata={"f": lambda: 1})
    out = pool.score([Scripted.default()], [*samples("fine"), bad, *samples("fine")])[0]
    assert out[0] == OK and out[2] == OK
    assert out[1].score == 0.0 and out[1].reason.startswith("crashed: sample cannot be pickled")


def test_empty_inputs(pool):
    """No samples gives one empty list per verifier; no verifiers gives no lists."""
    assert pool.score([Scripted.default(), ExactMatch.default()], []) == [[], []]
    assert pool.score([], samples("x")) == []


def test_in_process_mode_converts_exceptions():
    """workers=0 judges in this process and still turns exceptions and bad results into verdicts."""
    with RewardPool(workers=0) as local:
        out = local.score([Scripted.default()], samples("pid", "raise", "nan"))[0]
    assert out[0].reason == str(os.getpid())
    assert out[1:] == [
        Verdict(score=0.0, reason="crashed: ValueError: boom"),
        Verdict(score=0.0, reason="crashed: non-finite score nan"),
    ]


def test_closed_pool_refuses_and_stops_its_workers():
    """close() stops every worker; scoring afterwards raises a clear LmixError."""
    p = RewardPool(workers=1)
    procs = [w.proc for w in p._pool]
    with p:
        assert p.score([Scripted.default()], samples("fine")) == [[OK]]
    assert not any(proc.is_alive() for proc in procs)
    with pytest.raises(LmixError, match="closed"):
        p.score([Scripted.default()], samples("fine"))


def test_invalid_arguments():
    """Negative worker counts and non-positive time limits are refused."""
    with pytest.raises(LmixError, match="'workers' must be >= 0"):
        RewardPool(workers=-1)
    with pytest.raises(LmixError, match="'timeout_s' must be > 0"):
        RewardPool(workers=0, timeout_s=0)


def test_module_level_score_reuses_one_pool():
    """score() keeps one process-wide pool between calls and honours the per-call time limit."""
    first = score([Scripted.default()], samples("fine"), workers=1)
    shared = pool_module._shared
    second = score([Scripted.default()], samples("hang", "fine"), workers=1, timeout_s=0.5)
    assert first == [[OK]]
    assert second == [[Verdict(score=0.0, reason="timeout"), OK]]
    assert pool_module._shared is shared
    shared.close()


def test_long_reasons_are_cut():
    """A verifier's reason is cut to MAX_REASON_CHARS characters."""
    with RewardPool(workers=0) as local:
        out = local.score([Scripted.default()], samples("x" * 1000))[0][0]
    assert len(out.reason) == pool_module.MAX_REASON_CHARS and out.reason.endswith("...")


def test_interrupted_call_leaves_the_pool_usable(monkeypatch):
    """An exception in the parent mid-call (Ctrl-C) replaces busy workers; the next call works normally."""
    with RewardPool(workers=1, timeout_s=5.0) as p:
        real_wait = pool_module.mpc.wait

        def interrupted(*args, **kwargs):
            monkeypatch.setattr(pool_module.mpc, "wait", real_wait)
            raise KeyboardInterrupt

        monkeypatch.setattr(pool_module.mpc, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            p.score([Scripted.default()], samples("hang", "fine"))
        assert p.score([Scripted.default()], samples("fine")) == [[OK]]
