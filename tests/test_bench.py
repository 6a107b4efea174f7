"""``relaxbench bench``: the timing harness measures the train loop's own step and evaluation and
reports ratios (never asserted speeds: these tests check what is measured, not how fast)."""

from __future__ import annotations

import json

import pytest

from benchmark.cli import main
from benchmark.perf import bench_backbone, machine, to_markdown
from conftest import tiny_overrides


def test_bench_times_every_method_against_strict_and_writes_its_tables():
    bench = bench_backbone("egnn", ["ace-eq", "lie-anneal"], task="nbody", rounds=2, steps_per_round=1,
                           eval_repeats=1, overrides=tiny_overrides("nbody", "egnn"), train_size=48)
    assert [m.method for m in bench.methods] == ["strict", "ace-eq", "lie-anneal"]     # strict first, always
    strict = bench.methods[0]
    assert strict.overhead_vs_strict == 1.0
    assert all(m.step_q1_s <= m.step_median_s <= m.step_q3_s for m in bench.methods)
    assert all(m.eval_s > 0 and m.eval_fraction_of_epoch > 0 for m in bench.methods)
    assert bench.steps_per_epoch == 48 // 16 and bench.batch_size == 16
    assert bench.strict_flops_per_step > 0 and bench.matmul_flops_per_second > 0
    text = to_markdown([bench], machine())
    assert "| lie-anneal |" in text and "overhead vs strict" in text and "GFLOP/s" in text


def test_bench_command_refuses_an_unknown_backbone_in_one_line(tmp_path, capsys):
    assert main(["bench", "--quick", "--backbones", "egnnn", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'egnn'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()
