"""Charged N-body data generator (vectorised, bit-exact).

This module regenerates the "charged particles" data set used by EGNN
(Satorras et al., 2021): five point charges in 3-D interacting through a
Coulomb-like force, the simulator of NRI (Kipf et al., 2018) ported to three
dimensions.  The reference data are the output of the original script run
as ``generate_dataset.py --num-train 10000 --seed 43 --sufix small``
(10000 train, 2000 valid, 2000 test trajectories from one random stream);
their SHA-256 fingerprints are committed as package data,
``benchmark/tasks/_reference/nbody_checksums.json`` (documented in ``datasets/nbody/``).

The original integrates one trajectory at a time (about half an hour for the
standard split).  Here all trajectories of a chunk are integrated together in
one step loop (batch axis last, so every operation runs over long contiguous
rows), while each floating-point operation is the original's, element by
element, so that the output is the same bit for bit:

* squared distances are ``(|x_i|^2 + |x_j|^2) - 2 <x_i, x_j>`` with
  ``|x_i|^2 = (x_0^2 + x_1^2) + x_2^2``, as in the original;
* the Gram entries ``<x_i, x_j>`` are the un-fused sequential sum
  ``(x_0 y_0 + x_1 y_1) + x_2 y_2``.  The original gets them from
  ``A.dot(A.T)``, i.e. from BLAS (``?syrk``), so its bits depend on the BLAS
  kernel: the reference data match a kernel *without* fused multiply-add
  (OpenBLAS's ``Sandybridge`` kernel gives exactly this sum), not the FMA
  kernels OpenBLAS selects on newer x86 CPUs (``fma(x2, y2, fma(x1, y1,
  x0 y0))``, different in about 30% of entries).  Computing the sum with
  plain numpy arithmetic makes this module independent of the installed
  BLAS;
* ``np.power(d, 1.5)`` is applied element-wise as in the original.  numpy
  evaluates it with its own SIMD (SVML) routine on CPUs with AVX512-SKX and
  with the C library's ``pow`` elsewhere; the reference data were made with
  the former, so they can only be reproduced on such CPUs;
* each particle's force is summed over the other particles in the sequential
  order of numpy's reduction over the last axis of the original ``(3, 5, 5)``
  array.  Only the ten pairs ``i < j`` are evaluated: distances are exactly
  symmetric and the ``j > i`` terms are exact negations;
* the initial states and the charges are drawn sequentially, trajectory by
  trajectory, with the very same calls on a ``np.random.RandomState`` seeded
  with the seed, which gives the same stream as ``np.random.seed(seed)``
  followed by the legacy global functions.

Only numpy is used.  :func:`verify` checks generated arrays against the
committed fingerprints.  ``field=eps`` (a variant, not in the original) adds
the force of a uniform external field along z, ``eps * q_i * e_z``; with
``field=0`` nothing is added and the output is unchanged.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = [
    "N_BALLS", "DIM", "BOX_SIZE", "LOC_STD", "VEL_NORM", "INTERACTION_STRENGTH",
    "NOISE_VAR", "DT", "MAX_F", "LENGTH", "SAMPLE_FREQ", "CHARGE_TYPES",
    "CHARGE_PROB", "SPLITS", "ARRAY_KEYS", "CLIP_MODES",
    "clamp_to_box", "draw_initial_conditions", "simulate", "generate",
    "fingerprint", "fingerprints", "save_split", "load_split",
    "reference_dir", "load_reference_fingerprints", "REFERENCE_FINGERPRINTS",
    "verify",
]

# --------------------------------------------------------------------------
# Constants of the original simulator (ChargedParticlesSim, dim=3).
# --------------------------------------------------------------------------
N_BALLS = 5
DIM = 3
BOX_SIZE = 5.0
LOC_STD = 1.0 * (float(N_BALLS) / 5.0) ** (1 / 3)   # == 1.0
VEL_NORM = 0.5
INTERACTION_STRENGTH = 1.0
NOISE_VAR = 0.0
DT = 0.001
MAX_F = 0.1 / DT                                     # == 100.0
LENGTH = 5000
SAMPLE_FREQ = 100
CHARGE_TYPES = np.array([-1.0, 0.0, 1.0])
CHARGE_PROB = [1.0 / 2, 0, 1.0 / 2]

SPLITS = ("train", "valid", "test")
ARRAY_KEYS = ("loc", "vel", "edges", "charges")
CLIP_MODES = ("component", "norm")

# The ten unordered pairs (i < j) of five particles.
_PI, _PJ = np.triu_indices(N_BALLS, k=1)
_PAIR_OF = -np.ones((N_BALLS, N_BALLS), dtype=np.intp)
_PAIR_OF[_PI, _PJ] = np.arange(_PI.size)
_PAIR_OF[_PJ, _PI] = np.arange(_PI.size) + _PI.size   # (j, i): negated copy
# _TERMS[k, i]: index (into [T, -T]) of the k-th term of particle i's force,
# in the order j = 0, 1, ..., 4 with j == i skipped (that term is zero).
_TERMS = np.array([[_PAIR_OF[i, j] for j in range(N_BALLS) if j != i]
                   for i in range(N_BALLS)]).T.copy()


# --------------------------------------------------------------------------
# Initial conditions
# --------------------------------------------------------------------------
def clamp_to_box(loc: np.ndarray, vel: np.ndarray,
                 box_size: float = BOX_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Reflect positions outside ``[-box_size, box_size]`` back into the box.

    The original applies this once, to the initial state (in place): a
    coordinate above ``box_size`` becomes ``2 * box_size - x`` with velocity
    ``-|v|``; then a coordinate below ``-box_size`` becomes
    ``-2 * box_size - x`` with velocity ``|v|``.

    Parameters
    ----------
    loc, vel : ndarray
        Arrays of equal shape, modified in place.
    box_size : float

    Returns
    -------
    loc, vel : ndarray
        The same (modified) arrays.
    """
    if not (np.all(loc < box_size * 3) and np.all(loc > -box_size * 3)):
        raise ValueError("initial position further than 3 box sizes out")
    over = loc > box_size
    loc[over] = 2 * box_size - loc[over]
    vel[over] = -np.abs(vel[over])
    under = loc < -box_size
    loc[under] = -2 * box_size - loc[under]
    vel[under] = np.abs(vel[under])
    return loc, vel


