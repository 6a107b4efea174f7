"""The CMU motion-capture tasks (``mocap-run``, ``mocap-walk``) and the ASF/AMC converter.

* the vendored file: its sha256 is the card's, and the protocol's draw reproduces its start lists;
* samples, velocities, targets and trajectories index the right frames of synthetic trials;
* the height feature is EGNO's formula, recomputed per yielded batch and after a group action,
  and the evaluation chunk size does not change it;
* symmetry: with the height, exactly symmetric under rotations about the vertical axis and
  reflections through vertical planes (gamma = 0), not under tilting rotations; without it,
  exactly E(3)-equivariant at gamma = 0 and measurably not at gamma = 1;
* loss and metric for single frames and trajectories; bad files and settings fail in one line;
* forward kinematics against positions computed by hand; the ``data mocap`` command.
"""

from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import pytest
import torch

from baselines._common import DualVariables
from benchmark.backbones.egnn import EGNN, EGNNConfig
from benchmark.cli import main
from benchmark.config import ConfigError, TrainConfig, apply_overrides, validate
from benchmark.evaluate import EQUIVARIANCE_RTOL, assert_equivariant, equivariance_cases, predict
from benchmark.groups import EuclideanGroup
from benchmark.registry import METHODS, TASKS
from benchmark.tasks import _asf_amc as asf
from benchmark.tasks import mocap
from benchmark.tasks._base import GeometricBatch

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# synthetic data of the vendored layout
# ---------------------------------------------------------------------------------------------
def _tree_bones() -> np.ndarray:
    """A 31-joint tree (two legs, a spine, a neck, two arms with a branching hand) as (child,
    parent) pairs, numbered in depth-first pre-order as the converter numbers joints."""
    parents = [0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 15, 13, 17, 18, 19, 20, 21, 20,
               13, 24, 25, 26, 27, 28, 27]
    return np.array([(i, parents[i - 1]) for i in range(1, 31)], dtype=np.int64)


def _trials(n_trials: int, frames: int, seed: int = 0, n: int = 31) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_trials):
        base = rng.normal(size=(1, n, 3)) * 3 + np.array([0.0, 10.0, 0.0])
        drift = np.cumsum(rng.normal(scale=0.1, size=(frames, n, 3)), axis=0)
        x = base + drift
        x[..., 1] = np.abs(x[..., 1]) + 0.5            # heights above the floor
        out.append(x)
    return out


def _write(path, trials, bones=None, lists=None, **extra):
    arrays = {"bones": _tree_bones() if bones is None else bones}
    arrays.update({f"trial_{k:02d}": x for k, x in enumerate(trials)})
    arrays.update(lists or {})
    arrays.update(extra)
    np.savez(path, **arrays)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_lists(protocol=mocap.RUN) -> dict:
    starts = mocap.draw_starts(protocol)
    return {"train_trials": np.array(protocol.train_trials), "val_trials": np.array(protocol.valid_trials),
            "test_trials": np.array(protocol.test_trials), "train_starts": starts["train"],
            "val_starts": starts["valid"], "test_starts": starts["test"]}


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mocap") / "run.npz"
    trials = _trials(11, 125)
    digest = _write(path, trials, lists=_run_lists())
    return path, digest, trials


def _run_task(run_file, train_size=200, dtype=F64, **cfg):
    path, digest, _ = run_file
    return mocap.MocapRun(mocap.MocapRunConfig(path=str(path), sha256=digest, **cfg), train_size=train_size,
                          dtype=dtype)


def _model(task, seed=0):
    torch.manual_seed(seed)
    model = EGNN(EGNNConfig(hidden=16, layers=2, branch_hidden=16), task).to(F64)
    with torch.no_grad():                           # away from the initialisation
        gen = torch.Generator().manual_seed(3)
        for p in model.parameters():
            if p.dim() > 0:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()
    return model


def _under(task, group):
    """The task with ``group`` as its group (for the equivariance checks of a subgroup)."""
    view = copy.copy(task)
    view.group = group
    return view


# ---------------------------------------------------------------------------------------------
# the vendored data
# ---------------------------------------------------------------------------------------------
def test_vendored_file_matches_the_card_checksum():
    assert mocap.sha256_of(mocap.RUN_FILE) == mocap.RUN_SHA256
    card = (mocap.RUN_FILE.parent / "CARD.md").read_text(encoding="utf-8")
    assert mocap.RUN_SHA256 in card and "mocap.cs.cmu.edu" in card and "EIA-0196217" in card


