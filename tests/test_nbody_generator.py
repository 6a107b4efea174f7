"""Tests of the charged N-body generator (benchmark.tasks.nbody_sim).

The vectorised integrator is checked bit for bit against a straightforward
per-trajectory implementation that follows the original simulator's
operations literally, and the standard split against the committed
fingerprints (slow).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmark.tasks import nbody_sim as ns

REPO = Path(__file__).resolve().parents[1]

# numpy evaluates np.power with its SVML routine only on CPUs with AVX512-SKX;
# the reference data were made that way and cannot be reproduced elsewhere.
try:
    from numpy.core._multiarray_umath import __cpu_features__ as _CPU
except ImportError:  # pragma: no cover - numpy >= 2 layout
    from numpy._core._multiarray_umath import __cpu_features__ as _CPU
needs_reference_platform = pytest.mark.skipif(
    not _CPU.get("AVX512_SKX", False),
    reason="the reference data need numpy's AVX512-SKX (SVML) np.power; see datasets/nbody/CARD.md")

# Fingerprints of the first 4 training trajectories of the standard split
# (a prefix of the verified reference arrays; the first draws of a generation
# do not depend on the split sizes).
FIRST4_TRAIN = {
    "loc": "049a324d89f90721bd51487140a0a7fd6e15152373e6dadab145829ad0b06523",
    "vel": "b1dcb398e71f586c5e2fd25a32777cadd4a7a663e86ed54b142dbcc361f8c46e",
}


# The literal per-trajectory reference (the original's operations, one by one) lives in the
# package, where ``relaxbench bench`` times it too.
from benchmark.tasks._nbody_literal import gram_blas as _gram_blas  # noqa: E402
from benchmark.tasks._nbody_literal import gram_unfused as _gram_unfused  # noqa: E402
from benchmark.tasks._nbody_literal import literal_trajectory as _literal_trajectory  # noqa: E402


def _literal_draws(n, n_frames=49):
    """The original's draws, on numpy's global legacy stream."""
    out = []
    for _ in range(n):
        charges = np.random.choice(np.array([-1., 0., 1.]), size=(5, 1), p=[1. / 2, 0, 1. / 2])
        edges = charges.dot(charges.transpose())
        loc = np.random.randn(3, 5) * (1.0 * (5 / 5.) ** (1 / 3))
        vel = np.random.randn(3, 5)
        v_norm = np.sqrt((vel ** 2).sum(axis=0)).reshape(1, -1)
        vel = vel * 0.5 / v_norm
        ns.clamp_to_box(loc, vel)
        noise_loc = np.random.randn(n_frames, 3, 5)
        noise_vel = np.random.randn(n_frames, 3, 5)
        out.append((charges, edges, loc, vel, noise_loc, noise_vel))
    return out


def _random_orthogonal(rs, det):
    q, r = np.linalg.qr(rs.randn(3, 3))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) * det < 0:
        q = q @ np.diag([1.0, 1.0, -1.0])
    return q


def _hits_clip(ic, length, clip="component"):
    """Per trajectory: does clipping change the output (i.e. is it ever hit)?"""
    x, v = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=length, clip=clip)
    xf, vf = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=length, max_force=np.inf)
    return np.any(x != xf, axis=(1, 2, 3)) | np.any(v != vf, axis=(1, 2, 3))


# --------------------------------------------------------------------------
# Bit-for-bit agreement with the literal reference
# --------------------------------------------------------------------------
def test_simulate_matches_literal_reference_bit_for_bit():
    ic = ns.draw_initial_conditions(20, np.random.RandomState(43))
    length = 2000
    hits = _hits_clip(ic, length)
    assert hits.any() and not hits.all()       # both code paths are exercised
    loc, vel = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=length, chunk_size=8)
    for b in range(20):
        ref_loc, ref_vel = _literal_trajectory(ic["loc0"][b], ic["vel0"][b], ic["edges"][b], T=length)
        assert np.array_equal(loc[b], ref_loc), b
        assert np.array_equal(vel[b], ref_vel), b


def test_result_does_not_depend_on_chunking_and_inputs_are_untouched():
    ic = ns.draw_initial_conditions(10, np.random.RandomState(3), length=600)
    saved = {k: v.copy() for k, v in ic.items()}
    a = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=600, chunk_size=3)
    b = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=600, chunk_size=1024)
    c = ns.simulate(ic["loc0"][4:5], ic["vel0"][4:5], ic["edges"][4:5], length=600)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert np.array_equal(a[0][4:5], c[0]) and np.array_equal(a[1][4:5], c[1])
    for k in saved:
        assert np.array_equal(ic[k], saved[k])


def _openblas_corename():
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libopenblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("openblas_get_corename64_", "openblas_get_corename"):
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


@pytest.mark.skipif(_openblas_corename() is None, reason="numpy is not linked to a bundled OpenBLAS")
def test_original_code_with_non_fma_blas_equals_simulate():
    """Under OpenBLAS's Sandybridge kernel (no FMA), the original's literal
    ``A.dot(A.T)`` equals the un-fused Gram product, and the original loop
    equals :func:`simulate` bit for bit."""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        sys.path.insert(0, {str(REPO)!r})
        spec = importlib.util.spec_from_file_location("t", {str(Path(__file__).resolve())!r})
        t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
        print("core", t._openblas_corename())
        rs = np.random.RandomState(5)
        X = rs.randn(4000, 3, 5) * np.exp(rs.randn(4000, 1, 1))
        same = all(np.array_equal(x.T.dot(x), t._gram_unfused(x.T, x)) for x in X)
        print("gram", same)
        ic = t.ns.draw_initial_conditions(4, np.random.RandomState(43))
        loc, vel = t.ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=1000)
        ok = True
        for b in range(4):
            rl, rv = t._literal_trajectory(ic["loc0"][b], ic["vel0"][b], ic["edges"][b], T=1000,
                                           gram=t._gram_blas)
            ok &= np.array_equal(rl, loc[b]) and np.array_equal(rv, vel[b])
        print("traj", ok)
    """)
    env = dict(os.environ, OPENBLAS_CORETYPE="Sandybridge", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         cwd=str(REPO), timeout=300)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    if lines["core"] != "Sandybridge":
        pytest.skip(f"OpenBLAS core cannot be forced here (got {lines['core']})")
    assert lines["gram"] == "True"
    assert lines["traj"] == "True"


