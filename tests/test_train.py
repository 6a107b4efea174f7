"""The train loop: valid records, determinism under a seed, resume equal to no interruption,
diverged and failed runs recorded with a reason."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.checkpoint import load_checkpoint, save_checkpoint
from benchmark.record import iter_records, validate_record
from benchmark.train import RunInterrupted, train

VOLATILE = ("timing", "provenance")


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def test_short_run_writes_valid_record(tiny_config, tmp_path):
    cfg = tiny_config("unconstrained", epochs=4, extra=["train.eval_every=2"])
    record, path = train(cfg, results=tmp_path, progress=False)
    validate_record(json.loads(path.read_text()))
    assert record["status"] == "completed"
    assert set(record["variants"]) == {"relaxed", "projected"}
    assert [row["epoch"] for row in record["curves"]] == [2, 4]
    assert record["config"]["hash"] == cfg.hash
    assert path.name == f"n48-seed0-{cfg.hash}.json"
    assert record["diagnostics"]["gamma"] == [1.0, 1.0]
    assert record["params"] > 0 and record["timing"]["median_step_seconds"] > 0
    # the checkpoint of a completed run is removed; the record is the only output
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))


def test_projected_variant_is_equivariant_and_best_epoch_is_the_best(tiny_config, tmp_path):
    cfg = tiny_config("unconstrained", epochs=6, extra=["train.eval_every=2"])
    record, _ = train(cfg, results=tmp_path, progress=False)
    proj = record["variants"]["projected"]
    assert proj["equivariance"]["rel"] < 1e-5          # float32 round-off
    assert record["variants"]["relaxed"]["equivariance"]["rel"] > 1e-3
    for variant, summary in record["variants"].items():
        vals = {row["epoch"]: row[variant]["val_metric"] for row in record["curves"]}
        assert summary["best_epoch"] == min(vals, key=vals.get)
        assert summary["val_metric"] == vals[summary["best_epoch"]]


def test_best_epoch_equivariance_is_the_whole_split_measurement_at_that_epoch(tiny_config, tmp_path,
                                                                              monkeypatch):
    """Curve rows measure the equivariance on the first samples only; the record's summaries are
    measured once at the end, from each variant's best state, on the whole split: the same numbers
    that measuring the whole split at every evaluation gives, and the same metrics and selection."""
    import benchmark.train as train_module
    cfg = tiny_config("unconstrained", epochs=6, extra=["train.eval_every=2"])
    monkeypatch.setattr(train_module, "CURVE_EQUIVARIANCE_SUBSET", None)
    whole, _ = train(cfg, results=tmp_path / "whole", progress=False)
    monkeypatch.setattr(train_module, "CURVE_EQUIVARIANCE_SUBSET", 5)
    part, _ = train(cfg, results=tmp_path / "part", progress=False)
    assert part["variants"] == whole["variants"]
    for variant, summary in whole["variants"].items():
        at_best = next(row for row in whole["curves"] if row["epoch"] == summary["best_epoch"])[variant]
        assert summary["equivariance"] == at_best["equivariance"] and at_best["equivariance_on"] == 32
    for a, b in zip(whole["curves"], part["curves"]):
        for variant in whole["variants"]:
            assert a[variant]["val_metric"] == b[variant]["val_metric"]
            assert b[variant]["equivariance_on"] == 5
            assert b[variant]["equivariance"] != a[variant]["equivariance"]


def test_same_seed_same_numbers(tiny_config, tmp_path):
    cfg = tiny_config("unconstrained", epochs=3)
    a, _ = train(cfg, results=tmp_path / "a", progress=False)
    b, _ = train(cfg, results=tmp_path / "b", progress=False)
    assert _stable(a) == _stable(b)
    other, _ = train(tiny_config("unconstrained", epochs=3, seed=1), results=tmp_path / "c", progress=False)
    assert other["variants"]["relaxed"]["test_metric"] != a["variants"]["relaxed"]["test_metric"]


@pytest.mark.parametrize("method", ["strict", "unconstrained"])
def test_resume_equals_uninterrupted(tiny_config, tmp_path, method):
    cfg = tiny_config(method, epochs=6, extra=["train.eval_every=2"])
    full, _ = train(cfg, results=tmp_path / "full", progress=False)

    def stop_at_4(epoch, row):
        if epoch == 4:
            raise RunInterrupted()
    with pytest.raises(RunInterrupted):
        train(cfg, results=tmp_path / "cut", progress=False, on_evaluation=stop_at_4)
    assert list((tmp_path / "cut" / "checkpoints").rglob("*.pt"))
    assert not list(iter_records(tmp_path / "cut"))       # no record for an unfinished run
    resumed, _ = train(cfg, results=tmp_path / "cut", progress=False)
    assert resumed["timing"]["epochs"] == 6
    assert _stable(resumed) == _stable(full)


def test_provenance_lists_each_process_that_trained_the_run(tiny_config, tmp_path):
    """An uninterrupted run has one segment; a resumed one a segment per process, whose steps add
    up to the run's; a checkpoint written before segments were kept yields an unknown first one."""
    cfg = tiny_config("strict", epochs=4, extra=["train.eval_every=2"])
    whole, _ = train(cfg, results=tmp_path / "whole", progress=False)
    (seg,) = whole["provenance"]["segments"]
    steps = whole["timing"]["steps"]
    assert seg["first_step"] == 0 and seg["steps"] == steps and seg["device"] == "cpu"
    assert seg["torch_threads"] == torch.get_num_threads() and seg["median_step_seconds"] > 0

    def stop_at_2(epoch, row):
        if epoch == 2:
            raise RunInterrupted()
    with pytest.raises(RunInterrupted):
        train(cfg, results=tmp_path / "cut", progress=False, on_evaluation=stop_at_2)
    (ckpt,) = (tmp_path / "cut" / "checkpoints").rglob("*.pt")
    payload = load_checkpoint(ckpt)
    assert [s["steps"] for s in payload["state"]["segments"]] == [steps // 2]
    resumed, _ = train(cfg, results=tmp_path / "cut", progress=False)
    first, second = resumed["provenance"]["segments"]
    assert (first["first_step"], first["steps"]) == (0, steps // 2)
    assert (second["first_step"], second["steps"]) == (steps // 2, steps - steps // 2)
    assert first["device"] == second["device"] == "cpu"

    del payload["state"]["segments"]                       # as written by an older version
    legacy_dir = tmp_path / "legacy"
    (legacy_dir / ckpt.relative_to(tmp_path / "cut")).parent.mkdir(parents=True)
    save_checkpoint(legacy_dir / ckpt.relative_to(tmp_path / "cut"), payload)
    legacy, _ = train(cfg, results=legacy_dir, progress=False)
    unknown, known = legacy["provenance"]["segments"]
    assert unknown == {"first_step": 0, "steps": steps // 2, "device": None, "git_sha": None,
                       "torch_threads": None, "subnormals_flushed": None, "median_step_seconds": None}
    assert known["first_step"] == steps // 2 and known["device"] == "cpu"
    assert _stable(legacy) == _stable(whole)


def test_a_run_flushes_subnormals_and_restores_the_mode_after(tiny_config, tmp_path):
    """Subnormal floats are flushed to zero while a run trains (they make compiled CPU kernels
    several times slower), the segment says so, and the caller's mode is back afterwards."""
    from benchmark.train import subnormals_flushed
    tiny = torch.tensor([torch.finfo(torch.float32).tiny / 4])
    assert tiny.item() != 0 and not subnormals_flushed()
    seen = []
    cfg = tiny_config("strict", epochs=2, extra=["train.eval_every=1"])
    record, _ = train(cfg, results=tmp_path, progress=False,
                      on_evaluation=lambda epoch, row: seen.append((tiny * 1.0).item()))
    assert seen == [0.0, 0.0]
    (seg,) = record["provenance"]["segments"]
    assert seg["subnormals_flushed"] is True
    assert not subnormals_flushed() and (tiny * 1.0).item() == tiny.item()


def test_divergence_is_recorded(tiny_config, tmp_path):
    cfg = tiny_config("unconstrained", epochs=2, extra=["train.lr=1e6", "train.divergence_threshold=10"])
    record, path = train(cfg, results=tmp_path, progress=False)
    assert record["status"] == "diverged"
    assert "training loss" in record["reason"]
    validate_record(json.loads(path.read_text()))


def _spike(monkeypatch, epochs: set[int]):
    """Multiply the training objective by 1e9 in the given epochs (a loss spike on cue)."""
    import benchmark.train as train_mod
    real = train_mod.step_objective

    def spiking(built, batch, forward, *, epoch, step):
        ctx, total = real(built, batch, forward, epoch=epoch, step=step)
        return ctx, total * 1e9 if epoch in epochs else total
    monkeypatch.setattr(train_mod, "step_objective", spiking)


@pytest.mark.parametrize("patience, status", [(0, "diverged"), (2, "diverged"), (3, "completed")])
def test_divergence_patience_lets_a_run_go_on_through_a_spike(tiny_config, tmp_path, monkeypatch, patience,
                                                              status):
    """Two epochs of a loss far above the threshold: patience 0 ends the run at its first step,
    patience 2 at the end of the second epoch, patience 3 lets it train on to the end."""
    _spike(monkeypatch, {0, 1})
    cfg = tiny_config("unconstrained", epochs=4, extra=["train.eval_every=2", "train.divergence_threshold=1e6",
                                                        f"train.divergence_patience={patience}"])
    record, _ = train(cfg, results=tmp_path, progress=False)
    assert record["status"] == status
    if patience == 0:
        assert record["reason"].startswith("training loss") and "at epoch 0, step 0" in record["reason"]
    elif patience == 2:
        assert "for 2 consecutive epochs" in record["reason"] and "at epoch 1" in record["reason"]
    else:
        assert record["timing"]["epochs"] == 4


def test_divergence_patience_counts_across_a_resume(tiny_config, tmp_path, monkeypatch):
    """The count of epochs above the threshold lives in the checkpoint: epochs 1 and 2 spike, the
    run stops after the evaluation at epoch 2, and the resumed run's spike at epoch 3 is the third."""
    _spike(monkeypatch, {1, 2, 3})
    cfg = tiny_config("unconstrained", epochs=6, extra=["train.eval_every=2", "train.divergence_threshold=1e6",
                                                        "train.divergence_patience=3"])

    def stop(epoch, row):
        if epoch == 2:
            raise RunInterrupted()
    with pytest.raises(RunInterrupted):
        train(cfg, results=tmp_path, progress=False, on_evaluation=stop)
    record, _ = train(cfg, results=tmp_path, progress=False)
    assert record["status"] == "diverged" and "3 consecutive epochs" in record["reason"]
    assert "at epoch 3" in record["reason"]


def test_failure_is_recorded(tiny_config, tmp_path, monkeypatch):
    import benchmark.train as train_mod

    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(train_mod, "evaluate_variant", broken)
    record, _ = train(tiny_config("strict", epochs=1), results=tmp_path, progress=False)
    assert record["status"] == "failed" and "RuntimeError: boom" in record["reason"]


def test_code_version_is_dirty_for_code_changes_not_for_results(tmp_path):
    """Runs rewrite records and reports under results/ while others start: that is not a change
    of the code they run; a changed source file is."""
    import subprocess

    from benchmark.provenance import code_version

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "benchmark" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "report.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "init")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert code_version(tmp_path / "benchmark") == sha
    (tmp_path / "results" / "report.md").write_text("regenerated\n")
    (tmp_path / "results" / "new-record.json").write_text("{}\n")
    assert code_version(tmp_path / "benchmark") == sha
    (tmp_path / "benchmark" / "code.py").write_text("x = 2\n")
    assert code_version(tmp_path / "benchmark") == sha + "-dirty"
    assert code_version(tmp_path.parent / "no-such-folder") is None


def test_record_names_the_commit_the_run_started_from(tiny_config, tmp_path, monkeypatch):
    """A checkout that changes while a run trains must not relabel the code that ran."""
    import benchmark.provenance
    import benchmark.train
    monkeypatch.setattr(benchmark.train, "code_version", lambda: "started-at")          # read at the start
    monkeypatch.setattr(benchmark.provenance, "code_version", lambda: "changed-meanwhile")  # what a late read sees
    record, _ = train(tiny_config("strict", epochs=1), results=tmp_path, progress=False)
    assert record["provenance"]["git_sha"] == "started-at"


def test_extra_groups_are_measured_and_recorded(tiny_config, tmp_path, monkeypatch):
    """A task's further groups get their own equivariance error in every evaluation row and in
    the record; the strict model is equivariant under the subgroup as under E(3)."""
    from benchmark.groups import AxialEuclideanGroup
    from benchmark.record import equivariance_items
    from benchmark.tasks.nbody import NBody
    original = NBody.__init__

    def with_subgroup(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.extra_groups = {"about-z": AxialEuclideanGroup(axis=2)}
    monkeypatch.setattr(NBody, "__init__", with_subgroup)
    rec, _ = train(tiny_config("strict", extra=["train.dtype=float64"]), results=tmp_path, progress=False)
    validate_record(rec)
    eq = equivariance_items(rec["variants"]["projected"]["equivariance"])
    assert set(eq) == {"abs", "rel", "abs.about-z", "rel.about-z"}
    assert eq["rel.about-z"] < 1e-10 and eq["rel"] < 1e-10
    assert "groups" in rec["curves"][-1]["projected"]["equivariance"]


def test_a_record_names_no_folder_of_the_machine(tiny_config, tmp_path):
    argv = ["relaxbench", "run", "--results", str(tmp_path / "results"), f"--out={tmp_path}/x", "--seed", "0"]
    rec, path = train(tiny_config("strict"), results=tmp_path / "results", progress=False, argv=argv)
    assert rec["provenance"]["command"] == ["relaxbench", "run", "--results", "results", "--out=x", "--seed", "0"]
    assert str(tmp_path) not in path.read_text()