def draw_initial_conditions(
    n: int,
    rng: np.random.RandomState,
    *,
    length: int = LENGTH,
    sample_freq: int = SAMPLE_FREQ,
    keep_noise: bool = False,
) -> Dict[str, np.ndarray]:
    """Draw ``n`` trajectories' charges and (box-clamped) initial states.

    The draws are made trajectory by trajectory, in the order of the
    original ``sample_trajectory``: charges (``choice`` of 5 values with
    probabilities ``[1/2, 0, 1/2]``), positions (``randn(3, 5)``), velocities
    (``randn(3, 5)``, rescaled to norm 0.5 per particle), then the two
    observation-noise arrays ``randn(n_frames, 3, 5)`` (positions, then
    velocities) that the original draws after integrating.  Calling this on
    consecutive blocks of trajectories with the same ``rng`` therefore
    consumes the stream exactly like the original, whatever the blocks.

    Parameters
    ----------
    n : int
        Number of trajectories.
    rng : numpy.random.RandomState
        Legacy generator; ``RandomState(seed)`` yields the same stream as
        ``np.random.seed(seed)`` followed by the global functions.  It is
        advanced in place.
    length, sample_freq : int
        Integration length and sampling period; they only fix the size of
        the noise draws, ``length // sample_freq - 1`` frames.
    keep_noise : bool
        Return the (unscaled) noise draws as ``noise_loc``/``noise_vel``
        of shape ``(n, n_frames, 3, 5)``.  The data set uses a noise variance
        of 0, so by default they are drawn and discarded.

    Returns
    -------
    dict
        ``loc0``, ``vel0``: (n, 3, 5) float64 (after the box clamp);
        ``edges``: (n, 5, 5) float64, ``charges @ charges.T``;
        ``charges``: (n, 5, 1) float64; optionally ``noise_loc``,
        ``noise_vel``.
    """
    if length % sample_freq != 0:
        raise ValueError("length must be a multiple of sample_freq")
    n_frames = length // sample_freq - 1
    out = {
        "loc0": np.empty((n, DIM, N_BALLS)),
        "vel0": np.empty((n, DIM, N_BALLS)),
        "edges": np.empty((n, N_BALLS, N_BALLS)),
        "charges": np.empty((n, N_BALLS, 1)),
    }
    if keep_noise:
        out["noise_loc"] = np.empty((n, n_frames, DIM, N_BALLS))
        out["noise_vel"] = np.empty((n, n_frames, DIM, N_BALLS))
    for k in range(n):
        charges = rng.choice(CHARGE_TYPES, size=(N_BALLS, 1), p=CHARGE_PROB)
        edges = charges.dot(charges.transpose())
        loc = rng.randn(DIM, N_BALLS) * LOC_STD
        vel = rng.randn(DIM, N_BALLS)
        v_norm = np.sqrt((vel ** 2).sum(axis=0)).reshape(1, -1)
        vel = vel * VEL_NORM / v_norm
        clamp_to_box(loc, vel)
        noise_loc = rng.randn(n_frames, DIM, N_BALLS)
        noise_vel = rng.randn(n_frames, DIM, N_BALLS)
        out["loc0"][k] = loc
        out["vel0"][k] = vel
        out["edges"][k] = edges
        out["charges"][k] = charges
        if keep_noise:
            out["noise_loc"][k] = noise_loc
            out["noise_vel"][k] = noise_vel
    return out