# --------------------------------------------------------------------------
# Random stream and draw order
# --------------------------------------------------------------------------
def test_draws_match_the_global_legacy_stream():
    state = np.random.get_state()
    try:
        np.random.seed(43)
        ref = _literal_draws(5)
    finally:
        np.random.set_state(state)
    rng = np.random.RandomState(43)
    got = ns.draw_initial_conditions(2, rng, keep_noise=True)
    more = ns.draw_initial_conditions(3, rng, keep_noise=True)    # blocks continue the stream
    got = {k: np.concatenate([got[k], more[k]]) for k in got}
    for b, (charges, edges, loc, vel, noise_loc, noise_vel) in enumerate(ref):
        assert np.array_equal(got["charges"][b], charges)
        assert np.array_equal(got["edges"][b], edges)
        assert np.array_equal(got["loc0"][b], loc)
        assert np.array_equal(got["vel0"][b], vel)
        assert np.array_equal(got["noise_loc"][b], noise_loc)
        assert np.array_equal(got["noise_vel"][b], noise_vel)
    assert set(np.unique(got["charges"])) <= {-1.0, 1.0}
    assert np.allclose(np.sqrt((got["vel0"] ** 2).sum(axis=1)), 0.5)


def test_clamp_reflects_into_the_box():
    loc = np.array([[6.0, -7.0, 4.0], [0.0, 5.5, -5.0]])
    vel = np.array([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    ns.clamp_to_box(loc, vel)
    assert np.array_equal(loc, [[4.0, -3.0, 4.0], [0.0, 4.5, -5.0]])
    assert np.array_equal(vel, [[-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]])
    with pytest.raises(ValueError):
        ns.clamp_to_box(np.array([16.0]), np.array([0.0]))


def _equal_splits(a, b, rows=None):
    for key in ns.ARRAY_KEYS:
        x = a[key] if rows is None else a[key][:rows]
        if not np.array_equal(x, b[key]):
            return False
    return True


def test_generate_is_deterministic_and_keeps_the_draw_order():
    kw = dict(seed=7, length=300)
    a = ns.generate(20, 5, 5, **kw)
    b = ns.generate(20, 5, 5, **kw)
    for s in ns.SPLITS:
        assert _equal_splits(a[s], b[s])
        assert a[s]["loc"].shape == (len(a[s]["edges"]), 2, 3, 5)
        assert a[s]["charges"].shape == (len(a[s]["edges"]), 5, 1)
    # more training trajectories: the first 20 are unchanged
    c = ns.generate(40, 5, 5, **kw)
    assert _equal_splits(c["train"], a["train"], rows=20)
    assert not np.array_equal(c["valid"]["loc"], a["valid"]["loc"])
    # same num_train, more validation trajectories: the first 5 are unchanged
    d = ns.generate(20, 10, 3, **kw)
    assert _equal_splits(d["valid"], a["valid"], rows=5)
    # integrating only part of the training set leaves valid and test unchanged
    e = ns.generate(20, 5, 5, integrate_train=4, **kw)
    assert len(e["train"]["loc"]) == 4
    assert _equal_splits(a["train"], e["train"], rows=4)
    assert _equal_splits(e["valid"], a["valid"]) and _equal_splits(e["test"], a["test"])


@needs_reference_platform
def test_first_training_trajectories_match_reference_prefix():
    d = ns.generate(num_train=4, num_valid=0, num_test=0)
    assert ns.fingerprint(d["train"]["loc"]) == FIRST4_TRAIN["loc"]
    assert ns.fingerprint(d["train"]["vel"]) == FIRST4_TRAIN["vel"]


def test_progress_callback_reaches_total():
    calls = []
    ns.generate(3, 2, 1, seed=1, length=400, progress=lambda done, total: calls.append((done, total)))
    dones = [c[0] for c in calls]
    assert dones == sorted(dones)
    assert calls[-1] == (6 * 400, 6 * 400)


# --------------------------------------------------------------------------
# Physics
# --------------------------------------------------------------------------
def test_momentum_is_conserved_when_the_clip_is_not_hit():
    length = 1000
    ic = ns.draw_initial_conditions(30, np.random.RandomState(0), length=length)
    free = ~_hits_clip(ic, length)
    assert free.sum() >= 10
    _, vel = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=length)
    p0 = ic["vel0"].sum(axis=-1)                       # unit masses
    p = vel.sum(axis=-1)                               # (B, frames, 3)
    scale = np.abs(ic["vel0"]).sum(axis=(1, 2))
    dev = np.abs(p - p0[:, None]).max(axis=(1, 2)) / scale
    assert dev[free].max() < 1e-12


def test_restart_from_a_saved_frame_continues_the_trajectory():
    ic = ns.draw_initial_conditions(6, np.random.RandomState(2), length=1000)
    loc, vel = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=1000)
    # frame 3 is the state at step 400 (before that step's velocity update)
    loc2, vel2 = ns.simulate(loc[:, 3], vel[:, 3], ic["edges"], length=600)
    assert np.array_equal(loc2, loc[:, 4:9]) and np.array_equal(vel2, vel[:, 4:9])


