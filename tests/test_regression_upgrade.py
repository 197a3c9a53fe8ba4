"""The regression flow compares across dependency upgrades (the numerics fingerprint) instead of
refusing, and says which library versions changed."""

import json

import pytest

from sim import regression as rg
from sim import experiment as ex


def _run_dir(path, params, versions):
    path.mkdir(parents=True)
    (path / "params.json").write_text(params.model_dump_json())
    (path / "environment.json").write_text(json.dumps({"numerics": params.numerics, "versions": versions}))
    return path


def test_a_baseline_under_other_versions_is_compared_with_a_note(tmp_path):
    now = ex.ExperimentParams(prompts=4, out="x")
    old = now.model_copy(update={"numerics": "0" * 16})
    base = _run_dir(tmp_path / "base", old, {"torch": "2.11.0", "diffusers": "0.42.1"})
    run = _run_dir(tmp_path / "run", now, {"torch": "2.14.1", "diffusers": "0.42.1"})
    assert rg.parameter_differences(base, now) == []  # not refused
    # ... though any other result-changing field still is
    assert rg.parameter_differences(base, now.model_copy(update={"seed": 3})) == ["seed: baseline 0, run 3"]
    assert rg.parameter_differences(base, now, ignore=set())[0].startswith("numerics:")
    notes = rg.upgrade_notes(base, run)
    assert len(notes) == 1 and "torch 2.11.0 -> 2.14.1" in notes[0] and "diffusers" not in notes[0]
    assert rg.upgrade_notes(run, run) == []


def test_a_baseline_without_environment_file_names_the_fingerprints(tmp_path):
    now = ex.ExperimentParams(prompts=4, out="x")
    base = tmp_path / "base"
    base.mkdir()
    (base / "params.json").write_text(now.model_copy(update={"numerics": "f" * 16}).model_dump_json())
    run = _run_dir(tmp_path / "run", now, {"torch": "2.14.1"})
    notes = rg.upgrade_notes(base, run)
    assert notes and "f" * 16 in notes[0] and now.numerics in notes[0]


def test_open_run_records_the_environment(tmp_path):
    params = ex.ExperimentParams(prompts=2, out=str(tmp_path / "run"))
    ex.open_run(params)
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["numerics"] == params.numerics and env["versions"]["torch"]
    assert "environment.json" in rg.BASELINE_FILES


@pytest.mark.parametrize("field", sorted(rg.CROSS_UPGRADE_FIELDS))
def test_only_the_fingerprint_is_allowed_to_differ(field):
    assert field in ex.ExperimentParams.model_fields and field not in ex.NON_RESULT_FIELDS
