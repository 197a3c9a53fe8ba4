"""Small tiny-preset experiments for the tests: parameters and the whole run, prompt by prompt (the
direct runner's order, without Prefect)."""

from __future__ import annotations

from sim import experiment as ex


def experiment_params(out, deviations, *, prompts: int, bootstrap: int, **kw) -> ex.ExperimentParams:
    base = dict(prompts=prompts, out=str(out), deviations=deviations, hwnoise_eps=(3e-3,), bootstrap=bootstrap,
                strips=1)
    base.update(kw)
    return ex.ExperimentParams(**base)


def run_all(params: ex.ExperimentParams):
    ex.open_run(params)
    prompts = ex.load_prompts(params)
    for i, p in enumerate(prompts):
        ex.run_prompt(params, i, p, len(prompts))
    return ex.analyse(params, len(prompts))
