"""The learner, in each learner rank's process (a Ray actor): the policy (``policy``: full / LoRA / NF4 + LoRA),
the ``Learner`` that updates it with log-probs at the rollout's per-token temperatures (``learner``, ``logprobs``)
and owns its state and checkpoint part (``state``), data parallelism over ranks (``parallel``, ``group``), shared
prompts (``prompt_share``), merged-model export (``export``), and the TGR seeds' supervised training (``tgr``,
``tgr_recipe``). Never imports the driver; no re-exports, so importing the package loads no bitsandbytes."""
