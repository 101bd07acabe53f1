"""rlvr_temp: reinforcement learning with verifiable rewards and control of the sampling temperature.

Token level (an entropy window decides which tokens are sampled hot and which cold) and rollout level (the
responses to one prompt are spread over several temperatures), in a Ray-orchestrated GRPO/DAPO loop with vLLM
rollouts and a (4-bit) LoRA learner. See README.md and docs/.

Importing the package drops the libraries' benign warnings (rlvr_temp.benign_logs) in whichever process imports
it -- the driver, a Ray actor, a vLLM worker -- before any of its modules imports bitsandbytes or vLLM.
"""

from rlvr_temp.benign_logs import drop_benign_warnings

__version__ = "0.1.0"

drop_benign_warnings()
