"""The report: one self-contained HTML file plus markdown, with every section, from a synthetic run
directory holding real MP4s."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from models.video import encode_mp4
from sim.layout import slug
from sim.report import ReportError, write_report
from sim.stats import compute_stats

BENIGN = ("batch:2", "hwnoise:0.001", "hwnoise:0.01")
MALIGN = {"steps:6": 3.0, "guidance:3.5": 0.0}


def scores(n_prompts=8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_prompts):
        for policy, metric, share, nbytes in (("full", "ssim.mean", 1.0, 0), ("fingerprint", "fp_rel_l2", 1.0, 192)):
            for d in BENIGN + tuple(MALIGN):
                kind = "benign" if d in BENIGN else "malign"
                eps = float(d.split(":")[1]) if d.startswith("hwnoise") else 0.0
                score = rng.uniform(0, 1) * (eps * 10 if eps else 0.05) + (MALIGN.get(d, 0.0))
                rows.append(dict(run_id="r-test", preset="tiny", prompt_id=p, prompt=f"a cat number {p}",
                                 split="calib" if p % 2 == 0 else "test", deviation=d, kind=kind, policy=policy,
                                 metric=metric, score=score, executor_compute_share=1.0 if kind == "benign" else 0.75,
                                 validator_compute_share=share, bytes_kept=nbytes, hwnoise_eps=eps))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(1)
    for p in (1, 3):  # two test prompts with videos; the third strip prompt has none
        base = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        for d in ("canonical",) + BENIGN + tuple(MALIGN):
            d_dir = run / "gens" / f"p{p:04d}" / (d if d == "canonical" else slug(d))
            d_dir.mkdir(parents=True)
            frames = base if d == "canonical" else np.clip(base.astype(int) + rng.integers(-9, 10, base.shape), 0, 255).astype(np.uint8)
            (d_dir / "video.mp4").write_bytes(encode_mp4(frames, 8))
    return run


@pytest.mark.slow
def test_report_is_complete_and_self_contained(run_dir):
    df = scores()
    stats = compute_stats(df, n_boot=100, n_boot_pauc=10)
    html_path, md_path = write_report(run_dir, df, {"preset": "tiny", "strips": 3}, stats)
    html = html_path.read_text()
    md = md_path.read_text()
    # one file: every image inline, nothing fetched
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(srcs) >= 6  # ROC, histograms, cost, EPS, two frame strips
    for section in ("Oracle view: verdict per malign deviation", "FAR/FRR table", "Benign noise per benign deviation", "ROC curves",
                    "Score histograms per deviation", "Compute and bytes per policy", "emulated hardware noise EPS",
                    "canonical vs each deviation"):
        assert section in html, section
    assert "emulation" in html.lower()
    # steps:6 is far outside benign noise: separated; guidance:3.5 is inside it: not separated, with a reason
    assert re.search(r"steps:6</code></td><td class=\"l\"><span class=\"sep\">separated", html)
    assert re.search(r"guidance:3\.5</code></td><td class=\"l\"><span class=\"notsep\">not separated", html)
    assert "within benign noise" in html
    assert "prompt 5" in html and "Not shown" in html  # the prompt without videos is named, not dropped
    assert "| `steps:6` | separated |" in md
    assert (run_dir / "report_files" / "roc.png").is_file() and "report_files/roc.png" in md
    assert not list(run_dir.glob(".*.tmp"))


def test_report_refuses_empty_input(tmp_path):
    with pytest.raises(ReportError, match="empty"):
        write_report(tmp_path, pd.DataFrame(), {})
    with pytest.raises(ReportError, match="not a directory"):
        write_report(tmp_path / "nope", scores(), {})


def test_frame_strip_shows_every_video_and_names_missing_ones(run_dir):
    import io

    from PIL import Image

    from sim.report import strip_figure

    png, missing = strip_figure(run_dir, 1, list(BENIGN) + list(MALIGN) + ["fp8"])
    img = Image.open(io.BytesIO(png))
    # canonical + 5 deviations side by side, frames 0, 2, 4 of 32 px enlarged to 80 px, labels around
    assert img.format == "PNG" and img.width > 6 * 80 and img.height > 3 * 80
    pixels = np.asarray(img.convert("RGB"))
    dark = (pixels < 64).all(axis=-1)
    assert (pixels[:8, :8] == 255).all()  # white margin
    assert dark[:, :40].any() and dark[-img.height // 5:].any()  # row labels left, column labels below
    assert missing == ["fp8 (FileNotFoundError)"]
    assert strip_figure(run_dir, 5, ["fp8"]) == (None, ["canonical (validator) (FileNotFoundError)",
                                                        "fp8 (FileNotFoundError)"])
