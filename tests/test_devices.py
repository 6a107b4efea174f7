"""Where runs train: device resolution, moving data, and (where a GPU exists) CUDA runs that give the
CPU's numbers and checkpoints that move between devices."""

from __future__ import annotations

import pytest
import torch

from benchmark.config import ConfigError
from benchmark.devices import DEVICE_ENV, resolve_device
from benchmark.registry import METHODS
from benchmark.train import RunInterrupted, build, train

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def test_resolve_device_names(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device(None).type == ("cuda" if CUDA else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for bad, words in (("tpu", "not a device"), ("mps", "allowed"), ("cuda", "no CUDA device")):
        with pytest.raises(ConfigError, match=words):
            resolve_device(bad)


def test_bad_device_fails_before_anything_is_written(tiny_config, tmp_path):
    cfg = tiny_config("strict")
    with pytest.raises(ConfigError):
        train(cfg, results=tmp_path, progress=False, device="gpu0")
    assert not any(tmp_path.rglob("*.json"))


def test_device_is_not_part_of_the_configuration(tiny_config, tmp_path):
    cfg = tiny_config("ace-eq", epochs=1)
    record, _ = train(cfg, results=tmp_path, progress=False, device="cpu")
    assert "device" not in str(record["config"]["resolved"]).lower()
    assert record["provenance"]["device"] == "cpu"


def test_task_and_model_follow_the_device(tiny_config):
    built = build(tiny_config("ace-elastic"), device="cpu")
    assert built.task.split("train").pos.device.type == "cpu"
    moved = built.task.split("valid").to(device="cpu", dtype=torch.float64)
    assert moved.pos.dtype == torch.float64 and moved.edge_attr.dtype == torch.float64


def _test_metrics(record):
    return {v: s["test_metric"] for v, s in record["variants"].items()}


@needs_cuda
@pytest.mark.parametrize("backbone", ["egnn", "segnn"])
@pytest.mark.parametrize("method", METHODS.list())
def test_cuda_run_matches_cpu_run(tiny_config, tmp_path, method, backbone):
    """Every method on every backbone trains on a GPU; in float64 it gives the CPU's numbers."""
    cfg = tiny_config(method, backbone=backbone, epochs=2, extra=["train.dtype=float64"])
    cpu, _ = train(cfg, results=tmp_path / "cpu", progress=False, device="cpu")
    gpu, _ = train(cfg, results=tmp_path / "gpu", progress=False, device="cuda")
    assert cpu["status"] == gpu["status"] == "completed", gpu["reason"]
    assert gpu["provenance"]["device"] != "cpu"
    a, b = _test_metrics(cpu), _test_metrics(gpu)
    assert a.keys() == b.keys()
    for variant in a:
        assert b[variant] == pytest.approx(a[variant], rel=1e-6), variant


@needs_cuda
@pytest.mark.parametrize("method", ["ace-elastic", "remul"])
def test_run_started_on_gpu_finishes_on_cpu(tiny_config, tmp_path, method):
    """A checkpoint written on a GPU resumes on a CPU, to the numbers of an uninterrupted run."""
    cfg = tiny_config(method, epochs=4, extra=["train.dtype=float64", "train.eval_every=2"])
    whole, _ = train(cfg, results=tmp_path / "whole", progress=False, device="cpu")

    def stop(epoch, row):
        if epoch == 2:
            raise RunInterrupted
    with pytest.raises(RunInterrupted):
        train(cfg, results=tmp_path / "moved", progress=False, device="cuda", on_evaluation=stop)
    resumed, _ = train(cfg, results=tmp_path / "moved", progress=False, device="cpu")
    assert resumed["status"] == "completed"
    for variant, value in _test_metrics(whole).items():
        assert _test_metrics(resumed)[variant] == pytest.approx(value, rel=1e-6)


def test_default_threads_take_the_free_cores_and_say_why(monkeypatch):
    import os
    from benchmark.devices import default_threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert default_threads() == (4, "4 cores, load 0.1")
    assert default_threads(workers=2)[0] == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))      # a busy machine: the free cores
    assert default_threads()[0] == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))      # never fewer than one
    assert default_threads() == (1, "4 cores, load 9.0")