@pytest.mark.parametrize("det", [1, -1])
def test_norm_clip_is_e3_equivariant(det):
    length = 1000
    ic = ns.draw_initial_conditions(30, np.random.RandomState(0), length=length)
    assert _hits_clip(ic, length, clip="norm").sum() >= 3
    rs = np.random.RandomState(10 + det)
    R, t = _random_orthogonal(rs, det), rs.randn(3, 1) * 3.0
    x, v = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=length, clip="norm")
    xg, vg = ns.simulate(R @ ic["loc0"] + t, R @ ic["vel0"], ic["edges"], length=length, clip="norm")
    assert np.abs(xg - (R @ x + t)).max() < 1e-9
    assert np.abs(vg - R @ v).max() < 1e-9


def test_component_clip_breaks_equivariance():
    length = 1000
    ic = ns.draw_initial_conditions(30, np.random.RandomState(0), length=length)
    hit = _hits_clip(ic, length)
    rs = np.random.RandomState(11)
    R, t = _random_orthogonal(rs, 1), rs.randn(3, 1) * 3.0
    x, _ = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=length)
    xg, _ = ns.simulate(R @ ic["loc0"] + t, R @ ic["vel0"], ic["edges"], length=length)
    err = np.abs(xg - (R @ x + t)).max(axis=(1, 2, 3))
    assert err[~hit].max() < 1e-9            # exact up to rounding without the clip
    assert err[hit].max() > 1e-2             # broken where the clip is hit


