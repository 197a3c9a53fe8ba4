"""One whole video with a chosen runtime, against the hardware floor, and PoC throughput with it.

One process, the preset built once, then in order of importance (no section starts after
`--deadline` seconds, or when too little time is left for it):

a. the card's bf16 matrix rate (a large square matmul): the floor every MFU divides by;
b. one video through `models.engine.generate` with the runtime asked for (`--compile`,
   `--vae-dtype`, `--attention`, `--offload`): seconds per stage (text encoder, high-noise expert
   passes, low-noise expert passes, VAE decode; the engine's cost hooks synchronise the device
   around each), the compile warm-up (a short run of the same shape before, both experts) reported
   apart, peak GPU memory, transformer MFU (block FLOPs of the honest run, `models.plan.honest_work`,
   over the expert seconds and the matrix rate) and end to end over the floor (those FLOPs at the
   matrix rate);
c. differences to the reference, cheap ones only: one high-noise expert pass eager against the
   runtime's compile on the same input (rel-L2, seconds), and the produced final latent decoded
   by the VAE in the other dtype (PSNR of the uint8 frames, seconds);
d. PoC throughput (nonces per second of `models.poc.poc_vectors`, both experts resident) eager
   against the runtime's compile, and how far the PoC vectors move.

    python benchmarks/gpu_end_to_end.py --out DIR [--compile regional|whole|none] [--vae-dtype bfloat16]
    python benchmarks/gpu_end_to_end.py --out DIR --preset tiny --device cpu --width 64 --height 64 \\
        --frames 5 --steps 4          # the CPU smoke run of every section

Writes DIR/gpu_end_to_end.json and DIR/gpu_end_to_end.md after every section (a deadline or a crash
keeps what was measured). Needs only torch, diffusers, transformers, numpy, av and pydantic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

from gpu_speed import rel  # noqa: E402  (rel-L2, as gpu_speed.py reports it)

T0 = time.perf_counter()
COMPILE = {"regional": "regional", "whole": True, "none": False}
PROMPT = "a red fox running through snow at dawn, cinematic"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process (a compile inside a timed run shows here)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Results:
    """The results so far, written as JSON and markdown after every `put`."""

    def __init__(self, out: Path, deadline: float):
        self.out, self.deadline, self.res = out, deadline, {}

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - T0)

    def put(self, key: str, value) -> None:
        self.res[key] = value
        print(key, json.dumps(value, default=str)[:800], flush=True)
        tmp = self.out / ".gpu_end_to_end.json.tmp"
        tmp.write_text(json.dumps(self.res, indent=1, default=str))
        tmp.replace(self.out / "gpu_end_to_end.json")
        (self.out / "gpu_end_to_end.md").write_text(markdown(self.res))

    def starts(self, key: str, need_s: float) -> bool:
        """Whether a section that needs about `need_s` seconds starts (else it is recorded as not run)."""
        if self.left() >= need_s:
            return True
        self.put(key, {"not_run": f"deadline: {self.left():.0f} s left, needs about {need_s:.0f} s"})
        return False


def matrix_rate(res: Results, device: str) -> float:
    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    rate = 2 * n ** 3 / sec
    res.put("matrix_rate", {"n": n, "seconds": sec, "tflops": rate / 1e12})
    return rate


def header(res: Results, args) -> None:
    import diffusers
    import transformers

    res.put("device", torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu")
    res.put("versions", {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "cuda": torch.version.cuda})
    res.put("measured", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    res.put("args", vars(args))


def warmup_steps(req, pipe, runtime) -> int:
    """The fewest steps of `req` whose schedule runs both experts (so a warm-up compiles for both)."""
    from models.plan import schedule
    from models.presets import preset_spec

    boundary = preset_spec(req.model).boundary_ratio * 1000
    for n in range(1, 11):
        ts = schedule(req.model_copy(update={"steps": n}), pipe.scheduler.config, runtime.schedule)
        if any(t >= boundary for t in ts) and any(t < boundary for t in ts):
            return n
    return 2


def warm_up(res: Results, req, runtime, pipe) -> dict:
    """A short run of the video's shape before it, so that the timed video pays no compile."""
    from models.engine import generate

    if not runtime.compile:
        return {"seconds": 0.0, "note": "eager: no warm-up"}
    steps = warmup_steps(req, pipe, runtime)
    g0 = compiled_graphs()
    sync(runtime.device)
    t0 = time.perf_counter()
    gen = generate(req.model_copy(update={"steps": steps}), runtime, capture=(), decode=False)
    sync(runtime.device)
    return {"seconds": time.perf_counter() - t0, "steps": steps, "passes": dict(gen.cost.forward_passes),
            "graphs_compiled": compiled_graphs() - g0}


