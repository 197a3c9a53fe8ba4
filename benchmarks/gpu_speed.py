"""How fast can A14B run on one GPU, and what does each speed-up change in the output?

One process, `a14b-random` built once (both experts resident, bf16), then:

1. the card's bf16 matrix rate (a large square matmul), the floor every MFU below divides by;
2. one high-noise expert pass at 480p x 81 frames (latent 21x60x104) per variant: the default
   (diffusers `native` attention, i.e. torch SDPA's choice), cuDNN, flash, fused QKV projections,
   regional `torch.compile` of the repeated blocks, and both together; seconds (median of 3 after a
   warm-up), MFU by the block FLOP count, and the output's rel-L2 from the default;
3. the launch-bound 256x256 x 5 frames pass: default against `torch.compile(mode="reduce-overhead")`
   (CUDA graphs) of the whole expert;
4. the VAE decode of an 81-frame 480p latent: float32 (the default), bf16, float32 tiled; seconds,
   peak memory and PSNR of each against the float32 frames (a random N(0, 1) latent: timing and
   numerics of the decoder, not a picture);
5. end to end through `models.engine.generate` at 256x256 x 5 frames x 40 steps: default against
   `Runtime(compile=True)`: seconds per stage, final latent rel-L2 and MP4 equality.

    python benchmarks/gpu_speed.py --out DIR [--deadline SECONDS] [--skip compile,vae]

Writes DIR/gpu_speed.json after every stage (a deadline or a crash keeps what was measured) and
DIR/gpu_speed.md at the end. Needs a CUDA device with ~90 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import time
from pathlib import Path

import torch

import gpu_timing  # the benchmarks folder: on the path when the script runs
from gpu_timing import peak_gb, reset_peak, sync, timed

T0 = time.perf_counter()


DEVICE = "cuda"
# latent shapes (T, H, W): the pass at 480p x 81 frames, the launch-bound 256x256 x 5 frames pass, the
# VAE's latent; --preset tiny on a CPU is a dry run of the script with the tiny preset's shapes.
SHAPES = {"a14b-random": ((21, 60, 104), (2, 32, 32), (21, 60, 104)), "tiny": ((5, 16, 32), (2, 8, 8), (5, 16, 32))}
PRESET = "a14b-random"


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def psnr(a, b) -> float:
    """PSNR of frames in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


class Recorder:
    def __init__(self, out: Path, deadline: float):
        self.out, self.deadline, self.res = out, deadline, {}

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - T0)

    def put(self, key, value):
        self.res[key] = value
        print(key, json.dumps(value, default=str)[:600], flush=True)
        tmp = self.out / ".gpu_speed.json.tmp"
        tmp.write_text(json.dumps(self.res, indent=1, default=str))
        tmp.replace(self.out / "gpu_speed.json")


def matrix_rate(rec: Recorder) -> float:
    n = 8192 if DEVICE == "cuda" else 1024
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    sec, _ = timed(lambda: a @ b, repeats=10, warmup=3)
    rate = 2 * n ** 3 / sec
    rec.put("matrix_rate", {"n": n, "seconds": sec, "tflops": rate / 1e12})
    return rate


def expert_inputs(spec, t, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, spec.z_dim, t, h, w, generator=g).to(DEVICE, torch.bfloat16)
    emb = torch.randn(1, spec.text_len, spec.transformer_config["text_dim"], generator=g).to(DEVICE, torch.bfloat16)
    return x, emb, torch.tensor([700.0], device=DEVICE)


@contextlib.contextmanager
def _fused_projections(expert):
    """The expert with its attention projections fused (QKV in one matmul), unfused after."""
    for m in expert.modules():
        if hasattr(m, "fuse_projections"):
            m.fuse_projections()
    try:
        yield
    finally:
        for m in expert.modules():
            if getattr(m, "fused_projections", False):
                m.unfuse_projections()


@contextlib.contextmanager
def _regional_compile(expert):
    """The expert's repeated blocks compiled, their eager calls restored after."""
    saved = [(b, b.__dict__.get("_compiled_call_impl")) for b in expert.blocks]
    expert.compile_repeated_blocks(fullgraph=True)
    try:
        yield
    finally:
        for b, impl in saved:
            b._compiled_call_impl = impl


@contextlib.contextmanager
def _fused_and_compiled(expert):
    with _fused_projections(expert), _regional_compile(expert):
        yield


