"""The papers' protocols as presets: every setting each one fixes, the authors' branch form, the
constraint-relaxation penalty's sum form, and the published column of a suite's tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.evaluate import assert_equivariant
from benchmark.experiment import resolve
from benchmark.method import EpochContext
from benchmark.suite.published import PublishedError, load_published, parse_published
from benchmark.train import build

from conftest import tiny_overrides

# Every setting of the ACE authors' SEGNN N-body protocol, as the resolved configuration names it.
ACE_SEGNN = {
    "train.optimizer": "adam", "train.lr": 9e-4, "train.weight_decay": 0.0, "train.epochs": 2000,
    "train.batch_size": 100, "train.drop_last": True, "train.eval_every": 5, "train.grad_clip": None,
    "train.augment": "none",
    "model.hidden": 64, "model.layers": 4, "model.lmax_h": 1, "model.lmax_attr": 1,
    "model.branch": "ace-mlp", "model.branch_act": "gelu", "model.branch_at": "gate-output",
    "model.centre_input": False,
}
ACE_DUAL = {"method.dual_optimizer": "adam", "method.dual_lr": 8e-4, "method.dual_eps": 1e-8, "method.gamma_init": 1.0}
CR_SEGNN = {
    "train.optimizer": "adam", "train.lr": 5e-4, "train.weight_decay": 1e-12, "train.epochs": 1000,
    "train.batch_size": 100, "train.drop_last": True, "train.eval_every": 5, "train.grad_clip": None,
    "train.augment": "rotation",
    "model.hidden": 64, "model.layers": 4, "model.branch": "linear", "model.branch_at": "gate-output",
    "model.centre_input": True,
    "method.schedule": "triangular", "method.gamma_max": 1.0, "method.lambda_reg": 0.01,
    "method.penalty_reduction": "sum",
}


def _value(cfg, key):
    ns, leaf = key.split(".", 1)
    return getattr(cfg.namespace(ns), leaf)


@pytest.mark.parametrize("method, preset, want", [
    ("ace-eq", "ace", {**ACE_SEGNN, **ACE_DUAL}),
    ("strict", "ace", {k: v for k, v in ACE_SEGNN.items() if not k.startswith("model.branch")}),
    ("lie-anneal", "cr", CR_SEGNN),
])
def test_a_preset_resolves_to_every_setting_of_the_protocol(method, preset, want):
    cfg = resolve("nbody", "segnn", method, preset=preset, train_size=3000)
    got = {key: _value(cfg, key) for key in want}
    assert got == want
    assert cfg.resolved()["preset"] == preset
    if method == "strict":
        assert cfg.model_cfg.branch == "none"          # the preset's branch never reaches the strict model


def test_a_preset_names_only_the_settings_a_method_has_and_the_user_wins():
    cfg = resolve("nbody", "segnn", "remul", preset="ace", train_size=3000)   # no dual: its keys are left out
    assert cfg.train.lr == 9e-4 and cfg.model_cfg.branch == "ace-mlp"
    mine = resolve("nbody", "segnn", "ace-eq", preset="ace", train_size=3000,
                   overrides=["model.centre_input=true", "train.lr=1e-3"])
    assert mine.model_cfg.centre_input is True and mine.train.lr == 1e-3 and mine.method_cfg.dual_optimizer == "adam"
    egnn = resolve("nbody", "egnn", "strict", preset="ace", train_size=3000)    # the task's schedule only
    assert egnn.train.epochs == 2000 and egnn.train.lr == 9e-4


def test_the_authors_branches_have_their_size():
    built = build(resolve("nbody", "segnn", "ace-eq", preset="ace", train_size=16,
                          overrides=tiny_overrides("nbody", "segnn")[:3]))
    model = built.model
    assert model.num_gammas == 8
    assert sum(p.numel() for p in model.branch_parameters()) == 4 * (115200 + 82432)   # 790,528
    first = model.layers[0].relax0
    assert first.rep_out.dim == 128 and first.rep_in.dim == 256                     # added after the gate


@pytest.mark.parametrize("branch_at", ["gate-output", "gate-input"])
def test_at_gamma_zero_the_authors_branch_form_is_the_strict_network(branch_at):
    extra = tiny_overrides("nbody", "segnn", ["train.dtype=float64", "model.branch=ace-mlp",
                                              f"model.branch_at={branch_at}"])
    relaxed = build(resolve("nbody", "segnn", "ace-eq", seed=3, train_size=16, overrides=extra))
    strict = build(resolve("nbody", "segnn", "strict", seed=3, train_size=16,
                           overrides=[o for o in extra if not o.startswith("model.branch=")]))
    torch.manual_seed(0)
    state = {k: v for k, v in relaxed.model.state_dict().items() if "relax" not in k}
    assert strict.model.load_state_dict(state, strict=False).unexpected_keys == []
    batch = relaxed.task.split("valid")
    relaxed.model.set_gammas(0.0)
    with torch.no_grad():
        want = strict.model(batch)
        with relaxed.model.projected():                 # gamma := 0: the branches never run
            assert torch.equal(relaxed.model(batch), want)
        # gamma = 0 as a value: the strict network up to the rounding of SEGNN's flat layout round trip
        torch.testing.assert_close(relaxed.model(batch), want, rtol=0, atol=1e-13)
        relaxed.model.set_gammas(1.0)
        assert (relaxed.model(batch) - strict.model(batch)).abs().max() > 1e-6
    relaxed.model.set_gammas(0.0)
    assert_equivariant(relaxed.model, relaxed.task, batch)


def test_absolute_positions_keep_o3_about_the_origin_and_lose_translations():
    from benchmark.groups import EuclideanGroup
    extra = tiny_overrides("nbody", "segnn", ["train.dtype=float64", "model.centre_input=false"])
    built = build(resolve("nbody", "segnn", "strict", train_size=16, overrides=extra))
    task, batch = built.task, built.task.split("valid")
    task.group = EuclideanGroup(translations=False)
    assert_equivariant(built.model, task, batch)                                   # O(3) exactly
    task.group = EuclideanGroup()
    with pytest.raises(AssertionError, match="translation"):
        assert_equivariant(built.model, task, batch)


def test_cr_penalty_sums_over_the_batch():
    """``penalty_reduction=sum`` is the authors' sqrt of sums over every node of the batch; the
    default divides the squared norms by the batch size: at batch B the terms differ by sqrt(B)."""
    terms = {}
    for reduction in ("sum", "mean"):
        extra = tiny_overrides("nbody", "egnn", ["train.dtype=float64", "method.schedule=constant",
                                                 f"method.penalty_reduction={reduction}"])
        built = build(resolve("nbody", "egnn", "lie-anneal", seed=1, train_size=16, overrides=extra))
        model, method, task = built.model, built.method, built.task
        method.before_epoch(EpochContext(model, task, 0, 2, built.cfg.train))
        batch = task.split("train").index(slice(0, 8))
        model(batch)
        lie_sq, out_sq = method.penalty(model, task)
        layers = model.relaxed_layers()
        if reduction == "sum":                        # by hand: sum over layers, samples and nodes
            want = sum(layer.branch_output(layer.last_input).pow(2).sum() for layer in layers)
            assert torch.allclose(out_sq, want)
        method.after_epoch(EpochContext(model, task, 0, 2, built.cfg.train))
        terms[reduction] = (lie_sq.sqrt().item(), out_sq.sqrt().item())
    assert terms["sum"][0] == pytest.approx(math.sqrt(8) * terms["mean"][0], rel=1e-12)
    assert terms["sum"][1] == pytest.approx(math.sqrt(8) * terms["mean"][1], rel=1e-12)


def test_rotation_augmentation_moves_inputs_and_targets_alike(tiny_config, tmp_path):
    from benchmark.train import _augmentation
    built = build(tiny_config("strict", extra=["train.dtype=float64", "train.augment=rotation"]))
    task = built.task
    batch = task.split("train").index(slice(0, 4))
    moved = _augmentation(task, built.cfg.train, 0, 0)(batch)
    again = _augmentation(task, built.cfg.train, 0, 0)(batch)
    assert torch.equal(moved.pos, again.pos)                                       # reproducible
    for a, b in ((batch.pos, moved.pos), (batch.target, moved.target)):
        d0 = torch.cdist(a, a)
        assert torch.allclose(d0, torch.cdist(b, b))                               # a rigid motion
    R = torch.linalg.lstsq(batch.vel, moved.vel).solution.transpose(1, 2)          # the same R on all
    assert torch.allclose(batch.target @ R.transpose(1, 2), moved.target, atol=1e-9)
    assert torch.allclose(torch.linalg.det(R), torch.ones(4, dtype=torch.float64))  # proper rotations


def test_published_numbers_of_the_paper_suite():
    pub = load_published("nbody-ace-paper")
    row = pub.lookup("nbody", "segnn", "ace-eq", 3000, "projected")
    assert row.mean == pytest.approx(3.8e-3) and row.sd == pytest.approx(0.17e-3) and row.source in pub.sources
    assert pub.lookup("nbody", "segnn", "ace-eq", 3000, "relaxed") is None       # the paper's is the projected
    assert (row.n, row.sd_ddof) == (3, 0)                                       # numpy's std over 3 seeds
    assert row.sd_sample == pytest.approx(0.17e-3 * (3 / 2) ** 0.5)
    assert load_published("quick") is None


@pytest.mark.parametrize("doc, needle", [
    ({"sources": {"a": "x"}, "rows": [{"task": "nbody"}]}, "'backbone' is required"),
    ({"sources": {"a": "x"}, "rows": [{"task": "t", "backbone": "b", "method": "m", "train_size": 1,
                                      "mean": float("nan"), "source": "a"}]}, "finite number"),
    ({"sources": {"a": "x"}, "rows": [{"task": "t", "backbone": "b", "method": "m", "train_size": 1,
                                      "mean": 1.0, "source": "b"}]}, "not among sources"),
    ({"rows": []}, "expected a mapping"),
    ({"sources": {"a": "x"}, "sd_ddof": 2, "rows": []}, "expected 0 or 1"),
    ({"sources": {"a": "x"}, "rows": [{"task": "t", "backbone": "b", "method": "m", "train_size": 1,
                                      "mean": 1.0, "source": "a", "n": 2.5}]}, "whole number"),
])
def test_a_bad_published_file_is_one_line(doc, needle):
    with pytest.raises(PublishedError) as info:
        parse_published(doc, "s")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_tables_show_the_paper_column_and_whether_it_lies_in_the_interval():
    from scipy import stats

    from benchmark.report.aggregate import SuiteInfo
    from benchmark.report.tables import build_tables, to_markdown
    # the published ace-eq number is the summary of known seeds: mean 1.0, population sd (ddof 0), n = 3
    published_seeds = np.array([0.9, 1.0, 1.1])
    pub = parse_published({"sources": {"p": "A paper"}, "scale": 1e-3,
                           "rows": [{"task": "t", "backbone": "b", "method": "strict", "train_size": 10,
                                     "mean": 5.0, "sd": 0.5, "source": "p"},
                                    {"task": "t", "backbone": "b", "method": "ace-eq", "train_size": 10,
                                     "mean": float(published_seeds.mean()), "sd": float(published_seeds.std()),
                                     "n": 3, "sd_ddof": 0, "source": "p"}]}, "s")
    measured = {"strict": [5.1e-3, 4.9e-3, 5.3e-3], "ace-eq": [1.4e-3, 1.2e-3, 1.3e-3]}
    runs = []
    for method, values in measured.items():
        for seed, v in enumerate(values):
            runs.append({"suite": "s", "task": "t", "backbone": "b", "method": method, "train_size": 10,
                         "variant": "projected", "seed": seed, "status": "completed", "headline": True,
                         "metric": "mse", "higher_is_better": False, "metric_scale": 1.0, "test_metric": v,
                         "val_metric": v, "best_epoch": 1, "equivariance_rel": 0.0, "equivariance_abs": 0.0,
                         "params": 10, "median_step_seconds": 0.1, "wall_seconds": 1.0, "steps": 1,
                         "config_hash": "h", "preset": "ace", "record": None})
    runs = pd.DataFrame(runs)
    from benchmark.report.aggregate import summarize
    info = SuiteInfo("s", "proto", None, "strict", {}, {}, pub)
    table = build_tables(summarize(runs), runs, {"s": info})[0]
    text = to_markdown(table)
    assert "| paper | paper in 95% CI | p vs paper |" in text
    rows = {r[0]: r for r in table.rows}
    assert rows["strict"][3].startswith("0.00500 ± 0.00050 [p]") and rows["strict"][4] == "yes"
    assert rows["strict"][5] == "—"                                  # no seed count nor ddof: no test
    assert rows["ace-eq"][4] == "no"
    assert "Preset: ace" in text and "[p] A paper" in text
    frame = table.frame.set_index("method")
    assert frame.loc["ace-eq", "paper_in_ci95"] == False  # noqa: E712
    # the test from the published summary equals Welch's test on the seeds behind it
    expected = stats.ttest_ind(measured["ace-eq"], published_seeds * 1e-3, equal_var=False).pvalue
    assert frame.loc["ace-eq", "paper_p_welch"] == pytest.approx(expected, rel=1e-9)
    assert rows["ace-eq"][5] == f"{expected:#.2g}"
