"""Checkpoints under real faults: a planted pickle, damaged files, another run's checkpoint.

Each fault is made on disk where a real run left its checkpoint; the run is then started again
with the real command. Nothing may run from the file, every rerun must finish, and the bad file
must be set aside in ``quarantine/`` with one warning.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from _cli import files, leftovers, relaxbench
from benchmark.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from benchmark.experiment import resolve
from benchmark.record import checkpoint_path
from benchmark.train import RunInterrupted, train
from conftest import tiny_overrides


def _cfg(epochs: int = 4, **kw):
    return resolve("nbody", "egnn", kw.pop("method", "ace-eq"), train_size=32, epochs=epochs,
                   overrides=tiny_overrides("nbody", "egnn", ["train.eval_every=1", "model.hidden=16"]), **kw)


def _interrupted(results, cfg, at: int = 2):
    """Train ``cfg`` until the checkpoint of epoch ``at`` and stop there, as a killed run would."""
    def stop(epoch, row):
        if epoch == at:
            raise RunInterrupted()
    with pytest.raises(RunInterrupted):
        train(cfg, results=results, progress=False, on_evaluation=stop)
    ckpt = checkpoint_path(results, cfg)
    assert ckpt.is_file()
    return ckpt


def _rerun(results, cfg):
    """The same run through the real command; the CLI flags rebuild the same configuration."""
    extra = tiny_overrides("nbody", "egnn", ["train.eval_every=1", "model.hidden=16"])
    args = ["run", "--task", "nbody", "--backbone", "egnn", "--method", cfg.method, "--train-size", "32",
            "--epochs", str(cfg.train.epochs), "--results", str(results), "--quiet", *extra]
    return relaxbench(args)


class Planted:
    """What an attacker would plant: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_never_runs_and_the_run_completes(tmp_path):
    cfg = _cfg()
    results = tmp_path / "results"
    ckpt = checkpoint_path(results, cfg)
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    ckpt.write_bytes(pickle.dumps({"config_hash": cfg.hash, "model": Planted(marker)}))
    torch.save({"format": "relaxbench-checkpoint", "payload": Planted(marker)}, tmp_path / "planted.pt")
    done = _rerun(results, cfg)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "code in the checkpoint ran"
    assert "skipped" in done.stderr and "not a loadable checkpoint" in done.stderr
    assert "starts from scratch" in done.stderr and "Traceback" not in done.stderr
    quarantined = list((ckpt.parent / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes().startswith(b"\x80")
    # the same for a planted torch file, loaded through the public function
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "planted.pt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbled", "foreign-torch-file"])
def test_a_damaged_checkpoint_is_set_aside_and_the_run_restarts(tmp_path, damage):
    cfg = _cfg()
    results = tmp_path / "results"
    ckpt = _interrupted(results, cfg)
    data = ckpt.read_bytes()
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "garbled":               # a few bytes in the middle of the tensor data
        mid = len(data) // 2
        ckpt.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 16]) + data[mid + 16:])
    else:                                   # a torch file that loads safely but is no checkpoint
        torch.save({"model": torch.zeros(3)}, ckpt)
    done = _rerun(results, cfg)
    assert done.returncode == 0, done.stderr
    assert f"skipped {ckpt}" in done.stderr and "starts from scratch" in done.stderr
    record = json.loads(next((results / "runs").rglob("*.json")).read_text())
    assert record["status"] == "completed" and record["timing"]["epochs"] == cfg.train.epochs
    assert len(record["provenance"]["segments"]) == 1          # from scratch: one process trained it
    assert len(list((ckpt.parent / "quarantine").iterdir())) == 1
    assert not ckpt.exists() and not leftovers(results)
    again = _rerun(results, cfg)                               # and nothing is left to trip over
    assert again.returncode == 0 and "skipped" not in again.stderr


def test_a_checkpoint_of_another_configuration_is_refused_with_a_warning(tmp_path):
    cfg, other = _cfg(), _cfg(seed=1)
    results = tmp_path / "results"
    theirs = _interrupted(tmp_path / "other", other)
    ckpt = checkpoint_path(results, cfg)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(theirs.read_bytes())
    done = _rerun(results, cfg)
    assert done.returncode == 0, done.stderr
    assert "checkpoint of configuration" in done.stderr and other.hash in done.stderr
    record = json.loads(next((results / "runs").rglob("*.json")).read_text())
    straight, _ = train(cfg, results=tmp_path / "straight", progress=False)
    assert record["variants"] == straight["variants"]          # nothing of the other run was used


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    """Both layers load with weights_only=True; the RNG states resume exactly (resume == straight)."""
    for method in ("ace-eq", "remul", "lie-anneal"):
        cfg = _cfg(method=method)
        ckpt = _interrupted(tmp_path / method, cfg)
        outer = torch.load(ckpt, weights_only=True)
        assert set(outer) == {"format", "version", "sha256", "payload"}
        state = load_checkpoint(ckpt, config_hash=cfg.hash)
        assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
        resumed, _ = train(cfg, results=tmp_path / method, progress=False)
        straight, _ = train(cfg, results=tmp_path / f"{method}-straight", progress=False)
        assert resumed["curves"] == straight["curves"] and resumed["variants"] == straight["variants"]


def test_state_that_is_not_plain_is_refused_when_saved_not_when_resumed(tmp_path):
    with pytest.raises(TypeError, match="cannot be checkpointed safely"):
        save_checkpoint(tmp_path / "x.pt", {"method": {"thing": object()}})
    assert files(tmp_path) == []
