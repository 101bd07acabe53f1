"""The verifier's worker pool under faults: a worker killed in the middle of a batch is replaced and the batch's
scores are those of an undisturbed run; a pool that keeps dying fails in one line instead of retrying forever."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rlvr_temp.reward import pool as pool_mod
from rlvr_temp.reward.pool import MAX_IDLE_RESTARTS, WorkerPool
from rlvr_temp.reward.verify import Verifier

# distinct pairs (identical ones would be judged once), a third of them wrong
ANSWERS = [
    (f"\\boxed{{\\frac{{{i}}}{{{i + 1}}}}}", f"{i}/{i + 1}" if i % 3 else f"{i + 2}/{i + 1}") for i in range(200)
]


def test_a_worker_killed_mid_batch_changes_no_score(monkeypatch):
    """The kill lands mid-batch for certain, however fast the machine: the parent's 30th wait for in-flight jobs
    (at most two jobs are in flight, so a hundred and more are still pending) first kills a worker."""
    responses, truths = (list(x) for x in zip(*ANSWERS))
    with Verifier(num_workers=2, timeout_s=5.0) as v:
        reference = v.score_batch(responses, truths)
        assert v.stats["restarts"] == 0
        real_wait, calls, killed = pool_mod.wait, [0], []

        def wait_after_a_kill(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 30:
                killed.append(v.pool.pids()[0])
                os.kill(killed[0], signal.SIGKILL)
            return real_wait(*args, **kwargs)

        monkeypatch.setattr(pool_mod, "wait", wait_after_a_kill)
        out = v.score_batch(responses, truths)
        assert killed and calls[0] > 30, calls  # the kill came before the batch's end
        assert v.stats["restarts"] >= 1 and killed[0] not in v.pool.pids()
    assert out == reference
    assert sum(reference) > 0 and sum(reference) < len(reference)


def test_a_pool_that_keeps_dying_is_an_error_not_a_loop():
    with Verifier(num_workers=1, timeout_s=5.0) as v:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"died \d+ times in a row"):
            v.pool.run(os._exit, [(1,)] * 20, v.timeout_s)  # every job kills its worker
        assert v.stats["restarts"] > MAX_IDLE_RESTARTS
        assert time.monotonic() - t0 < 120  # bounded: it gave up rather than retrying forever
        assert v.score("\\boxed{2}", "2") == 1.0  # and the verifier still works afterwards


def test_the_pool_on_its_own_bounds_each_job():
    """rlvr_temp.reward.pool without the verifier: a job past its deadline is a timeout (the pool is rebuilt and the
    innocent job runs again), the others' results come back in order; a closed pool refuses work."""
    pool = WorkerPool(2, start_method="spawn", name="test")
    try:
        before = pool.pids()
        assert len(before) == 2
        assert pool.run(time.sleep, [(30,), (0,)], 1.0) == [("timeout", None), ("ok", None)]
        assert pool.restarts == 1
        assert pool.run(pow, [(2, 3), (3, 2)], 5.0) == [("ok", 8), ("ok", 9)]
        after = pool.pids()
        assert len(after) == 2 and not set(after) & set(before)  # the rebuilt pool's workers
    finally:
        pool.close()
    assert pool.pids() == []
    with pytest.raises(RuntimeError, match="the test pool is closed"):
        pool.run(pow, [(2, 3)], 5.0)
