"""Records, manifests and names under real faults on disk: every reader warns once, sets the bad
file aside, and goes on; a suite reruns the cell; no name climbs out of its folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from _cli import files, relaxbench, run_args
from benchmark.record import RecordError, RunId, RunRecord, iter_records, load_record

NOT_RECORDS = {"list": "[]", "object": "{}", "null": "null", "missing-keys": '{"schema_version": 1, "task": "nbody"}',
               "truncated": None, "empty": ""}


def _spec(tmp_path: Path, name: str = "tiny", epochs: int = 1) -> Path:
    from conftest import tiny_overrides
    data = {"name": name, "protocol": "tiny test protocol", "epochs": epochs,
            "grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict", "unconstrained"],
                     "train_sizes": [32], "seeds": [0]},
            "overrides": tiny_overrides("nbody", "egnn")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny suite to damage (copied per test)."""
    root = tmp_path_factory.mktemp("suite")
    spec = _spec(root)
    done = relaxbench(["suite", "run", spec, "--results", root / "results", "--quiet", "--no-figures",
                       "--workers", "1"])
    assert done.returncode == 0, done.stderr
    return root


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil
    shutil.copytree(finished / "results", tmp_path / "results")
    spec = _spec(tmp_path)
    return spec, tmp_path / "results"


def _damage(results: Path, index: int, kind: str) -> Path:
    """Turn the index-th record under ``results`` into a file of ``kind`` (truncated when None)."""
    victim = sorted((results / "runs").rglob("*.json"))[index]
    text = NOT_RECORDS[kind]
    victim.write_text(victim.read_text()[:200] if text is None else text)
    return victim


