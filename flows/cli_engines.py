"""`t2vsim engines`: the inference engines and their environments (models/engines/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    engines = typer.Typer(help="Inference engines: diffusers (in-process) and vllm-omni (its own environment).",
                          no_args_is_help=True)
    app.add_typer(engines, name="engines")

    @engines.command("list")
    def list_engines() -> None:
        """Each engine and whether it can run here."""
        from rich.console import Console

        from models.engines import vllm_omni

        env = vllm_omni.env_dir()
        Console().print(f"diffusers  ready (in-process)\nvllm-omni  {'ready' if vllm_omni.env_ready(env) else 'not installed'}"
                        f" ({env})")

    @engines.command("install")
    def install(
        engine: str = typer.Argument(..., help="vllm-omni"),
        env: Optional[Path] = typer.Option(None, help="environment directory (default: ~/.cache/t2vsim/vllm-omni-env or "
                                                      "$T2VSIM_VLLM_OMNI_ENV)"),
        gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="stock vLLM-Omni for CUDA, or the CPU build "
                                                                    "with the project's platform plugin (default: detect)"),
    ) -> None:
        """Create an engine's environment with its pinned versions (vllm-omni: about 3 minutes, 4.4 GB)."""
        from flows.cli_generate import fail
        from models.engines import vllm_omni

        if engine != "vllm-omni":
            fail(f"engine: only 'vllm-omni' has an environment to install (diffusers runs in-process), got {engine!r}")
        try:
            path = vllm_omni.install(env.resolve() if env else None, gpu=gpu, quiet=False)
        except vllm_omni.EngineError as err:
            fail(str(err))
        typer.echo(f"vllm-omni environment: {path}")
