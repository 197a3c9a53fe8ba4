"""Denoising schedules, so that two engines can be made to step through the same one.

Two engines that both claim "Wan2.2, N steps, shift S" do not compute the same trajectory:

- `engine` (diffusers): the directory's `UniPCMultistepScheduler` config (use_flow_sigmas) starts its
  sigmas at 1.0 (less 1e-6) and spaces them from 1 to 1/1000: 4 steps at shift 3 give timesteps
  999/900/750/500.
- `wan`: the native Wan2.2 `FlowUniPCMultistepScheduler` that vLLM-Omni (and the Wan reference code)
  builds itself, ignoring the directory's scheduler: sigmas from (1 - 1/1000) down to 0, then shifted,
  so the same request steps 999/899/749/499 with the first sigma 0.99967.

`WanNativeUniPCScheduler` is diffusers' own UniPC solver fed the native Wan sigmas (diffusers applies
the shift to sigmas passed in, in float64, exactly as the native scheduler does), so the diffusers
engine with `Runtime(schedule="wan")` steps through vLLM-Omni's schedule with diffusers' solver code.
The pinned runtime also pads the text context to vLLM-Omni's 512 rows (`WAN_TEXT_LEN`).
"""

from __future__ import annotations

from typing import Any

SCHEDULES: tuple[str, ...] = ("engine", "wan")
# The Wan reference code and vLLM-Omni pad every prompt's embeddings to 512 rows (zeros after the
# prompt's tokens); the tiny and small presets use a shorter context (64, 128). Under the pinned
# schedule the diffusers engine pads to 512 too, with the prompt still cut at the preset's limit.
WAN_TEXT_LEN = 512


def _wan_scheduler_class():
    import numpy as np
    from diffusers import UniPCMultistepScheduler

    class WanNativeUniPCScheduler(UniPCMultistepScheduler):
        """UniPC with the native Wan2.2 flow sigmas (vLLM-Omni's FlowUniPCMultistepScheduler)."""

        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
            if sigmas is None:
                n = self.config.num_train_timesteps
                # The native scheduler keeps its training sigmas in float32: sigma_max = float32(1 - 1/n).
                sigma_max = float(np.float32(1.0 - 1.0 / n))
                sigmas = np.linspace(sigma_max, 0.0, num_inference_steps + 1)[:-1]
            return super().set_timesteps(device=device, sigmas=sigmas, mu=mu)

    return WanNativeUniPCScheduler


_WAN_CLASS: list = []


def make_scheduler(config: dict[str, Any], shift: float, schedule: str = "engine"):
    """A fresh scheduler for one generation: `engine` is the directory's UniPC, `wan` the native one."""
    from diffusers import UniPCMultistepScheduler

    if schedule == "engine":
        return UniPCMultistepScheduler.from_config(config, flow_shift=shift)
    if schedule == "wan":
        if not _WAN_CLASS:
            _WAN_CLASS.append(_wan_scheduler_class())
        return _WAN_CLASS[0].from_config(dict(config, use_flow_sigmas=True, final_sigmas_type="zero"), flow_shift=shift)
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