def pass_variants(rec: Recorder, pipe, spec, rate, skip):
    from models.engine import _attention_backend, block_flops

    t, h, w = SHAPES[PRESET][0]
    x, emb, ts = expert_inputs(spec, t, h, w)
    tokens = t * (h // 2) * (w // 2)
    flops = block_flops(tokens, spec) * spec.num_layers  # FLOPs (2 per multiply-add) of the blocks
    expert = pipe.transformer

    def fwd():
        with torch.inference_mode():
            return expert(hidden_states=x, timestep=ts, encoder_hidden_states=emb, return_dict=False)[0]

    out: dict = {"latent": f"{t}x{h}x{w}", "tokens": tokens, "flops": flops}
    ref = None

    def measure(name, ctx=contextlib.nullcontext, warmup=1, note=None):
        nonlocal ref
        if rec.left() < 40:
            out[name] = {"not_run": "deadline"}
            return
        t0 = time.perf_counter()
        try:
            with ctx():
                sec, o = timed(fwd, repeats=3, warmup=warmup)
        except Exception as err:  # a backend unavailable here is a finding, not a crash
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            rec.put("pass_480p_81f", out)
            return
        if ref is None:
            ref = o.float()
        out[name] = {"seconds": sec, "mfu": flops / sec / rate, "tflops": flops / sec / 1e12,
                     "rel_l2_vs_default": rel(o, ref), "first_call_seconds": time.perf_counter() - t0 - 3 * sec,
                     "peak_gb": peak_gb()}
        if note:
            out[name]["note"] = note
        rec.put("pass_480p_81f", out)

    measure("default (native)")
    measure("cudnn", lambda: _attention_backend(pipe, "_native_cudnn"))
    measure("flash (torch SDPA)", lambda: _attention_backend(pipe, "_native_flash"))

    measure("fused QKV", lambda: _fused_projections(expert))
    if "compile" not in skip:
        measure("regional compile", lambda: _regional_compile(expert), warmup=2)
        measure("fused QKV + regional compile", lambda: _fused_and_compiled(expert), warmup=2)
    measure("default again", note="after the variants: same kernels back?")


def cuda_graphs(rec: Recorder, pipe, spec, rate, skip):
    from models.engine import block_flops

    if "compile" in skip or rec.left() < 90:
        rec.put("pass_256_5f", {"not_run": "skipped or deadline"})
        return
    t, h, w = SHAPES[PRESET][1]
    x, emb, ts = expert_inputs(spec, t, h, w, seed=1)
    tokens = t * (h // 2) * (w // 2)
    flops = block_flops(tokens, spec) * spec.num_layers
    expert = pipe.transformer_2
    out: dict = {"latent": f"{t}x{h}x{w}", "tokens": tokens}

    def run(fn):
        with torch.inference_mode():
            return fn(hidden_states=x, timestep=ts, encoder_hidden_states=emb, return_dict=False)[0]

    sec, ref = timed(lambda: run(expert), repeats=5)
    out["default"] = {"seconds": sec, "mfu": flops / sec / rate}
    rec.put("pass_256_5f", out)
    for mode in ("default", "reduce-overhead"):
        if rec.left() < 60:
            out[f"compile {mode}"] = {"not_run": "deadline"}
            continue
        try:
            t0 = time.perf_counter()
            fn = torch.compile(expert.forward, mode=mode, dynamic=False)
            s, o = timed(lambda: run(fn).clone(), repeats=5, warmup=3)
            out[f"compile {mode}"] = {"seconds": s, "mfu": flops / s / rate, "rel_l2_vs_default": rel(o, ref),
                                      "compile_and_warmup_seconds": time.perf_counter() - t0 - 5 * s}
        except Exception as err:
            out[f"compile {mode}"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        rec.put("pass_256_5f", out)
    torch._dynamo.reset()


def vae_variants(rec: Recorder, pipe, skip):
    if "vae" in skip or rec.left() < 80:
        rec.put("vae_480p_81f", {"not_run": "skipped or deadline"})
        return
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, pipe.vae.config.z_dim, *SHAPES[PRESET][2], generator=g).to(DEVICE)
    vae = pipe.vae
    out: dict = {"latent": "x".join(map(str, SHAPES[PRESET][2]))}

    def dec(v, dtype):
        with torch.inference_mode():
            return v.decode(z.to(dtype), return_dict=False)[0]

    reset_peak()
    base_peak = torch.cuda.memory_allocated() / 1e9 if DEVICE == "cuda" else 0.0
    sec, ref = timed(lambda: dec(vae, torch.float32), repeats=2)
    out["float32"] = {"seconds": sec, "peak_extra_gb": peak_gb() - base_peak}
    rec.put("vae_480p_81f", out)
    vb = copy.deepcopy(vae).to(torch.bfloat16)
    reset_peak()
    sec, o = timed(lambda: dec(vb, torch.bfloat16), repeats=2)
    out["bfloat16"] = {"seconds": sec, "peak_extra_gb": peak_gb() - base_peak,
                       "psnr_vs_float32": psnr(o, ref), "rel_l2_vs_float32": rel(o, ref)}
    del vb
    rec.put("vae_480p_81f", out)
    if rec.left() > 60:
        vae.enable_tiling()
        try:
            reset_peak()
            sec, o = timed(lambda: dec(vae, torch.float32), repeats=1)
            out["float32 tiled"] = {"seconds": sec, "peak_extra_gb": peak_gb() - base_peak,
                                    "psnr_vs_float32": psnr(o, ref), "rel_l2_vs_float32": rel(o, ref)}
        finally:
            vae.disable_tiling()
        rec.put("vae_480p_81f", out)


def end_to_end(rec: Recorder, skip):
    from models.engine import generate
    from models.request import GenerationRequest, Runtime

    out: dict = {}
    req = GenerationRequest(model=PRESET, prompt="a red fox running through snow", width=256, height=256,
                            frames=5, steps=40)
    out["request"] = "256x256, 5 frames, 40 steps"
    ref = None
    for name, rt in (("default", Runtime(device=DEVICE)), ("compile", Runtime(device=DEVICE, compile=True))):
        if name == "compile" and "compile" in skip:
            continue
        if rec.left() < 70:
            out[name] = {"not_run": "deadline"}
            continue
        try:
            runs = []
            for _ in range(2):  # the first compiled run pays the compile
                t0 = time.perf_counter()
                gen = generate(req, rt)
                runs.append((time.perf_counter() - t0, gen))
            sec, gen = runs[-1]
            ref = ref or gen
            out[name] = {"wall_seconds": sec, "first_wall_seconds": runs[0][0],
                         "stages": {k: round(v, 3) for k, v in gen.cost.seconds.items()},
                         "final_rel_l2_vs_default": rel(gen.latents["final"], ref.latents["final"]),
                         "same_mp4_as_default": gen.sha256 == ref.sha256,
                         "rerun_same_mp4": runs[0][1].sha256 == gen.sha256}
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        rec.put("generate_256_5f_40", out)


def _pass_rows(variants: dict, seconds, mfu_fmt: str, last: str, last_fmt: str) -> list[str]:
    """One table row per measured pass variant (or its error / reason it did not run)."""
    rows = []
    for k, v in variants.items():
        if not isinstance(v, dict):
            continue
        if "seconds" in v:
            rows.append(f"| {k} | {seconds(v)} | {format(v['mfu'], mfu_fmt)} | {v.get('rel_l2_vs_default', 0):.2e} | "
                        f"{format(v.get(last, 0), last_fmt)} |")
        else:
            rows.append(f"| {k} | {v.get('error') or v.get('not_run')} | | | |")
    return rows


def markdown(res: dict) -> str:
    lines = [f"# A14B speed variants on {res['device']} (bf16, torch {res['torch']}, diffusers {res['diffusers']})", "",
             f"`{res['preset']}` (random weights), built in {res['build_seconds']:.0f} s. bf16 matrix rate "
             f"{res['matrix_rate']['tflops']:.0f} TFLOP/s (square bf16 matmul); MFU = block FLOPs / seconds / that rate. "
             f"Measured {res['measured']}.", ""]
    p = res.get("pass_480p_81f", {})
    if p:
        lines += [f"## One expert pass (latent {p['latent']}, {p['tokens']} tokens)", "",
                  "| variant | seconds | MFU | rel-L2 vs default | first call (s) |", "|---|---|---|---|---|"]
        lines += _pass_rows(p, lambda v: f"{v['seconds']:.3f}", ".0%", "first_call_seconds", ".1f")
    q = res.get("pass_256_5f", {})
    if "default" in q:
        lines += ["", f"## One small expert pass (latent {q['latent']}, {q['tokens']} tokens: launch-bound)", "",
                  "| variant | seconds | MFU | rel-L2 vs default | compile + warm-up (s) |", "|---|---|---|---|---|"]
        lines += _pass_rows(q, lambda v: f"{v['seconds'] * 1e3:.1f} ms", ".1%", "compile_and_warmup_seconds", ".0f")
    v = res.get("vae_480p_81f", {})
    if "float32" in v:
        lines += ["", f"## VAE decode (latent {v['latent']}, random N(0,1))", "",
                  "| variant | seconds | extra peak GB | PSNR vs float32 |", "|---|---|---|---|"]
        for k, x in v.items():
            if isinstance(x, dict):
                lines.append(f"| {k} | {x['seconds']:.2f} | {x['peak_extra_gb']:.1f} | {x.get('psnr_vs_float32', math.inf):.1f} |")
    g = res.get("generate_256_5f_40", {})
    if g:
        lines += ["", f"## End to end through the engine, {g.get('request')}", "",
                  "| runtime | wall s (second run) | first run s | stages (s) | final rel-L2 vs default | same MP4 | rerun same MP4 |",
                  "|---|---|---|---|---|---|---|"]
        for k, x in g.items():
            if isinstance(x, dict) and "wall_seconds" in x:
                lines.append(f"| {k} | {x['wall_seconds']:.1f} | {x['first_wall_seconds']:.1f} | {x['stages']} | "
                             f"{x['final_rel_l2_vs_default']:.2e} | {x['same_mp4_as_default']} | {x['rerun_same_mp4']} |")
            elif isinstance(x, dict):
                lines.append(f"| {k} | {x.get('error') or x.get('not_run')} | | | | | |")
    return "\n".join(lines) + "\n"


def rerender(path: Path) -> None:
    """MFU and TFLOP/s again from the stored seconds, with the block FLOP count of `models.engine`
    (a first run of this script counted each FLOP twice)."""
    from models.engine import block_flops
    from models.presets import preset_spec

    res = json.loads(path.read_text())
    spec = preset_spec(res["preset"])
    rate = res["matrix_rate"]["tflops"] * 1e12
    for key in ("pass_480p_81f", "pass_256_5f"):
        part = res.get(key, {})
        flops = block_flops(part["tokens"], spec) * spec.num_layers
        part["flops"] = flops
        for v in part.values():
            if isinstance(v, dict) and "seconds" in v:
                v["mfu"], v["tflops"] = flops / v["seconds"] / rate, flops / v["seconds"] / 1e12
    path.write_text(json.dumps(res, indent=1, default=str))
    path.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--deadline", type=float, default=560, help="seconds after start to stop starting work")
    ap.add_argument("--skip", default="", help="comma list of: compile, vae, generate")
    ap.add_argument("--preset", default="a14b-random", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--rerender", metavar="JSON", help="recompute MFU from a result's seconds and rewrite its markdown")
    args = ap.parse_args()
    if args.rerender:
        rerender(Path(args.rerender))
        return
    if not args.out:
        ap.error("--out is required")
    global DEVICE, PRESET
    DEVICE, PRESET = args.device, args.preset
    gpu_timing.use(DEVICE)
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import diffusers

    from models.presets import build_pipeline, preset_spec
    from models.request import Runtime

    rec = Recorder(out, args.deadline)
    rec.put("device", torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu")
    rec.put("torch", torch.__version__)
    rec.put("diffusers", diffusers.__version__)
    rec.put("preset", PRESET)
    rec.put("measured", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    t0 = time.perf_counter()
    rt = Runtime(device=DEVICE)
    pipe = build_pipeline(PRESET, rt)
    sync()
    rec.put("build_seconds", time.perf_counter() - t0)
    spec = preset_spec(PRESET)
    rate = matrix_rate(rec)
    with rt.apply():
        pass_variants(rec, pipe, spec, rate, skip)
        vae_variants(rec, pipe, skip)
        cuda_graphs(rec, pipe, spec, rate, skip)
    if "generate" not in skip:
        end_to_end(rec, skip)
    (out / "gpu_speed.md").write_text(markdown(rec.res))
    print(markdown(rec.res))


if __name__ == "__main__":
    main()
