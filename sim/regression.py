"""The regression of the validation experiment: compare a run's verdict table (`RUN/summary.json`)
with a baseline run's, and keep the baseline run directory (the flow that runs it nightly is
`flows/regression.py`, deployment `validation-regression/nightly` in prefect.yaml).

A regression is
- a malign deviation the baseline separated (held-out FRR <= 1% and FAR <= 1% at the calib
  threshold, `sim.stats`) that this run no longer separates, or that is missing from this run;
- a malign deviation whose benign FRR (held-out FRR at the calib threshold with FAR <= 1%, of the
  best policy for that deviation) rose by more than `frr_tolerance` over the baseline's.

A baseline made under other library versions (another torch, diffusers or PyAV: the `numerics`
fingerprint of the parameters) is compared, not refused: that is what a dependency upgrade needs
to be checked against. The comparison then says which versions changed (from RUN/environment.json)
and that bit-level differences are expected; a regression still fails the run.

The baseline is a run directory (a parameter). If it does not exist, this run's analysis files are
copied there (atomically) and become the baseline; with `baseline=None` nothing is compared and the
run directory itself is reported as the baseline to pass next time. The comparison is the pure
function `compare_summaries`, tested with synthetic summaries.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim import experiment as ex

SEPARATED = "separated"
# Project choice: one more rejected benign row in twenty (the nightly run has 8 prompts, 4 held out,
# 5 benign rows each) is tolerated; a larger rise fails the run.
DEFAULT_FRR_TOLERANCE = 0.05
# What a baseline keeps of a run: the analysis, not the generations (gens/ is regenerated each night).
BASELINE_FILES = ("params.json", "environment.json", "summary.json", "scores.parquet", "thresholds.json", "report.md",
                  "report.html")
# Parameters that may differ from the baseline's: the numerics fingerprint moves with a dependency
# upgrade, which is what the regression is there to check.
CROSS_UPGRADE_FIELDS = {"numerics"}
BASELINE_DIRS = ("report_files",)
# The nightly run: the tiny preset on a CPU with every default deviation (ExperimentParams), 8 prompts
# (4 calibration, 4 held out), fewer bootstrap resamples than a report run (intervals are not compared).
REGRESSION_PARAMS = ex.ExperimentParams(preset="tiny", prompts=8, bootstrap=200, strips=1, out="runs/regression")


class RegressionInputError(ValueError):
    """A parameter or a baseline cannot be used (names the field or the file)."""


class RegressionDetected(RuntimeError):
    """The run detects less than its baseline did; raised to fail the flow run."""


# ---------------------------------------------------------------------------------------------
# The comparison (pure)


@dataclass(frozen=True)
class DeviationComparison:
    """One malign deviation in the baseline and in this run (the best policy's verdict in each)."""

    deviation: str
    status: str  # ok | improved | new | lost separation | FRR rose | missing | absent
    failed: bool
    reason: str
    baseline_policy: str | None = None
    current_policy: str | None = None
    baseline_separation: str | None = None
    current_separation: str | None = None
    baseline_frr: float | None = None
    current_frr: float | None = None


@dataclass(frozen=True)
class Comparison:
    rows: tuple[DeviationComparison, ...]
    frr_tolerance: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failures(self) -> tuple[DeviationComparison, ...]:
        return tuple(r for r in self.rows if r.failed)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "frr_tolerance": self.frr_tolerance, "notes": list(self.notes),
                "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self, *, run: str, baseline: str) -> str:
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} regression(s))"
        lines = [
            "# Regression of the validation experiment", "",
            f"- run: `{run}`", f"- baseline: `{baseline}`",
            f"- verdict: **{verdict}**",
            f"- benign FRR tolerance: +{self.frr_tolerance:g} (held-out FRR at FAR <= 1%, best policy per deviation)",
            "", "| deviation | status | baseline policy | policy now | baseline | now | baseline FRR | FRR now | reason |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            status = f"**{r.status}**" if r.failed else r.status
            lines.append(f"| {r.deviation} | {status} | {r.baseline_policy or '-'} | {r.current_policy or '-'} | "
                         f"{r.baseline_separation or '-'} | {r.current_separation or '-'} | {_pct(r.baseline_frr)} | "
                         f"{_pct(r.current_frr)} | {_cell(r.reason)} |")
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _verdicts_by_deviation(summary: Any, which: str) -> dict[str, dict[str, Any]]:
    """The `deviations` list of a RUN/summary.json (sim.stats.Stats.summary) keyed by deviation."""
    if not isinstance(summary, dict):
        raise RegressionInputError(f"{which} summary: expected a JSON object (RUN/summary.json), "
                                   f"got {type(summary).__name__}")
    rows = summary.get("deviations")
    if not isinstance(rows, list):
        raise RegressionInputError(f"{which} summary: field 'deviations' must be a list of verdict rows, "
                                   f"got {type(rows).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RegressionInputError(f"{which} summary: deviations[{i}] must be an object, got {type(row).__name__}")
        for key in ("deviation", "separation"):
            if not isinstance(row.get(key), str):
                raise RegressionInputError(f"{which} summary: deviations[{i}] lacks the text field {key!r}")
        if row.get("is_best", True) is False:
            continue  # summary.json keeps only the best policy per deviation; tolerate fuller tables
        if row["deviation"] in out:
            raise RegressionInputError(f"{which} summary: deviation {row['deviation']!r} appears twice")
        out[row["deviation"]] = row
    return out


def _frr(row: dict[str, Any], which: str) -> float | None:
    v = row.get("frr_at_far")
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise RegressionInputError(f"{which} summary: deviation {row['deviation']!r}: frr_at_far must be a number "
                                   f"or null, got {v!r}") from None
    if math.isnan(v):
        return None
    if not 0.0 <= v <= 1.0:
        raise RegressionInputError(f"{which} summary: deviation {row['deviation']!r}: frr_at_far must be in [0, 1], "
                                   f"got {v}")
    return v


def _policy(row: dict[str, Any]) -> str:
    return f"{row.get('policy', '?')}/{row.get('metric', '?')}"


def compare_summaries(baseline: dict[str, Any], current: dict[str, Any], *,
                      frr_tolerance: float = DEFAULT_FRR_TOLERANCE) -> Comparison:
    """Compare two RUN/summary.json digests deviation by deviation (see the module docstring)."""
    check_tolerance(frr_tolerance)
    base = _verdicts_by_deviation(baseline, "baseline")
    cur = _verdicts_by_deviation(current, "current")
    rows: list[DeviationComparison] = []
    for dev in sorted(set(base) | set(cur)):
        b, c = base.get(dev), cur.get(dev)
        if c is None:
            sep = b["separation"] == SEPARATED
            rows.append(DeviationComparison(
                dev, "missing" if sep else "absent", sep,
                "separated in the baseline but not in this run's verdicts" if sep else "not in this run's verdicts",
                baseline_policy=_policy(b), baseline_separation=b["separation"], baseline_frr=_frr(b, "baseline")))
            continue
        c_frr = _frr(c, "current")
        if b is None:
            rows.append(DeviationComparison(dev, "new", False, "not in the baseline", current_policy=_policy(c),
                                            current_separation=c["separation"], current_frr=c_frr))
            continue
        b_frr = _frr(b, "baseline")
        common = dict(baseline_policy=_policy(b), current_policy=_policy(c), baseline_separation=b["separation"],
                      current_separation=c["separation"], baseline_frr=b_frr, current_frr=c_frr)
        problems = []
        if b["separation"] == SEPARATED and c["separation"] != SEPARATED:
            problems.append(("lost separation", f"no longer separated: {c.get('explanation') or c['separation']}"))
        if b_frr is not None and c_frr is not None and c_frr - b_frr > frr_tolerance + 1e-12:
            problems.append(("FRR rose", f"benign FRR rose from {b_frr:.1%} to {c_frr:.1%} "
                                         f"(more than +{frr_tolerance:g})"))
        if problems:
            rows.append(DeviationComparison(dev, " + ".join(p[0] for p in problems), True,
                                            "; ".join(p[1] for p in problems), **common))
        elif b["separation"] != SEPARATED and c["separation"] == SEPARATED:
            rows.append(DeviationComparison(dev, "improved", False, "separated now, not in the baseline", **common))
        else:
            why = "FRR not determined in one of the runs" if (b_frr is None) != (c_frr is None) else "as before"
            rows.append(DeviationComparison(dev, "ok", False, why, **common))
    notes = []
    nb, nc = baseline.get("n_prompts"), current.get("n_prompts")
    if nb is not None and nc is not None and nb != nc:
        notes.append(f"the baseline has {nb} prompts, this run {nc}")
    if not base and not cur:
        notes.append("neither run has malign verdicts")
    return Comparison(tuple(rows), float(frr_tolerance), tuple(notes))


def check_tolerance(frr_tolerance: Any) -> float:
    if isinstance(frr_tolerance, bool) or not isinstance(frr_tolerance, (int, float)) \
            or not 0.0 <= float(frr_tolerance) <= 1.0:
        raise RegressionInputError(f"frr_tolerance: must be a number in [0, 1] (a rise of the FRR share), "
                                   f"got {frr_tolerance!r}")
    return float(frr_tolerance)


# ---------------------------------------------------------------------------------------------
# Run directories


def run_date_of(run_date: str | None) -> str:
    """`run_date` checked as YYYY-MM-DD, or today's date (UTC)."""
    if run_date is None:
        return dt.datetime.now(dt.timezone.utc).date().isoformat()
    try:
        return dt.date.fromisoformat(str(run_date)).isoformat()
    except ValueError:
        raise RegressionInputError(f"run_date: expected a date as YYYY-MM-DD, got {run_date!r}") from None


def read_summary(run: Path, which: str) -> dict[str, Any]:
    path = Path(run) / "summary.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RegressionInputError(f"{which}: {path} does not exist; {run} is not a finished experiment run "
                                   "(pass a run directory with summary.json, or a new path to start a baseline)") from None
    except (OSError, ValueError) as err:
        raise RegressionInputError(f"{which}: cannot read {path}: {err}") from None


def parameter_differences(baseline: Path, params: ex.ExperimentParams,
                          ignore: set[str] = CROSS_UPGRADE_FIELDS) -> list[str]:
    """Result-changing parameters (other than `ignore`) in which the baseline's params.json differs
    from `params`.

    The file is compared as JSON, never validated: nothing it names (a plugin deviation's module)
    is imported from a baseline directory."""
    pfile = Path(baseline) / "params.json"
    if not pfile.exists():
        return []
    try:
        old = json.loads(pfile.read_text())
        if not isinstance(old, dict):
            raise ValueError(f"expected a JSON object, got {type(old).__name__}")
    except (OSError, ValueError) as err:
        raise RegressionInputError(f"baseline: {pfile} is not a valid ExperimentParams file: {err}") from None
    a, b = ex.stored_result_fields(old), params.result_fields()
    return [f"{k}: baseline {a.get(k)!r}, run {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in ignore]


def upgrade_notes(baseline: Path, run: Path) -> list[str]:
    """What changed in the libraries between the baseline and the run (RUN/environment.json), or
    that the numerics fingerprint changed when a run has no environment file."""
    def read(d: Path, name: str) -> dict[str, Any]:
        try:
            return json.loads((Path(d) / name).read_text())
        except (OSError, ValueError):
            return {}

    ea, eb = read(baseline, "environment.json"), read(run, "environment.json")
    na = ea.get("numerics") or read(baseline, "params.json").get("numerics")
    nb = eb.get("numerics") or read(run, "params.json").get("numerics")
    va, vb = ea.get("versions", {}), eb.get("versions", {})
    changed = [f"{k} {va.get(k)} -> {vb.get(k)}" for k in sorted(set(va) | set(vb))
               if va and vb and va.get(k) != vb.get(k)]
    if not changed and na == nb:
        return []
    what = ", ".join(changed) if changed else f"numerics fingerprint {na} -> {nb} (no environment.json to say which)"
    return [f"compared across a dependency change: {what}; bit-level differences from the baseline are expected, "
            "the verdicts are what is compared"]


def promote_baseline(run: Path, baseline: Path) -> Path:
    """Copy the analysis of `run` to the new directory `baseline`, all at once (temp dir + rename)."""
    run, baseline = Path(run), Path(baseline)
    if baseline.exists():
        raise RegressionInputError(f"baseline: {baseline} already exists; it is not replaced")
    baseline.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{baseline.name}.", dir=baseline.parent))
    try:
        for name in BASELINE_FILES:
            if (run / name).exists():
                shutil.copy2(run / name, tmp / name)
        for name in BASELINE_DIRS:
            if (run / name).is_dir():
                shutil.copytree(run / name, tmp / name)
        (tmp / "baseline.json").write_text(json.dumps(
            {"source_run": str(run), "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat()}, indent=1))
        os.chmod(tmp, 0o755)
        os.rename(tmp, baseline)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return baseline




# ---------------------------------------------------------------------------------------------
# One nightly run: the steps the flow calls


def check_baseline(base: Path | None, run: Path, params: ex.ExperimentParams) -> None:
    """Refuse a baseline that is the run's own directory, or an existing one that is no finished run
    or was made with other parameters (before hours of generation, not after)."""
    if base is not None and base.resolve() == run.resolve():
        raise RegressionInputError(f"baseline: {base} is this run's own directory; use another path")
    if base is not None and base.exists():
        read_summary(base, "baseline")
        differences = parameter_differences(base, params)
        if differences:
            raise RegressionInputError(
                f"baseline: {base} was made with other parameters ({'; '.join(differences)}); "
                "pass a baseline made with these parameters, or a new path to start one")


def baseline_markdown(run: Path, target: str) -> str:
    """The comparison artifact of a run that had no baseline to compare with."""
    return (f"# Regression of the validation experiment\n\n- run: `{run}`\n- verdict: **BASELINE** (no baseline "
            f"to compare with; this run's analysis is the baseline at `{target}`)\n")


def compare_runs(base: Path, run: Path, frr_tolerance: float) -> Comparison:
    """compare_summaries of the two run directories, with the library changes between them as notes."""
    comparison = compare_summaries(read_summary(base, "baseline"), read_summary(run, "run"),
                                   frr_tolerance=frr_tolerance)
    notes = upgrade_notes(base, run)
    if notes:
        comparison = Comparison(comparison.rows, comparison.frr_tolerance, comparison.notes + tuple(notes))
    return comparison


def regression_error(comparison: Comparison, base: Path) -> RegressionDetected:
    """The error that fails the run (one line naming each regression)."""
    detail = "; ".join(f"{r.deviation}: {r.reason}" for r in comparison.failures)
    return RegressionDetected(f"{len(comparison.failures)} regression(s) against {base}: {detail}")
