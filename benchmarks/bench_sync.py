"""Weight sync per training step: vLLM's weight-transfer engine (``gloo`` on CPU) against the object-store path.

One learner actor and one rollout-worker actor (vLLM in multiprocess mode), as in training, on a model of the
TRL comparison's size (a 25.3M-parameter Qwen2 shape with random weights, benchmarks/trl_grpo.py) in LoRA mode --
so every round merges the adapters into the base, as in a run. Per round:

* ``object_store`` (the earlier path): the learner builds the whole merged state dict on the CPU
  (``export_weights``), Ray carries it to the worker, which packs it to its engine process (``load_weights``);
* ``gloo`` (rlvr_temp.weights.sync / rlvr_temp.weights.gloo): the learner streams the weights module by module from
its
  device in packed buckets straight into every vLLM worker process (``init_weight_sync`` once, then
  ``sync_weights``); the engine loads them with vLLM's layerwise reload.

Reported: median seconds per round over interleaved repetitions, and the bytes one round moves (the weights'
payload; the object-store path moves them three times: the learner's put, the worker's get and the RPC to the
engine process). After the last round the engine's greedy output is compared between the two paths (the same
weights must give the same tokens).

    python -m benchmarks.bench_sync                 # 5 repetitions
    python -m benchmarks.bench_sync --reps 3 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json


def run(reps: int) -> dict[str, Any]:
    import ray

    from benchmarks import trl_grpo
    from rlvr_temp.config.schema import load_config
    from rlvr_temp.driver.launch import remote_learner
    from rlvr_temp.engine.worker import remote_worker
    from rlvr_temp.weights.base import BUCKET_BYTES
    from rlvr_temp.weights.clients import RayEnginesClient

    tmp = tempfile.mkdtemp(prefix="rlvr_bench_sync_")
    model, n_params = trl_grpo.build_model(Path(tmp) / "model")
    cfg = load_config(
        "recipes/demo/base.yaml",
        [f"model.path={model}", "learner.mode=lora", f"trainer.run_dir={tmp}/run", "rollout.engine.weight_sync=gloo"],
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        learner = remote_learner(1, 0).remote(str(model), cfg, num_threads=1)
        worker = remote_worker(1, 0).remote(str(model), cfg.model, cfg.rollout.engine, seed=0, num_threads=1)
        ray.get([learner.ping.remote(), worker.ping.remote()])
        t0 = time.perf_counter()
        ray.get(learner.init_weight_sync.remote(RayEnginesClient([worker], [1], "gloo"), "gloo", BUCKET_BYTES))
        connect_s = time.perf_counter() - t0

        def object_store() -> float:
            t = time.perf_counter()
            ray.get(worker.load_weights.remote(learner.export_weights.remote()))
            return time.perf_counter() - t

        def gloo() -> tuple[float, dict[str, float]]:
            t = time.perf_counter()
            stats = ray.get(learner.sync_weights.remote())
            return time.perf_counter() - t, stats

        object_store(), gloo()  # warm-up (the object-store path's dequantised-base cache, first-call costs)
        samples: dict[str, list[float]] = {"object_store": [], "gloo": []}
        stats: dict[str, float] = {}
        for rep in range(reps):
            for arm in ("object_store", "gloo") if rep % 2 == 0 else ("gloo", "object_store"):
                if arm == "gloo":
                    s, stats = gloo()
                else:
                    s = object_store()
                samples[arm].append(s)
        greedy = {}
        prompt = [trl_grpo.prompt_rows(model)[0]["prompt"]]
        for arm, fn in (("object_store", object_store), ("gloo", gloo)):
            fn()
            g = ray.get(worker.generate.remote(prompt, [[0.0]], max_tokens=16))
            greedy[arm] = g[0][0].token_ids
        state_bytes = sum(v.numel() * v.element_size() for v in ray.get(learner.export_weights.remote()).values())
    finally:
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "params": n_params,
        "reps": reps,
        "connect_s": connect_s,
        "median_s": med,
        "samples": samples,
        "speedup": med["object_store"] / med["gloo"],
        "gloo_bytes": stats.get("bytes"),
        "object_store_bytes_per_copy": state_bytes,
        "object_store_copies": 3,
        "greedy_equal": greedy["object_store"] == greedy["gloo"],
    }


def to_markdown(res: dict[str, Any]) -> str:
    mb = 1 / 2**20
    m = res["median_s"]
    lines = [
        "| path | s per round (median) | bytes moved per round | note |",
        "|---|---:|---:|---|",
        f"| object store (`export_weights` → Ray → `load_weights`) | {m['object_store']:.3f} | "
        f"{res['object_store_bytes_per_copy'] * mb:.1f} MiB × {res['object_store_copies']} | whole state dict on the "
        "learner's host, then copied to the worker and to its engine process |",
        f"| vLLM weight transfer, `gloo` (`sync_weights`) | {m['gloo']:.3f} | {res['gloo_bytes'] * mb:.1f} MiB × 1 | "
        "module by module from the learner's device, packed buckets, straight into the vLLM worker |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each path")
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    res = run(3 if args.quick else args.reps)
    print(to_markdown(res))
    print(
        f"\n{res['params'] / 1e6:.1f}M parameters; gloo {res['speedup']:.2f}x faster than the object store per round "
        f"(group set-up once: {res['connect_s']:.2f} s); greedy output equal after both: {res['greedy_equal']}"
    )
    return write_json(args.json, res)


if __name__ == "__main__":
    raise SystemExit(main())
