"""The plan of a generation, before any pipeline runs: the schedule it steps through, the steps it
captures, whether its prompt fits the text encoder, and the transformer work of the honest run of
a request (what `Cost.compute_share` is measured against). Used by every engine (models/engine.py,
models/engines/vllm_omni.py); torch-free at import.
"""

from __future__ import annotations

from typing import Any, Iterable

from models.request import GenerationRequest, Runtime
from models.spec import SCHEDULER_CONFIG, preset_spec


class PromptTooLong(ValueError):
    """A prompt longer than the text encoder takes."""


def schedule(request: GenerationRequest, scheduler_config: dict[str, Any], kind: str = "engine") -> list[float]:
    """The timesteps the pipeline will step through for this request (`kind`: Runtime.schedule)."""
    from models.schedules import make_scheduler

    sched = make_scheduler(scheduler_config, request.shift, kind)
    sched.set_timesteps(request.steps)
    return [float(t) for t in sched.timesteps]


def check_captures(names: Iterable[str], steps: int) -> tuple[str, ...]:
    """Capture names checked before any work: init, switch, final or step:K with 0 <= K < steps."""
    names = tuple(names)
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"capture: names must be text, got {name!r}")
        if name in ("init", "switch", "final"):
            continue
        k = name[5:] if name.startswith("step:") else None
        if k is None or not k.isdigit():
            raise ValueError(f"capture: unknown name {name!r}; allowed: init, switch, final, step:K")
        if not 0 <= int(k) < steps:
            raise ValueError(f"capture: step {int(k)} outside 0..{steps - 1}")
    if len(set(names)) != len(names):
        raise ValueError(f"capture: duplicated names in {list(names)}")
    return names


def resolve_captures(names: Iterable[str], timesteps: list[float], boundary_ratio: float) -> dict[str, int]:
    boundary = boundary_ratio * 1000
    high = [i for i, t in enumerate(timesteps) if t >= boundary]
    n = len(timesteps)
    out: dict[str, int] = {}
    for name in check_captures(names, n):
        if name == "init":
            out[name] = -1
        elif name == "final":
            out[name] = n - 1
        elif name == "switch":
            out[name] = high[-1] if high else -1
        elif name.startswith("step:"):
            k = int(name[5:])
            if not 0 <= k < n:
                raise ValueError(f"capture: step {k} outside 0..{n - 1}")
            out[name] = k
        else:
            raise ValueError(f"capture: unknown name {name!r}; allowed: init, switch, final, step:K")
    return out


def text_context_len(spec, runtime: Runtime) -> int:
    """Text-embedding rows the transformers attend to: the preset's limit, or the Wan reference's 512
    (what vLLM-Omni pads every prompt to) under `Runtime(schedule="wan")`."""
    from models.schedules import WAN_TEXT_LEN

    return max(WAN_TEXT_LEN, spec.text_len) if runtime.schedule == "wan" else spec.text_len


def truncate_to_tokens(tokenizer, prompt: str, n: int) -> str:
    """The prompt cut to the text the pipeline would keep with `n` tokens (cleaned as the pipeline does)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    ids = tokenizer(prompt_clean(prompt), max_length=n, truncation=True, add_special_tokens=True)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


def count_tokens(pipe, prompt: str) -> int:
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return len(pipe.tokenizer(prompt_clean(prompt), add_special_tokens=True)["input_ids"])


def block_flops(tokens: float, spec) -> float:
    """Multiply-add FLOPs of one transformer block on `tokens` latent tokens (batch 1).

    Self-attention projections 8Nd^2 and scores/values 4N^2d; cross-attention projections
    4Nd^2 + 4Ld^2 and scores 4NLd (L = text tokens); feed-forward 4Nd*ffn.
    """
    cfg = spec.transformer_config
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f, n, length = cfg["ffn_dim"], float(tokens), float(spec.text_len)
    return 8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * length * d * d + 4 * n * length * d + 4 * n * d * f


def honest_work(request: GenerationRequest) -> float:
    """Transformer FLOPs of the honest run of a request."""
    spec = preset_spec(request.model)
    n = request.latent_tokens(spec.vae_stride, spec.patch_size)
    return forward_passes(request) * spec.num_layers * block_flops(n, spec)


def forward_passes(request: GenerationRequest) -> int:
    """Transformer passes of the honest run: per step 2 with CFG, 1 without, per expert."""
    return sum(expert_passes(request).values())


def expert_steps(request: GenerationRequest) -> dict[str, int]:
    """The honest run's denoising steps per expert ("high" first: timesteps at or above the boundary)."""
    boundary = preset_spec(request.model).boundary_ratio * 1000
    high = sum(1 for t in schedule(request, SCHEDULER_CONFIG) if t >= boundary)
    return {"high": high, "low": request.steps - high}


def expert_passes(request: GenerationRequest) -> dict[str, int]:
    """The honest run's transformer passes per expert ("high": timesteps at or above the boundary)."""
    boundary = preset_spec(request.model).boundary_ratio * 1000
    passes = {"high": 0, "low": 0}
    for t in schedule(request, SCHEDULER_CONFIG):
        high = t >= boundary
        passes["high" if high else "low"] += 2 if (request.uses_cfg_high if high else request.uses_cfg_low) else 1
    return passes


def compute_share(request, block_tokens: list[int], batch_size: int, dev, spec) -> float:
    """Measured transformer FLOPs per sample (blocks actually called) over the honest run's."""
    work = sum(block_flops(n / batch_size, spec) for n in block_tokens)  # each call: batch x per-sample
    base = honest_work(request)
    share = work / base if base > 0 else 1.0
    if dev is not None:
        share *= dev.speed_factor_for(request)
    return float(share)
