"""The verifier's worker pool under faults: a worker killed in the middle of a batch is replaced and the batch's
scores are those of an undisturbed run; a pool that keeps dying fails in one line instead of retrying forever."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from rlvr_temp.reward.verify import MAX_IDLE_RESTARTS, Verifier

# distinct pairs (identical ones would be judged once), a third of them wrong
ANSWERS = [
    (f"\\boxed{{\\frac{{{i}}}{{{i + 1}}}}}", f"{i}/{i + 1}" if i % 3 else f"{i + 2}/{i + 1}") for i in range(3000)
]


def test_a_worker_killed_mid_batch_changes_no_score():
    responses, truths = zip(*ANSWERS)
    with Verifier(num_workers=2, timeout_s=5.0) as v:
        reference = v.score_batch(list(responses), list(truths))
        out: list[list[float]] = []
        worker = threading.Thread(target=lambda: out.append(v.score_batch(list(responses), list(truths))))
        worker.start()
        time.sleep(0.3)
        pids = list(v._pool._processes)  # the live pool's workers
        os.kill(pids[0], signal.SIGKILL)
        worker.join(timeout=120)
        assert v.stats["restarts"] >= 1, "the kill landed after the batch: make the batch longer"
    assert out == [reference]
    assert sum(reference) > 0 and sum(reference) < len(reference)


def test_a_pool_that_keeps_dying_is_an_error_not_a_loop():
    with Verifier(num_workers=1, timeout_s=5.0) as v:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"died \d+ times in a row"):
            v._run(os._exit, [(1,)] * 20)  # every job kills its worker
        assert v.stats["restarts"] > MAX_IDLE_RESTARTS
        assert time.monotonic() - t0 < 120  # bounded: it gave up rather than retrying forever
        assert v.score("\\boxed{2}", "2") == 1.0  # and the verifier still works afterwards
