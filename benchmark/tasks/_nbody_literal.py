"""The charged N-body simulator written literally, one trajectory at a time, as the original
(Kipf et al.'s NRI simulator in 3-D, as EGNN used it) writes its ``sample_trajectory`` loop.

:func:`~benchmark.tasks.nbody_sim.simulate` is tested equal to it bit for bit, and
``relaxbench bench`` times the two against each other. It is a reference, not a generator: it is
about two orders of magnitude slower than the vectorised simulator.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gram_unfused", "gram_blas", "literal_trajectory"]


def gram_unfused(A, C):
    """``A.dot(C)`` for a (5, 3) by (3, 5) product as a BLAS kernel without
    FMA computes it: ``(a0 c0 + a1 c1) + a2 c2``."""
    p = A[:, :, None] * C[None, :, :]
    return (p[:, 0] + p[:, 1]) + p[:, 2]


def gram_blas(A, C):
    """The original's call, whatever the installed BLAS does."""
    return A.dot(C)


def literal_trajectory(loc0, vel0, edges, T=5000, sample_freq=100, dt=0.001,
                       gram=gram_unfused, max_F=None):
    """One trajectory, written like the original ``sample_trajectory`` loop: positions and
    velocities of shape ``(T // sample_freq - 1, 3, 5)``."""
    n = 5
    T_save = int(T / sample_freq - 1)
    max_F = 0.1 / dt if max_F is None else max_F
    loc = np.zeros((T_save, 3, n))
    vel = np.zeros((T_save, 3, n))
    loc_next = np.array(loc0, dtype=float)
    vel_next = np.array(vel0, dtype=float)

    def l2(A, B):
        A_norm = (A ** 2).sum(axis=1).reshape(A.shape[0], 1)
        B_norm = (B ** 2).sum(axis=1).reshape(1, B.shape[0])
        return A_norm + B_norm - 2 * gram(A, B.transpose())

    def force(x):
        l2_dist_power3 = np.power(l2(x.transpose(), x.transpose()), 3. / 2.)
        forces_size = 1.0 * edges / l2_dist_power3
        np.fill_diagonal(forces_size, 0)
        F = (forces_size.reshape(1, n, n) * np.concatenate((
            np.subtract.outer(x[0, :], x[0, :]).reshape(1, n, n),
            np.subtract.outer(x[1, :], x[1, :]).reshape(1, n, n),
            np.subtract.outer(x[2, :], x[2, :]).reshape(1, n, n)))).sum(axis=-1)
        F[F > max_F] = max_F
        F[F < -max_F] = -max_F
        return F

    counter = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        vel_next += dt * force(loc_next)
        for i in range(1, T):
            loc_next += dt * vel_next
            if i % sample_freq == 0:
                loc[counter, :, :], vel[counter, :, :] = loc_next, vel_next
                counter += 1
            vel_next += dt * force(loc_next)
    return loc, vel
