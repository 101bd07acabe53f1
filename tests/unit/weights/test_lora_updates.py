"""LoRA-only updates (``rollout.engine.lora_updates``): the recipes it refuses, the driver's order of calls (the base
once per transfer group, then adapters every round), and a real vLLM CPU engine serving a QLoRA learner's
dequantised base plus its adapters, whose greedy tokens equal transformers' on the merged policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import ray

from rlvr_temp.config.schema import ConfigError, load_config
from rlvr_temp.engine.settings import lora_rank_slot
from rlvr_temp.weights.sync import EngineSync

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "overrides, why",
    [
        (["learner.mode=full"], "learner.mode is full"),
        (["temperature.mode=learned"], "the learned temperature mode"),
        (["rollout.engine.weight_sync=object_store"], "object_store weight sync"),
        (["ray.rollout_gpus=1", "ray.learner_gpus=1"], "sleep mode (level 2 discards the base"),
    ],
)
def test_lora_updates_are_refused_where_no_adapter_or_no_base_is_kept(overrides, why):
    with pytest.raises(ConfigError, match="lora_updates is not possible with") as err:
        load_config("recipes/demo/base.yaml", ["rollout.engine.lora_updates=true", *overrides])
    assert why in str(err.value) and "\n" not in str(err.value)
    # the GPU split layout keeps the engines awake: allowed there
    load_config("recipes/gpu/qwen_math_token.yaml", ["rollout.engine.lora_updates=true"])


def test_lora_rank_slots_are_the_ranks_vllm_takes():
    assert [lora_rank_slot(r) for r in (1, 2, 8, 16, 17, 64, 512)] == [1, 8, 8, 16, 32, 64, 512]
    with pytest.raises(ValueError, match="above vLLM's largest LoRA rank"):
        lora_rank_slot(513)


def test_the_base_goes_once_per_group_then_adapters_every_round(monkeypatch, tmp_path):
    calls: list[str] = []

    def remote(name, result=None):
        def call(*args, **kwargs):
            calls.append(f"{name}{sorted(kwargs) if name == 'init' else ''}")
            return result

        return types.SimpleNamespace(remote=call)

    learner = types.SimpleNamespace(
        init_weight_sync=remote("init"),
        sync_weights=remote("base", {"bytes": 9.0}),
        save_adapters=remote("adapters", ("/runs/x/adapters/v000001", {"bytes": 3.0, "params": 2.0})),
    )
    worker = types.SimpleNamespace(
        shutdown_weight_transfer_engine=remote("leave"), load_adapters=remote("load_adapters")
    )
    monkeypatch.setattr(ray, "get", lambda refs, **_: refs)
    cfg = load_config(
        "recipes/demo/base.yaml", ["rollout.engine.lora_updates=true", f"trainer.run_dir={tmp_path / 'run'}"]
    )
    sync = EngineSync(cfg, learner, [worker])
    assert sync.sync("L0", ["w0"]) == {"sync/bytes": 3.0, "sync/params": 2.0}
    sync.sync("L0", ["w0"])
    sync.sync("L0", ["w0-restarted"])  # a restarted engine: a new group, and the base again
    round_ = ["adapters", "load_adapters"]
    connect = ["leave", "init['base_only']", "base"]
    assert calls == connect + round_ + round_ + connect + round_
    assert sync.version == 3 and sync.adapters == str((tmp_path / "run" / "adapters").resolve())


@pytest.mark.slow
def test_engine_with_base_and_adapters_equals_the_merged_policy(tiny_model_path: str, tmp_path):
    """A QLoRA learner (NF4 base) with perturbed adapters; a rollout worker built for LoRA-only updates loads the
    learner's dequantised base (no delta merged) and then its adapters, twice: after each, its greedy tokens equal
    transformers' on the learner's merged export, and only the newest two adapter versions stay on disk."""
    script = textwrap.dedent(
        f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from vllm import SamplingParams
        from rlvr_temp.config.schema import load_config
        from rlvr_temp.engine.worker import RolloutWorker
        from rlvr_temp.learner.learner import Learner
        from rlvr_temp.weights import source
        from tests.unit.weights.test_weight_sync import PROMPTS, _hf_greedy

        path, root = {tiny_model_path!r}, {str(tmp_path / "adapters")!r}
        cfg = load_config("recipes/demo/base.yaml", ["rollout.engine.lora_updates=true", "learner.lora_r=8",
                                                     "rollout.engine.multiprocess=false"])
        learner = Learner(path, cfg)
        engine = cfg.rollout.engine.model_copy(update={{"weight_sync": "gloo", "sleep_mode": False}})
        worker = RolloutWorker(path, cfg.model, engine, lora_rank=cfg.learner.lora_r)
        worker.load_weights(source.export_state(learner.model, learner.export_dtype, merge_lora=False))
        tok = AutoTokenizer.from_pretrained(path)
        out = {{}}
        for version in (1, 2, 3):
            g = torch.Generator().manual_seed(version)
            with torch.no_grad():
                for n, p in learner.model.named_parameters():
                    if "lora_B" in n:
                        p.copy_(0.5 * torch.randn(p.shape, generator=g))
            where, stats = learner.save_adapters(root, version)
            worker.load_adapters(where, version)
            got = [list(o.outputs[0].token_ids) for o in worker.llm.generate(
                PROMPTS, SamplingParams(temperature=0, max_tokens=16), lora_request=worker.lora_request,
                use_tqdm=False)]
            ref_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            ref_model.load_state_dict(learner.export_weights(), strict=False)
            out[version] = dict(got=got, ref=_hf_greedy(ref_model.eval(), tok), stats=stats)
        import os
        out["kept"] = sorted(os.listdir(root))
        print("RESULT" + json.dumps(out))
        """
    )
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT") :])
    for version in ("1", "2", "3"):
        assert res[version]["got"] == res[version]["ref"], version
        assert res[version]["stats"]["params"] > 0 and res[version]["stats"]["bytes"] > 0
    assert res["1"]["got"] != res["2"]["got"]  # the adapters changed what the engine generates
    assert res["kept"] == ["v000002", "v000003"]
