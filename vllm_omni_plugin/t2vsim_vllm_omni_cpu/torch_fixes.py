"""Import fixes for the CUDA builds of torchvision and torchaudio that PyPI serves, on a CPU torch.

Loaded at interpreter start by a `.pth` file (scripts/vllm_omni_env.sh writes it); it imports
nothing heavy itself. It installs a meta-path hook that acts only when those modules are imported:

- `torchvision._meta_registrations` registers fake kernels for `torchvision::nms` and `qnms`;
  when torchvision's compiled library did not load (CUDA build on a CPU torch) those operators do
  not exist and `import torchvision` fails ("operator torchvision::nms does not exist"), which
  breaks `transformers` and so vLLM-Omni. The hook defines the missing schemas first (no kernels:
  nothing here calls them).
- `torchaudio._extension`: its compiled libraries do not load either; the hook lets the module
  import with the extension marked unavailable, as torchaudio does on platforms without one.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

# The operators torchvision 0.28 registers fake kernels for unconditionally (torchvision/
# _meta_registrations.py: `torch.library.register_fake("torchvision::nms")`, `"torchvision::qnms"`);
# the others are registered only when its library loaded (`extension._has_ops()`).
TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBS: list = []  # keep the Library objects alive


def define_missing_torchvision_ops() -> list[str]:
    """Define the schemas of torchvision operators that no loaded library provides; returns their names."""
    import torch

    missing = []
    for name, schema in TORCHVISION_SCHEMAS.items():
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            missing.append(schema)
    if missing:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in missing:
            lib.define(schema)
        _LIBS.append(lib)
    return [s.split("(", 1)[0] for s in missing]


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision._meta_registrations":
            define_missing_torchvision_ops()
        elif fullname == "torchaudio._extension":
            return _wrap(fullname, path, _torchaudio_fallback)
        return None


def _wrap(fullname, path, on_error):
    """The normal spec of `fullname`, with its module's execution falling back to `on_error`."""
    sys.meta_path.remove(_HOOK)
    try:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    finally:
        sys.meta_path.insert(0, _HOOK)
    if spec is None or spec.loader is None:
        return None
    loader = spec.loader
    exec_module = loader.exec_module

    def guarded(module):
        try:
            exec_module(module)
        except (OSError, ImportError, RuntimeError) as err:
            on_error(module, err)

    loader.exec_module = guarded
    return spec


def _torchaudio_fallback(module, err) -> None:
    """torchaudio's extension could not load its libraries: mark it unavailable, as torchaudio does
    where no extension is built (the audio features vLLM-Omni's video path never calls)."""
    module._IS_TORCHAUDIO_EXT_AVAILABLE = False
    module._IS_RIR_AVAILABLE = False
    module._IS_ALIGN_AVAILABLE = False

    def fail_if_no_rir(func):
        return func

    module.fail_if_no_rir = fail_if_no_rir
    module.fail_if_no_align = fail_if_no_rir
    module._check_cuda_version = lambda: None
    module.load_error = str(err)


_HOOK = _Hook()
if not any(isinstance(h, _Hook) for h in sys.meta_path):
    sys.meta_path.insert(0, _HOOK)
