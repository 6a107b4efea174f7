"""The ``nbody-field`` task: the charged 5-body system in a uniform field along z.

At eps = 0 its data are nbody's (norm clip) bit for bit; the field's force is eps * q_i * e_z; the
simulator commutes with the symmetries the field keeps (rotations about z, reflections through
planes containing z, translations) and not with tilting rotations; the data's own E(3) defect is 0
at eps = 0, grows with eps and lower-bounds what equivariant predictors can reach; a strict model
is equivariant under both groups while the data are not; a suite grid varies eps cell by cell;
the sweep figure is drawn from records.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from benchmark.config import ConfigError
from benchmark.evaluate import assert_equivariant, equivariance_cases, evaluate_variant
from benchmark.experiment import resolve
from benchmark.groups import AxialEuclideanGroup, EuclideanGroup
from benchmark.suite.spec import SpecError, load_spec, parse_spec
from benchmark.tasks import nbody, nbody_field, nbody_sim
from benchmark.tasks.nbody_field import NBodyField, NBodyFieldConfig, orbit_pairs, symmetry_defect
from benchmark.train import build
from conftest import tiny_overrides

SMALL = {"num_train": 12, "num_valid": 6, "num_test": 6}


def _states(n: int, seed: int = 1) -> dict:
    return nbody_sim.draw_initial_conditions(n, np.random.RandomState(seed))


def _rot(axis: int, angle: float) -> np.ndarray:
    i, j = [a for a in range(3) if a != axis]
    R = np.eye(3)
    R[i, i] = R[j, j] = math.cos(angle)
    R[i, j], R[j, i] = -math.sin(angle), math.sin(angle)
    return R


# -- data ------------------------------------------------------------------------------------------
def test_eps_zero_is_nbody_norm_clip_bit_for_bit_and_each_eps_has_its_own_cache():
    base_dir, base = nbody._load_or_generate(nbody.NBodyConfig(clip="norm", **SMALL), progress=False)
    zero_dir, zero = nbody._load_or_generate(NBodyFieldConfig(eps=0.0, **SMALL), progress=False)
    some_dir, some = nbody._load_or_generate(NBodyFieldConfig(eps=0.1, **SMALL), progress=False)
    assert nbody_sim.fingerprints(zero) == nbody_sim.fingerprints(base)
    for split in nbody_sim.SPLITS:
        for key in nbody_sim.ARRAY_KEYS:
            assert zero[split][key].tobytes() == base[split][key].tobytes(), (split, key)
        # the same draws (charges, initial states), other trajectories
        assert np.array_equal(some[split]["charges"], base[split]["charges"])
        assert not np.array_equal(some[split]["loc"], base[split]["loc"])
    assert len({base_dir, zero_dir, some_dir}) == 3
    assert zero_dir.parent == some_dir.parent == nbody.data_root() / "nbody_field" / "cache"
    assert (some_dir / nbody.MANIFEST).is_file()                     # its own checksums, verified on load
    assert NBodyField.cache_folders_to_write(NBodyFieldConfig(eps=0.1, **SMALL)) == []
    assert NBodyField.cache_folders_to_write(NBodyFieldConfig(eps=0.2, **SMALL)) == [zero_dir.parent]
    # nbody's own cache names are unchanged (existing caches stay valid)
    assert nbody._cache_dir(nbody.NBodyConfig()).relative_to(nbody.data_root()).as_posix() == \
        "nbody/cache/clip-component_train10000_valid2000_test2000_seed43"


def test_field_force_acts_along_z_with_sign_and_size_of_eps_q():
    ic = _states(6)
    eps, dt = 0.5, nbody_sim.DT
    args = (ic["loc0"], ic["vel0"], ic["edges"])
    # length 2, sampled every step: one frame, the state after one kick and one drift
    x0, v0 = nbody_sim.simulate(*args, clip="norm", length=2, sample_freq=1)
    x1, v1 = nbody_sim.simulate(*args, clip="norm", length=2, sample_freq=1, field=eps, charges=ic["charges"])
    q = ic["charges"][:, :, 0]                                       # (B, 5), each +-1
    assert set(np.unique(q)) == {-1.0, 1.0}
    assert np.array_equal(v1[:, 0, :2], v0[:, 0, :2]) and np.array_equal(x1[:, 0, :2], x0[:, 0, :2])
    np.testing.assert_allclose(v1[:, 0, 2] - v0[:, 0, 2], dt * eps * q, rtol=1e-9, atol=0)
    np.testing.assert_allclose(x1[:, 0, 2] - x0[:, 0, 2], dt * dt * eps * q, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="needs the charges"):
        nbody_sim.simulate(*args, clip="norm", length=2, sample_freq=1, field=eps)
    with pytest.raises(ValueError, match="finite"):
        nbody_sim.simulate(*args, clip="norm", length=2, sample_freq=1, field=float("nan"), charges=ic["charges"])


def _commutator(ic: dict, R: np.ndarray, t: np.ndarray, eps: float) -> float:
    """Largest ``|F(g s) - g F(s)| / |F(s) - centroid|`` over trajectories (1100 steps, float64)."""
    run = lambda x, v: nbody_sim.simulate(x, v, ic["edges"], clip="norm", field=eps, charges=ic["charges"],  # noqa: E731
                                          length=1100)[0][:, -1]
    ref = run(ic["loc0"], ic["vel0"])
    moved = run(R @ ic["loc0"] + t, R @ ic["vel0"])
    err = np.linalg.norm((moved - (R @ ref + t)).reshape(len(ref), -1), axis=1)
    scale = np.linalg.norm((ref - ref.mean(2, keepdims=True)).reshape(len(ref), -1), axis=1)
    return float((err / scale).max())


def test_rotations_about_z_commute_with_the_simulator_tilts_do_not():
    ic = _states(8)
    t = np.array([[0.3], [-1.2], [0.7]])
    mirror_xz = np.diag([1.0, -1.0, 1.0])                            # a plane containing z
    for eps in (0.0, 0.3, 1.0):
        assert _commutator(ic, _rot(2, 0.7), t, eps) < 1e-9, eps
        assert _commutator(ic, _rot(2, 2.1) @ mirror_xz, 0 * t, eps) < 1e-9, eps
    tilt = _rot(0, 0.7)
    assert _commutator(ic, tilt, 0 * t, 0.0) < 1e-9                  # E(3) without a field
    assert _commutator(ic, tilt, 0 * t, 0.3) > 1e-3
    assert _commutator(ic, np.diag([1.0, 1.0, -1.0]), 0 * t, 0.3) > 1e-3   # the mirror through the xy plane


# -- the data's defect -----------------------------------------------------------------------------
def test_symmetry_defect_is_zero_at_eps_zero_and_grows_with_eps():
    out = [symmetry_defect(eps, n=16, seed=0, num_before=0) for eps in (0.0, 0.1, 0.3, 1.0)]
    assert out[0]["pair_bound"] < 1e-20 and out[0]["rotated_best"] < 1e-20
    bounds = [o["pair_bound"] for o in out]
    assert all(a < b for a, b in zip(bounds, bounds[1:])), bounds
    assert bounds[1] > 1e-5
    best = [o["rotated_best"] for o in out]
    assert all(a < b for a, b in zip(best, best[1:])), best
    assert all(o["pair_bound"] == pytest.approx(o["defect_mse"] / 4) for o in out)
    with pytest.raises(ValueError, match="n=0"):
        symmetry_defect(0.1, n=0)


def test_the_pair_bound_holds_for_equivariant_predictors_sample_by_sample():
    """Two E(3)-equivariant predictors, each on the data and its rotated copy: the mean of the two
    errors is never below a quarter of the data's own defect (metric: MSE over 15 coordinates)."""
    p = orbit_pairs(0.3, 24, seed=2, num_before=0)
    R, x, F, F_R = p["R"], p["x"], p["F"], p["F_R"]
    m = lambda a, b: ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)   # noqa: E731
    quarter = m(F_R, R @ F) / 4
    assert quarter.min() > 0
    # the static predictor f(s) = positions of s; and f(s) = F(s) on the data (its orbit: g F(s))
    for on_data, on_rotated in ((x, R @ x), (F, R @ F)):
        pair = (m(on_data, F) + m(on_rotated, F_R)) / 2
        assert np.all(pair >= quarter * (1 - 1e-12))
    # no equivariant predictor beats the orbit average on the rotated data: the static one does not
    rotated_static = m(R @ x, F_R).mean()
    assert rotated_static > symmetry_defect(0.3, n=24, seed=2, num_before=0)["rotated_best"]


