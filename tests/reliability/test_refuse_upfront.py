"""Faults of the machine, refused before training or survived without losing work: results that
cannot be written (a file in the way, an impossible path, a read-only file system), a full disk,
and a W&B that is configured but unreachable."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from _cli import files, leftovers, one_line, relaxbench, run_args


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(options) -> folder``: a real small or read-only file system (needs root and mount)."""
    mounted = []

    def make(options: str, name: str = "fs") -> Path:
        where = tmp_path / name
        if not _mount_tmpfs(where, options):
            pytest.skip("cannot mount a tmpfs here (needs root in a namespace that allows mounts)")
        mounted.append(where)
        return where
    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _refused_quickly(done, *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    line = one_line(done.stderr)
    assert line.startswith("relaxbench: error:")
    for word in words:
        assert word in line, line
    return line


def test_results_folder_in_the_way_or_impossible_is_refused_before_training(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs").write_text("a file where a folder must be\n")
    started = time.perf_counter()
    done = relaxbench(run_args(results, epochs=200))
    _refused_quickly(done, str(results / "runs"))
    assert time.perf_counter() - started < 60                       # refused, not trained
    assert [p.name for p in files(results)] == ["runs"]
    for impossible in ("/dev/null/x", "/proc/version/results"):
        done = relaxbench(run_args(Path(impossible)))
        _refused_quickly(done, "cannot write")


def test_a_read_only_results_file_system_is_refused_before_training(tmpfs, tmp_path):
    ro = tmpfs("ro,size=1m")
    done = relaxbench(run_args(ro / "results", epochs=200))
    _refused_quickly(done, "Read-only file system", "choose a writable --results")
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "protocol": "p", "epochs": 1, "grid": {
        "tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict"], "train_sizes": [32], "seeds": [0]}}))
    done = relaxbench(["suite", "run", spec, "--results", ro / "results", "--quiet"])
    _refused_quickly(done, "Read-only file system")


def test_a_data_cache_that_cannot_be_written_is_refused_before_training(tmpfs, tmp_path):
    ro = tmpfs("ro,size=1m", "data")
    done = relaxbench(run_args(tmp_path / "results"), RELAXBENCH_DATA=str(ro))
    _refused_quickly(done, str(ro))
    assert files(tmp_path / "results") == []


def test_a_full_disk_is_one_clear_error_leaves_nothing_partial_and_the_rerun_works(tmpfs):
    small = tmpfs("size=64k")                    # room for a lock and a probe, not for a checkpoint
    results = small / "results"
    done = relaxbench(run_args(results, epochs=3))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("relaxbench: error:")]
    assert done.stderr.strip().splitlines()[-1] == line             # the run's first line, then the error
    assert line.startswith("relaxbench: error: checkpoint not written: ")   # the message, not an errno tuple
    assert "No space left on device" in line and "run the same command again" in line
    assert not leftovers(small)                                     # no partial .tmp file
    assert not list((results / "runs").rglob("*.json"))           # and no 'failed' record to retry
    remount = subprocess.run(["mount", "-o", "remount,size=16m", str(small)], capture_output=True)
    assert remount.returncode == 0, remount.stderr
    again = relaxbench(run_args(results, epochs=3))
    assert again.returncode == 0, again.stderr
    (record,) = list((results / "runs").rglob("*.json"))
    assert json.loads(record.read_text())["status"] == "completed"
    assert not leftovers(small)


@pytest.mark.slow
def test_an_unreachable_wandb_costs_one_short_timeout_and_one_warning_per_suite(tmp_path):
    pytest.importorskip("wandb")
    from conftest import tiny_overrides
    spec = tmp_path / "w.yaml"
    spec.write_text(yaml.safe_dump({"name": "w", "protocol": "p", "epochs": 1,
                                    "overrides": tiny_overrides("nbody", "egnn"),
                                    "grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict"],
                                             "train_sizes": [32], "seeds": [0, 1, 2]}}))
    dead = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
            "WANDB_DIR": str(tmp_path / "wandb"), "RELAXBENCH_WANDB_TIMEOUT": "4"}
    results = tmp_path / "results"
    started = time.perf_counter()
    done = relaxbench(["suite", "run", spec, "--results", results, "--quiet", "--no-figures", "--workers", "1",
                       "--wandb"], timeout=600, **dead)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("W&B logging failed") == 1, done.stderr
    assert "W&B is off for the rest of this suite" in done.stderr
    assert len(list((results / "runs").rglob("*.json"))) == 3        # every local record is there
    # a second W&B attempt would cost another timeout; the whole suite stays far from 3 of them
    assert seconds < 240
