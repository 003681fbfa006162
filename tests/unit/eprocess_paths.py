"""The statistical gate's e-value for many simulated runs at once, vectorised with numpy.

The same formula as `controller.analysis.sequential` (the mixture over the grid from the start, weighted
1 - RESTART_SHARE, plus the tests restarted at later informative intervals and the weight of those not started
yet), written independently so the simulations can check the controller's code against it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp

from controller.analysis.sequential import RESTART_SHARE, grid_for

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def log_e_paths(
    n_total: Ints, n_bad: Ints, s_total: Ints, s_bad: Ints, tolerance: float, restarts: bool = True
) -> Floats:
    """log E_t per run and interval; inputs are per-interval counts of shape (runs, intervals). Without
    `restarts`: the mixture from the start alone, with all the weight (the e-process before restarts existed)."""
    grid = np.array(grid_for(tolerance))
    size = math.log(len(grid))
    informative = (n_total > 0) & (s_total > 0) & (n_bad + s_bad > 0)
    rho = np.where(informative, n_total / np.maximum(n_total + s_total, 1), 0.0)
    shift = np.log1p(rho[..., None] * (grid - 1)) - np.log1p(rho[..., None] * (tolerance - 1))
    log_lr = n_bad[..., None] * np.log(grid / tolerance) - (n_bad + s_bad)[..., None] * shift
    step = np.where(informative[..., None], log_lr, 0.0)
    from_start: Floats = logsumexp(np.cumsum(step, axis=1), axis=2) - size
    if not restarts:
        return from_start
    from_start = from_start + math.log1p(-RESTART_SHARE)
    counted = np.cumsum(informative, axis=1)  # informative intervals so far, this one included
    runs, intervals = n_total.shape
    log_a = np.full((runs, len(grid)), -np.inf)
    result = np.empty((runs, intervals))
    for t in range(intervals):
        n = counted[:, t]
        log_w = np.log(RESTART_SHARE / np.maximum(n * (n + 1), 1))
        grown = np.logaddexp(log_a, log_w[:, None]) + step[:, t, :]
        log_a = np.where(informative[:, t, None], grown, log_a)
        with np.errstate(divide="ignore"):
            restarted = logsumexp(log_a, axis=1) - size
        pending = np.log(RESTART_SHARE / (n + 1))
        result[:, t] = np.logaddexp(np.logaddexp(from_start[:, t], restarted), pending)
    return result