@pytest.mark.slow
def test_the_measured_defects_of_the_card_are_reproduced():
    for eps, numbers in nbody_field.SYMMETRY_DEFECT.items():
        got = symmetry_defect(eps, n=numbers["n"], seed=numbers["seed"])
        for key in ("pair_bound", "rotated_best"):
            assert got[key] == pytest.approx(numbers[key], rel=1e-6, abs=1e-15), (eps, key)


# -- the task and a model --------------------------------------------------------------------------
def _built(method: str, eps: float = 0.3):
    cfg = resolve("nbody-field", "egnn", method, train_size=16,
                  overrides=tiny_overrides("nbody-field", "egnn", ["train.dtype=float64", f"task.eps={eps}"]))
    return build(cfg, progress=False)


def test_strict_egnn_is_equivariant_under_e3_and_the_field_group_the_data_are_not():
    built = _built("strict")
    model, task = built.model, built.task
    assert isinstance(task.group, EuclideanGroup) and task.group.name == "E(3)"
    field = task.extra_groups["field"]
    assert isinstance(field, AxialEuclideanGroup) and field.axis == 2 and field.reflections and field.translations
    batch = task.split("valid").index(slice(0, 8))
    assert batch.pos.dtype == torch.float64
    model.eval()
    with torch.no_grad():
        assert_equivariant(model, task, batch, n_samples=2)
        axial = copy.copy(task)
        axial.group = field
        errors = assert_equivariant(model, axial, batch, n_samples=2)
        assert {"rotation", "reflection", "translation"} <= set(errors)
    out = evaluate_variant(model, task, "valid", "projected")
    assert out["equivariance"]["rel"] < 1e-10 and out["equivariance"]["groups"]["field"]["rel"] < 1e-10

    # the ground truth: F(g s) = g F(s) for the field's group, not for E(3)
    _, data = nbody._load_or_generate(task.cfg, progress=False)
    arrays = {k: v[:8] for k, v in data["valid"].items()}
    x, v, target = arrays["loc"][:, 30], arrays["vel"][:, 30], arrays["loc"][:, 40]
    gen = torch.Generator().manual_seed(4)

    def truth_error(group) -> float:
        g = group.sample(8, gen, dtype=torch.float64)
        R, t = g.rotation.numpy(), g.translation.numpy()[:, :, None]
        moved = nbody_sim.simulate(R @ x + t, R @ v, arrays["edges"], clip="norm", field=task.cfg.eps,
                                   charges=arrays["charges"], length=1100)[0][:, 9]
        return float(np.abs(moved - (R @ target + t)).max() / np.abs(target).max())
    assert truth_error(field) < 1e-9
    assert truth_error(task.group) > 1e-3


