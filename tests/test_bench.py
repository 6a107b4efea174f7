"""``relaxbench bench``: the timing harness measures the train loop's own step and evaluation and
reports ratios (never asserted speeds: these tests check what is measured, not how fast)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.cli import main
from benchmark.cli.bench import suite_estimates
from benchmark.perf import (bench_backbone, bench_data, bench_egnn_pytorch, bench_peer, from_json, machine,
                            parallel_ceiling, to_markdown)
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


def test_bench_times_steps_with_subnormals_flushed_as_training_does_and_restores_the_mode(monkeypatch):
    import benchmark.perf as perf
    from benchmark.train import subnormals_flushed
    seen = []
    original = perf._stepper

    def watched(built, forward):
        step = original(built, forward)

        def timed():
            seen.append(subnormals_flushed())            # the mode while a step is timed
            return step()
        return timed

    monkeypatch.setattr(perf, "_stepper", watched)
    before = subnormals_flushed()
    bench = bench_backbone("egnn", ["ace-eq"], task="nbody", rounds=1, steps_per_round=2, eval_repeats=0,
                           overrides=tiny_overrides("nbody", "egnn"), train_size=48)
    supported = torch.set_flush_denormal(before)         # whether this CPU can flush at all
    assert bench.subnormals_flushed is supported and subnormals_flushed() is before
    assert len(seen) >= 2 * 3 and set(seen) == {supported}  # warm-up and timed steps of both methods, and the FLOP count
    text = to_markdown([bench], machine())
    assert ("subnormal floats flushed to zero, as in training" in text) is supported
    old = __import__("dataclasses").asdict(bench)
    del old["subnormals_flushed"]                         # a bench JSON from before the mode was recorded
    assert from_json(old).subnormals_flushed is None and "subnormal" not in to_markdown([from_json(old)], machine())


def test_bench_command_refuses_an_unknown_backbone_in_one_line(tmp_path, capsys):
    assert main(["bench", "--quick", "--backbones", "egnnn", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'egnn'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_data_bench_compares_the_generator_with_the_literal_loop_bit_for_bit():
    data = bench_data(trajectories=6, literal=2, length=300)
    assert data["bit_identical"] is True and data["compared"] == 2
    assert data["speedup"] > 0 and data["vectorised_s_per_trajectory"] > 0


@pytest.mark.parametrize("name", ["egnn", "segnn"])
def test_peer_bench_runs_the_same_network_written_per_edge(name):
    peer = bench_peer(name, rounds=1, steps=1, overrides=tiny_overrides("nbody", name), train_size=48)
    assert peer["max_rel_output_difference"] < 1e-5          # the same network: equal outputs
    assert peer["ours_s"] > 0 and peer["reference_s"] > 0


def test_report_lists_every_target_met_or_missed(tmp_path):
    bench = bench_backbone("egnn", ["ace-eq"], task="nbody", rounds=1, steps_per_round=1, eval_repeats=1,
                           overrides=tiny_overrides("nbody", "egnn"), train_size=48)
    bench = from_json(json.loads(json.dumps(__import__("dataclasses").asdict(bench))))   # the subprocess path
    assert 0 < bench.methods[1].eval_share_of_run < 1
    bench.worker_rss_mb, bench.worker_method = 3000.0, "ace-eq"       # what the command measures per backbone
    extra = {"data": bench_data(trajectories=4, literal=1, length=200),
             "suites": suite_estimates(["quick"], results=str(tmp_path), workers=2),
             "workers": {"suite": "quick", "only": ["seed=0"], "workers": 2, "one_worker_s": 90.0,
                         "many_workers_s": 60.0, "throughput_ratio": 1.5, "share_of_ceiling": 1.5 / 1.6,
                         "ceiling": {"processes": 2, "products": 6000, "rounds": 3, "throughput_ratio": 1.6}}}
    assert extra["suites"][0]["runs"] == 21 and extra["suites"][0]["measured_runs"] == 0
    text = to_markdown([bench], machine(), extra)
    targets = text[text.index("## Targets"):]
    assert "egnn: ace-eq overhead <= 1.3x" in targets and "one evaluation <= 15%" in targets
    assert "data generation >= 30x" in targets
    assert "| 2 workers >= 1.7x the throughput of one (quick) | 1.50x (machine ceiling 1.60x) | **missed** |" in targets
    assert "get **1.60x** the throughput of one alone" in text
    assert "| egnn: peak memory of a worker < 2 GB | 3000 MB (ace-eq) | **missed** |" in targets
    assert all(("met" in row) or ("missed" in row) for row in targets.splitlines()[4:] if row.startswith("| "))


def test_egnn_pytorch_comparison_runs_at_matched_width_and_depth():
    pytest.importorskip("egnn_pytorch")
    out = bench_egnn_pytorch(rounds=1, steps=1, overrides=tiny_overrides("nbody", "egnn"), train_size=48)
    assert out["peer"] == "egnn-pytorch, 2 EGNN layers of width 16" and out["batch"] == 16
    assert out["ours_s"] > 0 and out["peer_s"] > 0 and out["peer_params"] > 0


def test_parallel_ceiling_times_one_process_alone_and_two_together():
    out = parallel_ceiling(processes=2, products=50, rounds=2)        # real subprocesses, a short loop
    assert out["processes"] == 2 and len(out["alone_s"]) == len(out["concurrent_s"]) == 2
    assert all(t > 0 for t in out["alone_s"] + out["concurrent_s"])
    assert 0 < out["throughput_ratio"]
    json.dumps(out)                                                    # what bench.json holds
