"""Changing a loaded pipeline for one generation and undoing it: every patch is registered on a
`contextlib.ExitStack` (the engine's pipeline session), so closing the stack restores the cached
pipeline however the generation ends.

- `experts(pipe)`: the transformer experts, each once (one-expert runs load the same module twice).
- `set_attr(stack, obj, name, value)`: an attribute for the session (swapped experts, schedulers).
- `patch_forward(stack, module, forward)`: an instance `forward` for the session (left alone when
  something else already overrides it); `forward_hook(stack, module, hook)`: a forward hook.
- `compile_session(stack, modules, mode)`: torch.compile'd forwards or repeated blocks for the session.
- `attention_backend(modules, backend)`: a diffusers attention backend for the block.
- `sync(device)`: wait for the device (timing).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

_MISSING = object()


def experts(pipe) -> list:
    """The pipeline's transformer experts (high-noise first), each once, None left out."""
    return list({id(m): m for m in (pipe.transformer, pipe.transformer_2) if m is not None}.values())


def sync(device) -> None:
    """Wait for the work queued on `device` (a CUDA device; nothing to wait for elsewhere)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_attr(stack: contextlib.ExitStack, obj: Any, name: str, value: Any) -> None:
    """`obj.name = value` until the stack closes; then the old value is set back (an instance
    attribute `obj` did not have is removed again)."""
    old = obj.__dict__.get(name, _MISSING)

    def restore():
        if old is _MISSING:
            obj.__dict__.pop(name, None)
        else:
            setattr(obj, name, old)

    setattr(obj, name, value)
    stack.callback(restore)


def patch_forward(stack: contextlib.ExitStack, module: Any, forward: Callable) -> bool:
    """An instance `forward` on `module` until the stack closes. A module whose forward something
    else already overrides is left alone (False)."""
    if "forward" in module.__dict__:
        return False
    module.forward = forward
    stack.callback(module.__dict__.pop, "forward", None)
    return True


def compile_session(stack: contextlib.ExitStack, modules: Iterable, mode: bool | str,
                    on_block: Callable | None = None) -> None:
    """torch.compile for the session (`Runtime.compile`): `True`, each module's whole forward (left
    alone when something else overrides it); 'regional', each repeated block (the classes a diffusers
    model names in `_repeated_blocks`) through the attribute `nn.Module.compile` sets,
    `_compiled_call_impl`, so the blocks of a model share one graph. `on_block(hidden_states)` runs
    before each compiled block call, outside the compiled code. Compiled code stays in torch's cache:
    a later session of the same shapes does not compile again."""
    import torch

    modules = list({id(m): m for m in modules if m is not None}.values())
    if mode is True:
        for m in modules:
            patch_forward(stack, m, torch.compile(m.forward, dynamic=False))
        return
    if mode != "regional":
        raise ValueError(f"compile mode must be True or 'regional', got {mode!r}")
    for m in modules:
        kinds = set(getattr(m, "_repeated_blocks", ()) or ())
        for block in (b for b in m.modules() if type(b).__name__ in kinds):
            set_attr(stack, block, "_compiled_call_impl", _counted(torch.compile(block._call_impl, dynamic=False),
                                                                   on_block))


def _counted(compiled: Callable, on_block: Callable | None) -> Callable:
    def call(*args, **kwargs):
        if on_block is not None:
            on_block(args[0] if args else kwargs["hidden_states"])
        return compiled(*args, **kwargs)
    return call


def forward_hook(stack: contextlib.ExitStack, module: Any, hook: Callable, *, pre: bool = False,
                 with_kwargs: bool = False) -> None:
    """A forward (or forward pre-) hook on `module` until the stack closes."""
    register = module.register_forward_pre_hook if pre else module.register_forward_hook
    stack.callback(register(hook, with_kwargs=with_kwargs).remove)


@contextlib.contextmanager
def attention_backend(modules: Iterable, backend: str) -> Iterator[None]:
    """Set a diffusers attention backend on `modules` for one block, then restore everything.

    diffusers' `set_attention_backend` also changes a process-wide active backend that
    `reset_attention_backend` leaves alone, so later runs would silently keep the other kernel
    (and a CPU run after a GPU-only kernel finds no viable kernel); the global is saved and
    restored here.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    from diffusers.utils import logging as dlogging

    mods = list({id(m): m for m in modules if m is not None}.values())
    saved_global = _AttentionBackendRegistry._active_backend
    if backend == "native" and saved_global.value == "native":
        yield
        return
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # the "experimental feature" warning, once per call otherwise
    try:
        for m in mods:
            m.set_attention_backend(backend)
        yield
    finally:
        for m in mods:
            m.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(saved_global)
        dlogging.set_verbosity(level)


def pipeline_attention_backend(pipe, backend: str):
    """`attention_backend` on the pipeline's experts."""
    return attention_backend((pipe.transformer, pipe.transformer_2), backend)


def keep_instance_attributes(stack: contextlib.ExitStack, modules: Iterable) -> None:
    """When the stack closes, remove the instance attributes `modules` gain from now on (a library's
    hooks that leave a bound `forward` or their registry behind when removed)."""
    modules = list(modules)
    before = [set(m.__dict__) for m in modules]

    def drop():
        for m, keys in zip(modules, before):
            for key in set(m.__dict__) - keys:
                del m.__dict__[key]

    stack.callback(drop)