def test_invalid_arguments():
    z = np.zeros((1, 3, 5))
    with pytest.raises(ValueError):
        ns.simulate(z, z, np.zeros((1, 5, 5)), clip="bogus")
    with pytest.raises(ValueError):
        ns.simulate(z, z, np.zeros((1, 5, 5)), length=150)
    with pytest.raises(ValueError):
        ns.simulate(np.zeros((1, 5, 3)), z, np.zeros((1, 5, 5)))


# --------------------------------------------------------------------------
# Storage and fingerprints
# --------------------------------------------------------------------------
def test_save_load_roundtrip_and_fingerprint(tmp_path):
    d = ns.generate(3, 2, 2, seed=5, length=200)
    for split, arrays in d.items():
        path = ns.save_split(tmp_path, split, arrays)
        assert path.name == f"{split}.npz"
        back = ns.load_split(path)
        assert sorted(back) == sorted(ns.ARRAY_KEYS)
        for key in ns.ARRAY_KEYS:
            assert back[key].dtype == np.float64
            assert np.array_equal(back[key], arrays[key])
            assert ns.fingerprint(back[key]) == ns.fingerprint(arrays[key])
    a = np.arange(12.0).reshape(3, 4)
    assert ns.fingerprint(a.T) == hashlib.sha256(np.ascontiguousarray(a.T).tobytes()).hexdigest()


def test_committed_fingerprints_are_consistent():
    ref = ns.load_reference_fingerprints()
    assert ref == ns.REFERENCE_FINGERPRINTS
    sizes = {"train": 10000, "valid": 2000, "test": 2000}
    shapes = {"loc": [49, 3, 5], "vel": [49, 3, 5], "edges": [5, 5], "charges": [5, 1]}
    table = (Path(__file__).resolve().parents[1] / "datasets" / "nbody" / "CHECKSUMS.md").read_text()
    assert set(ref) == set(sizes)
    for split, arrays in ref.items():
        assert set(arrays) == set(shapes)
        for key, entry in arrays.items():
            assert entry["dtype"] == "float64"
            assert entry["shape"] == [sizes[split]] + shapes[key]
            row = [line for line in table.splitlines() if entry["sha256"] in line]
            assert len(row) == 1 and row[0].startswith(f"| {split} | {key} |")
    json.dumps(ref)


def test_verify_reports_mismatches():
    d = ns.generate(2, 1, 1, seed=0, length=200)
    assert ns.verify(d, reference=ns.fingerprints(d)) == []
    bad = ns.verify(d)                                   # not the standard split
    assert any("train/loc" in line and "shape" in line for line in bad)
    assert any("train/loc" in line and "sha256" in line for line in bad)
    assert ns.verify({"extra": {"loc": np.zeros(1)}}, reference={}) == ["extra/loc: no reference fingerprint"]


# --------------------------------------------------------------------------
# The standard split (slow: about half a minute to a minute on 2 cores)
# --------------------------------------------------------------------------
@pytest.mark.slow
@needs_reference_platform
def test_standard_split_matches_reference_fingerprints():
    data = ns.generate()
    assert {s: len(d["loc"]) for s, d in data.items()} == {"train": 10000, "valid": 2000, "test": 2000}
    assert ns.verify(data) == []
