"""`CpuOmniPlatform`: vLLM's CpuPlatform with the Omni interface answered for one CPU "device".

What it changes against vLLM-Omni's defaults: one device is reported (the process's CPU), device
selection, synchronisation and memory statistics are no-ops or report host memory, torch inductor
is off (eager, as `--enforce-eager`), and diffusion attention goes to plain torch SDPA.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from vllm.platforms.cpu import CpuPlatform

from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum


def _host_memory() -> tuple[int, int]:
    """(free, total) bytes of host memory."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)
    except Exception:  # pragma: no cover
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    _omni_enum = OmniPlatformEnum.OOT
    device_control_env_var = "T2VSIM_VLLM_OMNI_CPU_DEVICES"

    @classmethod
    def get_omni_ar_worker_cls(cls) -> str:
        return "vllm.v1.worker.cpu_worker.CPUWorker"

    @classmethod
    def get_omni_generation_worker_cls(cls) -> str:
        return "vllm.v1.worker.cpu_worker.CPUWorker"

    @classmethod
    def get_default_stage_config_path(cls) -> str:
        return "vllm_omni/deploy"

    @classmethod
    def get_diffusion_attn_backend_cls(cls, selected_backend: str | None, head_size: int,
                                       allow_trtllm_default: bool = False) -> str:
        if selected_backend is not None and selected_backend.upper() != "TORCH_SDPA":
            raise ValueError(f"the CPU platform runs diffusion attention with TORCH_SDPA only, got {selected_backend!r}")
        return "t2vsim_vllm_omni_cpu.attention.CpuSDPABackend"

    @classmethod
    def supports_diffusion_dense_flash_attention(cls) -> bool:
        return False

    @classmethod
    def supports_torch_inductor(cls) -> bool:
        return False

    @classmethod
    def supports_talker_mtp_graph_capture(cls) -> bool:
        return False

    @classmethod
    def get_torch_device(cls, local_rank: int | None = None) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def get_device_count(cls) -> int:
        return 1

    @classmethod
    def get_device_version(cls) -> str | None:
        return None

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        return None

    @classmethod
    def synchronize(cls) -> None:
        return None

    @classmethod
    def empty_cache(cls) -> None:
        return None

    @classmethod
    def is_available(cls) -> bool:
        return False  # no accelerator: callers skip cache flushes meant for device memory

    @classmethod
    def get_free_memory(cls, device: torch.device | None = None) -> int:
        return _host_memory()[0]

    @classmethod
    def get_device_memory(cls, device: torch.device | None = None) -> tuple[int, int]:
        return _host_memory()

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return _host_memory()[1]

    @classmethod
    def memory_reserved(cls, device: Any = None) -> int:
        return 0

    @classmethod
    def max_memory_allocated(cls, device: Any = None) -> int:
        return 0

    @classmethod
    def max_memory_reserved(cls, device: Any = None) -> int:
        return 0

    @classmethod
    def reset_peak_memory_stats(cls, device: Any = None) -> None:
        return None

    @classmethod
    def is_initialized(cls) -> bool:
        return True

    @classmethod
    def set_device_control_env_var(cls, devices: str | int | None) -> None:
        return None

    @classmethod
    def unset_device_control_env_var(cls) -> None:
        return None
