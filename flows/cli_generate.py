"""`t2vsim generate`, `t2vsim presets`, `t2vsim deviations`: the model layer on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from flows.cli_common import fail, pydantic_message, show  # noqa: F401  (fail, pydantic_message: re-exported)

ALLOW_PLUGIN_HELP = ("module (or package) whose deviations may be imported by a package.module:Class spec "
                     "(repeat); importing runs the module's code, so nothing else is imported")


def register(app: typer.Typer) -> None:
    @app.command()
    def generate(
        prompt: str = typer.Option(..., help="text prompt"),
        preset: str = typer.Option("tiny", help="tiny, tiny-lite, small, small-lite, a14b-random or path:DIR"),
        out: Path = typer.Option(Path("out/generate"), help="output directory (video.mp4, record.json, latents.safetensors)"),
        deviation: Optional[str] = typer.Option(None, help="a deviation spec, e.g. steps:2, fp8, or package.module:Class"),
        negative_prompt: Optional[str] = typer.Option(None, help="negative prompt"),
        width: Optional[int] = typer.Option(None, help="width (multiple of 16; preset default)"),
        height: Optional[int] = typer.Option(None, help="height (multiple of 16; preset default)"),
        frames: Optional[int] = typer.Option(None, help="frames (4k+1; preset default)"),
        fps: Optional[int] = typer.Option(None, help="frames per second"),
        steps: Optional[int] = typer.Option(None, help="denoising steps"),
        guidance_high: Optional[float] = typer.Option(None, help="CFG scale of the high-noise expert"),
        guidance_low: Optional[float] = typer.Option(None, help="CFG scale of the low-noise expert"),
        shift: Optional[float] = typer.Option(None, help="scheduler flow shift"),
        seed: int = typer.Option(0, help="noise seed"),
        truncate_prompt: bool = typer.Option(False, help="truncate an over-long prompt instead of refusing it"),
        device: str = typer.Option("cpu", help="cpu, cuda or cuda:N"),
        dtype: str = typer.Option("bfloat16", help="bfloat16 (default, float32 islands kept) or float32"),
        attention: str = typer.Option("native", help="diffusers attention backend"),
        threads: Optional[int] = typer.Option(None, help="CPU intra-op threads"),
        capture: str = typer.Option("init,switch,final", help="latents to capture: init, switch, final, step:K"),
        weights_seed: int = typer.Option(0, help="seed of a random preset's weights"),
        allow_plugin: Optional[List[str]] = typer.Option(None, help=ALLOW_PLUGIN_HELP),
    ) -> None:
        """Generate one video and write the MP4, a JSON record and the captured latents."""
        from models.deviations import allow_plugins, parse_deviation
        from models.engine import GENERATION_FILES, check_captures
        from models.io import check_out_dir
        from models.request import GenerationRequest, Runtime

        fields = dict(model=preset, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                      frames=frames, fps=fps, steps=steps, guidance_high=guidance_high, guidance_low=guidance_low,
                      shift=shift, seed=seed, truncate_prompt=truncate_prompt)
        # everything is checked before the model is built or anything is written
        request = GenerationRequest(**{k: v for k, v in fields.items() if v is not None})
        runtime = Runtime(device=device, dtype=dtype, attention_backend=attention, threads=threads)
        names = check_captures([c.strip() for c in capture.split(",") if c.strip()], request.steps)
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

    @app.command()
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

    @app.command()
    def deviations() -> None:
        """List the registered deviations (benign and malign)."""
        from rich.table import Table

        from models.deviations import deviation_table

        t = Table("spec", "kind", "description")
        for row in deviation_table():
            t.add_row(row["name"] + (f":{row['arg']}" if row["arg"] else ""), row["kind"], row["description"])
        show(t)