def video_section(res: Results, req, runtime, pipe, rate: float):
    """(b) One video with the runtime; returns the Generation (None when it did not run)."""
    from models.engine import generate
    from models.plan import honest_work

    if not res.starts("video", 30):
        return None
    out: dict = {"request": f"{req.width}x{req.height}, {req.frames} frames, {req.steps} steps",
                 "runtime": runtime.model_dump()}
    out["warmup"] = warm_up(res, req, runtime, pipe)
    res.put("video", out)
    reset_peak(runtime.device)
    g0 = compiled_graphs()
    sync(runtime.device)
    t0 = time.perf_counter()
    gen = generate(req, runtime, capture=("final",))
    sync(runtime.device)
    wall = time.perf_counter() - t0
    st = {k: float(v) for k, v in gen.cost.seconds.items()}
    flops = honest_work(req)
    transformer_s = st["high"] + st["low"]
    floor = flops / rate
    out.update({
        "wall_seconds": wall, "stages": st, "model_seconds": sum(st.values()), "other_seconds": wall - sum(st.values()),
        "passes": dict(gen.cost.forward_passes), "block_calls": gen.cost.block_calls,
        "graphs_compiled_during_run": compiled_graphs() - g0, "peak_gb": peak_gb(runtime.device),
        "transformer_flops": flops, "transformer_mfu": flops / transformer_s / rate,
        "seconds_per_pass": transformer_s / max(gen.cost.total_passes, 1),
        "floor_seconds": floor, "end_to_end_over_floor": wall / floor, "model_over_floor": sum(st.values()) / floor,
        "sha256": gen.sha256,
    })
    out.update(mp4_encode(gen, req.fps))
    res.put("video", out)
    return gen


def mp4_encode(gen, fps: int) -> dict:
    """The part of `other_seconds` the MP4 costs: the run's frames encoded again, timed (the same
    bytes as the run's MP4, or the encoder is not byte-stable)."""
    from models.video import encode_mp4

    t0 = time.perf_counter()
    mp4 = encode_mp4(gen.frames, fps)
    return {"mp4_encode_seconds": time.perf_counter() - t0, "mp4_bytes": len(mp4), "mp4_same_bytes": mp4 == gen.mp4}


def expert_input(req, pipe, runtime):
    """A fixed input of one high-noise pass at the video's shape: the request's noise, a seeded text
    embedding, timestep 700."""
    from models.engine import initial_noise
    from models.presets import preset_spec

    spec = preset_spec(req.model)
    dtype = pipe.transformer.patch_embedding.weight.dtype
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, spec.text_len, spec.transformer_config["text_dim"], generator=g)
    return (initial_noise(req).to(runtime.device, dtype), emb.to(runtime.device, dtype),
            torch.tensor([700.0], device=runtime.device))


def one_pass(pipe, runtime, x, emb, t, compiled) -> tuple[float, torch.Tensor]:
    """Seconds and output of one high-noise expert pass, eager or compiled as `runtime` asks."""
    from models.patching import compile_session, pipeline_attention_backend

    with contextlib.ExitStack() as stack:
        stack.enter_context(runtime.apply())
        stack.enter_context(pipeline_attention_backend(pipe, runtime.attention_backend))
        stack.enter_context(torch.no_grad())
        if compiled:
            compile_session(stack, [pipe.transformer], runtime.compile)
        sync(runtime.device)
        t0 = time.perf_counter()
        out = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
        sync(runtime.device)
        return time.perf_counter() - t0, out.float()


def pass_difference(req, runtime, pipe) -> dict:
    x, emb, t = expert_input(req, pipe, runtime)
    eager_s, eager = one_pass(pipe, runtime, x, emb, t, compiled=False)
    eager_s, eager = one_pass(pipe, runtime, x, emb, t, compiled=False)  # the second call: no first-call costs
    g0 = compiled_graphs()
    first_s, _ = one_pass(pipe, runtime, x, emb, t, compiled=True)
    comp_s, comp = one_pass(pipe, runtime, x, emb, t, compiled=True)
    return {"eager_seconds": eager_s, "compiled_seconds": comp_s, "compiled_first_call_seconds": first_s,
            "graphs_compiled": compiled_graphs() - g0, "rel_l2": rel(comp, eager)}


def vae_difference(req, runtime, gen) -> dict:
    """The run's final latent decoded in the other VAE dtype, against the run's own frames."""
    import numpy as np

    from sim.commitment import decode_final

    other = "float32" if runtime.vae_dtype == "bfloat16" else "bfloat16"
    rt = runtime.model_copy(update={"vae_dtype": other})
    sync(runtime.device)
    t0 = time.perf_counter()
    frames = decode_final(req, rt, gen.latents["final"])
    sync(runtime.device)
    sec = time.perf_counter() - t0
    mse = float(((frames.astype(np.float64) - gen.frames.astype(np.float64)) ** 2).mean())
    return {"run_vae_dtype": runtime.vae_dtype, "other_vae_dtype": other, "other_decode_seconds": sec,
            "psnr_uint8_frames": math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)}


