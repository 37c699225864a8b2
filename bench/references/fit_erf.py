"""Fits the rational erf that Sources/Tensors/Kernels/GELU.swift uses: erf(z) ~ z P(z^2) / Q(z^2) on
[0, 3.92] (erf is odd; past 3.92 it is 1 to float32), P and Q of degree 5, Q(0) = 1.

Linearized least squares (f Q - P = 0) on 4000 points, weighted by z / Q so that the residual is erf's
absolute error, with Lawson reweighting toward the minimax fit. Prints the coefficients as float32 (as
the Swift code rounds them) and the largest absolute error of that float32 evaluation, fused
multiply-adds included, against math.erf over [-6, 6].

    python3 bench/references/fit_erf.py      (numpy only)
"""
import math

import numpy as np

LIMIT = 3.92
DEGREE_P, DEGREE_Q = 5, 5


def fit(iterations=60):
    z = np.linspace(1e-6, LIMIT, 4000)
    f = np.array([math.erf(v) / v for v in z])
    t = z * z
    weights, q_values = np.ones_like(t), np.ones_like(t)
    for _ in range(iterations):
        powers_p = np.vstack([t ** i for i in range(DEGREE_P + 1)]).T
        powers_q = np.vstack([t ** j for j in range(1, DEGREE_Q + 1)]).T
        system = np.hstack([powers_p, -(f[:, None] * powers_q)])
        scale = z / q_values * weights
        solution, *_ = np.linalg.lstsq(system * scale[:, None], f * scale, rcond=None)
        p = solution[:DEGREE_P + 1]
        q = np.concatenate([[1.0], solution[DEGREE_P + 1:]])
        q_values = np.polyval(q[::-1], t)
        error = z * (f - np.polyval(p[::-1], t) / q_values)
        weights = weights * np.sqrt(np.abs(error) / np.abs(error).max()) + 1e-12
        weights /= weights.max()
    return p, q


def float32_erf(x, p, q):
    f32 = np.float32

    def fma(a, b, c):  # a float32 product is exact in float64
        return f32(np.float64(a) * np.float64(b) + np.float64(c))

    z = f32(min(max(f32(x), f32(-LIMIT)), f32(LIMIT)))
    t = f32(z * z)
    pv, qv = p[-1], q[-1]
    for c in reversed(p[:-1]):
        pv = fma(pv, t, c)
    for c in reversed(q[:-1]):
        qv = fma(qv, t, c)
    return f32(f32(z * pv) / qv)


def main():
    p, q = fit()
    p32, q32 = [np.float32(c) for c in p], [np.float32(c) for c in q]
    print("P (t^0 ... t^5):", ", ".join(f"{float(c):.16e}" for c in p32))
    print("Q (t^0 ... t^5):", ", ".join(f"{float(c):.16e}" for c in q32))
    xs = np.linspace(-6, 6, 20001)
    worst = max(abs(float(float32_erf(x, p32, q32)) - math.erf(float(np.float32(x)))) for x in xs)
    print(f"largest absolute error in float32: {worst:.3e}")


if __name__ == "__main__":
    main()
