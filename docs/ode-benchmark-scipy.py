"""Reference for docs/ode-benchmark.fsx: the paper's probability-flow ODE sampler (scipy's RK45 on the
whole batch flattened into one state vector, one RMS error norm over all of it) on the 2-D 8-mode
Gaussian mixture with its exact score, from the same latents as the F# benchmark (libtorch's CPU
generator gives PyTorch and TorchSharp the same stream for the same seed). Prints the evaluations
(scipy's nfev), the wall time and the distance of the samples to a tight-tolerance solution.

    /usr/bin/python3 docs/ode-benchmark-scipy.py        # Debian: python3-torch python3-scipy
"""
import time

import numpy as np
import scipy
import torch
from scipy.integrate import solve_ivp

BETA_MIN, BETA_MAX, EPS, N, STD = 0.1, 20.0, 1e-3, 10_000, 0.1
MODES = np.array([[np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)] for k in range(8)])


def score(x, t):
    """Exact score of the mixture marginal p_t: modes alpha_t m_k, variance alpha_t^2 s^2 + sigma_t^2."""
    m = -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    a = np.exp(m)
    v = a * a * STD * STD - np.expm1(2 * m)
    d = x[:, None, :] - a * MODES[None, :, :]            # [N, 8, 2]
    logw = -0.5 * (d * d).sum(-1) / v
    logw -= logw.max(1, keepdims=True)
    w = np.exp(logw)
    w /= w.sum(1, keepdims=True)
    return -(w[:, :, None] * d).sum(1) / v


def ode_func(t, y):
    x = y.reshape(N, 2)
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    return (-0.5 * beta * (x + score(x, t))).reshape(-1)


z = torch.randn(N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).numpy()
ref = solve_ivp(ode_func, (1.0, EPS), z.reshape(-1), rtol=1e-11, atol=1e-11, method="DOP853").y[:, -1].reshape(N, 2)
print(f"scipy {scipy.__version__}, torch {torch.__version__}; latent[0] = {z[0]}")
print(f"{'rtol=atol':<10} {'NFE':>5} {'wall s':>8} {'max error':>12} {'mean error':>12}")
for tol in [1e-3, 1e-4, 1e-5]:
    start = time.perf_counter()
    sol = solve_ivp(ode_func, (1.0, EPS), z.reshape(-1), rtol=tol, atol=tol, method="RK45")
    wall = time.perf_counter() - start
    err = np.sqrt(((sol.y[:, -1].reshape(N, 2) - ref) ** 2).sum(1))
    print(f"{tol:<10g} {sol.nfev:>5d} {wall:>8.2f} {err.max():>12.3e} {err.mean():>12.3e}")
