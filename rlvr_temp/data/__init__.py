"""What a run starts from, read in the driver: prompt sets (``sources``: bundled sets, files, hub datasets), prompt
text and the resumable stream of batches (``prompts``), the model directory (``models``), and the embedded tiny
model with its synthetic arithmetic task (``tiny_model``, ``sft``, ``synthetic``). Nothing here imports Ray, vLLM
or the learner; the modules are imported by name (no re-exports), so a light one stays light."""
