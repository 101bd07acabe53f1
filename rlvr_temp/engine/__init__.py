"""The rollout side, in the rollout actor's process and in vLLM's worker processes: the rollout worker that owns a
vLLM engine (``worker``), the extension vLLM loads into its workers (``extension``), the temperature logits
processor -- one core (``processor``) under an adapter per vLLM model runner (``processor_v1``, ``processor_v2``)
-- the sampled tokens' log-probs it records (``sampled_logprobs``), and the TTM head inside vLLM for the
``learned`` mode (``ttm``). The names vLLM imports by string are ``extension.EXTENSION``, ``PROCESSOR_V1`` and
``PROCESSOR_V2``. Never imports the driver; no re-exports, so importing the package loads no vLLM."""