def test_unconstrained_egnn_breaks_the_field_group_at_gamma_one():
    built = _built("unconstrained")
    model, task = built.model, built.task
    batch = task.split("valid").index(slice(0, 8))
    axial = copy.copy(task)
    axial.group = task.extra_groups["field"]
    with torch.no_grad():
        for p in model.branch_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0), dtype=p.dtype))
        model.set_gammas(1.0)
        assert max(equivariance_cases(model, axial, batch, permutation=False).values()) > 1e-6
        model.set_gammas(0.0)
        assert_equivariant(model, axial, batch, n_samples=2)


@pytest.mark.parametrize("override, match", [
    ("task.eps=-0.1", "task.eps"),
    ("task.clip=component", "task.clip"),
])
def test_bad_settings_are_refused_in_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        resolve("nbody-field", "egnn", "strict", train_size=16,
                overrides=tiny_overrides("nbody-field", "egnn", [override]))
    assert "\n" not in str(info.value)


# -- suites and the figure -------------------------------------------------------------------------
def test_the_partial_symmetry_suites_grid_over_eps():
    for name in ("partial-symmetry", "partial-symmetry-short"):
        spec = load_spec(name)
        runs = spec.runs()
        assert len(runs) == 6 * 2 * 4 * 3, name
        eps = {run.cfg.task_cfg.eps for run in runs}
        assert eps == set(nbody_field.EPS_GRID)
        cells = spec.grid_cells()
        assert len(cells) == len(set(cells)) == 6 * 2 * 4
        assert {c.task_label for c in cells} == {f"nbody-field[eps={e}]" for e in nbody_field.EPS_GRID}
        assert len({run.run_id for run in runs}) == len(runs)
        assert {run.cfg.method for run in runs} == {"strict", "unconstrained", "ace-eq", "ace-elastic", "remul",
                                                    "lie-anneal"}
        assert all(run.args.resolve().hash == run.cfg.hash for run in runs[:3])
    full = load_spec("partial-symmetry").runs()[0].cfg
    assert (full.train_size, full.train.epochs, full.task_cfg.num_train) == (3000, 1000, 10000)


