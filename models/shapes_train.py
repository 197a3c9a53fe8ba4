"""Train a small Wan2.2-architecture text-to-video model on the procedural shapes data set.

The full Wan2.2-T2V structure at small size, trained in three resumable stages:

1. `vae`: `AutoencoderKLWan` on clips of `models.shapes_data` (L1 + MSE reconstruction, a small KL
   term); afterwards the per-channel mean and std of its latents go into its config
   (`latents_mean`, `latents_std`), as the released Wan VAE carries them.
2. `high`: the high-noise expert (`WanTransformer3DModel`, the pipeline's `transformer`) by flow
   matching on sigma in [boundary_ratio, 1] (timesteps >= 875 of 1000), the range WanPipeline
   routes to it. Its batches come from a pool of clips encoded once by the trained VAE
   (`WORK/latents.pt`, `latent_pool` clips: rendering and encoding every batch afresh would cost
   more than the expert's own step on a CPU); sigma and noise are fresh every step.
3. `low`: the low-noise expert (`transformer_2`) on sigma in [0, boundary_ratio).

Flow matching as diffusers' Wan schedulers integrate it: x_sigma = (1 - sigma) x0 + sigma eps, the
model predicts eps - x0 at timestep 1000 sigma. Text: a UMT5 encoder with frozen seeded random
weights (the project's seeded draw, as the random presets) over a byte-level BPE tokenizer whose
merges are learnt from the template prompts (so each template word is one token, other text falls
back to bytes); the prompt embeddings are computed by the pipeline's own `encode_prompt`, exactly
as at inference. 10% of the prompts are replaced by the empty negative prompt, so
classifier-free guidance has an unconditional model to work with.

Every stage checkpoints (model, optimizer, step, losses) to `WORK/ckpt/STAGE.pt` every
`checkpoint_every` steps and at its time limit, and resumes from there; data and noise of step k
are a function of (seed, stage, k), so a resumed run sees the same batches as an uninterrupted one.
`export` writes a diffusers directory (`save_pretrained`, safetensors) with a `CARD.md` and
`card.json`. No Prefect here: `flows/shapes.py` wires these functions into a flow.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from models import shapes_data
from models.io import write_json_atomic, write_with_atomic
from models.seeds import train_step_seeds

STAGES = ("vae", "high", "low")
# What `export` writes into its directory (a directory holding anything else is refused).
EXPORT_FILES = ("model_index.json", "scheduler", "text_encoder", "tokenizer", "transformer", "transformer_2", "vae",
                "card.json", "CARD.md")

SHAPES_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
    text_dim=64, freq_dim=256, ffn_dim=384, num_layers=4, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)
SHAPES_VAE: dict[str, Any] = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                  temperal_downsample=[False, True, True])
SHAPES_TEXT: dict[str, Any] = dict(
    vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
)
SHAPES_TEXT_LEN = 32
SHAPES_REQUEST = dict(width=32, height=32, frames=9, fps=8, steps=8, guidance_high=4.0, guidance_low=3.0,
                      shift=3.0)


class TrainConfig(BaseModel):
    """Sizes, steps and optimiser settings of one training run (saved in WORK/config.json)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    side: int = Field(32, description="frame width and height in pixels (a multiple of 16)")
    frames: int = Field(9, description="frames per clip (4k+1)")
    seed: int = Field(0, ge=0, description="seed of the weights' initial draw, data and noise")
    vae_steps: int = Field(1000, ge=0, description="VAE optimiser steps")
    expert_steps: int = Field(1200, ge=0, description="optimiser steps per expert")
    vae_batch: int = Field(4, ge=1)
    expert_batch: int = Field(16, ge=1)
    vae_lr: float = Field(2e-3, gt=0)
    expert_lr: float = Field(5e-4, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    vae_frames: int = Field(5, ge=1, description="frames of the VAE's training clips (4k+1; the causal VAE "
                                                 "runs any 4k+1 length after)")
    fg_weight: float = Field(10.0, ge=0, description="extra reconstruction weight on object (saturated) pixels, "
                                                     "which cover a few % of a frame")
    uncond_prob: float = Field(0.1, ge=0, lt=1, description="share of empty prompts (for CFG)")
    boundary_ratio: float = Field(0.875, gt=0, lt=1)
    checkpoint_every: int = Field(50, ge=1)
    latent_stat_clips: int = Field(64, ge=1, description="clips whose latents give latents_mean/std")
    latent_pool: int = Field(2048, ge=1, description="clips encoded once by the trained VAE; the experts "
                                                     "draw their batches from these latents")
    threads: int = Field(1, ge=1)
    transformer: dict[str, Any] = Field(default_factory=lambda: dict(SHAPES_TRANSFORMER))
    vae: dict[str, Any] = Field(default_factory=lambda: dict(SHAPES_VAE))
    text: dict[str, Any] = Field(default_factory=lambda: dict(SHAPES_TEXT))
    text_len: int = SHAPES_TEXT_LEN


# Fields a resumed run may change (a schedule, not the model): each logged loss records its values.
SCHEDULE_FIELDS = ("checkpoint_every", "threads", "vae_frames", "fg_weight")


class TrainError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Components


def shapes_tokenizer(text_len: int = SHAPES_TEXT_LEN, vocab_size: int = 512):
    """Byte-level BPE whose merges are learnt (deterministically) from every template prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1,
    )
    corpus = [shapes_data.prompt_of(*a) for a in shapes_data.all_attributes()]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=text_len)


def build_components(cfg: TrainConfig) -> dict[str, Any]:
    """Fresh components, drawn with the project's seeded per-tensor initialisation."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from models.presets import parameters_on_meta, materialize

    with parameters_on_meta():
        experts = [WanTransformer3DModel(**cfg.transformer) for _ in range(2)]
        vae = AutoencoderKLWan(**cfg.vae)
        text_encoder = UMT5EncoderModel(UMT5Config(**cfg.text))
    cpu = torch.device("cpu")
    for prefix, m in zip(("transformer.", "transformer_2.", "vae.", "text_encoder."), (*experts, vae, text_encoder)):
        materialize(m, cfg.seed, torch.float32, cpu, prefix=prefix, threads=1)
        m.to(cpu)
    # Zero-initialised output heads: the usual start for a diffusion transformer (predicts 0).
    for e in experts:
        torch.nn.init.zeros_(e.proj_out.weight)
        torch.nn.init.zeros_(e.proj_out.bias)
    text_encoder.eval().requires_grad_(False)
    return {"transformer": experts[0], "transformer_2": experts[1], "vae": vae, "text_encoder": text_encoder,
            "tokenizer": shapes_tokenizer(cfg.text_len, cfg.text["vocab_size"])}


def make_pipeline(parts: dict[str, Any], boundary_ratio: float):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from models.presets import SCHEDULER_CONFIG

    scheduler = UniPCMultistepScheduler(**dict(SCHEDULER_CONFIG, flow_shift=SHAPES_REQUEST["shift"]))
    return WanPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], vae=parts["vae"],
                       scheduler=scheduler, transformer=parts["transformer"], transformer_2=parts["transformer_2"],
                       boundary_ratio=boundary_ratio)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _ckpt(work: Path, stage: str) -> Path:
    return work / "ckpt" / f"{stage}.pt"