def reference_section(res: Results, req, runtime, pipe, gen) -> None:
    """(c) What the runtime changes against the reference: a compiled pass, the other VAE dtype."""
    out: dict = {}
    if runtime.compile and res.starts("reference", 30):
        try:
            out["pass"] = pass_difference(req, runtime, pipe)
        except Exception as err:  # a finding, not a reason to lose the rest
            out["pass"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        res.put("reference", out)
    if gen is not None and res.starts("reference", 30):
        try:
            out["vae"] = vae_difference(req, runtime, gen)
        except Exception as err:
            out["vae"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        res.put("reference", out)


def poc_throughput(pipe, preset: str, runtime, nonces: int, frames: int) -> tuple[dict, "object"]:
    from models.poc import poc_shape, poc_vectors

    shape = poc_shape(preset, frames=frames)
    g0 = compiled_graphs()
    sync(runtime.device)
    t0 = time.perf_counter()  # a warm-up of a few nonces (both experts, as likely as not)
    poc_vectors(pipe, "warmup-block", "bench", range(max(4, runtime.batch_size)), shape=shape, runtime=runtime)
    sync(runtime.device)
    warm, g1 = time.perf_counter() - t0, compiled_graphs()
    t0 = time.perf_counter()
    vectors = poc_vectors(pipe, "bench-block", "bench", range(nonces), shape=shape, runtime=runtime)
    sec = time.perf_counter() - t0
    return {"nonces": nonces, "batch_size": runtime.batch_size, "latent": list(shape.latent), "seconds": sec,
            "nonces_per_s": nonces / sec, "warmup_seconds": warm, "warmup_graphs_compiled": g1 - g0,
            "graphs_compiled_during_run": compiled_graphs() - g1}, vectors


def poc_section(res: Results, preset: str, runtime, pipe, args) -> None:
    """(d) PoC nonces per second, eager against the runtime's compile (the VAE takes no part)."""
    import numpy as np

    if not res.starts("poc", 45):
        return
    out: dict = {"frames": args.poc_frames}
    eager_rt = runtime.model_copy(update={"compile": False, "batch_size": args.poc_batch})
    fast_rt = eager_rt.model_copy(update={"compile": runtime.compile})
    out["eager"], v_eager = poc_throughput(pipe, preset, eager_rt, args.poc_nonces, args.poc_frames)
    res.put("poc", out)
    if fast_rt.compile and res.starts("poc_compiled", 30):
        out["compiled"], v_fast = poc_throughput(pipe, preset, fast_rt, args.poc_nonces, args.poc_frames)
        out["speedup"] = out["compiled"]["nonces_per_s"] / out["eager"]["nonces_per_s"]
        d = np.abs(v_fast.astype(np.float32) - v_eager.astype(np.float32))
        out["vector_max_abs_diff"] = float(d.max())
        res.put("poc", out)


def _f(v, fmt: str = ".2f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def _video_lines(v: dict) -> list[str]:
    if "stages" not in v:
        return [f"Video: {v.get('not_run') or v.get('error') or 'warming up'}", ""]
    st = v["stages"]
    lines = [f"## One video: {v['request']}", "",
             f"Runtime: compile `{v['runtime']['compile']}`, VAE `{v['runtime']['vae_dtype']}`, attention "
             f"`{v['runtime']['attention_backend']}`, offload `{v['runtime']['offload']}`.", "",
             "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {_f(s)} |" for k, s in st.items()]
    lines += [f"| other (latents, frames, MP4) | {_f(v['other_seconds'])} |", f"| **wall** | **{_f(v['wall_seconds'])}** |",
              "", f"- of the other seconds, the MP4 encode ({v.get('mp4_bytes', 0) / 1e6:.1f} MB, one x264 thread): "
              f"{_f(v.get('mp4_encode_seconds'))} s (encoded again after the run; same bytes: {v.get('mp4_same_bytes')})",
              "", f"- compile warm-up before the run: {_f(v['warmup'].get('seconds'))} s "
              f"({v['warmup'].get('steps', 0)} steps); graphs compiled during the timed run: "
              f"{v['graphs_compiled_during_run']}",
              f"- passes {v['passes']}, {_f(v['seconds_per_pass'], '.3f')} s per pass, transformer MFU "
              f"{_f(v['transformer_mfu'], '.1%')}",
              f"- floor (block FLOPs at the matrix rate) {_f(v['floor_seconds'], '.1f')} s; end to end / floor "
              f"**{_f(v['end_to_end_over_floor'])}**, model stages / floor {_f(v['model_over_floor'])}",
              f"- peak GPU memory {_f(v['peak_gb'], '.1f')} GB", ""]
    return lines


def _reference_lines(r: dict) -> list[str]:
    lines = ["## Against the reference", ""]
    p, v = r.get("pass", {}), r.get("vae", {})
    if "rel_l2" in p:
        lines.append(f"- one high-noise pass: eager {_f(p['eager_seconds'], '.3f')} s, compiled "
                     f"{_f(p['compiled_seconds'], '.3f')} s, output rel-L2 {p['rel_l2']:.2e}")
    elif p:
        lines.append(f"- one pass: {p}")
    if "psnr_uint8_frames" in v:
        lines.append(f"- the final latent decoded in {v['other_vae_dtype']} ({_f(v['other_decode_seconds'])} s) against "
                     f"the run's {v['run_vae_dtype']} frames: PSNR {_f(v['psnr_uint8_frames'], '.1f')} dB (uint8)")
    elif v:
        lines.append(f"- VAE: {v}")
    return lines + [""]


def _poc_lines(p: dict) -> list[str]:
    if "eager" not in p:
        return [f"PoC: {p.get('not_run') or p}", ""]
    lines = [f"## PoC throughput ({p['frames']}-frame nonces, latent {p['eager']['latent']}, batch "
             f"{p['eager']['batch_size']})", "", "| runtime | nonces/s | warm-up s |", "|---|---|---|"]
    for k in ("eager", "compiled"):
        if k in p:
            lines.append(f"| {k} | {_f(p[k]['nonces_per_s'])} | {_f(p[k]['warmup_seconds'], '.1f')} |")
    if "speedup" in p:
        lines += ["", f"Speed-up {_f(p['speedup'])}x; PoC vectors move by at most {p['vector_max_abs_diff']:.2e} "
                  "(float16 coordinates of unit vectors)."]
    return lines + [""]


def markdown(res: dict) -> str:
    ver = res.get("versions", {})
    lines = [f"# A14B end to end on {res.get('device', '?')} (torch {ver.get('torch')}, diffusers "
             f"{ver.get('diffusers')})", "", f"Measured {res.get('measured')}; preset `{res.get('args', {}).get('preset')}`"
             f", built in {_f(res.get('build', {}).get('seconds'), '.0f')} s."]
    if "matrix_rate" in res:
        lines.append(f"bf16 matrix rate {res['matrix_rate']['tflops']:.0f} TFLOP/s (square matmul, n = "
                     f"{res['matrix_rate']['n']}): MFU = block FLOPs / seconds / that rate.")
    lines.append("")
    if "video" in res:
        lines += _video_lines(res["video"])
    if "reference" in res:
        lines += _reference_lines(res["reference"]) if "not_run" not in res["reference"] else [
            f"Reference: {res['reference']['not_run']}", ""]
    if "poc" in res:
        lines += _poc_lines(res["poc"])
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=470, help="seconds after start after which no section starts")
    ap.add_argument("--preset", default="a14b-random")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--compile", default="regional", choices=sorted(COMPILE))
    ap.add_argument("--vae-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--attention", default="native", help="diffusers attention backend")
    ap.add_argument("--offload", default="none", choices=("none", "text-encoder", "all"))
    ap.add_argument("--poc-nonces", type=int, default=16)
    ap.add_argument("--poc-frames", type=int, default=5)
    ap.add_argument("--poc-batch", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list of: reference, poc")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from models.presets import build_pipeline
    from models.request import GenerationRequest, Runtime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out, args.deadline)
    header(res, args)
    runtime = Runtime(device=args.device, attention_backend=args.attention, offload=args.offload,
                      compile=COMPILE[args.compile], vae_dtype=args.vae_dtype).check_device()
    req = GenerationRequest(model=args.preset, prompt=PROMPT, width=args.width, height=args.height,
                            frames=args.frames, steps=args.steps)
    t0 = time.perf_counter()
    pipe = build_pipeline(args.preset, runtime)
    sync(args.device)
    res.put("build", {"seconds": time.perf_counter() - t0, "peak_gb": peak_gb(args.device)})
    rate = matrix_rate(res, args.device)
    skip = set(filter(None, args.skip.split(",")))
    gen = video_section(res, req, runtime, pipe, rate)
    if "reference" not in skip:
        reference_section(res, req, runtime, pipe, gen)
    if "poc" not in skip:
        poc_section(res, args.preset, runtime, pipe, args)
    res.put("total_seconds", time.perf_counter() - T0)
    print(markdown(res.res))


if __name__ == "__main__":
    main()
