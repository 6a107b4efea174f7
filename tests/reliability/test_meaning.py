"""Numbers that must mean what their row says: configurations never pooled as seeds, parameter
counts of the network that produced the number, one exit-status rule, identical reruns."""

from __future__ import annotations

import json

import pandas as pd

from _cli import relaxbench, run_args
from benchmark.record import iter_records


def _run(results, method, seed, *extra):
    done = relaxbench(run_args(results, method=method, seed=seed, extra=list(extra)))
    assert done.returncode == 0, done.stderr
    return done


def test_adhoc_rows_keep_configurations_apart_and_label_what_differs(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        _run(results, "strict", seed)
        _run(results, "ace-eq", seed, "method.dual_lr=0.001")
        _run(results, "ace-eq", seed, "method.dual_lr=0.01")
    report = relaxbench(["report", "--results", results, "--no-figures", "--test", "paired"])
    assert report.returncode == 0, report.stderr
    (folder,) = [p for p in (results / "reports").iterdir() if p.name.startswith("ad-hoc-")]
    summary = pd.read_csv(folder / "summary.csv")
    ace = summary[summary.method.str.startswith("ace-eq") & (summary.variant == "projected")]
    assert sorted(ace.method) == ["ace-eq [method.dual_lr=0.001]", "ace-eq [method.dual_lr=0.01]"]
    assert list(ace.n_completed) == [2, 2]                        # two seeds each, not four pooled
    assert set(summary[summary.method == "strict"].n_completed) == {2}
    table = (folder / "tables.md").read_text()
    assert "ace-eq [method.dual_lr=0.001]" in table and "ace-eq [method.dual_lr=0.01]" in table


def test_params_are_those_of_the_network_that_produced_the_number(tmp_path):
    results = tmp_path / "results"
    _run(results, "strict", 0)
    _run(results, "ace-eq", 0)
    records = {rec["method"]: rec for _, rec in iter_records(results)}
    strict, ace = records["strict"], records["ace-eq"]
    assert ace["variants"]["projected"]["params"] == strict["variants"]["projected"]["params"] == strict["params"]
    assert ace["variants"]["relaxed"]["params"] == ace["params"] > strict["params"]
    report = relaxbench(["report", "--results", results, "--no-figures", "--all-variants"])
    assert report.returncode == 0, report.stderr
    (folder,) = list((results / "reports").iterdir())
    summary = pd.read_csv(folder / "summary.csv").set_index(["method", "variant"])
    assert summary.loc[("ace-eq", "projected"), "params"] == strict["params"]
    assert summary.loc[("ace-eq", "relaxed"), "params"] == ace["params"]


def test_diverged_is_a_result_for_run_and_suite_alike(tmp_path):
    import yaml
    from conftest import tiny_overrides
    results = tmp_path / "results"
    done = relaxbench(run_args(results, extra=["train.divergence_threshold=1e-9"]))
    assert done.returncode == 0, done.stderr
    assert ": diverged (" in done.stdout
    spec = tmp_path / "d.yaml"
    spec.write_text(yaml.safe_dump({"name": "d", "protocol": "p", "epochs": 1,
                                    "overrides": tiny_overrides("nbody", "egnn") + ["train.divergence_threshold=1e-9"],
                                    "grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict"],
                                             "train_sizes": [32], "seeds": [0]}}))
    suite = relaxbench(["suite", "run", spec, "--results", tmp_path / "suite", "--quiet", "--no-figures"])
    assert suite.returncode == 0, suite.stderr
    (record,) = list((tmp_path / "suite" / "runs").rglob("*.json"))
    assert json.loads(record.read_text())["status"] == "diverged"


def test_the_same_command_twice_gives_identical_records(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for where in (a, b):
        _run(where, "ace-elastic", 3)
    (ra,), (rb,) = ([rec for _, rec in iter_records(w)] for w in (a, b))
    for rec in (ra, rb):
        rec.pop("timing"), rec.pop("provenance")
    assert ra == rb