def _save_atomic(obj, path: Path) -> None:
    import torch

    write_with_atomic(path, lambda f: torch.save(obj, f))


def load_state(work: Path, stage: str) -> dict[str, Any] | None:
    import torch

    p = _ckpt(work, stage)
    return torch.load(p, map_location="cpu", weights_only=False) if p.is_file() else None


def _restore(parts: dict[str, Any], work: Path) -> None:
    """Load every trained component that has a checkpoint into `parts`."""
    for stage, key in (("vae", "vae"), ("high", "transformer"), ("low", "transformer_2")):
        st = load_state(work, stage)
        if st is not None:
            parts[key].load_state_dict(st["model"])
            if stage == "vae" and st.get("latents_mean") is not None:
                parts["vae"].register_to_config(latents_mean=st["latents_mean"], latents_std=st["latents_std"])


def check_config(cfg: TrainConfig, work: Path) -> None:
    """Write WORK/config.json, or refuse a WORK made with other sizes (steps may change)."""
    path = work / "config.json"
    mine = cfg.model_dump(mode="json")
    if path.is_file():
        old = json.loads(path.read_text())
        fixed = {k for k in mine if not k.endswith("_steps") and k not in SCHEDULE_FIELDS}
        diff = sorted(k for k in fixed if old.get(k) != mine[k])
        if diff:
            raise TrainError(f"work directory {work} was made with other settings ({', '.join(diff)}); "
                             "use another directory or the same settings")
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, mine, sort_keys=True, allow_nan=True)