def _spec(**grid_extra):
    grid = {"tasks": ["nbody-field"], "backbones": ["egnn"], "methods": ["strict"], "train_sizes": [16],
            "seeds": [0], **grid_extra}
    return {"name": "t", "protocol": "p", "grid": grid, "overrides": ["task.num_train=16"]}


def test_task_settings_of_a_grid_are_checked():
    with pytest.raises(SpecError, match="task_settings.eps: repeated values"):
        parse_spec(_spec(task_settings={"eps": [0.1, 0.1]}))
    with pytest.raises(SpecError, match="task_settings: expected a mapping"):
        parse_spec(_spec(task_settings=[0.1]))
    with pytest.raises(SpecError, match="task.bogus"):
        parse_spec(_spec(task_settings={"bogus": [1]})).runs()
    bad = _spec(task_settings={"task.num_train": [16, 32]})
    with pytest.raises(SpecError, match="conflicts with grid.task_settings"):
        parse_spec(bad)
    spec = parse_spec(_spec(task_settings={"task.eps": [0.0, 0.5]}))
    assert [run.cfg.task_cfg.eps for run in spec.runs()] == [0.0, 0.5]


def _record(method: str, backbone: str, eps: float, seed: int, mse: float) -> dict:
    return {"task": "nbody-field", "backbone": backbone, "method": method, "seed": seed, "status": "completed",
            "headline": "projected", "metric": {"name": "mse", "higher_is_better": False},
            "variants": {"projected": {"test_metric": mse}, "relaxed": {"test_metric": 10 * mse}},
            "config": {"resolved": {"task_cfg": {"eps": eps, "clip": "norm"}}}}


def test_the_eps_sweep_figure_is_drawn_from_records(tmp_path):
    import matplotlib.image as mpimg
    from benchmark.report.figures import task_setting_sweep
    rng = np.random.default_rng(0)
    records = [_record(m, b, eps, seed, (1e-3 + k * 1e-3 + 0.1 * eps ** 2) * (1 + 0.1 * rng.standard_normal()))
               for k, m in enumerate(("strict", "unconstrained", "ace-eq")) for b in ("egnn", "segnn")
               for eps in nbody_field.EPS_GRID for seed in (0, 1, 2)]
    records.append({**_record("strict", "egnn", 0.3, 9, 1.0), "status": "failed"})   # not drawn
    floors = NBodyField.setting_floors["eps"]
    assert set(floors["data defect floor (pair bound)"]) == set(nbody_field.EPS_GRID)
    paths = task_setting_sweep(records, tmp_path, floors=floors)
    assert sorted(p.name for p in paths) == ["eps_sweep_nbody-field.pdf", "eps_sweep_nbody-field.png"]
    image = mpimg.imread(paths[[p.suffix for p in paths].index(".png")])
    assert image.shape[0] > 400 and image.shape[1] > 1000 and image[..., :3].std() > 0.05
    # a grid with one value of the setting has no sweep to draw
    assert task_setting_sweep([r for r in records if r["config"]["resolved"]["task_cfg"]["eps"] == 0.1],
                              tmp_path / "one") == []