def test_the_protocol_draw_reproduces_the_vendored_start_lists():
    drawn = mocap.draw_starts(mocap.RUN)
    with np.load(mocap.RUN_FILE, allow_pickle=False) as data:
        for split, key in (("train", "train"), ("valid", "val"), ("test", "test")):
            np.testing.assert_array_equal(drawn[split], data[f"{key}_starts"])
            np.testing.assert_array_equal(np.array(mocap.RUN.trials(split)), data[f"{key}_trials"])


def test_the_vendored_task_loads_the_published_sizes():
    task = mocap.MocapRun(mocap.MocapRunConfig(), train_size=200)
    assert [len(task.split(s)) for s in ("train", "valid", "test")] == [200, 240, 240]
    graph = task.split("valid").edge_attr[0, ..., 0]
    assert int((graph == 1).sum()) == 60 and int((graph == 2).sum()) == 70   # 30 bones, 35 2-hop pairs


def test_a_damaged_vendored_file_is_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "run.npz"
    data = bytearray(mocap.RUN_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(mocap, "RUN_FILE", bad)
    with pytest.raises(mocap.MocapDataError, match="sha256") as exc:
        mocap.MocapRun(mocap.MocapRunConfig(), train_size=200)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# graph, samples and targets
# ---------------------------------------------------------------------------------------------
def test_skeleton_graph_bones_two_hops_no_self_loops():
    bones = np.array([[1, 0], [2, 1], [3, 1], [4, 3]])
    g = mocap.skeleton_graph(bones, 5)
    assert (g == g.T).all() and (np.diag(g) == 0).all()
    assert g[0, 1] == g[1, 2] == g[3, 4] == 1
    assert g[0, 2] == g[0, 3] == g[2, 3] == g[1, 4] == 2       # two bones apart
    assert g[0, 4] == g[2, 4] == 0                              # three bones apart: no edge


def test_samples_index_the_protocol_frames(run_file):
    _, _, trials = run_file
    task = _run_task(run_file)
    starts = mocap.draw_starts(mocap.RUN)
    for split, size in (("train", 200), ("valid", 240), ("test", 240)):
        batch = task.split(split)
        ids = mocap.RUN.trials(split)
        each = size // len(ids)
        assert len(batch) == each * len(ids)
        for i in (0, each - 1, len(batch) - 1):
            k, s = ids[i // each], starts[split][i // each, i % each]
            x = trials[k]
            torch.testing.assert_close(batch.pos[i], torch.from_numpy(x[s]), rtol=0, atol=0)
            torch.testing.assert_close(batch.vel[i], torch.from_numpy(x[s + 1] - x[s]), rtol=0, atol=0)
            torch.testing.assert_close(batch.target[i], torch.from_numpy(x[s + 30]), rtol=0, atol=0)
            want = torch.from_numpy(np.stack([x[s + f] for f in range(26, 31)]))
            torch.testing.assert_close(batch.target_seq[i], want, rtol=0, atol=0)
    b = task.split("test")
    assert b.target_seq.shape == (240, 5, 31, 3) and torch.equal(b.target, b.target_seq[:, -1])
    assert b.edge_attr.shape == (240, 31, 31, 1) and b.edge_mask.shape == (240, 31, 31)
    assert torch.equal(b.edge_mask > 0, b.edge_attr[..., 0] > 0)


def test_train_size_takes_the_first_starts_of_each_trial(run_file):
    small = _run_task(run_file, train_size=50).split("train")   # 10 per trial
    full = _run_task(run_file, train_size=400).split("train")   # 80 per trial
    assert len(small) == 50 and len(full) == 400
    torch.testing.assert_close(small.pos[10:20], full.pos[80:90], rtol=0, atol=0)
    with pytest.raises(ValueError, match="train_size=401"):
        _run_task(run_file, train_size=401)


def test_start_lists_are_drawn_when_the_file_has_none(run_file, tmp_path):
    _, _, trials = run_file
    path = tmp_path / "nolists.npz"
    digest = _write(path, trials)
    task = mocap.MocapRun(mocap.MocapRunConfig(path=str(path), sha256=digest), train_size=200, dtype=F64)
    torch.testing.assert_close(task.split("valid").pos, _run_task(run_file).split("valid").pos, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# the height feature
# ---------------------------------------------------------------------------------------------
def test_height_is_egnos_formula_per_block(run_file):
    task = _run_task(run_file)
    batch = task.split("valid")
    for start in (0, 12, 228):
        z = batch.pos[start:start + 12, :, 1:2] / 10
        torch.testing.assert_close(batch.node_attr[start:start + 12], z / z.max(), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    for b in task.batches("train", 12, shuffle=True, generator=gen):
        z = b.pos[..., 1:2] / 10
        torch.testing.assert_close(b.node_attr, z / z.max(), rtol=0, atol=0)    # its own maximum
    assert _run_task(run_file, height=False).split("valid").node_attr is None


def test_the_evaluation_chunk_size_does_not_change_the_feature(run_file):
    task = _run_task(run_file)
    model = _model(task)
    data = task.split("valid")
    a, b = predict(model, data, batch_size=7), predict(model, data, batch_size=500)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_act_input_recomputes_the_height_from_the_moved_positions(run_file):
    task = _run_task(run_file)
    batch = task.split("valid").index(slice(0, 24))
    g = EuclideanGroup().cases(24, torch.Generator().manual_seed(1), F64)["rotation"]
    moved = task.act_input(g, batch)
    for start in (0, 12):
        z = moved.pos[start:start + 12, :, 1:2] / 10
        torch.testing.assert_close(moved.node_attr[start:start + 12], z / z.max(), rtol=0, atol=0)
    assert not torch.allclose(moved.node_attr, batch.node_attr)       # tilted: heights change
    torch.testing.assert_close(moved.target_seq[:, -1], moved.target, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# symmetry
# ---------------------------------------------------------------------------------------------
def test_with_height_exact_about_the_vertical_axis_not_under_tilts(run_file):
    task = _run_task(run_file)
    assert set(task.extra_groups) == {"vertical"}
    model = _model(task)
    batch = task.split("valid").index(slice(0, 24))
    with torch.no_grad():
        model.set_gammas(0.0)
        assert_equivariant(model, _under(task, task.extra_groups["vertical"]), batch, n_samples=2)
        tilted = equivariance_cases(model, task, batch, n_samples=2, permutation=False)
        model.set_gammas(1.0)
        relaxed = equivariance_cases(model, _under(task, task.extra_groups["vertical"]), batch, n_samples=2,
                                     permutation=False)
    assert tilted["rotation"] > 1e-6 and tilted["translation"] > 1e-6, tilted
    assert max(relaxed.values()) > 1e3 * EQUIVARIANCE_RTOL[F64], relaxed


def test_without_height_exactly_e3_at_gamma_zero_not_at_one(run_file):
    task = _run_task(run_file, height=False)
    model = _model(task)
    batch = task.split("valid").index(slice(0, 16))
    with torch.no_grad():
        model.set_gammas(0.0)
        errors = assert_equivariant(model, task, batch, n_samples=2)
        model.set_gammas(1.0)
        relaxed = equivariance_cases(model, task, batch, n_samples=2, permutation=False)
    assert {"rotation", "reflection", "translation", "permutation"} <= set(errors)
    assert max(relaxed.values()) > 1e3 * EQUIVARIANCE_RTOL[F64], relaxed


def test_trajectory_outputs_move_and_permute_per_frame(run_file):
    task = _run_task(run_file)
    batch = task.split("valid").index(slice(0, 4))
    g = EuclideanGroup().sample(4, torch.Generator().manual_seed(2), F64)
    y = batch.target_seq
    moved = task.act_output(g, y)
    for f in range(y.shape[1]):
        torch.testing.assert_close(moved[:, f], task.act_output(g, y[:, f]), rtol=0, atol=1e-12)
    torch.testing.assert_close(moved, task.act_input(g, batch).target_seq, rtol=0, atol=1e-12)
    perm = torch.randperm(31, generator=torch.Generator().manual_seed(0))
    permuted = batch.permute_nodes(perm)
    torch.testing.assert_close(permuted.target_seq, task.permute_output(perm, y), rtol=0, atol=0)
    torch.testing.assert_close(permuted.target, task.permute_output(perm, batch.target), rtol=0, atol=0)
    assert batch.index(slice(1, 3)).target_seq.shape == (2, 5, 31, 3)
    assert batch.to(torch.float32).target_seq.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# objective
# ---------------------------------------------------------------------------------------------
def test_loss_and_metric_of_frames_and_trajectories(run_file):
    task = _run_task(run_file)
    batch = task.split("valid").index(slice(0, 6))
    assert task.loss(batch.target + 2.0, batch).item() == pytest.approx(4.0)
    offsets = torch.arange(1.0, 6.0, dtype=F64)[None, :, None, None]          # frame f off by f + 1
    traj = batch.target_seq + offsets
    assert task.loss(traj, batch).item() == pytest.approx((1 + 4 + 9 + 16 + 25) / 5)
    torch.testing.assert_close(task.metric_per_sample(traj, batch), torch.full((6,), 25.0, dtype=F64))
    torch.testing.assert_close(task.metric_per_sample(batch.target + 3.0, batch), torch.full((6,), 9.0, dtype=F64))
    with pytest.raises(ValueError, match="prediction of shape"):
        task.loss(batch.target[:, :30], batch)


# ---------------------------------------------------------------------------------------------
# bad input: one line each
# ---------------------------------------------------------------------------------------------
def _one_line_error(exc_type, fn, match):
    with pytest.raises(exc_type, match=match) as exc:
        fn()
    assert "\n" not in str(exc.value)


def test_bad_files_fail_in_one_line(run_file, tmp_path):
    path, digest, trials = run_file
    _one_line_error(mocap.MocapDataError, lambda: mocap.MocapRun(
        mocap.MocapRunConfig(path=str(path), sha256="0" * 64), train_size=200), "sha256")
    _one_line_error(mocap.MocapDataError, lambda: mocap.MocapRun(
        mocap.MocapRunConfig(path=str(tmp_path / "absent.npz")), train_size=200), "no such file")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, bones=np.array([object()], dtype=object), trial_00=trials[0])
    _one_line_error(mocap.MocapDataError, lambda: mocap.load_trials(pickled), "without pickles")
    short = tmp_path / "short.npz"
    _write(short, _trials(11, 100))
    _one_line_error(mocap.MocapDataError, lambda: mocap.MocapRun(
        mocap.MocapRunConfig(path=str(short)), train_size=200), "too few")
    few = tmp_path / "few.npz"
    _write(few, trials[:8])
    _one_line_error(mocap.MocapDataError, lambda: mocap.MocapRun(
        mocap.MocapRunConfig(path=str(few)), train_size=200), "uses trials 0..10")
    nobones = tmp_path / "nobones.npz"
    np.savez(nobones, trial_00=trials[0])
    _one_line_error(mocap.MocapDataError, lambda: mocap.load_trials(nobones), "no 'bones'")
    wrong = tmp_path / "wrong.npz"
    _write(wrong, trials, lists={**_run_lists(), "val_trials": np.array([0, 4, 8])})
    _one_line_error(mocap.MocapDataError, lambda: mocap.MocapRun(
        mocap.MocapRunConfig(path=str(wrong)), train_size=200), "val_trials")


def test_walk_without_data_says_how_to_make_it(tmp_path):
    _one_line_error(ConfigError, lambda: validate(mocap.MocapWalkConfig(), prefix="task."),
                    "relaxbench data mocap")
    _one_line_error(mocap.MocapDataError, lambda: mocap.MocapWalk(
        mocap.MocapWalkConfig(path=str(tmp_path / "walk.npz")), train_size=198), "relaxbench data mocap")
    _one_line_error(ConfigError, lambda: validate(mocap.MocapRunConfig(target_frames=31), prefix="task."),
                    "target_frames")


def test_walk_protocol_sizes(tmp_path):
    path = tmp_path / "walk.npz"
    _write(path, _trials(23, 332, seed=1))
    task = mocap.MocapWalk(mocap.MocapWalkConfig(path=str(path)), train_size=200, dtype=F64)
    assert [len(task.split(s)) for s in ("train", "valid", "test")] == [198, 600, 600]     # 11 x 18
    starts = mocap.draw_starts(mocap.WALK)
    assert starts["train"].shape == (11, 100) and starts["test"].shape == (6, 100)
    assert all(len(set(row)) == 100 and row.min() >= 0 and row.max() < 300 for row in starts["valid"])
    x = _trials(23, 332, seed=1)[20]               # the first training trial
    s = starts["train"][0, 0]
    torch.testing.assert_close(task.split("train").target[0], torch.from_numpy(x[s + 30]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# protocol settings and the dual eps of the ace preset
# ---------------------------------------------------------------------------------------------
def test_train_defaults_and_presets_are_valid_settings():
    for name in ("mocap-run", "mocap-walk"):
        cls = TASKS.get(name).obj
        train = apply_overrides(TrainConfig(), dict(cls.train_defaults), prefix="train.")
        validate(train, prefix="train.")
        assert (train.lr, train.weight_decay, train.batch_size, train.grad_clip, train.epochs) == \
            (5e-4, 1e-10, 12, 1.0, 3000)
        assert cls.metric_scale == 1e-2 and cls.presets["egno"] == {"train.epochs": 2000}
        for method in ("ace-eq", "ace-elastic"):
            preset = {k.split(".", 1)[1]: v for k, v in cls.presets["ace"].items()}
            cfg = apply_overrides(METHODS.get(method).default_config(), preset, prefix="method.")
            assert (cfg.dual_optimizer, cfg.dual_lr, cfg.dual_eps) == ("adam", 2e-4, 1e-4)


def test_dual_adam_eps_enters_the_step():
    # Adam's first step is lr * c / (|c| + eps): with c = 1e-4 it is lr / 2 at eps = 1e-4
    for eps, want in ((1e-4, 0.5), (1e-8, 1e-4 / (1e-4 + 1e-8))):
        dual = DualVariables(1, lr=1.0, optimizer="adam", eps=eps, dtype=F64)
        dual.ascend(torch.tensor([1e-4], dtype=F64))
        assert dual.value.item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="eps"):
        DualVariables(1, lr=1.0, optimizer="adam", eps=0.0)


# ---------------------------------------------------------------------------------------------
# ASF / AMC
# ---------------------------------------------------------------------------------------------
ASF = """# a test skeleton
:version 1.10
:name test
:units
  mass 1.0
  length 0.45
  angle deg
:documentation
  three bones
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name a
     direction 1 0 0
     length 2
     axis 0 0 0  XYZ
    dof rz
    limits (-180.0 180.0)
  end
  begin
     id 2
     name b
     direction 1 0 0
     length 1
     axis 0 0 90 XYZ
    dof rx ry
    limits (-180.0 180.0)
           (-180.0 180.0)
  end
  begin
     id 3
     name c
     direction 0 0 1
     length 3
     axis 0 0 0 XYZ
  end
:hierarchy
  begin
    root a c
    a b
  end
"""

AMC = """# frames
:FULLY-SPECIFIED
:DEGREES
1
root 1 2 3 0 0 0
a 0
b 0 0
2
root 0 0 0 0 0 90
a 90
b 90 0
"""


def test_forward_kinematics_against_hand_computed_positions():
    skel = asf.parse_asf(ASF, "t.asf")
    assert skel.names == ("root", "a", "b", "c")
    assert skel.edges().tolist() == [[1, 0], [2, 1], [3, 0]]
    pos = asf.motion_positions(skel, asf.parse_amc(AMC, "t.amc"))
    # frame 1: no rotation: root at (1, 2, 3), bones along their rest directions
    np.testing.assert_allclose(pos[0], [[1, 2, 3], [3, 2, 3], [4, 2, 3], [1, 2, 6]], atol=1e-12)
    # frame 2: root Rz(90); a turns Rz(90) more: Rz(180) x = -x, a ends at (-2, 0, 0); b's rx = 90 in
    # its frame C = Rz(90) is Ry(90) globally: Rz(180) Ry(90) x = (0, 0, -1); c: Rz(90) z = z
    np.testing.assert_allclose(pos[1], [[0, 0, 0], [-2, 0, 0], [-2, 0, -1], [0, 0, 3]], atol=1e-12)


def test_euler_order_is_first_named_first():
    m = asf.euler_matrix([math.pi / 2, math.pi / 2], "xy")       # Rx(90), then Ry(90)
    np.testing.assert_allclose(m @ [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("text,kind,match", [
    (ASF.replace("axis 0 0 90 XYZ", "axis 0 0 90 ZYX"), "asf", r"t\.asf:\d+: bone axis"),
    (ASF.replace("dof rz", "dof rz tx"), "asf", r"t\.asf:\d+: unsupported dof"),
    (ASF.replace("    a b\n", "    a b x\n"), "asf", "'x'"),
    (ASF.replace("position 0 0 0", "position 0 1 0"), "asf", "non-zero root position"),
    (AMC.replace("2\nroot", "3\nroot"), "amc", r"t\.amc:\d+: frame 3 follows frame 1"),
    (AMC.replace("b 90 0", "b 90"), "amc", "bone 'b' has 2 dof, got 1"),
    (AMC.replace("a 90", "a 90\nz 1"), "amc", "'z' is not in the skeleton"),
    (AMC.replace("a 90", "a ninety"), "amc", "not 1 numbers"),
])
def test_malformed_files_fail_in_one_line(text, kind, match):
    def parse():
        if kind == "asf":
            asf.parse_asf(text, "t.asf")
        else:
            asf.motion_positions(asf.parse_asf(ASF, "t.asf"), asf.parse_amc(text, "t.amc"), "t.amc")
    _one_line_error(asf.AsfAmcError, parse, match)


def _skeleton_31() -> tuple[str, np.ndarray]:
    """An ASF text of root + 30 bones (the parents of :func:`_tree_bones`) and its lengths."""
    rng = np.random.default_rng(5)
    bones = _tree_bones()
    lengths = rng.uniform(0.5, 3.0, size=30)
    lines = [":units", "  angle deg", ":root", "  order TX TY TZ RX RY RZ", "  axis XYZ", ":bonedata"]
    for i in range(1, 31):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        ax = rng.uniform(-90, 90, size=3)
        lines += ["begin", f"name j{i}", "direction " + " ".join(f"{v:.17g}" for v in d),
                  f"length {lengths[i - 1]:.17g}", "axis " + " ".join(f"{v:.6f}" for v in ax) + " XYZ",
                  "dof rx ry rz", "limits (-180 180)", "(-180 180)", "(-180 180)", "end"]
    lines += [":hierarchy", "begin"]
    children: dict[int, list[int]] = {}
    for c, p in bones:
        children.setdefault(int(p), []).append(int(c))
    for p, cs in children.items():
        lines.append(("root" if p == 0 else f"j{p}") + " " + " ".join(f"j{c}" for c in cs))
    lines.append("end")
    return "\n".join(lines) + "\n", lengths


def _amc(frames: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    out = [":FULLY-SPECIFIED", ":DEGREES"]
    for f in range(frames):
        out.append(str(f + 1))
        out.append("root " + " ".join(f"{v:.6f}" for v in [*rng.normal(size=3) + [0, 15, 0], *rng.uniform(-30, 30, 3)]))
        out += [f"j{i} " + " ".join(f"{v:.6f}" for v in rng.uniform(-40, 40, 3)) for i in range(1, 31)]
    return "\n".join(out) + "\n"


def test_data_mocap_command_writes_a_file_the_task_loads(tmp_path, capsys):
    text, lengths = _skeleton_31()
    (tmp_path / "s.asf").write_text(text)
    amcs = []
    for k in range(11):
        amcs.append(tmp_path / f"s_{k:02d}.amc")
        amcs[-1].write_text(_amc(122, seed=k))
    out = tmp_path / "motion.npz"
    assert main(["data", "mocap", "--asf", str(tmp_path / "s.asf"), "--amc", *map(str, amcs),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert hashlib.sha256(out.read_bytes()).hexdigest() in printed
    with np.load(out, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["bones"], _tree_bones())
        x = data["trial_03"]
    assert x.shape == (122, 31, 3)
    b = _tree_bones()
    np.testing.assert_allclose(np.linalg.norm(x[:, b[:, 0]] - x[:, b[:, 1]], axis=-1),
                               np.broadcast_to(lengths, (122, 30)), rtol=1e-12)   # rigid bones
    task = mocap.MocapRun(mocap.MocapRunConfig(path=str(out)), train_size=200)
    assert len(task.split("test")) == 240
    assert not list(tmp_path.glob(".tmp-*"))


def test_data_mocap_command_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "mocap", "--out", str(tmp_path / "m.npz")]) == 2
    (tmp_path / "bad.asf").write_text(ASF.replace("axis 0 0 90 XYZ", "axis 0 0 90 ZXY"))
    (tmp_path / "m.amc").write_text(AMC)
    assert main(["data", "mocap", "--asf", str(tmp_path / "bad.asf"), "--amc", str(tmp_path / "m.amc"),
                 "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "needs --asf" in err[0] and "bad.asf" in err[1]
    assert not (tmp_path / "m.npz").exists()