@pytest.mark.parametrize("kind", list(NOT_RECORDS))
def test_a_file_that_is_not_a_record_is_reported_once_set_aside_and_rerun(finished, tmp_path, kind):
    spec, results = _copy(finished, tmp_path)
    victim = _damage(results, 0, kind)

    status = relaxbench(["suite", "status", spec, "--results", results])
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stderr
    warnings = [line for line in status.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and str(victim) in warnings[0], status.stderr
    assert "missing" in status.stdout and not victim.exists()
    assert len(list((victim.parent / "quarantine").iterdir())) == 1

    run = relaxbench(["suite", "run", spec, "--results", results, "--quiet", "--no-figures", "--workers", "1"])
    assert run.returncode == 0, run.stderr
    assert "1 to run" in run.stderr and victim.exists()
    assert load_record(victim)["status"] == "completed"

    report = relaxbench(["report", "--results", results, "--no-figures"])
    assert report.returncode == 0 and "skipped" not in report.stderr   # said once, not again


@pytest.mark.parametrize("kind", list(NOT_RECORDS))
def test_report_over_damaged_records_warns_and_does_not_crash(finished, tmp_path, kind):
    _, results = _copy(finished, tmp_path)
    victim = _damage(results, 1, kind)
    report = relaxbench(["report", "--results", results, "--no-figures"])
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr and f"skipped {victim}" in report.stderr
    assert "## Suite tiny" in report.stdout


def test_a_truncated_record_outside_any_suite_is_not_a_silent_stale_report(tmp_path):
    results = tmp_path / "results"
    done = relaxbench(run_args(results))
    assert done.returncode == 0, done.stderr
    first = relaxbench(["report", "--results", results, "--no-figures"])
    assert first.returncode == 0 and "ad-hoc-" in first.stdout
    (stale,) = [p for p in (results / "reports").iterdir() if p.name.startswith("ad-hoc-")]
    (record,) = list((results / "runs").rglob("*.json"))
    record.write_text(record.read_text()[:300])
    again = relaxbench(["report", "--results", results, "--no-figures"])
    assert again.returncode == 1
    assert f"skipped {record}" in again.stderr and "no valid run records" in again.stderr
    assert not stale.exists()                                           # no stale report left standing
    assert "Traceback" not in again.stderr


def test_a_corrupt_manifest_is_rebuilt_from_its_shipped_suite_or_set_aside(finished, tmp_path):
    _, results = _copy(finished, tmp_path)
    suites = results / "suites"
    (suites / "tiny.json").write_text('{"runs": [')                   # ours: not shipped, set aside
    (suites / "quick.json").write_text("[]")                           # a shipped suite's
    report = relaxbench(["report", "--results", results, "--no-figures"])
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr
    assert "rebuilt from the shipped suite 'quick'" in report.stderr
    rebuilt = json.loads((suites / "quick.json").read_text())
    assert len(rebuilt["runs"]) > 0 and all(RunId.parse(r) for r in rebuilt["runs"])
    assert "skipped" in report.stderr and not (suites / "tiny.json").exists()
    assert len(list((suites / "quarantine").iterdir())) == 1
    assert "ad-hoc-" in report.stdout                                  # its runs are still reported
    # and `suite run` writes the manifest again from the spec
    rerun = relaxbench(["suite", "run", _spec(tmp_path), "--results", results, "--quiet", "--no-figures"])
    assert rerun.returncode == 0 and json.loads((suites / "tiny.json").read_text())["name"] == "tiny"


@pytest.mark.parametrize("name", ["..", ".", "../outside", "a/b", ".hidden", ""])
def test_a_suite_name_is_one_safe_path_component(tmp_path, name):
    spec = tmp_path / "bad.yaml"
    data = yaml.safe_load(_spec(tmp_path).read_text())
    data["name"] = name
    spec.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    done = relaxbench(["suite", "run", spec, "--results", results, "--quiet"])
    assert done.returncode == 2 and "name" in done.stderr and "Traceback" not in done.stderr
    assert files(tmp_path / "results") == [] and not (tmp_path / "reports").exists()


def test_a_manifest_whose_name_is_not_a_suite_name_is_ignored_with_a_warning(finished, tmp_path):
    _, results = _copy(finished, tmp_path)
    (results / "suites" / "..json").write_text((results / "suites" / "tiny.json").read_text())
    before = set(files(tmp_path))
    report = relaxbench(["report", "--results", results, "--no-figures"])
    assert report.returncode == 0, report.stderr
    assert "ignored suite manifest" in report.stderr
    written = set(files(tmp_path)) - before
    assert all((results / "reports") in p.parents for p in written), written
    assert not (results / "tables.md").exists()


def test_report_out_may_not_be_a_folder_the_runs_own(finished, tmp_path):
    _, results = _copy(finished, tmp_path)
    for inside in ("runs", "runs/nbody", "checkpoints", "suites"):
        done = relaxbench(["report", "--results", results, "--out", results / inside, "--no-figures"])
        assert done.returncode == 2 and "holds the runs' own files" in done.stderr
    assert not list((results / "runs").rglob("*.csv"))


def test_run_ids_and_record_paths_cannot_leave_their_folder():
    good = "nbody/egnn/strict/n32-seed0-0123456789abcdef"
    assert str(RunId.parse(good)) == good
    for bad in ("../egnn/strict/n32-seed0-0123456789abcdef", "nbody/../strict/n32-seed0-0123456789abcdef",
                "nbody/egnn/strict/n32-seed0-0123456789abcdef/..", "nbody/egnn/strict/../../x",
                "nbody/egnn/.x/n32-seed0-0123456789abcdef"):
        with pytest.raises(ValueError):
            RunId.parse(bad)
    with pytest.raises(RecordError, match="not a name"):
        RunRecord.from_dict({"schema_version": 1, "task": "..", "backbone": "egnn", "method": "strict", "seed": 0,
                             "train_size": 1, "status": "completed", "reason": None,
                             "config": {"hash": "0" * 16, "resolved": {}}, "variants": {"p": {
                                 "best_epoch": 1, "val_metric": 1.0, "test_metric": 1.0,
                                 "equivariance": {"abs": 0, "rel": 0}}}, "curves": [], "diagnostics": {},
                             "params": 1, "timing": {"wall_seconds": 1, "median_step_seconds": 1},
                             "provenance": {}})


def test_a_record_filed_under_another_runs_name_is_set_aside(finished, tmp_path):
    _, results = _copy(finished, tmp_path)
    a, b = sorted((results / "runs").rglob("*.json"))
    b.write_text(a.read_text())                       # b's place now holds a's record
    paths = [p for p, _ in iter_records(results)]
    assert paths == [a] and not b.exists()