# ---------------------------------------------------------------------------------------------
# Training


def _normalise(vae, z):
    import torch

    mean = torch.tensor(vae.config.latents_mean, dtype=z.dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=z.dtype).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def vae_loss(vae, x, kl_weight: float, fg_weight: float = 0.0):
    """L1 + MSE, weighted 1 + fg_weight on object pixels (saturated: RGB spread > 0.3 of the range),
    plus kl_weight x KL to the unit normal."""
    import torch

    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn_like(post.mean)  # noise drawn under the step's seeded generator
    rec = vae.decode(z).sample
    w = 1.0 + fg_weight * ((x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)) > 0.6).float()
    w = w / w.mean()
    l1 = (w * (rec - x).abs()).mean()
    mse = (w * (rec - x) ** 2).mean()
    kl = 0.5 * (post.mean**2 + post.var - 1.0 - post.logvar).mean()
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def psnr(a, b) -> float:
    """PSNR in dB of clips in [-1, 1] (peak-to-peak range 2)."""
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def sigma_range(stage: str, boundary: float) -> tuple[float, float]:
    return (boundary, 1.0) if stage == "high" else (0.0, boundary)


class _PromptCache:
    def __init__(self, pipe, text_len: int):
        self.pipe, self.text_len, self.cache = pipe, text_len, {}

    def __call__(self, prompts):
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            with torch.no_grad():
                emb, _ = self.pipe.encode_prompt(missing, do_classifier_free_guidance=False,
                                                 max_sequence_length=self.text_len, device=torch.device("cpu"))
            for p, e in zip(missing, emb):
                self.cache[p] = e
        return torch.stack([self.cache[p] for p in prompts])


