"""Suites: specification loading and validation, grid expansion, skip/retry logic, executors
(local pool and submitit-local give the same records), and interruption (finishing only what is
missing gives the same tables as an uninterrupted suite)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmark.cli import main
from benchmark.record import iter_records, record_path, write_record
from benchmark.registry import METHODS
from benchmark.suite import SpecError, load_spec, parse_spec, plan_suite, run_suite, shipped_suites
from benchmark.suite.executors import Executor, execute
from benchmark.suite.runner import Plan, cell_status, existing_status
from benchmark.train import RunInterrupted, train
from conftest import tiny_overrides

VOLATILE = ("timing", "provenance")


def tiny_spec(methods=("strict", "unconstrained"), seeds=(0,), epochs=1, name="tiny", **extra) -> dict:
    data = {"name": name, "protocol": "tiny test protocol",
            "grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": list(methods), "train_sizes": [48],
                     "seeds": list(seeds)},
            "overrides": tiny_overrides("nbody", "egnn"), "epochs": epochs}
    data.update(extra)
    return data


def write_spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data.get('name', 'spec')}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class InProcess(Executor):
    """Runs jobs one after another in this process (fast; the real executors are tested below)."""

    name = "in-process"

    def run(self, jobs, started, finished):
        for job in jobs:
            started(job)
            finished(job, execute(job.args, str(self.results), None, self.after, self.command))


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def _records(results: Path) -> dict:
    root = results / "runs"
    return {str(p.relative_to(root)): _stable(r) for p, r in iter_records(results)}


# -- specifications -----------------------------------------------------------------------------
def test_grid_expansion_overrides_and_headlines(tmp_path):
    data = tiny_spec(methods="*", seeds=[0, 1],
                     cells=[{"where": {"method": "unconstr*", "seed": 1}, "overrides": ["train.lr=0.002"]}],
                     headline={"unconstrained": "projected"})
    spec = parse_spec(data, path=tmp_path / "tiny.yaml")
    assert spec.methods == METHODS.list()          # "*" is every registered method
    runs = spec.runs()
    assert len(runs) == len(METHODS.list()) * 2
    lrs = {(r.cell.method, r.seed): r.cfg.train.lr for r in runs if r.cell.method in ("strict", "unconstrained")}
    assert lrs[("unconstrained", 1)] == 0.002 and lrs[("unconstrained", 0)] == lrs[("strict", 1)] != 0.002
    assert all(r.cfg.train.epochs == 1 and r.cfg.task_cfg.num_train == 64 for r in runs)
    assert spec.headline_of("unconstrained") == "projected"
    assert spec.headline_of("strict") == METHODS.get("strict").obj.variants[0]
    assert len({r.run_id for r in runs}) == len(runs)


@pytest.mark.parametrize("change, words", [
    ({"colour": 1}, ["colour", "allowed", "grid"]),
    ({"grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strikt"], "train_sizes": [48],
               "seeds": [0]}}, ["grid.methods", "strikt", "strict"]),
    ({"grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["nope-*"], "train_sizes": [48],
               "seeds": [0]}}, ["grid.methods", "nope-*", "unconstrained"]),
    ({"grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict"], "train_sizes": [0],
               "seeds": [0]}}, ["grid.train_sizes", ">= 1"]),
    ({"protocol": ""}, ["protocol", "required"]),
    ({"headline": {"strict": "relaxed"}}, ["headline.strict", "relaxed", "projected"]),
    ({"overrides": ["train.lr"]}, ["overrides", "key=value"]),
    ({"overrides": ["train.colour=3"]}, ["cell nbody/egnn/strict/n48", "train.colour"]),
    ({"executor": {"gpu": 1}}, ["executor.gpu", "partition"]),
])
def test_spec_errors_name_file_key_and_allowed_values(tmp_path, change, words):
    data = {**tiny_spec(), **change}
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError) as err:
        load_spec(path).runs()
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_unknown_suite_lists_shipped_ones():
    with pytest.raises(SpecError, match="quick"):
        load_spec("no-such-suite")


def test_shipped_suites_state_their_protocol():
    names = shipped_suites()
    assert {"quick", "nbody-methods", "nbody-sample-efficiency"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert spec.protocol and spec.name == name
        assert set(spec.methods) <= set(METHODS.list())
        if name in ("quick", "nbody-methods", "nbody-segnn-cpu", "nbody-segnn-paper", "nbody-sample-efficiency"):
            assert spec.methods == METHODS.list()                     # comparisons cover every method
        header = Path(str(spec.path)).read_text().split("\nname:")[0]
        assert header.startswith("#") and "Protocol:" in header      # the header says the protocol
    quick = load_spec("quick")
    assert quick.seeds == [0, 1, 2] and len(quick.runs()) == 3 * len(METHODS.list())
    assert load_spec("nbody-methods").train_sizes == [3000]
    assert load_spec("nbody-sample-efficiency").train_sizes[0] == 500
    assert load_spec("nbody-sample-efficiency").train_sizes[-1] == 9000


# -- skip / retry ---------------------------------------------------------------------------------
def test_skip_completed_and_diverged_retry_failed_only_on_request(tmp_path):
    spec = parse_spec(tiny_spec(seeds=[0, 1]), path=tmp_path / "tiny.yaml")
    results = tmp_path / "results"
    plan = plan_suite(spec, results)
    assert len(plan.todo) == 4
    run_suite(plan, InProcess(results=results), progress=False)
    again = plan_suite(spec, results)
    assert again.todo == [] and set(again.states.values()) == {"completed"}

    # turn one record into a failed one and another into a diverged one
    failed, diverged = again.runs[0], again.runs[1]
    for run, status in ((failed, "failed"), (diverged, "diverged")):
        path = record_path(results, run.cfg)
        record = json.loads(path.read_text())
        record.update(status=status, reason=f"made {status} by the test")
        write_record(path, record)
    plan = plan_suite(spec, results)
    assert plan.todo == []                                   # failed kept, diverged is a result
    plan = plan_suite(spec, results, retry_failed=True)
    assert [r.run_id for r in plan.todo] == [failed.run_id]
    outcome = run_suite(plan, InProcess(results=results), progress=False)
    assert outcome.outcomes[failed.run_id].status == "completed"

    # a record whose hash does not match its configuration does not count
    path = record_path(results, failed.cfg)
    record = json.loads(path.read_text())
    record["config"]["hash"] = "0" * 16
    path.write_text(json.dumps(record))
    assert existing_status(results, failed) == "missing"
    counts = cell_status(spec, results)
    assert sum(c["diverged"] for c in counts.values()) == 1 and sum(c["missing"] for c in counts.values()) == 1


def test_interrupted_suite_finishes_only_what_is_missing_with_identical_tables(tmp_path):
    from benchmark.report import collect_suite, suite_report
    spec = parse_spec(tiny_spec(seeds=[0, 1], epochs=2, overrides=tiny_overrides("nbody", "egnn")
                                + ["train.eval_every=1"]), path=tmp_path / "tiny.yaml")
    straight = tmp_path / "straight"
    run_suite(plan_suite(spec, straight), InProcess(results=straight), progress=False)

    broken = tmp_path / "broken"
    plan = plan_suite(spec, broken)
    run_suite(Plan(spec, plan.runs, plan.states, plan.todo[:1]), InProcess(results=broken),
              progress=False)                                    # the first run only
    victim = plan.todo[1]

    def stop(epoch, row):
        raise RunInterrupted
    with pytest.raises(RunInterrupted):                          # second run stops after epoch 1
        train(victim.cfg, results=broken, progress=False, on_evaluation=stop)
    assert list((broken / "checkpoints").rglob("*.pt"))
    resumed = plan_suite(spec, broken)
    assert len(resumed.todo) == 3 and plan.todo[0] not in resumed.todo
    run_suite(resumed, InProcess(results=broken), progress=False)
    assert plan_suite(spec, broken).todo == []
    assert _records(broken) == _records(straight)
    a = suite_report(collect_suite(spec, straight), spec.name)
    b = suite_report(collect_suite(spec, broken), spec.name)
    assert a.markdown.replace(str(straight), "R") == b.markdown.replace(str(broken), "R")


# -- executors and the command line --------------------------------------------------------------
def test_local_pool_and_submitit_local_write_the_same_records(tmp_path, capsys):
    pytest.importorskip("submitit")
    spec = write_spec(tmp_path, tiny_spec())
    local, sub = tmp_path / "local", tmp_path / "submitit"
    assert main(["suite", "run", str(spec), "--results", str(local), "--workers", "2", "--quiet",
                 "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "| strict | projected |" in out and "mse ↓" in out
    assert main(["suite", "run", str(spec), "--results", str(sub), "--executor", "submitit-local",
                 "--workers", "2", "--quiet", "--no-figures"]) == 0
    capsys.readouterr()
    assert _records(local) == _records(sub) and len(_records(local)) == 2
    threads = {r["provenance"]["torch_threads"] for _, r in iter_records(local)}
    assert threads == {max(1, len(os.sched_getaffinity(0)) // 2)}
    # a second run skips everything and only prints the table again
    start = time.perf_counter()
    assert main(["suite", "run", str(spec), "--results", str(local), "--quiet", "--no-figures"]) == 0
    captured = capsys.readouterr()
    assert "0 to run" in captured.err and "| unconstrained | relaxed |" in captured.out
    assert time.perf_counter() - start < 30
    assert (local / "reports" / "tiny" / "tables.md").is_file()
    assert json.loads((local / "suites" / "tiny.json").read_text())["runs"]


def test_cli_dry_run_status_and_errors(tmp_path, capsys):
    spec = write_spec(tmp_path, tiny_spec(seeds=[0, 1]))
    results = tmp_path / "results"
    assert main(["suite", "run", str(spec), "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("missing") == 4 and "nbody/egnn/strict/n48-seed1-" in out
    assert not results.exists()                                # a dry run writes nothing
    assert main(["suite", "status", str(spec), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "missing" in out and "strict" in out
    assert main(["suite", "run", "no-such-suite"]) == 2
    assert "shipped suites" in capsys.readouterr().err
    assert main(["suite", "run", str(spec), "--executor", "cloud"]) == 2
    assert main(["suite", "run", str(spec), "--workers", "0", "--dry-run"]) == 2


def test_slurm_resources_from_spec_and_command_line(tmp_path, monkeypatch):
    from benchmark.cli.suite import _executor_options
    from benchmark.suite.executors import make_executor
    spec = parse_spec(tiny_spec(executor={"partition": "cpu", "time": 30, "mem": 4}), path=tmp_path / "t.yaml")

    class Args:
        partition, time, cpus, gpus, mem, account, qos, constraint = "gpu", None, 4, 1, None, None, None, None
    options = _executor_options(spec, Args)
    ex = make_executor("slurm", results=tmp_path, workers=8, options=options)
    assert ex.parameters() == {"name": "relaxbench", "timeout_min": 30, "cpus_per_task": 4, "gpus_per_node": 1,
                               "mem_gb": 4.0, "slurm_partition": "gpu", "slurm_array_parallelism": 8}
    local = make_executor("submitit-local", results=tmp_path, workers=2, options=options)
    assert local.parameters()["timeout_min"] == 30 and "slurm_partition" not in local.parameters()
    submitit = pytest.importorskip("submitit")
    from submitit.slurm.slurm import SlurmExecutor
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))   # pretend srun exists
    auto = submitit.AutoExecutor(folder=str(tmp_path / "sub"), cluster="slurm")
    auto.update_parameters(**ex.parameters())               # submitit accepts every parameter
    script = auto._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu", "--cpus-per-task=4", "--time=30", "--mem=4GB", "--gpus-per-node=1"):
        assert line in script, line


@pytest.mark.slow
def test_ctrl_c_keeps_records_and_checkpoints_then_resume_matches(tmp_path):
    """A real `suite run` interrupted with SIGINT after its first record, then started again."""
    # long enough that the second run is still training when the signal comes
    data = tiny_spec(seeds=[0, 1], epochs=100, overrides=tiny_overrides("nbody", "egnn") + ["train.eval_every=1"])
    spec = write_spec(tmp_path, data)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def command(where: Path, workers: int) -> list[str]:
        # one torch thread each, whatever the load: float32 sums depend on the thread count
        return [sys.executable, "-m", "benchmark", "suite", "run", str(spec), "--results", str(where),
                "--workers", str(workers), "--threads", "1", "--quiet", "--no-figures"]
    cmd = command(results, 1)
    # as in a terminal: SIGINT at its default even where this test runs in the background (where a
    # shell starts its children with SIGINT ignored, and Python then raises no KeyboardInterrupt)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # interrupt once a record has landed and the next run is training (it has written a checkpoint)
    deadline = time.time() + 300
    while time.time() < deadline and not (list((results / "runs").rglob("n*.json"))
                                          and list((results / "checkpoints").rglob("*.pt"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "run the same command" in err
    first = len(list((results / "runs").rglob("*.json")))
    assert 1 <= first < 4
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{4 - first} to run" in done.stderr
    straight = tmp_path / "straight"
    # the same workers, so the same torch threads: float32 sums depend on the thread count
    again = subprocess.run(command(straight, 1), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _records(results) == _records(straight)
    assert (results / "reports" / "tiny" / "tables.md").read_text().replace(str(results), "R") == \
        (straight / "reports" / "tiny" / "tables.md").read_text().replace(str(straight), "R")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_killed_suite_takes_its_workers_along_and_resumes(tmp_path):
    # long enough that no run can finish in the second its worker takes to notice the kill
    data = tiny_spec(seeds=[0], epochs=300, overrides=tiny_overrides("nbody", "egnn") + ["train.eval_every=1"])
    spec = write_spec(tmp_path, data)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmark", "suite", "run", str(spec), "--results", str(results), "--workers", "2",
           "--quiet", "--no-figures"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((results / "checkpoints").rglob("*.pt")):
        time.sleep(0.5)
    workers = _children(proc.pid)
    assert workers
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.5)
    assert not any(_alive(p) for p in workers)
    assert list((results / "checkpoints").rglob("*.pt"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(list((results / "runs").rglob("*.json"))) == 2


def test_grid_list_is_the_union_of_its_grids(tmp_path):
    data = {"name": "two", "protocol": "p",
            "grid": [{"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict", "unconstrained"],
                      "train_sizes": [32], "seeds": [0, 1]},
                     {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict"],
                      "train_sizes": [32, 48], "seeds": [1, 2]}]}
    spec = parse_spec(data, path=tmp_path / "two.yaml")
    planned = {(r.cell.method, r.cell.train_size, r.seed) for r in spec.runs()}
    assert planned == {("strict", 32, 0), ("strict", 32, 1), ("strict", 32, 2), ("unconstrained", 32, 0),
                       ("unconstrained", 32, 1), ("strict", 48, 1), ("strict", 48, 2)}
    assert len(spec.runs()) == len(planned)
    with pytest.raises(SpecError, match=r"grid\[1\]\.seeds"):
        parse_spec({**data, "grid": [data["grid"][0], {k: v for k, v in data["grid"][1].items() if k != "seeds"}]},
                   path=tmp_path / "bad.yaml")


def test_only_runs_a_part_of_the_grid_and_the_manifest_keeps_the_whole(tmp_path, capsys):
    from benchmark.config import ConfigError
    from benchmark.suite.runner import parse_only
    spec_path = write_spec(tmp_path, tiny_spec(methods=("strict", "unconstrained", "ace-eq"), seeds=[0, 1]))
    spec = load_spec(str(spec_path))
    only = parse_only(["method=strict,ace-*", "seed=1"])
    assert only == {"method": ["strict", "ace-*"], "seed": ["1"]}
    plan = plan_suite(spec, tmp_path / "results", only=only)
    assert sorted((r.cfg.method, r.seed) for r in plan.todo) == [("ace-eq", 1), ("strict", 1)]
    for bad in (["colour=red"], ["method"], ["seed="]):
        with pytest.raises(ConfigError, match="KEY=PATTERN"):
            parse_only(bad)
    results = tmp_path / "results"
    assert main(["suite", "run", str(spec_path), "--results", str(results), "--only", "method=unconstrained",
                 "--only", "seed=0", "--quiet", "--no-figures", "--workers", "1"]) == 0
    assert [p.parent.name for p in (results / "runs").rglob("*.json")] == ["unconstrained"]
    manifest = json.loads((results / "suites" / "tiny.json").read_text())
    assert len(manifest["runs"]) == 6                          # the whole grid, not the part that ran
    assert main(["suite", "run", str(spec_path), "--results", str(results), "--only", "seeds=0"]) == 2
    assert "KEY=PATTERN" in capsys.readouterr().err


def test_estimate_reads_measured_step_times_and_suite_list_names_every_suite(tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.suite.runner import estimate
    spec = parse_spec(tiny_spec(seeds=[0, 1]), path=tmp_path / "tiny.yaml")
    results = tmp_path / "results"
    plan = plan_suite(spec, results)
    assert estimate(plan.runs, results).measured == 0                   # nothing measured yet
    run_suite(plan, InProcess(results=results), progress=False)
    cost = estimate(plan.runs, results)
    assert cost.measured == len(plan.runs) == cost.records and cost.unmeasured == 0
    steps = {run.run_id: run.cfg.train.epochs * -(-run.cfg.train_size // run.cfg.train.batch_size)
             for run in plan.runs}
    assert cost.seconds > 0 and ("CPU-minutes" in cost.describe() or "CPU-hours" in cost.describe())
    by_method = {}
    for _, rec in iter_records(results):
        by_method.setdefault(rec["method"], []).append(rec["provenance"]["segments"][0]["median_step_seconds"])
    import statistics
    want = sum(steps[run.run_id] * statistics.median(by_method[run.cfg.method]) for run in plan.runs)
    assert cost.seconds == pytest.approx(want)
    # evaluations: each run's time outside its steps per evaluation, times the evaluations planned
    rest = {}
    for _, rec in iter_records(results):
        per = (rec["timing"]["wall_seconds"] - rec["timing"]["train_seconds"]) / len(rec["curves"])
        rest.setdefault(rec["method"], []).append(per)
    evaluations = {run.run_id: -(-run.cfg.train.epochs // run.cfg.train.eval_every) for run in plan.runs}
    assert cost.eval_seconds == pytest.approx(sum(evaluations[run.run_id] * statistics.median(rest[run.cfg.method])
                                                  for run in plan.runs)) and cost.eval_seconds > 0
    assert main(["suite", "list", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in shipped_suites())


def test_suite_compare_passes_on_a_rerun_and_names_every_difference(tmp_path, capsys):
    """The reproduction check: the same suite trained twice agrees run by run; a changed metric, a
    changed status and a missing run are each reported, and the command exits 1."""
    from benchmark.record import write_record
    spec_path = write_spec(tmp_path, tiny_spec(seeds=[0, 1]))
    spec = load_spec(spec_path)
    first, second = tmp_path / "first", tmp_path / "second"
    for results in (first, second):
        assert main(["suite", "run", str(spec_path), "--results", str(results), "--workers", "1", "--quiet",
                     "--no-figures"]) == 0
    capsys.readouterr()
    assert main(["suite", "compare", str(spec_path), "--results", str(second), "--reference", str(first)]) == 0
    assert "all 4 runs" in capsys.readouterr().out
    paths = sorted((second / "runs").rglob("*.json"))
    rec = json.loads(paths[0].read_text())
    variant = next(iter(rec["variants"]))
    rec["variants"][variant]["test_metric"] *= 1.01
    write_record(paths[0], rec)
    paths[1].unlink()
    assert main(["suite", "compare", str(spec_path), "--results", str(second), "--reference", str(first)]) == 1
    out = capsys.readouterr().out
    assert f"{variant}.test_metric" in out and "relative 1.00e-02" in out and "no record here" in out
    assert "2 difference(s)" in out and "3 of 4 runs compared" in out
    assert main(["suite", "compare", str(spec_path), "--results", str(second), "--reference", str(first),
                 "--rtol", "0.02"]) == 1                     # the missing run still fails the check
    assert spec.name == "tiny"
