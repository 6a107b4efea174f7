"""Concurrent processes for real: two starts of one run, a killed owner's lock, reports read
while they are written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli import REPO, leftovers, popen, relaxbench, run_args
from benchmark.fileio import RunLock, RunLocked


def _wait_for(predicate, timeout: float = 600.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_two_starts_of_one_run_one_trains_the_other_says_so_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    args = run_args(results, epochs=150)
    for trial in range(3):
        a, b = popen(args), popen(args)
        (out_a, err_a), (out_b, err_b) = a.communicate(timeout=600), b.communicate(timeout=600)
        assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
        outs = sorted([(out_a, err_a), (out_b, err_b)], key=lambda o: "already running" in o[1])
        (won_out, _), (lost_out, lost_err) = outs
        assert "record:" in won_out and lost_out == ""
        assert "already running (pid " in lost_err and "nothing written" in lost_err
        assert "Traceback" not in lost_err
        named = int(lost_err.split("already running (pid ")[1].split(")")[0].split()[0])
        assert named in (a.pid, b.pid)
        (record,) = list((results / "runs").rglob("*.json"))
        assert json.loads(record.read_text())["status"] == "completed"
        assert not leftovers(results)
        assert not list((results / "checkpoints").rglob("*.pt"))       # completed: no checkpoint left
        assert not list((results / "checkpoints").rglob("*.lock"))
        record.unlink()                                                 # the next trial races again


def test_a_lock_is_exclusive_and_freed_when_its_owner_is_killed(tmp_path):
    path = tmp_path / "run.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from benchmark.fileio import RunLock
lock = RunLock({str(path)!r}).acquire()
print("held", flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked) as info:
            RunLock(path).acquire()
        assert info.value.owner["pid"] == holder.pid and info.value.owner["host"] == socket.gethostname()
        assert f"already running (pid {holder.pid})" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()                               # the stale file of a killed owner...
    with RunLock(path):                                # ...is no obstacle
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
    # a lock file naming a pid that is gone, left by anything, is taken over too
    path.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    with RunLock(path):
        pass


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_a_stale_lock_that_the_rerun_recovers(tmp_path):
    results = tmp_path / "results"
    args = run_args(results, method="ace-eq", epochs=300)
    proc = popen(args)
    _wait_for(lambda: list((results / "checkpoints").rglob("*.pt")))
    (lock,) = list((results / "checkpoints").rglob("*.lock"))
    assert json.loads(lock.read_text())["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock.exists()
    done = relaxbench(args, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "already running" not in done.stderr and "record:" in done.stdout
    record = json.loads(next((results / "runs").rglob("*.json")).read_text())
    assert len(record["provenance"]["segments"]) == 2              # resumed, not restarted
    assert not lock.exists()


def _complete(path: Path) -> bool:
    data = path.read_bytes()
    if path.suffix == ".png":
        return data.startswith(b"\x89PNG") and data.rstrip().endswith(b"IEND\xaeB`\x82")
    if path.suffix == ".pdf":
        return data.startswith(b"%PDF") and b"%%EOF" in data[-64:]
    if path.suffix == ".json":
        json.loads(data)
        return True
    return len(data) > 0 and data.endswith(b"\n")


@pytest.mark.slow
def test_a_reader_during_reports_never_sees_an_empty_or_partial_file(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        for method in ("strict", "unconstrained"):
            done = relaxbench(run_args(results, method=method, seed=seed))
            assert done.returncode == 0, done.stderr
    first = relaxbench(["report", "--results", str(results)])
    assert first.returncode == 0, first.stderr
    folder = next((results / "reports").iterdir())
    watched = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.suffix for p in watched} >= {".md", ".csv", ".png", ".pdf", ".json", ".tex"}
    writers = [popen(["report", "--results", str(results)]) for _ in range(2)]
    bad, reads = [], 0
    while any(w.poll() is None for w in writers):
        for path in watched:
            try:
                if not _complete(path):
                    bad.append(path.name)
            except FileNotFoundError:
                bad.append(f"{path.name} (missing)")
            except ValueError:
                bad.append(f"{path.name} (not JSON)")
            reads += 1
    for w in writers:
        _, err = w.communicate()
        assert w.returncode == 0, err
    assert reads > len(watched) and bad == []
    assert not leftovers(results)
