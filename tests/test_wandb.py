"""Weights & Biases, offline in a temporary folder: what one benchmark run and one aggregate
report write (read back from W&B's own transaction log), the default mode, and that a W&B
failure never fails a run."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # third-party pydantic notices

from benchmark.cli import main  # noqa: E402
from benchmark.tracking.wandb_runs import WandbRunLogger, flatten_row, wandb_mode  # noqa: E402
from conftest import tiny_overrides  # noqa: E402


@pytest.fixture
def offline(tmp_path, monkeypatch):
    folder = tmp_path / "wandb-dir"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return folder


def read_wandb_log(run_dir: Path, timeout: float = 60.0) -> dict:
    """The records of an offline run's ``run-<id>.wandb`` file, once W&B's service has written the
    run's ``exit`` record (it writes asynchronously, after ``finish`` returns)."""
    deadline = time.time() + timeout
    while True:
        out = _parse_wandb_log(run_dir)
        if out["exit"] or time.time() > deadline:
            return out
        time.sleep(0.2)


def _parse_wandb_log(run_dir: Path) -> dict:
    """W&B's log format: a 7-byte header, then 32 KiB blocks of records framed as
    (crc32, length, kind) with kind 1 = whole, 2/3/4 = first/middle/last piece; each a protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb
    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, chunks = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:                       # a block's tail too short for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        if pos + length > len(data):                      # still being written
            break
        piece, pos = data[pos:pos + length], pos + length
        if kind == 1:                                     # a whole record
            chunks.append(piece)
        elif kind == 2:                                   # first / middle / last pieces
            pending = piece
        elif kind == 3:
            pending += piece
        elif kind == 4:
            chunks.append(pending + piece)
    out = {"run": None, "history": [], "summary": {}, "artifacts": [], "exit": False}
    for chunk in chunks:
        rec = pb.Record()
        try:
            rec.ParseFromString(chunk)
        except Exception:                                 # a record still being written
            break
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "artifact":
            out["artifacts"].append(rec.artifact)
        elif kind == "exit":
            out["exit"] = True
    return out


def run_config(run) -> dict:
    return {item.key: json.loads(item.value_json) for item in run.config.update}


def a_record(status: str = "completed") -> dict:
    curves = [{"epoch": e, "train_loss": 1.0 / e,
               "relaxed": {"val_metric": 0.5 / e, "equivariance": {"abs": 0.2 / e, "rel": 0.1 / e}},
               "projected": {"val_metric": 0.6 / e, "equivariance": {"abs": 1e-7, "rel": 1e-8}},
               "gamma": [1.0 / e, 0.5 / e], "gamma_bar": 1.0 / e, "truncation_error": 0.3 / e,
               "lambda": [0.1 * e, 0.2 * e], "u": [0.0, 0.01 * e]} for e in (2, 4)]
    return {"schema_version": 1, "task": "nbody", "backbone": "egnn", "method": "ace-elastic", "seed": 1,
            "train_size": 48, "status": status, "reason": None,
            "config": {"hash": "abcdef0123456789", "resolved": {"task": "nbody", "method": "ace-elastic", "seed": 1,
                                                                 "train": {"epochs": 4, "lr": 5e-4}}},
            "variants": {"relaxed": {"best_epoch": 4, "val_metric": 0.125, "test_metric": 0.13,
                                     "equivariance": {"abs": 0.05, "rel": 0.025}},
                         "projected": {"best_epoch": 4, "val_metric": 0.15, "test_metric": 0.16,
                                       "equivariance": {"abs": 1e-7, "rel": 1e-8}}},
            "headline": "relaxed", "metric": {"name": "mse", "higher_is_better": False, "scale": 1.0},
            "curves": curves, "diagnostics": {"layers": ["layer0", "layer1"], "gamma": [0.25, 0.125],
                                              "gamma_bar": 0.25, "lambda": [0.4, 0.8], "u": [0.0, 0.04]},
            "params": 1234, "timing": {"wall_seconds": 3.0, "median_step_seconds": 0.01}, "provenance": {}}


def test_run_logger_writes_config_per_epoch_metrics_and_best_validation_summary(offline):
    folder = WandbRunLogger(project="relaxbench-test", suite="quick").log_record(a_record())
    assert folder is not None and Path(folder).is_dir() and Path(folder).parent.parent == offline
    assert Path(folder).name.startswith("offline-run-")
    log = read_wandb_log(Path(folder))
    run = log["run"]
    assert run.project == "relaxbench-test" and run.job_type == "train"
    assert run.run_group == "nbody/egnn/ace-elastic/n48" and run.display_name.endswith("/seed1")
    config = run_config(run)
    assert config["method"] == "ace-elastic" and config["train"]["lr"] == 5e-4
    assert config["config_hash"] == "abcdef0123456789" and config["suite"] == "quick"
    steps = [h for h in log["history"] if "relaxed/val_metric" in h]
    assert [h["_step"] for h in steps] == [2, 4]
    assert steps[1]["relaxed/val_metric"] == 0.125 and steps[1]["projected/equivariance_rel"] == 1e-8
    assert steps[0]["gamma/layer1"] == 0.25 and steps[1]["lambda/layer0"] == pytest.approx(0.4)
    assert steps[1]["u/layer1"] == pytest.approx(0.04) and steps[0]["truncation_error"] == 0.15
    summary = log["summary"]
    assert summary["best/relaxed/test_metric"] == 0.13 and summary["best/projected/val_metric"] == 0.15
    assert summary["best/headline/test_metric"] == 0.13 and summary["best/relaxed/best_epoch"] == 4
    assert summary["final/lambda/layer1"] == 0.8 and summary["params"] == 1234


def test_flatten_row_names_layers_from_the_record():
    rec = a_record()
    flat = flatten_row(rec, rec["curves"][0])
    assert set(flat) >= {"train_loss", "relaxed/val_metric", "relaxed/equivariance_abs", "gamma/layer0",
                         "lambda/layer1", "u/layer0", "gamma_bar"}


def test_a_wandb_failure_never_fails_the_run(offline, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no disk")
    monkeypatch.setattr(wandb, "init", broken)
    logger = WandbRunLogger()
    assert logger.log_record(a_record()) is None
    assert "W&B logging failed (RuntimeError: no disk)" in capsys.readouterr().err
    assert logger.log_record(a_record()) is None              # not tried again, not said again
    assert capsys.readouterr().err == ""


def test_offline_is_the_default_without_an_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_cli_run_with_wandb_logs_one_offline_run(offline, tmp_path, capsys):
    argv = ["run", "--task", "nbody", "--backbone", "egnn", "--method", "unconstrained", "--train-size", "48",
            "--epochs", "2", "--results", str(tmp_path / "results"), "--quiet", "--wandb",
            "--wandb-project", "cli-test"] + tiny_overrides("nbody", "egnn", ["train.eval_every=1"])
    assert main(argv) == 0
    (run_dir,) = (offline / "wandb").glob("offline-run-*")
    log = read_wandb_log(run_dir)
    assert log["run"].project == "cli-test" and run_config(log["run"])["method"] == "unconstrained"
    assert [h["_step"] for h in log["history"] if "relaxed/val_metric" in h] == [1, 2]
    assert "best/relaxed/test_metric" in log["summary"]


def test_report_wandb_aggregate_run_and_offline_report_spec(offline, tmp_path, capsys):
    from benchmark.record import write_record
    from benchmark.report.wandb_report import build_report
    results = tmp_path / "results"
    for seed in range(2):
        rec = a_record()
        rec["seed"] = seed
        rec["config"]["hash"] = f"{seed:016d}"
        write_record(results / "runs" / "nbody" / "egnn" / "ace-elastic" / f"n48-seed{seed}-{seed:016d}.json", rec)
    assert main(["report", "--results", str(results), "--no-figures", "--wandb", "--wandb-report",
                 "--wandb-project", "agg-test"]) == 0
    err = capsys.readouterr().err
    (run_dir,) = (offline / "wandb").glob("offline-run-*")
    log = read_wandb_log(run_dir)
    assert log["run"].job_type == "aggregate" and log["run"].project == "agg-test"
    logged = {k: v for row in log["history"] for k, v in row.items()}
    assert logged["leaderboard/_type"] == logged["sample_efficiency/_type"] == "table-file"
    table = json.loads((run_dir / "files" / logged["leaderboard/path"]).read_text())
    assert {"rank", "method", "variant", "mean", "std", "n", "p_holm"} <= set(table["columns"])
    assert table["data"][0][table["columns"].index("method")] == "ace-elastic"
    (records,) = [a for a in log["artifacts"] if a.type == "benchmark-records"]
    assert records.name.endswith("-records")
    names = {entry.path for entry in records.manifest.contents}
    assert "runs/nbody/egnn/ace-elastic/n48-seed1-0000000000000001.json" in names
    assert any(n.startswith("tables/") and n.endswith("summary.csv") for n in names)
    specs = list((results / "reports").glob("*/wandb_report.json"))
    assert len(specs) == 1 and "wandb sync" in err and "python -m benchmark.report.wandb_report" in err
    spec = json.loads(specs[0].read_text())
    assert spec["project"] == "agg-test" and spec["entity"] is None
    report = build_report({**spec, "entity": "someone"})  # a wandb-workspaces Report, built offline
    assert report.title.startswith("relaxbench:") and len(report.blocks) > 3


def test_suite_hook_logs_each_run(offline, tmp_path):
    from benchmark.suite import parse_spec, plan_suite, run_suite
    from benchmark.tracking.wandb_runs import log_record_to_wandb
    import functools
    from test_suite import InProcess, tiny_spec
    spec = parse_spec(tiny_spec(), path=tmp_path / "tiny.yaml")
    results = tmp_path / "results"
    hook = functools.partial(log_record_to_wandb, project="suite-test", suite="tiny")
    run_suite(plan_suite(spec, results), InProcess(results=results, after=hook), progress=False)
    runs = sorted((offline / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    groups = {read_wandb_log(r)["run"].run_group for r in runs}
    assert groups == {"nbody/egnn/strict/n48", "nbody/egnn/unconstrained/n48"}
