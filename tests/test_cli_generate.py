"""The `t2vsim` CLI: help on every command, generate writes its artifacts, bad input exits cleanly."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_help_on_every_command():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("generate", "presets", "deviations"):
        assert cmd in res.output
        sub = runner.invoke(app, [cmd, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_generate_writes_mp4_record_and_latents(tmp_path):
    out = tmp_path / "g"
    res = runner.invoke(app, ["generate", "--prompt", "a fox", "--deviation", "steps:2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "record.json").read_text())
    assert rec["deviation"] == "steps:2" and rec["effective_request"]["steps"] == 2 and rec["request"]["steps"] == 4
    assert rec["cost"]["forward_passes"]["high"] + rec["cost"]["forward_passes"]["low"] == 4
    import hashlib

    assert hashlib.sha256((out / "video.mp4").read_bytes()).hexdigest() == rec["sha256"]
    assert (out / "latents.safetensors").stat().st_size > 0


def test_bad_input_is_a_clean_error(tmp_path):
    for args, needle in (
        (["--width", "50"], "width must be a positive multiple of 16"),
        (["--deviation", "warp"], "unknown deviation"),
        (["--preset", "huge"], "unknown preset"),
    ):
        res = runner.invoke(app, ["generate", "--prompt", "x", "--out", str(tmp_path / "o"), *args])
        assert res.exit_code == 1, res.output
        assert needle in " ".join(res.output.split())
        assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_help_does_not_import_heavy_modules():
    code = "import sys; from flows.cli import app; print(any(m in sys.modules for m in ('torch','diffusers','prefect')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
