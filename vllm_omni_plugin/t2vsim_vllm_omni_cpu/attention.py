"""Diffusion attention on a CPU: vLLM-Omni's TORCH_SDPA backend, dispatched for this platform.

vLLM-Omni's attention implementations pick `forward_cuda`, `forward_npu`, ... by platform and have
no CPU branch; this backend runs the same `torch.nn.functional.scaled_dot_product_attention` path
(`SDPAImpl._forward_impl` with the CUDA mask layout) whatever the platform.
"""

from __future__ import annotations

from vllm_omni.diffusion.attention.backends.sdpa import SDPABackend, SDPAImpl


class CpuSDPAImpl(SDPAImpl):
    def forward(self, query, key, value, attn_metadata=None):
        return self._forward_impl(query, key, value, attn_metadata, mask_mode="broadcast_k")


class CpuSDPABackend(SDPABackend):
    @staticmethod
    def get_name() -> str:
        return "SDPA"

    @staticmethod
    def get_impl_cls() -> type[SDPAImpl]:
        return CpuSDPAImpl