# --------------------------------------------------------------------------
# Integration
# --------------------------------------------------------------------------
class _Stepper:
    """Force evaluation on a chunk of B trajectories, batch axis last.

    Positions are held as a C-contiguous ``(3, 5, B)`` array so that every
    operation runs over long contiguous rows; the arithmetic, element by
    element, is the original's (see the module docstring).
    """

    def __init__(self, edges: np.ndarray, clip: str, max_f: float,
                 field_q: Optional[np.ndarray] = None):
        b = edges.shape[0]
        # eps * q_i per particle, (5, B), added to the z component after the clip (None: no field)
        self.field_q = None if field_q is None else np.ascontiguousarray(field_q)
        npair = _PI.size
        # Original: forces_size = interaction_strength * edges / |r|^3.
        self.edges_p = np.ascontiguousarray(
            (INTERACTION_STRENGTH * edges)[:, _PI, _PJ].T)          # (10, B)
        self.clip = clip
        self.max_f = max_f
        self.sq = np.empty((DIM, N_BALLS, b))
        self.nrm = np.empty((N_BALLS, b))
        self.xi = np.empty((DIM, npair, b))
        self.xj = np.empty((DIM, npair, b))
        self.prod = np.empty((DIM, npair, b))
        self.gp = np.empty((npair, b))
        self.ni = np.empty((npair, b))
        self.nj = np.empty((npair, b))
        self.pw = np.empty((npair, b))
        self.fs = np.empty((npair, b))
        self.t2 = np.empty((DIM, 2 * npair, b))                    # [T, -T]
        self.terms = np.empty((DIM, N_BALLS - 1, N_BALLS, b))
        self.force = np.empty((DIM, N_BALLS, b))
        if clip == "norm":
            self.fn = np.empty((N_BALLS, b))
            self.tmp = np.empty((N_BALLS, b))

    def __call__(self, loc: np.ndarray) -> np.ndarray:
        """Clipped force on every particle, (3, 5, B), for ``loc`` (3, 5, B), plus the external
        field's force ``eps q_i e_z`` when there is one (not clipped)."""
        npair = _PI.size
        # |x_i|^2: (A ** 2).sum(axis=1) in the original, a sequential sum.
        np.multiply(loc, loc, out=self.sq)
        np.add(self.sq[0], self.sq[1], out=self.nrm)
        self.nrm += self.sq[2]
        # <x_i, x_j> for i < j as an un-fused sequential sum of products,
        # i.e. what a BLAS kernel without FMA returns for A.dot(A.T).
        np.take(loc, _PI, axis=1, out=self.xi)
        np.take(loc, _PJ, axis=1, out=self.xj)
        np.multiply(self.xi, self.xj, out=self.prod)
        np.add(self.prod[0], self.prod[1], out=self.gp)
        self.gp += self.prod[2]
        # d_ij = (|x_i|^2 + |x_j|^2) - 2 <x_i, x_j>, then d_ij ** 1.5.
        np.take(self.nrm, _PI, axis=0, out=self.ni)
        np.take(self.nrm, _PJ, axis=0, out=self.nj)
        self.ni += self.nj
        self.gp *= 2
        self.ni -= self.gp
        np.power(self.ni, 1.5, out=self.pw)
        np.divide(self.edges_p, self.pw, out=self.fs)
        # T_ij = fs_ij * (x_i - x_j) for i < j; T_ji = -T_ij exactly.
        t = self.t2[:, :npair]
        np.subtract(self.xi, self.xj, out=t)
        t *= self.fs
        np.negative(t, out=self.t2[:, npair:])
        # F_i = sum_j T_ij, sequentially over j (the j == i term is zero).
        np.take(self.t2, _TERMS, axis=1, out=self.terms)
        f = self.force
        np.add(self.terms[:, 0], self.terms[:, 1], out=f)
        for k in range(2, N_BALLS - 1):
            f += self.terms[:, k]
        if self.clip == "component":
            np.minimum(f, self.max_f, out=f)
            np.maximum(f, -self.max_f, out=f)
        else:
            fn, tmp = self.fn, self.tmp
            np.multiply(f[0], f[0], out=fn)
            np.multiply(f[1], f[1], out=tmp)
            fn += tmp
            np.multiply(f[2], f[2], out=tmp)
            fn += tmp
            np.sqrt(fn, out=fn)
            with np.errstate(divide="ignore"):
                np.divide(self.max_f, fn, out=fn)
            np.minimum(fn, 1.0, out=fn)
            f *= fn
        if self.field_q is not None:
            f[2] += self.field_q
        return f


