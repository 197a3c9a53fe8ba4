"""`t2vsim generate`, `t2vsim presets`, `t2vsim deviations`: the model layer on the command line,
and the options every command that runs a model spells the same way (--device, --dtype,
--allow-plugin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from flows.cli_common import RUNS, each, literal_choices, show, value
from models.request import DType as DTypeLiteral, Runtime

ALLOW_PLUGIN_HELP = ("module (or package) whose deviations may be imported by a package.module:Class spec "
                     "(repeat); importing runs the module's code, so nothing else is imported")
DTypeChoice = literal_choices("DTypeChoice", DTypeLiteral)
# One default for every command's --dtype: the Runtime's.
DEFAULT_DTYPE = DTypeChoice(Runtime.model_fields["dtype"].default)

Device = Annotated[str, typer.Option(help="torch device: cpu, cuda or cuda:N")]
DTYPE_HELP = "dtype of the transformers and the text encoder (bfloat16 keeps diffusers' float32 islands)"
DType = Annotated[DTypeChoice, typer.Option(help=DTYPE_HELP)]
OptionalDType = Annotated[Optional[DTypeChoice], typer.Option(help=f"{DTYPE_HELP} [default: {DEFAULT_DTYPE.value}]")]
AllowPlugin = Annotated[Optional[List[str]], typer.Option(help=ALLOW_PLUGIN_HELP)]
Deviation = Annotated[Optional[str], typer.Option(help="a deviation spec, e.g. steps:2, fp8, or package.module:Class")]


def generate(
    prompt: Annotated[str, typer.Option(help="text prompt")],
    preset: Annotated[str, typer.Option(help="tiny, tiny-lite, small, small-lite, a14b-random or path:DIR")] = "tiny",
    out: Annotated[Path, typer.Option(help="output directory (video.mp4, record.json, latents.safetensors)")]
    = RUNS / "generate",
    deviation: Deviation = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="negative prompt")] = None,
    width: Annotated[Optional[int], typer.Option(help="width (multiple of 16; preset default)")] = None,
    height: Annotated[Optional[int], typer.Option(help="height (multiple of 16; preset default)")] = None,
    frames: Annotated[Optional[int], typer.Option(help="frames (4k+1; preset default)")] = None,
    fps: Annotated[Optional[int], typer.Option(help="frames per second")] = None,
    steps: Annotated[Optional[int], typer.Option(help="denoising steps")] = None,
    guidance_high: Annotated[Optional[float], typer.Option(help="CFG scale of the high-noise expert")] = None,
    guidance_low: Annotated[Optional[float], typer.Option(help="CFG scale of the low-noise expert")] = None,
    shift: Annotated[Optional[float], typer.Option(help="scheduler flow shift")] = None,
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
    truncate_prompt: Annotated[bool, typer.Option(help="truncate an over-long prompt instead of refusing it")] = False,
    device: Device = "cpu",
    dtype: DType = DEFAULT_DTYPE,
    attention: Annotated[str, typer.Option(help="diffusers attention backend")] = "native",
    threads: Annotated[Optional[int], typer.Option(help="CPU intra-op threads")] = None,
    capture: Annotated[Optional[List[str]], typer.Option(help="latents to capture: init, switch, final, step:K "
                                                               "(repeat) [default: init, switch, final]")] = None,
    weights_seed: Annotated[int, typer.Option(help="seed of a random preset's weights")] = 0,
    allow_plugin: AllowPlugin = None,
) -> None:
    """Generate one video and write the MP4, a JSON record and the captured latents."""
    from models.deviations import allow_plugins, parse_deviation
    from models.engine import GENERATION_FILES, check_captures
    from models.io import check_out_dir
    from models.request import GenerationRequest

    fields = dict(model=preset, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                  frames=frames, fps=fps, steps=steps, guidance_high=guidance_high, guidance_low=guidance_low,
                  shift=shift, seed=seed, truncate_prompt=truncate_prompt)
    # everything is checked before the model is built or anything is written
    request = GenerationRequest(**{k: v for k, v in fields.items() if v is not None})
    runtime = Runtime(device=device, dtype=value(dtype), attention_backend=attention, threads=threads)
    names = check_captures(each(capture, "capture") if capture else ("init", "switch", "final"), request.steps)
    check_out_dir(out, GENERATION_FILES)
    with allow_plugins(allow_plugin or ()):
        dev = parse_deviation(deviation) if deviation else None
        (dev.apply_runtime(runtime) if dev else runtime).check_device()
        from models.engine import generate as run

        gen = run(request, runtime, dev, capture=names, weights_seed=weights_seed)
    gen.save(out)
    c = gen.cost
    show(f"[green]wrote[/] {out}/video.mp4 sha256={gen.sha256[:16]}... frames={tuple(gen.frames.shape)} "
         f"passes={c.forward_passes} compute_share={c.compute_share:.3f} "
         f"seconds={json.dumps({k: round(v, 3) for k, v in c.seconds.items()})}")


def presets() -> None:
    """List the model presets."""
    from rich.table import Table

    from models.presets import PRESETS

    t = Table("preset", "layers", "heads x dim", "ffn", "defaults (WxH, frames, steps)", "description")
    for s in PRESETS.values():
        c, d = s.transformer_config, s.request_defaults
        t.add_row(s.name, str(c["num_layers"]), f"{c['num_attention_heads']}x{c['attention_head_dim']}",
                  str(c["ffn_dim"]), f"{d['width']}x{d['height']}, {d['frames']}, {d['steps']}", s.description)
    t.add_row("path:DIR", "", "", "", "A14B official", "a local diffusers directory, loaded offline")
    show(t)


def deviations() -> None:
    """List the registered deviations (benign and malign)."""
    from rich.table import Table

    from models.deviations import deviation_table

    t = Table("spec", "kind", "description")
    for row in deviation_table():
        t.add_row(row["name"] + (f":{row['arg']}" if row["arg"] else ""), row["kind"], row["description"])
    show(t)


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(presets)
    app.command()(deviations)
