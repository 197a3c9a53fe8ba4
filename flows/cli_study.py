"""`t2vsim study ...`: protocol-parameter studies (flows/study.py): real network epochs per grid
point beside the closed form, fanned out, resumable, and their map. Only typer at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli_common import Group, read_config, show


def _floats(text: Optional[str], name: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{name}: at least one number is needed, got {text!r}")
    return vals


def register(app: typer.Typer) -> None:
    st = typer.Typer(cls=Group, name="study", help="Protocol-parameter studies: which cheats pay over sampling rate "
                     "x slash fraction x threshold, closed form beside real network epochs, as a map.",
                     no_args_is_help=True)
    app.add_typer(st, name="study")

    @st.command()
    def run(
        run_dir: Optional[Path] = typer.Option(None, help="experiment run directory (the evidence)"),
        out: Path = typer.Option(..., help="study directory (created; rerun with the same study to resume)"),
        source: Optional[str] = typer.Option(None, help="scores (the run's scores of --policy), deployable "
                                             "(validator.json) or at_scale (at_scale.json of the GPU measurements) "
                                             "[default: scores]"),
        rule: Optional[str] = typer.Option(None, help="at_scale: the rule [default: full-final-pinned]"),
        size: Optional[str] = typer.Option(None, help="at_scale: the WxHxF size [default: 256x256x5]"),
        preset: Optional[str] = typer.Option(None, help="at_scale: the preset [default: a14b-random]"),
        policy: Optional[str] = typer.Option(None, help="validation policy [default: full]"),
        metric: Optional[str] = typer.Option(None, help="metric of the policy"),
        rates: Optional[str] = typer.Option(None, help="sampling rate multipliers, e.g. 0.1,0.3,1,3,10"),
        slashes: Optional[str] = typer.Option(None, help="slash fractions, e.g. 0,0.05,0.2,0.5,1"),
        quantiles: Optional[str] = typer.Option(None, help="thresholds as quantiles of the honest scores"),
        epochs: Optional[int] = typer.Option(None, help="simulated epochs per point [default: 2]"),
        requests: Optional[int] = typer.Option(None, help="requests per simulated epoch [default: 2000]"),
        false_slash: Optional[float] = typer.Option(None, help="honest P(INVALID)/epoch the cheapest safe set may "
                                                    "have [default: 0.01]"),
        config: Optional[Path] = typer.Option(None, help="JSON file of StudyParams fields; options override it"),
        workers: int = typer.Option(1, help="points run at once"),
        executor: str = typer.Option("auto", help="auto (Ray if installed and workers > 1, else processes), ray, "
                                     "processes or inline"),
        address: Optional[str] = typer.Option(None, help="Ray cluster to join (default: a local one)"),
    ):
        """Run (or resume) a study and write OUT/report.html, points.parquet and summary.json."""
        from flows.server import temporary_server
        from flows.study import study_flow

        _check_fanout(workers, executor)
        p = _study_params(config, run_dir=None if run_dir is None else str(run_dir), source=source, policy=policy,
                          at_scale_rule=rule, at_scale_size=size, at_scale_preset=preset,
                          metric=metric, rate_multipliers=_floats(rates, "rates"),
                          slash_fractions=_floats(slashes, "slashes"), threshold_quantiles=_floats(quantiles, "quantiles"),
                          epochs=epochs, requests_per_epoch=requests, false_slash_target=false_slash)
        with temporary_server():
            summary = study_flow(p.model_dump(mode="json"), str(out), workers, executor, address)
        _show(summary, out)

    @st.command()
    def report(out: Path = typer.Argument(..., help="study directory")):
        """Rewrite the map of a study directory from its finished points."""
        from sim.network.study_report import write_report

        _show(write_report(out), out)


def _check_fanout(workers: int, executor: str) -> None:
    if executor not in ("auto", "ray", "processes", "inline"):
        raise ValueError(f"executor: {executor!r}; allowed: auto, ray, processes, inline")
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")


def _study_params(config: Optional[Path], **options):
    """StudyParams from the config file, the options given (not None) overriding it; bad evidence is refused
    here, before any server starts."""
    from sim.network.study import StudyParams, evidence

    data = read_config(config)
    data.update({k: v for k, v in options.items() if v is not None})
    if "run_dir" not in data:
        raise ValueError("run_dir: an experiment run directory is needed (--run-dir or the config's run_dir)")
    p = StudyParams.model_validate(data)
    evidence(p)
    return p


def _show(summary: dict, out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"Study {summary['key']}: {summary['points']} points -> {Path(out) / 'report.html'}")
    for c in ("cheat", "points where it pays (closed / conservative / simulated)", "verdicts agree",
              "median |gain diff| GNK"):
        t.add_column(c, justify="right")
    for c in summary["cheats"]:
        t.add_row(c["cheat"], f"{c['closed_pays']} / {c['conservative_pays']} / {c['sim_pays']}", f"{c['agree']:.0%}",
                  f"{c['median_abs_gain_diff_gnk']:.4g}")
    best = summary.get("cheapest_safe")
    line = (f"cheapest safe set: sampling x{best['rate_multiplier']:g}, slash {best['slash_fraction']:g}, threshold "
            f"{best['threshold_label']} ({best['threshold']:.4g}), honest false-slash {best['honest_false_slash']:.3%}"
            if best else f"no grid point is safe at honest false-slash <= {summary['false_slash_target']:.2%}")
    show(t, line)
