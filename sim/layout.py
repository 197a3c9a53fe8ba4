"""Where a generation lives in an experiment's run directory (`sim.experiment` writes it; the report
and the deployable validator read it): RUN/gens/pNNNN/SLUG, SLUG naming the deviation."""

from __future__ import annotations

CANONICAL = "canonical"


def slug(spec: str | None) -> str:
    """The directory name of a deviation spec (`canonical` for the validator's own generation)."""
    if spec is None:
        return CANONICAL
    return "".join(c if c.isalnum() or c in "-+" else "_" for c in spec)

