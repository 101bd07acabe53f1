"""rlvr_temp: reinforcement learning with verifiable rewards and control of the sampling temperature.

Token level (an entropy window decides which tokens are sampled hot and which cold) and rollout level (the
responses to one prompt are spread over several temperatures), in a Ray-orchestrated GRPO/DAPO loop with vLLM
rollouts and a (4-bit) LoRA learner. See README.md and docs/.
"""

__version__ = "0.1.0"
