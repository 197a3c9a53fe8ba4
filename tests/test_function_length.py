"""No function outside tests/ is longer than 60 lines (decorators and docstring included): a longer one
is split into named steps."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60


def _sources() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / p for p in out.split()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    return [p for p in files if p.is_file() and p.relative_to(ROOT).parts[0] != "tests"]


def _lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield node.end_lineno - start + 1, node.name, node.lineno


def test_no_function_is_over_the_limit():
    long = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
            for p in _sources() for n, name, line in _lengths(p) if n > LIMIT]
    assert not long, f"functions over {LIMIT} lines:\n" + "\n".join(sorted(long))


def test_the_measure_counts_decorators_and_docstring(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('@staticmethod\ndef f():\n    """doc"""\n    return 1\n')
    assert [n for n, _, _ in _lengths(src)] == [4]
