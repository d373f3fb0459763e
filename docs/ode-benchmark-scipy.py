"""Reference for docs/ode-benchmark.fsx: the paper's probability-flow ODE sampler (scipy's RK45 on the
whole batch flattened into one state vector, one error norm over all of it) on the 2-D 8-mode
Gaussian mixture with its exact score. Prints the model evaluations (scipy's nfev) and the accuracy
against a tight-tolerance solution of the same ODE from the same latents.

    /usr/bin/python3 docs/ode-benchmark-scipy.py        # needs numpy and scipy (apt: python3-scipy)
"""
import time
import numpy as np
from scipy.integrate import solve_ivp

BETA_MIN, BETA_MAX, EPS, N, STD = 0.1, 20.0, 1e-3, 10_000, 0.1
MODES = np.array([[np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)] for k in range(8)])


def alpha_sigma2(t):
    m = -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    return np.exp(m), -np.expm1(2 * m)


def score(x, t):
    """Exact score of the mixture marginal p_t: modes alpha_t m_k, variance alpha_t^2 s^2 + sigma_t^2."""
    a, s2 = alpha_sigma2(t)
    v = a * a * STD * STD + s2
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


rng = np.random.default_rng(0)
z = rng.standard_normal((N, 2))
start = time.perf_counter()
sol = solve_ivp(ode_func, (1.0, EPS), z.reshape(-1), rtol=1e-5, atol=1e-5, method="RK45")
wall = time.perf_counter() - start
x = sol.y[:, -1].reshape(N, 2)
ref = solve_ivp(ode_func, (1.0, EPS), z.reshape(-1), rtol=1e-11, atol=1e-11, method="DOP853").y[:, -1].reshape(N, 2)
err = np.sqrt(((x - ref) ** 2).sum(1))
print(f"scipy RK45 rtol=atol=1e-5, {N} samples: nfev {sol.nfev} ({len(sol.t) - 1} accepted steps), "
      f"wall {wall:.2f} s, error vs DOP853 1e-11: max {err.max():.3e}, mean {err.mean():.3e}")
