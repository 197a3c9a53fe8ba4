"""models/: everything that touches the generative model (no Prefect here).

Light names are importable without torch; `generate` and friends import torch when called.
"""

from models.request import GenerationRequest, Runtime

__all__ = ["GenerationRequest", "Runtime", "generate", "build_pipeline", "preset_spec", "parse_deviation"]


def __getattr__(name):
    if name == "generate":
        from models.engine import generate

        return generate
    if name in ("build_pipeline", "preset_spec"):
        import models.presets as p

        return getattr(p, name)
    if name == "parse_deviation":
        from models.deviations import parse_deviation

        return parse_deviation
    raise AttributeError(name)