def train_stage(stage: str, cfg: TrainConfig, work: str | Path, max_seconds: float | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) one stage up to its step count or `max_seconds`; returns its state summary."""
    if stage not in STAGES:
        raise TrainError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    return _StageRun(stage, cfg, Path(work), log).run(max_seconds)


class _StageRun:
    """One stage's training: its model, optimiser, resumable state and checkpoints."""

    def __init__(self, stage: str, cfg: TrainConfig, work: Path, log: Callable[[str], None]):
        import torch

        self.stage, self.cfg, self.work, self.log = stage, cfg, work, log
        check_config(cfg, work)
        torch.set_num_threads(cfg.threads)
        parts = build_components(cfg)
        _restore(parts, work)
        if stage != "vae":
            vst = load_state(work, "vae")
            if vst is None or vst["step"] < cfg.vae_steps or vst.get("latents_mean") is None:
                raise TrainError(f"stage {stage}: train the vae first (its checkpoint is missing or unfinished)")
        self.pool = latent_pool(parts["vae"], cfg, work, log) if stage != "vae" else None
        self.model = parts[{"vae": "vae", "high": "transformer", "low": "transformer_2"}[stage]]
        self.total = cfg.vae_steps if stage == "vae" else cfg.expert_steps
        self.lr = cfg.vae_lr if stage == "vae" else cfg.expert_lr
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0 if stage == "vae" else 0.01)
        self.state = load_state(work, stage) or {"step": 0, "losses": [], "seconds": 0.0}
        if "optimizer" in self.state:
            self.opt.load_state_dict(self.state["optimizer"])
        self.model.train().requires_grad_(True)
        self.prompts_emb = _PromptCache(make_pipeline(parts, cfg.boundary_ratio), cfg.text_len)
        self.empty = self.prompts_emb([""])[0]
        self.sigmas = sigma_range(stage, cfg.boundary_ratio)
        self.start, self.step, self.base_seconds = time.monotonic(), self.state["step"], self.state["seconds"]
        self.window: list[float] = self.state.get("window", [])  # losses since the last logged mean

    def save(self, final: bool = False) -> None:
        state, cfg = self.state, self.cfg
        st = {"step": self.step, "losses": state["losses"], "seconds": self.base_seconds + time.monotonic() - self.start,
              "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "stage": self.stage,
              "window": list(self.window)}
        if self.stage == "vae":
            st.update(latents_mean=state.get("latents_mean"), latents_std=state.get("latents_std"))
            if final:
                st.update(vae_summary(self.model, cfg))
                self.log(f"vae: latents_mean/std from {cfg.latent_stat_clips} clips; held-out PSNR {st['psnr']:.2f} dB")
        _save_atomic(st, _ckpt(self.work, self.stage))
        state.update({k: v for k, v in st.items() if k not in ("model", "optimizer")})

    def run(self, max_seconds: float | None) -> dict[str, Any]:
        first = self.step
        while self.step < self.total:
            if max_seconds is not None and self.step > first and time.monotonic() - self.start > max_seconds:
                self.save()
                self.log(f"{self.stage}: stopped at step {self.step}/{self.total} (time limit); resumable")
                return _summary(self.state, self.stage, self.total)
            self.train_step()
        if self.stage == "vae" and self.state.get("latents_mean") is None:
            self.save(final=True)
        return _summary(self.state, self.stage, self.total)

    def train_step(self) -> None:
        import torch

        cfg, step = self.cfg, self.step
        g = torch.Generator().manual_seed(train_step_seeds(cfg.seed, self.stage, step, 1)[0])
        batch = self._batch(g)
        # Cosine decay to 10% over the stage, after a short warm-up.
        warm = min(1.0, (step + 1) / 50)
        for group in self.opt.param_groups:
            group["lr"] = self.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, self.total))))
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        loss, parts_ = vae_loss(self.model, batch, cfg.kl_weight, cfg.fg_weight) if self.stage == "vae" \
            else (self._expert_loss(g, *batch), {})
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        self.window.append(loss.item())
        if self.step % cfg.checkpoint_every == 0 or self.step == self.total:
            self._checkpoint(parts_)

    def _batch(self, g):
        """The step's inputs: clips for the VAE, (latents, prompts) from the pool for an expert."""
        import torch

        cfg, pool = self.cfg, self.pool
        if self.stage == "vae":
            clips, _prompts = shapes_data.batch(train_step_seeds(cfg.seed, self.stage, self.step, cfg.vae_batch),
                                                cfg.vae_frames, cfg.side)
            return torch.from_numpy(clips)
        idx = torch.randint(0, len(pool["prompts"]), (cfg.expert_batch,), generator=g)
        return pool["latents"][idx], [pool["prompts"][int(i)] for i in idx]

    def _expert_loss(self, g, z, prompts):
        """Flow-matching loss of the expert at a noise level drawn in its range (prompts dropped at uncond_prob)."""
        import torch

        lo, hi = self.sigmas
        emb = self.prompts_emb(prompts)
        drop = torch.rand(len(prompts), generator=g) < self.cfg.uncond_prob
        emb = torch.where(drop.view(-1, 1, 1), self.empty.expand_as(emb), emb)
        sigma = lo + (hi - lo) * torch.rand(len(prompts), generator=g)
        eps = torch.randn(z.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * z + s * eps
        pred = self.model(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=emb, return_dict=False)[0]
        return ((pred - (eps - z)) ** 2).mean()

    def _checkpoint(self, parts_: dict[str, Any]) -> None:
        cfg, window = self.cfg, self.window
        mean_loss = sum(window) / len(window)
        if self.stage == "vae":
            parts_.update(frames=cfg.vae_frames, fg_weight=cfg.fg_weight)
        self.state["losses"].append({"step": self.step, "loss": mean_loss, **parts_})
        window.clear()
        self.save(final=self.step == self.total)
        self.log(f"{self.stage}: step {self.step}/{self.total} loss {mean_loss:.4f} ({self.state['seconds']:.0f} s)")


def latent_pool(vae, cfg: TrainConfig, work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Normalised latents and prompts of `cfg.latent_pool` seeded clips (WORK/latents.pt, made once)."""
    import torch

    path = work / "latents.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    t0, zs, prompts = time.monotonic(), [], []
    vae.eval()
    with torch.no_grad():
        for i in range(0, cfg.latent_pool, 16):
            seeds = [2 * 10**9 + j for j in range(i, min(cfg.latent_pool, i + 16))]
            clips, ps = shapes_data.batch(seeds, cfg.frames, cfg.side)
            zs.append(_normalise(vae, vae.encode(torch.from_numpy(clips)).latent_dist.mode()))
            prompts += ps
    pool = {"latents": torch.cat(zs).contiguous(), "prompts": prompts}
    _save_atomic(pool, path)
    log(f"latent pool: {len(prompts)} clips encoded in {time.monotonic() - t0:.0f} s")
    return pool


def _summary(state, stage, total) -> dict[str, Any]:
    return {"stage": stage, "step": state["step"], "of": total, "seconds": state["seconds"],
            "loss": state["losses"][-1]["loss"] if state["losses"] else None,
            **({"psnr": state["psnr"]} if "psnr" in state else {})}


def vae_summary(vae, cfg: TrainConfig) -> dict[str, Any]:
    """Latent statistics on seeded clips, and the reconstruction PSNR on held-out seeds."""
    import torch

    vae.eval()
    zs, psnrs = [], []
    with torch.no_grad():
        for i in range(0, cfg.latent_stat_clips, 8):
            x = torch.from_numpy(shapes_data.batch(range(10**9 + i, 10**9 + i + 8), cfg.frames, cfg.side)[0])
            z = vae.encode(x).latent_dist.mode()
            zs.append(z)
            psnrs.append(psnr(vae.decode(z).sample.clamp(-1, 1), x))
    z = torch.cat(zs)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.train()
    # diffusers' WanPipeline decodes z = x / (1 / latents_std) + latents_mean.
    return {"latents_mean": [float(v) for v in mean], "latents_std": [float(v) for v in std],
            "psnr": float(sum(psnrs) / len(psnrs))}


# ---------------------------------------------------------------------------------------------
# Export


def export(cfg: TrainConfig, work: str | Path, out: str | Path, hardware: str = "", extra: dict[str, Any] | None = None,
           card_extra: str = "") -> Path:
    """Write the trained model as a diffusers directory (safetensors) with CARD.md and card.json.

    Transformer and text-encoder tensors are stored in bfloat16 except those diffusers keeps in
    float32 (`_keep_in_fp32_modules`), which stay float32, so a bf16 load is exact; the VAE is
    float32 (it runs in float32). Written to a temporary directory and renamed: never half-written.
    """
    import torch

    from models.io import check_out_dir, staged_dir
    from models.presets import keeps_fp32

    work, out = Path(work), Path(out)
    states = {s: load_state(work, s) for s in STAGES}
    missing = [s for s in STAGES if states[s] is None]
    if missing:
        raise TrainError(f"export: stages not trained yet: {', '.join(missing)}")
    parts = build_components(cfg)
    _restore(parts, work)
    for key in ("transformer", "transformer_2", "text_encoder"):
        m = parts[key]
        keep = list(getattr(type(m), "_keep_in_fp32_modules", None) or [])
        for name, p in m.named_parameters():
            if not keeps_fp32(name, keep):
                p.data = p.data.to(torch.bfloat16)
    pipe = make_pipeline(parts, cfg.boundary_ratio)
    check_out_dir(out, EXPORT_FILES, what="export_to")
    with staged_dir(out, EXPORT_FILES, what="export_to") as tmp:  # an earlier export is replaced, nothing else
        pipe.save_pretrained(tmp, safe_serialization=True)
        card = card_dict(cfg, states, hardware, extra)
        (tmp / "card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
        (tmp / "CARD.md").write_text(card_markdown(card) + card_extra)
    return out


def card_dict(cfg: TrainConfig, states: dict[str, Any], hardware: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    from importlib.metadata import version

    parts = build_components(cfg)
    params = {k: sum(p.numel() for p in parts[k].parameters()) for k in ("vae", "transformer", "transformer_2", "text_encoder")}
    stages = {}
    for s in STAGES:
        st = states[s]
        stages[s] = {"steps": st["step"], "seconds": round(st["seconds"], 1), "losses": st["losses"]}
        if s == "vae":
            stages[s]["psnr_db"] = st.get("psnr")
    return {
        "data": {"side": cfg.side, "frames": cfg.frames, "colours": list(shapes_data.COLOURS), "shapes": list(shapes_data.SHAPES),
                 "motions": list(shapes_data.MOTIONS), "backgrounds": list(shapes_data.BACKGROUNDS),
                 "attribute_combinations": len(shapes_data.all_attributes()), "latent_pool": cfg.latent_pool,
                 "template": shapes_data.prompt_of("<colour>", "<shape>", "left", "<background>").replace("moving left", "<motion>")},
        "config": cfg.model_dump(mode="json"), "parameters": params, "stages": stages, "hardware": hardware,
        "versions": {p: version(p) for p in ("torch", "diffusers", "transformers")},
        "torch_threads": torch.get_num_threads(), **(extra or {}),
    }


def card_markdown(card: dict[str, Any]) -> str:
    c, d, s = card["config"], card["data"], card["stages"]
    total = sum(v["seconds"] for v in s.values())
    lines = [
        "# shapes: a small Wan2.2-T2V-architecture model trained on procedural shapes",
        "",
        f"- **Data**: `models/shapes_data.py`, made in code: {d['side']}x{d['side']} pixels, {d['frames']} frames; "
        f"{len(d['colours'])} colours ({', '.join(d['colours'])}), {len(d['shapes'])} shapes ({', '.join(d['shapes'])}), "
        f"{len(d['motions'])} motions ({', '.join(d['motions'])}), {len(d['backgrounds'])} backgrounds "
        f"({', '.join(d['backgrounds'])}); {d['attribute_combinations']} combinations (pans only over textures); "
        f"prompt template `{d['template']}`. VAE trained on fresh clips each step; the experts on "
        f"{d['latent_pool']} clips encoded once by the trained VAE.",
        f"- **Structure**: WanPipeline with AutoencoderKLWan ({card['parameters']['vae']:,} parameters, "
        f"base_dim {c['vae']['base_dim']}, dim_mult {c['vae']['dim_mult']}, z_dim {c['vae']['z_dim']}), two "
        f"WanTransformer3DModel experts ({card['parameters']['transformer']:,} parameters each: "
        f"{c['transformer']['num_layers']} layers, {c['transformer']['num_attention_heads']} heads x "
        f"{c['transformer']['attention_head_dim']}, ffn {c['transformer']['ffn_dim']}, patch {c['transformer']['patch_size']}), "
        f"split at boundary_ratio {c['boundary_ratio']} (high-noise expert: sigma >= {c['boundary_ratio']}, "
        f"low-noise expert below); UMT5 encoder ({card['parameters']['text_encoder']:,} parameters, d_model "
        f"{c['text']['d_model']}) with **frozen seeded random weights**, byte-level BPE tokenizer with merges "
        f"learnt from the template prompts, text length {c['text_len']}.",
        f"- **Training**: seed {c['seed']}; flow matching (x = (1-s) x0 + s eps, target eps - x0, timestep 1000 s, "
        f"s uniform in the expert's range), {c['uncond_prob']:.0%} empty prompts for CFG; AdamW, cosine decay, "
        f"grad-norm clip 1. VAE: L1 + MSE + {c['kl_weight']:g} KL.",
        f"- **Hardware**: {card['hardware']}; torch {card['versions']['torch']}, diffusers {card['versions']['diffusers']}.",
        "",
        "| stage | steps | batch | lr | final loss | CPU wall time |",
        "|---|---|---|---|---|---|",
    ]
    for name, batch, lr in (("vae", c["vae_batch"], c["vae_lr"]), ("high", c["expert_batch"], c["expert_lr"]),
                            ("low", c["expert_batch"], c["expert_lr"])):
        st = s[name]
        loss = st["losses"][-1]["loss"] if st["losses"] else float("nan")
        lines.append(f"| {name} | {st['steps']} | {batch} | {lr:g} | {loss:.4f} | {st['seconds'] / 60:.1f} min |")
    lines += ["", f"Total training time: {total / 60:.1f} min. VAE reconstruction PSNR on "
              f"{c['latent_stat_clips']} held-out clips: {s['vae'].get('psnr_db') or float('nan'):.2f} dB.", ""]
    return "\n".join(lines)
