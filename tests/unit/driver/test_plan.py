"""`rlvr-temp plan` (rlvr_temp/driver/plan.py): model shapes from the bundled configs, every shipped GPU recipe at
the cluster shape its header documents, the three refusals (NCCL group with two ranks on one GPU, memory over the
GPU, a KV cache too small) in one line each, `train`'s pre-start check, and docs/cluster.md's launch lines."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from rlvr_temp.cli import main, parse_args
from rlvr_temp.config.schema import load_config
from rlvr_temp.driver.plan import PlanError, check_ray_cluster, model_shape, plan_cluster, plan_run

ROOT = Path(__file__).resolve().parents[3]
GPU = ROOT / "recipes/gpu"
H100 = 79.6  # GiB: what an "80 GB" H100 reports
GPU_RECIPES = sorted(p.name for p in GPU.glob("*.yaml") if load_config(p).uses_gpus())

# The shape each recipe's header documents: *_1gpu one GPU, *_8gpu one node x 8, *_2x8gpu two nodes x 8; the
# others (qwen_math_base.yaml / r1_distill_base.yaml, layout split) "a GPU each for the engine and the learner".
SHAPES = {
    "qwen_math_token_1gpu.yaml": (1, 1),
    "qwen_math_token_8gpu.yaml": (1, 8),
    "qwen_math_token_2x8gpu.yaml": (2, 8),
}


# What the shipped recipes still need for refusal (c): their KV cache cannot hold max_num_seqs x max_model_len (at
# gpu_memory_utilization 0.3 / 0.45; the R1 recipes' 512 x 9,216 tokens fit no 80 GB GPU). Reported with this
# planner; drop an entry once its recipe carries the values (the test accepts both).
def shape_args(recipe: str) -> list[str]:
    nodes, gpus = SHAPES.get(recipe, (1, 2))
    return ["--nodes", str(nodes), "--gpus-per-node", str(gpus), "--gpu-mem-gib", str(H100)]


def test_model_shapes_of_the_bundled_configs():
    qm = model_shape("/models/Qwen2.5-Math-1.5B")
    assert qm.source == "bundled Qwen2.5-Math-1.5B.json" and qm.tied
    assert qm.params == 1_543_714_304  # "1.54B" with the tied head counted once
    assert qm.params * 2 == 3_087_428_608  # bytes per sync in bf16: 3.09 GB
    assert qm.kv_bytes_per_token(2) == 2 * 28 * 2 * 128 * 2 == 28 * 1024  # 28 KiB per token
    assert qm.lora_params(64, list(qm.linears())) == 73_859_072  # r 64 on the 7 projections
    assert model_shape("Qwen/Qwen2.5-Math-1.5B") == qm  # a hub id finds it by its name too
    r1 = model_shape("/models/DeepSeek-R1-Distill-Qwen-1.5B")
    assert not r1.tied and r1.params == 1_777_088_000 and r1.max_positions == 131072
    q7 = model_shape("/models/Qwen2.5-Math-7B")
    assert q7.params == 7_615_616_512 and q7.kv_bytes_per_token(2) == 56 * 1024
    assert model_shape("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").params == q7.params
    with pytest.raises(PlanError, match="no bundled config 'Llama-9B'"):
        model_shape("/models/Llama-9B")


def test_a_local_model_directory_is_read_from_its_config(tmp_path):
    cfg = {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "intermediate_size": 384,
        "vocab_size": 128,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
        "model_type": "llama",
    }  # fmt: skip  (the tiny model's shapes)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = model_shape(str(tmp_path))
    assert m.source == str(tmp_path / "config.json") and not m.qkv_bias
    assert m.params == 4 * (4 * 128 * 128 + 3 * 128 * 384 + 2 * 128) + 128 + 128 * 128
    assert m.kv_bytes_per_token(4) == 2 * 4 * 4 * 32 * 4


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_every_shipped_gpu_recipe_plans_at_its_documented_shape(recipe, capsys, error_line):
    path = str(GPU / recipe)
    assert main(["plan", path, *shape_args(recipe)]) == 0  # as shipped
    out = capsys.readouterr()
    assert out.err == "" and "weight sync" in out.out
    plan = plan_run(load_config(path, []), *SHAPES.get(recipe, (1, 2)), H100)
    assert plan.weight_sync == ("ipc" if recipe in SHAPES else "nccl")
    assert plan.sleep_level == (2 if recipe in SHAPES else 0) and plan.host_bytes_per_step == 0
    assert max(g.need_gib for g in plan.gpus) <= H100
    assert plan.memory.kv_tokens >= plan.memory.kv_needed_tokens
    assert plan.sync_bytes == plan.model.params * 2


def test_the_one_gpu_plan_in_numbers(capsys):
    cfg = load_config(GPU / "qwen_math_token_1gpu.yaml", [])
    plan = plan_run(cfg, 1, 1, H100)
    assert [(g.gpu, g.procs) for g in plan.gpus] == [("n0:g0", ["engine 0 tp0", "learner 0"])]
    assert [(g.name, g.backend) for g in plan.groups] == [("weight transfer n0:g0", "ipc")]
    mem = plan.memory
    assert mem.kv_bytes_per_token == 28 * 1024 and mem.learner_tokens == 16384
    assert mem.kv_needed_tokens == 512 * 4096  # max_num_seqs x max_model_len
    assert 2.8 < mem.engine_weights_gib < 2.9  # 3.09 GB of bf16 weights
    assert 3.0 < mem.learner_static_gib < 3.3  # NF4 0.68 GB + fp32 embed 0.93 GB + LoRA/Adam 1.18 GB + context
    assert 35 < mem.learner_peak_gib < 37  # + 3 x 16,384 x 151,936 x 4 bytes of logits (27.8 GiB) + activations
    # sleep level 2: the engine's share and the learner's peak never meet on the GPU
    assert plan.gpus[0].need_gib == plan.gpus[0].generate_gib < mem.engine_share_gib + mem.learner_peak_gib
    assert main(["plan", str(GPU / "qwen_math_token_1gpu.yaml"), *shape_args("qwen_math_token_1gpu.yaml"),
                "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["sync_bytes"] == 3_087_428_608 and doc["host_bytes_per_step"] == 0


REFUSALS = {  # overrides of the 1-GPU recipe (with its KV fix) -> the one line each must print
    "nccl": (["rollout.engine.weight_sync=nccl"], "NCCL refuses two ranks of one group on one GPU"),
    "memory": (["rollout.engine.sleep_mode=false"], "plan: GPU n0:g0 needs ~"),
    "kv": (["rollout.engine.max_num_seqs=1024"], "plan: an engine's KV cache holds ~"),
}


@pytest.mark.gpu_contract
@pytest.mark.parametrize("kind", REFUSALS)
def test_impossible_plans_are_refused_in_one_line(kind, capsys, error_line):
    recipe = GPU / "qwen_math_token_1gpu.yaml"
    overrides, message = REFUSALS[kind]
    assert main(["plan", str(recipe), *shape_args(recipe.name), *overrides]) == 2
    line = error_line(capsys.readouterr().err)
    assert message in line
    with pytest.raises(PlanError) as err:
        plan_run(load_config(recipe, overrides), 1, 1, H100)
    assert message in str(err.value) and "\n" not in str(err.value)
    if kind == "nccl":  # the learner (rank 0) and engine 0 share GPU 0: the transfer group's NCCL init would fail
        assert "learner 0 and engine 0 tp0 on GPU n0:g0" in line
    if kind == "memory":  # no sleep: the engine's 63.7 GiB share stays while the learner peaks at ~36 GiB
        assert "needs ~99.9 GiB (generating 67.3, learning 99.9" in line
    if kind == "kv":  # 1,024 sequences x 4,096 tokens against ~2.2 M tokens of cache
        assert "1024 sequences x 4,096 tokens need 4,194,304" in line


@pytest.mark.gpu_contract
@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_colocated_multi_rank_never_puts_two_nccl_ranks_on_one_gpu(recipe):
    base = load_config(GPU / recipe)
    planned = 0
    for nodes, gpus in [(1, 1), (1, 8), (2, 8), (4, 8)]:
        total = nodes * gpus
        variants = [[]]
        if base.resources.layout == "colocated":  # also as many ranks as GPUs, and two engines per rank
            variants += [[f"rollout.num_workers={n}", f"resources.learner_ranks={total}"] for n in (total, 2 * total)]
            variants += [
                [f"rollout.num_workers={total}", f"resources.learner_ranks={total}", "resources.strategy=SPREAD"]
            ]
        for overrides in variants:
            cfg = load_config(GPU / recipe, overrides)
            try:
                plan = plan_cluster(cfg, [gpus] * nodes)
            except PlanError as exc:  # the recipe does not fit this shape (too few GPUs): allowed
                assert "does not fit" in str(exc) or "STRICT_PACK" in str(exc), str(exc)
                continue
            planned += 1
            for group in plan.groups:
                gpus_of = [g for _, g in group.members]
                if group.backend == "nccl":
                    assert len(set(gpus_of)) == len(gpus_of), (recipe, nodes, gpus, overrides, group)
                if group.backend == "ipc":  # one GPU, its learner rank first, then that GPU's engines
                    assert len(set(gpus_of)) == 1 and group.members[0][0].startswith("learner")
            assert plan.weight_sync == ("ipc" if cfg.resources.layout == "colocated" else "nccl")
            if cfg.resources.layout == "colocated":  # forcing NCCL there is refused, in one line
                cfg.rollout.engine.weight_sync = "nccl"
                with pytest.raises(PlanError, match="NCCL refuses two ranks of one group on one GPU"):
                    plan_cluster(cfg, [gpus] * nodes)
    assert planned >= 1


@pytest.mark.gpu_contract
def test_train_checks_the_plan_before_it_starts_any_actor(tmp_path, monkeypatch):
    import ray

    import rlvr_temp.driver.trainer as trainer_mod

    cpu = load_config(ROOT / "recipes/demo/base.yaml")
    monkeypatch.setattr(ray, "nodes", lambda: pytest.fail("a CPU recipe asked Ray for GPUs"))
    assert check_ray_cluster(cpu) is None  # CPU runs: unaffected
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Alive": False, "Resources": {"GPU": 8.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    gpu = load_config(GPU / "qwen_math_token_1gpu.yaml")
    assert [g.procs for g in check_ray_cluster(gpu).gpus] == [["engine 0 tp0", "learner 0"]]  # no memory check
    forced = ["resources.bundle_gpus=1", "rollout.engine.weight_sync=nccl", f"trainer.run_dir={tmp_path / 'run'}"]
    cfg = load_config(ROOT / "recipes/demo/base.yaml", forced)
    monkeypatch.setattr(trainer_mod, "init_ray", lambda cfg: None)
    monkeypatch.setattr(trainer_mod, "start_workers", lambda *a, **k: pytest.fail("an actor started"))
    with pytest.raises(PlanError, match="NCCL refuses two ranks of one group on one GPU"):
        trainer_mod.Trainer(cfg)


def _doc_command_lines() -> list[list[str]]:
    """Every `rlvr-temp train` / `rlvr-temp plan` command in docs/cluster.md's bash blocks, as argv after
    `rlvr-temp` (continuation lines joined; `ray job submit ... -- rlvr-temp ...` and `... && rlvr-temp ...`)."""
    text = (ROOT / "docs/cluster.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            starts = [i for i, w in enumerate(words) if w == "rlvr-temp"]
            if starts and words[starts[-1] + 1 : starts[-1] + 2] in (["train"], ["plan"]):
                out.append(words[starts[-1] + 1 :])
    return out


def test_the_launch_lines_in_the_cluster_doc_parse():
    commands = _doc_command_lines()
    recipes = set()
    for argv in commands:
        args = parse_args(argv)
        assert args.command in ("train", "plan") and (ROOT / args.recipe).is_file(), argv
        cfg = load_config(ROOT / args.recipe, args.overrides)  # every override is a valid key and value
        recipes.add((args.command, Path(args.recipe).name))
        if args.command == "plan":
            assert plan_run(cfg, args.nodes, args.gpus_per_node, args.gpu_mem_gib).gpus
    for name in SHAPES:  # the one-GPU, one-node and two-node launch lines, and their plans
        assert ("train", name) in recipes and ("plan", name) in recipes, name
    job = [a for a in commands if "qwen_math_token_2x8gpu.yaml" in " ".join(a) and a[0] == "train"]
    assert any(o.startswith("model.path=/") for a in job for o in a) and any(
        o.startswith("trainer.run_dir=/") for a in job for o in a
    )
