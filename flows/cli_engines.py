"""`t2vsim engines`: the inference engines and their environments (models/engines/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


engines = typer.Typer(help="Inference engines: diffusers (in-process) and vllm-omni (its own environment).",
                      no_args_is_help=True)


def list_engines() -> None:
    """Each engine and whether it can run here."""
    from rich.console import Console

    from models.engines import vllm_omni

    env = vllm_omni.env_dir()
    Console().print(f"diffusers  ready (in-process)\nvllm-omni  {'ready' if vllm_omni.env_ready(env) else 'not installed'}"
                    f" ({env})")


def install(
    engine: Annotated[str, typer.Argument(help="vllm-omni")],
    env: Annotated[Optional[Path], typer.Option(help="environment directory (default: ~/.cache/t2vsim/vllm-omni-env or "
                                                  "$T2VSIM_VLLM_OMNI_ENV)")] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="stock vLLM-Omni for CUDA, or the CPU build "
                                                                "with the project's platform plugin (default: detect)")] = None,
) -> None:
    """Create an engine's environment with its pinned versions (vllm-omni: about 3 minutes, 4.4 GB)."""
    from flows.cli_common import fail
    from models.engines import vllm_omni

    if engine != "vllm-omni":
        fail(f"engine: only 'vllm-omni' has an environment to install (diffusers runs in-process), got {engine!r}")
    try:
        path = vllm_omni.install(env.resolve() if env else None, gpu=gpu, quiet=False)
    except vllm_omni.EngineError as err:
        fail(str(err))
    typer.echo(f"vllm-omni environment: {path}")


def register(app: typer.Typer) -> None:
    engines.command("list")(list_engines)
    engines.command("install")(install)
    app.add_typer(engines, name="engines")
