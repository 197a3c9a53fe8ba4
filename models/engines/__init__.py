"""Inference engines besides the in-process diffusers pipeline of `models.engine`.

`Runtime.engine` picks one: `diffusers` (the default, `models.engine.generate`) or `vllm-omni`
(`models.engines.vllm_omni`: a vLLM-Omni server in its own environment, talked to over its video
API). Both load the same weights: a random preset is saved once as a local diffusers directory
(`models.engines.preset_dir`).
"""

ENGINES: tuple[str, ...] = ("diffusers", "vllm-omni")