def simulate(
    loc0: np.ndarray,
    vel0: np.ndarray,
    edges: np.ndarray,
    *,
    length: int = LENGTH,
    sample_freq: int = SAMPLE_FREQ,
    dt: float = DT,
    clip: str = "component",
    max_force: Optional[float] = None,
    field: float = 0.0,
    charges: Optional[np.ndarray] = None,
    chunk_size: int = 1024,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Integrate a batch of charged 5-body trajectories.

    Leapfrog-style scheme of the original: ``v += dt F(x0)``, then for
    ``i = 1 .. length-1``: ``x += dt v``; if ``i % sample_freq == 0`` the state
    ``(x, v)`` is recorded; ``v += dt F(x)``.  The force on particle ``i`` is
    ``sum_j edges_ij (x_i - x_j) / |x_i - x_j|^3``, clipped.  Frame ``k`` of the
    output is the state after step ``sample_freq * (k + 1)``.

    Parameters
    ----------
    loc0, vel0 : ndarray, shape (B, 3, 5)
        Initial positions and velocities (already box-clamped).
    edges : ndarray, shape (B, 5, 5)
        Products of charges ``q_i q_j`` (symmetric).
    length, sample_freq : int
        Number of steps and sampling period; ``length`` must be a multiple
        of ``sample_freq``.  ``length // sample_freq - 1`` frames are kept.
    dt : float
        Time step; forces are clipped at ``0.1 / dt``.
    clip : {"component", "norm"}
        ``"component"`` (the original): each Cartesian force component is
        clipped to ``[-0.1/dt, 0.1/dt]``; this is not rotation-equivariant.
        ``"norm"``: each particle's force vector is rescaled by
        ``min(1, (0.1/dt) / |F|)``, which keeps the dynamics exactly
        E(3)-equivariant.
    max_force : float, optional
        Clipping threshold, ``0.1 / dt`` (= 100) by default.  ``np.inf``
        disables clipping (useful to detect whether a trajectory ever hits
        the clip: its output then differs from the clipped one).
    field : float
        Strength ``eps`` of a uniform external field along ``+z``: particle
        ``i`` feels the extra force ``eps * q_i * e_z``, added after the clip
        (the clip bounds close encounters; the field's force is at most
        ``|eps|``).  With ``clip="norm"`` the dynamics are then equivariant
        under the subgroup of E(3) that fixes the z axis (rotations about it,
        reflections through planes containing it, translations), and no
        longer under tilting rotations.  ``0`` (the default) adds nothing:
        the output is bit for bit that without a field.
    charges : ndarray, shape (B, 5, 1) or (B, 5), optional
        The charges ``q_i``; required when ``field != 0`` (``edges`` holds
        only their products).
    chunk_size : int
        Trajectories integrated together (memory/cache trade-off; the
        result does not depend on it).
    progress : callable, optional
        Called as ``progress(done, total)`` in trajectory-steps.

    Returns
    -------
    loc, vel : ndarray, shape (B, length // sample_freq - 1, 3, 5)

    Notes
    -----
    With ``clip="component"`` each trajectory's output is identical, bit for
    bit, to the original per-trajectory simulator run on the same initial
    state with a BLAS whose ``dsyrk`` does not fuse multiply-adds (as the
    reference data were made) and the same ``np.power``; see the module
    docstring.  It does not depend on ``chunk_size`` or on the other
    trajectories of the batch, and the inputs are not modified.
    """
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
    if length % sample_freq != 0:
        raise ValueError("length must be a multiple of sample_freq")
    loc0 = np.asarray(loc0, dtype=np.float64)
    vel0 = np.asarray(vel0, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if loc0.ndim != 3 or loc0.shape[1:] != (DIM, N_BALLS):
        raise ValueError(f"loc0 must have shape (B, {DIM}, {N_BALLS})")
    if vel0.shape != loc0.shape or edges.shape != (loc0.shape[0], N_BALLS, N_BALLS):
        raise ValueError("vel0 must match loc0, edges must be (B, 5, 5)")
    nb = loc0.shape[0]
    field = float(field)
    if not np.isfinite(field):
        raise ValueError(f"field must be a finite number, got {field!r}")
    field_q = None
    if field != 0.0:
        if charges is None:
            raise ValueError("a field needs the charges: pass charges, a (B, 5, 1) array")
        charges = np.asarray(charges, dtype=np.float64)
        if charges.shape not in ((nb, N_BALLS, 1), (nb, N_BALLS)):
            raise ValueError(f"charges must have shape ({nb}, {N_BALLS}, 1), got {charges.shape}")
        field_q = field * charges.reshape(nb, N_BALLS).T            # (5, B)
    n_frames = length // sample_freq - 1
    max_f = 0.1 / dt if max_force is None else float(max_force)
    loc_out = np.zeros((nb, n_frames, DIM, N_BALLS))
    vel_out = np.zeros((nb, n_frames, DIM, N_BALLS))
    total = nb * length
    done = 0
    for start in range(0, nb, max(1, int(chunk_size))):
        stop = min(nb, start + max(1, int(chunk_size)))
        # Always a copy (ascontiguousarray may return a view of the input).
        loc = np.array(loc0[start:stop].transpose(1, 2, 0), order="C", copy=True)
        vel = np.array(vel0[start:stop].transpose(1, 2, 0), order="C", copy=True)
        force = _Stepper(edges[start:stop], clip, max_f,
                         None if field_q is None else field_q[:, start:stop])
        step = np.empty_like(loc)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = force(loc)
            np.multiply(f, dt, out=f)
            vel += f
            counter = 0
            for i in range(1, length):
                np.multiply(vel, dt, out=step)
                loc += step
                if i % sample_freq == 0:
                    loc_out[start:stop, counter] = loc.transpose(2, 0, 1)
                    vel_out[start:stop, counter] = vel.transpose(2, 0, 1)
                    counter += 1
                    if progress is not None:
                        progress(done + (stop - start) * i, total)
                f = force(loc)
                np.multiply(f, dt, out=f)
                vel += f
        done += (stop - start) * length
        if progress is not None:
            progress(done, total)
    return loc_out, vel_out


# --------------------------------------------------------------------------
# Data set generation
# --------------------------------------------------------------------------
def _make_progress(progress, total: int, desc: str):
    """Normalise ``progress`` to (callback or None, closer)."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    from tqdm.auto import tqdm  # optional dependency, only for the bar

    bar = tqdm(total=total, unit="step", unit_scale=True, desc=desc)

    def cb(done, _total):
        bar.update(done - bar.n)

    return cb, bar.close


def generate(
    num_train: int = 10000,
    num_valid: int = 2000,
    num_test: int = 2000,
    seed: int = 43,
    *,
    clip: str = "component",
    field: float = 0.0,
    integrate_train: Optional[int] = None,
    progress: Union[None, bool, Callable[[int, int], None]] = None,
    length: int = LENGTH,
    sample_freq: int = SAMPLE_FREQ,
    chunk_size: int = 1024,
) -> Dict[str, Dict[str, np.ndarray]]:
    """Generate the train/valid/test splits of the charged N-body data set.

    With the defaults this reproduces, bit for bit, the original
    ``generate_dataset.py --num-train 10000 --seed 43`` output (charged
    simulation, 5 particles, 3-D): one random stream, seeded once, feeds the
    ``num_train`` training, then ``num_valid`` validation, then ``num_test``
    test trajectories.  (Bit-exactness needs a CPU on which numpy evaluates
    ``np.power`` with its AVX512-SKX routine, as for the reference data; see
    the module docstring.  :func:`verify` tells.)

    Parameters
    ----------
    num_train, num_valid, num_test : int
        Trajectories per split.
    seed : int
        Seed of the legacy ``RandomState`` stream.
    clip : {"component", "norm"}
        Force clipping, see :func:`simulate`.  Only ``"component"`` gives the
        original data; ``"norm"`` gives the exactly equivariant variant from
        the same initial states.
    field : float
        Strength ``eps`` of a uniform external field along ``+z`` (see
        :func:`simulate`), from the same initial states; ``0`` (the default)
        gives the data without a field, bit for bit.
    integrate_train : int, optional
        Integrate only the first ``integrate_train`` training trajectories
        (the training draws all still happen, so valid/test are unchanged);
        the train split then holds only those rows.
    progress : bool or callable, optional
        ``True`` shows a tqdm bar; a callable gets ``(done, total)`` in
        trajectory-steps over the whole generation.
    length, sample_freq, chunk_size
        See :func:`simulate`.

    Returns
    -------
    dict
        ``{"train"|"valid"|"test": {"loc", "vel", "edges", "charges"}}`` with
        shapes (N, F, 3, 5), (N, F, 3, 5), (N, 5, 5), (N, 5, 1), float64,
        where F = ``length // sample_freq - 1`` (49).
    """
    rng = np.random.RandomState(seed)
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    keep = dict(counts)
    if integrate_train is not None:
        keep["train"] = max(0, min(int(integrate_train), num_train))
    draws = {s: draw_initial_conditions(counts[s], rng, length=length,
                                        sample_freq=sample_freq)
             for s in SPLITS}
    total = sum(keep.values()) * length
    cb, close = _make_progress(progress, total, "nbody trajectory-steps")
    offset = 0
    out: Dict[str, Dict[str, np.ndarray]] = {}
    try:
        for s in SPLITS:
            k = keep[s]
            d = draws[s]
            sub = None
            if cb is not None:
                def sub(done, _total, _o=offset):
                    cb(_o + done, total)
            loc, vel = simulate(d["loc0"][:k], d["vel0"][:k], d["edges"][:k],
                                length=length, sample_freq=sample_freq,
                                clip=clip, field=field, charges=d["charges"][:k],
                                chunk_size=chunk_size, progress=sub)
            offset += k * length
            # Observation noise: the original adds noise_var * randn, with
            # noise_var = 0 (an identity on every non-zero value).
            out[s] = {"loc": loc, "vel": vel,
                      "edges": d["edges"][:k].copy(),
                      "charges": d["charges"][:k].copy()}
    finally:
        close()
    return out


# --------------------------------------------------------------------------
# Storage and fingerprints
# --------------------------------------------------------------------------
def fingerprint(array: np.ndarray) -> str:
    """SHA-256 hex digest of ``np.ascontiguousarray(array).tobytes()``.

    Only the raw bytes are hashed: check dtype and shape separately.
    """
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def fingerprints(arrays: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """``{split: {key: {"sha256", "dtype", "shape"}}}`` for nested arrays."""
    return {s: {k: {"sha256": fingerprint(a), "dtype": str(a.dtype),
                    "shape": list(a.shape)} for k, a in d.items()}
            for s, d in arrays.items()}


def save_split(directory: Union[str, Path], split_name: str,
               arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``<directory>/<split_name>.npz`` with keys loc, vel, edges, charges.

    Uses ``np.savez`` (uncompressed, no pickled objects).  Returns the path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{split_name}.npz"
    from benchmark.fileio import atomic_path
    with atomic_path(path) as tmp:          # a reader never sees a half-written split
        np.savez(tmp, **{k: np.ascontiguousarray(arrays[k]) for k in ARRAY_KEYS})
    return path


def load_split(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Load a split written by :func:`save_split` (``allow_pickle=False``)."""
    with np.load(Path(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


#: The committed fingerprints of the standard split: a data file of this package (package data,
#: so that an installed, non-editable copy verifies its data like a checkout does).
REFERENCE_RESOURCE = ("benchmark.tasks", "_reference", "nbody_checksums.json")


def _reference_resource():
    from importlib.resources import files
    package, folder, name = REFERENCE_RESOURCE
    return files(package).joinpath(folder).joinpath(name)


def reference_dir() -> Path:
    """Folder of the committed fingerprints, ``benchmark/tasks/_reference`` in the package."""
    return Path(str(_reference_resource())).parent


def load_reference_fingerprints(path: Optional[Union[str, Path]] = None) -> dict:
    """Read the committed fingerprints (package data ``benchmark/tasks/_reference/nbody_checksums.json``).

    Returns
    -------
    dict
        ``{split: {key: {"sha256": str, "dtype": str, "shape": [int, ...]}}}``.

    Raises
    ------
    FileNotFoundError
        If the file is absent: the package is installed without its data files, which is an error
        (verification is never skipped silently).
    ValueError
        If the file is not a JSON object of splits.
    """
    resource = Path(path) if path is not None else _reference_resource()
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the committed nbody reference fingerprints are missing ({resource}): this installation of "
            "relaxbench lacks its package data; reinstall it (the file is declared in pyproject.toml's "
            "package-data)") from None
    data = json.loads(text)
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{resource}: not a JSON object of splits")
    return data


_REFERENCE_CACHE: dict = {}


def _reference() -> dict:
    if not _REFERENCE_CACHE:
        _REFERENCE_CACHE.update(load_reference_fingerprints())
    return _REFERENCE_CACHE


def __getattr__(name: str):
    # REFERENCE_FINGERPRINTS is read on first use (not at import), so that a broken installation
    # fails where the fingerprints are needed, with the message of load_reference_fingerprints.
    if name == "REFERENCE_FINGERPRINTS":
        return _reference()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def verify(arrays: Mapping[str, Mapping[str, np.ndarray]],
           reference: Optional[Mapping] = None) -> List[str]:
    """Compare arrays with the reference fingerprints.

    Parameters
    ----------
    arrays : mapping
        ``{split: {key: array}}`` as returned by :func:`generate` (any subset
        of splits/keys).
    reference : mapping, optional
        Defaults to ``REFERENCE_FINGERPRINTS``, the committed fingerprints (an error when
        their file is missing).

    Returns
    -------
    list of str
        One human-readable line per mismatch (dtype, shape or SHA-256, or a
        missing reference); empty when everything matches.
    """
    reference = _reference() if reference is None else reference
    problems: List[str] = []
    for split, d in arrays.items():
        for key, a in d.items():
            ref = reference.get(split, {}).get(key)
            if ref is None:
                problems.append(f"{split}/{key}: no reference fingerprint")
                continue
            if str(a.dtype) != ref["dtype"]:
                problems.append(f"{split}/{key}: dtype {a.dtype} != {ref['dtype']}")
            if list(a.shape) != list(ref["shape"]):
                problems.append(f"{split}/{key}: shape {list(a.shape)} != {ref['shape']}")
            got = fingerprint(a)
            if got != ref["sha256"]:
                problems.append(f"{split}/{key}: sha256 {got} != {ref['sha256']}")
    return problems
