"""numpy (OpenBLAS) SGEMM reference for kernels-bench, with the same shapes and the same transposes:
C[M,N] = op(A) op(B), op = transpose where the row says T (a transposed view, so BLAS runs the
transposed kernel, as ours does). One thread (set OPENBLAS_NUM_THREADS=1). Rows: "M K N TRANS best median"
in GFLOP/s = 2MNK/t; warm-up, ~0.3 s per trial, 5 trials.
usage: python sgemm_numpy.py [M K N TRANS]   (one shape only: kernels-bench --reference-command measures
each shape right before its own, so a slow minute of a shared machine lands on both sides)"""
import statistics
import sys
import time

import numpy as np

ALL = "NN NT TN"
SHAPES = [(256, 256, 256, "NN"), (512, 512, 512, "NN"), (1024, 1024, 1024, "NN"),
          (768, 128, 512, ALL), (768, 512, 128, ALL), (768, 128, 384, ALL), (768, 384, 128, ALL),
          (768, 512, 2048, ALL), (768, 2048, 512, ALL),
          (64, 784, 256, "NN NT"), (256, 64, 784, "TN"), (64, 256, 10, "NN NT"), (10, 64, 256, "TN"), (64, 10, 256, "NN")]


def bench(f):
    f(); f()
    start = time.perf_counter(); f(); once = time.perf_counter() - start
    iterations = max(3, int(0.3 / max(once, 1e-7)))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            f()
        times.append((time.perf_counter() - start) / iterations)
    return min(times), statistics.median(times)


if len(sys.argv) == 5:
    SHAPES = [(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])]
print(f"# numpy {np.__version__}: M K N trans | GFLOP/s best median")
for m, k, n, uses in SHAPES:
    for trans in uses.split():
        # Stored as the kernel reads them: A is [K,M] when transposed, B is [N,K] when transposed.
        a = np.random.rand(*((k, m) if trans[0] == "T" else (m, k))).astype(np.float32)
        b = np.random.rand(*((n, k) if trans[1] == "T" else (k, n))).astype(np.float32)
        left, right = (a.T if trans[0] == "T" else a), (b.T if trans[1] == "T" else b)
        c = np.empty((m, n), np.float32)
        best, median = bench(lambda: np.matmul(left, right, out=c))
        flops = 2.0 * m * n * k
        print(f"{m} {k} {n} {trans} {flops / best / 1e9:.1f} {flops / median / 1e9:.1f}", flush=True)
