"""`rlvr-temp` command line: one subcommand per job, each a thin wrapper over a library function.

Each subcommand imports its module when it runs, so that `validate`, `config-docs` and `--help` answer at once,
without loading torch, Ray or vLLM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from rlvr_temp import __version__
from rlvr_temp.config.recipe import read_yaml
from rlvr_temp.config.reference import config_reference
from rlvr_temp.config.schema import ConfigError, EvalConfig, TokenRuleConfig, format_validation, load_config

if TYPE_CHECKING:
    from rlvr_temp.driver.plan import Plan

EXIT_USAGE = 2  # bad recipe, override or argument


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"rlvr-temp: error: {msg}", file=sys.stderr)
    return code


def recipe_kind(recipe: str) -> str:
    """``sft`` for a TGR supervised recipe (it has a ``ttm`` section, after ``base:`` inheritance), else ``rl``."""
    return "sft" if "ttm" in read_yaml(Path(recipe).resolve(), ()) else "rl"


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a recipe of either kind against its own schema and print the resolved config."""
    if recipe_kind(args.recipe) == "sft":
        from rlvr_temp.learner.tgr_recipe import load_tgr_config

        tgr = load_tgr_config(args.recipe, args.overrides)
        print(f"# {args.recipe}: valid TGR supervised recipe (rlvr-temp sft)")
        print(tgr.to_yaml(), end="")
        return 0
    cfg = load_config(args.recipe, args.overrides)
    for warning in cfg.warnings():
        print(f"rlvr-temp: warning: {warning}", file=sys.stderr)
    print(f"# {args.recipe}: valid, hash {cfg.hash()}")
    print(cfg.to_yaml(), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan a recipe on a GPU cluster shape: processes and groups per GPU, memory, sync bytes (no GPU needed)."""
    import dataclasses
    import json

    from rlvr_temp.driver.plan import PlanError, plan_run

    cfg = load_config(args.recipe, args.overrides)
    try:
        plan = plan_run(cfg, args.nodes, args.gpus_per_node, args.gpu_mem_gib)
    except PlanError as exc:
        return _fail(str(exc))
    print(json.dumps(dataclasses.asdict(plan), indent=1) if args.json else format_plan(plan, args.recipe))
    return 0


def format_plan(plan: Plan, title: str) -> str:
    """`rlvr-temp plan`'s readable output: one row per GPU, the groups, the estimates and totals."""
    mem, m = plan.memory, plan.model
    shape = "+".join(str(g) for g in plan.gpus_per_node) if len(set(plan.gpus_per_node)) > 1 else plan.gpus_per_node[0]
    lines = [
        f"plan {title}: {plan.nodes} node(s) x {shape} GPU(s)" + (f", {plan.gpu_mem_gib:g} GiB each" if mem else "")
    ]
    if m is not None:
        lines.append(f"model {m.name} ({m.source}): {m.params / 1e9:.3f} G params, tied head {m.tied}")
    lines.append(f"layout {plan.layout}, weight sync {plan.weight_sync}, sleep level {plan.sleep_level}")
    lines += ["", f"{'GPU':<8} {'gen GiB':>8} {'learn GiB':>9} {'need GiB':>8}  processes"]
    for g in plan.gpus:
        nums = [f"{v:.1f}" if v is not None else "-" for v in (g.generate_gib, g.learn_gib, g.need_gib)]
        lines.append(f"{g.gpu:<8} {nums[0]:>8} {nums[1]:>9} {nums[2]:>8}  {', '.join(g.procs) or 'idle'}")
    lines += ["", "groups:"]
    for grp in plan.groups:
        who = ", ".join(f"{label}@{g}" for label, g in grp.members)
        lines.append(f"  {grp.name} [{grp.backend}, {len(grp.members)} ranks]: {who}")
    if mem is not None and plan.sync_bytes is not None:
        engines = len({p.index for p in plan.procs if p.role == "engine"})
        lines += [
            "",
            f"engine (per TP rank): share {mem.engine_share_gib:.1f} GiB = weights {mem.engine_weights_gib:.2f} + "
            f"activations {mem.engine_activations_gib:.2f} + KV {mem.kv_cache_gib:.1f} GiB "
            f"({mem.kv_tokens:,} tokens at {mem.kv_bytes_per_token // 1024} KiB; needs {mem.kv_needed_tokens:,})",
            f"learner (per rank): static {mem.learner_static_gib:.1f} GiB, peak {mem.learner_peak_gib:.1f} GiB at "
            f"{mem.learner_tokens:,} tokens per micro-batch",
            f"weight sync: {plan.sync_bytes / 1e9:.2f} GB per engine per step; host bytes per step: "
            f"{plan.host_bytes_per_step / 1e9:.2f} GB",
            f"totals: {sum(1 for g in plan.gpus if g.procs)} of {len(plan.gpus)} GPUs used, {len(plan.procs)} "
            f"processes, highest need {max(g.need_gib or 0 for g in plan.gpus):.1f} GiB on one GPU, "
            f"{plan.sync_bytes * engines / 1e9:.2f} GB synced per step",
        ]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def cmd_config_docs(args: argparse.Namespace) -> int:
    text = config_reference()
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from rlvr_temp.data.tiny_model import ensure_tiny_model

    path = ensure_tiny_model(out_dir=args.out, seed=args.seed, force=args.force)
    print(f"tiny model ready: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rlvr_temp.driver.trainer import train

    cfg = load_config(args.recipe, args.overrides)
    if args.ray_address:
        cfg.ray.address = args.ray_address
    train(cfg)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rlvr_temp.driver.sweep import SweepError, run_sweep

    words = [*args.recipes, *args.overrides]  # argparse leaves KEY=VALUE words among the recipes
    recipes, overrides = [w for w in words if "=" not in w], [w for w in words if "=" in w]
    try:
        return run_sweep(recipes, args.seeds, overrides, out=args.out, ray_address=args.ray_address, force=args.force)
    except SweepError as exc:
        return _fail(str(exc))


def cmd_demo(args: argparse.Namespace) -> int:
    from rlvr_temp.driver.demo import run_demo

    run_demo(out_dir=args.out, steps=args.steps)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rlvr_temp.evaluation.compare import compare_runs

    try:
        paths = compare_runs(
            args.runs,
            args.out,
            metrics=args.metric or None,
            smooth=args.smooth,
            group_by=args.group_by,
            baseline=args.baseline,
            step=args.step,
        )
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    print(f"plot:  {paths['plot']}\ntable: {paths['table']}\nreport: {paths['report']}")
    if "pass_at_k" in paths:
        print(f"pass@k: {paths['pass_at_k']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rlvr_temp.learner.export import export_run

    out = export_run(args.run, args.out, step=args.step)
    print(f"exported {args.run} -> {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlvr_temp.evaluation.evaluate import evaluate_model, format_table, write_results

    rule = None
    if args.t_low is not None or args.t_high is not None:
        if args.t_low is None or args.t_high is None:
            return _fail("--t-low and --t-high go together (the token rule)")
        rule = TokenRuleConfig(
            t_low=args.t_low, t_high=args.t_high, hot_fraction=args.hot_fraction, window=args.window, scope=args.scope
        )
    try:
        ev = EvalConfig(
            datasets=[d.strip() for d in args.data.split(",") if d.strip()],
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            limit=args.limit,
            max_tokens=args.max_tokens,
        )
    except ValidationError as exc:
        return _fail(format_validation(exc, "eval options"))
    results = evaluate_model(
        args.model, ev, template=args.template, token_rule=rule, seed=args.seed, max_model_len=args.max_model_len
    )
    print(format_table(results))
    if args.out:
        print(f"wrote {write_results(results, args.out, vars(args) | {'func': None})}")
    return 0


def cmd_show_rollout(args: argparse.Namespace) -> int:
    from rlvr_temp.evaluation.show import render

    paths = render(args.run, args.step, args.index, args.out)
    print(f"html: {paths['html']}\npng:  {paths['png']}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from rlvr_temp.learner.tgr import main_sft

    return main_sft(args.recipe, args.overrides)


def _recipe_args(s: argparse.ArgumentParser, what: str = "recipe YAML") -> argparse.ArgumentParser:
    s.add_argument("recipe", help=what)
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.total_steps=50")
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr-temp",
        description="RLVR (GRPO/DAPO) with token- and rollout-level sampling-temperature control.",
    )
    p.add_argument("--version", action="version", version=f"rlvr-temp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = _recipe_args(sub.add_parser("train", help="train a policy from a recipe YAML"))
    s.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS or local)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="train every recipe x seed, resumably (side by side on a Ray cluster)")
    s.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe YAMLs, then KEY=VALUE overrides for every run")
    s.add_argument("--seeds", type=int, required=True, help="seeds 0..N-1 (trainer.seed) per recipe")
    s.add_argument("--out", default="runs/sweep", help="sweep directory: sweep.json and <recipe>/seed<k> runs")
    s.add_argument("--ray-address", default=None, help="run side by side on this Ray cluster (default: RAY_ADDRESS)")
    s.add_argument("--force", action="store_true", help="take over --out even if another sweep command started it")
    s.set_defaults(func=cmd_sweep, overrides=[])

    s = _recipe_args(sub.add_parser("sft", help="supervised TGR training (policy + TTM head)"), "TGR recipe YAML")
    s.set_defaults(func=cmd_sft)

    s = sub.add_parser("eval", help="avg@k / pass@k of a model or run on benchmarks")
    s.add_argument("--model", required=True, help="model directory, `tiny`, or a run directory (RUN or RUN@STEP)")
    s.add_argument("--data", default="aime24,amc23,math500", help="comma-separated bundled sets or `synthetic`")
    s.add_argument("--n", type=int, default=1, help="samples per problem (avg@n, pass@k for k <= n)")
    s.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (paper: 0.6)")
    s.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (paper: 0.95)")
    s.add_argument("--max-tokens", type=int, default=1024, help="maximum response tokens")
    s.add_argument("--max-model-len", type=int, default=None, help="engine context length (default: the model's)")
    s.add_argument("--limit", type=int, default=None, help="first N problems of each set")
    s.add_argument("--template", default=None, help="prompt template (default: the run's, or the standard one)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="write results as JSON here")
    g = s.add_argument_group("token rule (off unless --t-low/--t-high are given)")
    g.add_argument("--t-low", type=float, default=None)
    g.add_argument("--t-high", type=float, default=None)
    g.add_argument("--hot-fraction", type=float, default=0.2)
    g.add_argument("--window", type=int, default=100_000)
    g.add_argument("--scope", choices=["global", "sequence"], default="global")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("compare", help="plot and tabulate runs side by side")
    s.add_argument("runs", nargs="+", help="run directories (with metrics.jsonl), or a sweep / demo folder")
    s.add_argument("--metric", action="append", help="metric to plot (repeatable; default: reward, acc, ...)")
    s.add_argument("--smooth", type=int, default=1, help="moving-average window")
    s.add_argument("--out", default="runs/compare", help="output directory")
    s.add_argument(
        "--group-by",
        default=None,
        metavar="KEY",
        help="dotted config key naming each run's arm, e.g. temperature.mode (default: trainer.name, else the "
        "directory name, seed suffix stripped)",
    )
    s.add_argument("--baseline", default=None, metavar="ARM", help="arm the others are compared to (default: fixed)")
    s.add_argument("--step", type=int, default=None, help="held-out evaluation step (default: latest common)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("demo", help="build the tiny model, train the demo arms, compare them")
    s.add_argument("--out", default="runs/demo", help="output directory")
    s.add_argument("--steps", type=int, default=None, help="steps per arm (default: the recipes')")
    s.set_defaults(func=cmd_demo)

    s = _recipe_args(sub.add_parser("validate", help="check a recipe and print the resolved config"))
    s.set_defaults(func=cmd_validate)

    s = _recipe_args(sub.add_parser("plan", help="plan a GPU recipe on a cluster shape: placement, groups, memory"))
    s.add_argument("--nodes", type=int, default=1, help="nodes in the cluster")
    s.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node")
    s.add_argument("--gpu-mem-gib", type=float, required=True, help="memory of one GPU in GiB (H100 80GB: 79.6)")
    s.add_argument("--json", action="store_true", help="print the plan as JSON")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("make-tiny-model", help="build (or reuse) the embedded tiny model")
    s.add_argument("--out", default=None, help="output directory (default: the cache)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="rebuild even if cached")
    s.set_defaults(func=cmd_make_tiny_model)

    s = sub.add_parser("show-rollout", help="render one response coloured by token temperature and entropy")
    s.add_argument("run", help="run directory (trained with rollout.dump=true)")
    s.add_argument("--step", type=int, required=True)
    s.add_argument("--index", type=int, default=0, help="response index within the step's dump")
    s.add_argument("--out", default=None, help="output directory (default: RUN/views)")
    s.set_defaults(func=cmd_show_rollout)

    s = sub.add_parser("export", help="write a run's checkpoint as a merged Hugging Face model")
    s.add_argument("run", help="run directory")
    s.add_argument("out", help="output model directory")
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("config-docs", help="print the configuration reference (markdown)")
    s.add_argument("--out", default=None, help="write to this file")
    s.set_defaults(func=cmd_config_docs)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line. Options may come before or after a recipe's KEY=VALUE overrides (argparse alone stops
    collecting a positional list at the first option): leftover KEY=VALUE words join the overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(w.startswith("-") or "=" not in w for w in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return EXIT_USAGE
    if args.command in ("train", "sweep", "demo", "eval"):  # before they start any process: all carry the run's
        from rlvr_temp.driver.reaper import start  # token, and go when this process goes (rlvr_temp.driver.reaper)

        start()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return _fail(str(exc))
    except Exception as exc:
        from rlvr_temp.checkpoint import ResumeError  # these import torch and Ray: only once something failed
        from rlvr_temp.driver.recovery import RunError

        if isinstance(exc, RunError):  # one line: step, actor, cause, where the traceback is
            return _fail(str(exc), 1)
        if isinstance(exc, (ResumeError, FileNotFoundError, ValueError)):
            return _fail(str(exc))
        raise
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
