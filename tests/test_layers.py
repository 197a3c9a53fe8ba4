"""The layering contracts of .importlinter (flows -> sim -> models, Prefect only in flows/, no import
cycle inside a package), checked with import-linter's `lint-imports`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
CONTRACTS = ("layers", "prefect", "acyclic", "models-acyclic")


def lint(*contracts: str) -> subprocess.CompletedProcess:
    exe = str(LINT) if LINT.exists() else shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e .[dev])")
    args = [a for c in contracts for a in ("--contract", c)]
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_contracts_are_kept():
    res = lint(*CONTRACTS)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_every_contract_is_listed():
    text = (ROOT / ".importlinter").read_text()
    named = {line.split(":")[-1].strip("]") for line in text.splitlines() if line.startswith("[importlinter:contract:")}
    assert named == set(CONTRACTS)
