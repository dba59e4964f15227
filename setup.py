"""Build the optional C kernels; everything else is in pyproject.toml.

The extension is optional: without a C compiler (or if the build fails) the install still
succeeds and crossent uses its pure array-API reference implementation.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags = ["/O2"]
else:
    # -O3 vectorises the kernels' inner loops. Never -ffast-math: it assumes there is no
    # inf or NaN, and -inf logits and NaN propagation are part of the contract.
    # -fno-math-errno / -fno-trapping-math only drop errno and FP-trap side effects.
    # -fopenmp-simd honours the kernels' `omp simd reduction` pragmas (vectorised sums in
    # a fixed, documented order) without linking an OpenMP runtime.
    # -ffp-contract=fast: fused multiply-adds (-std=c11 turns them off; the exp pass is
    # bound by multiply-add throughput, 20 % faster with them). -Wno-psabi: the 64-byte
    # vector types only ever live in always-inline functions, never cross an ABI boundary.
    flags = [
        "-O3",
        "-std=c11",
        "-fopenmp-simd",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-ffp-contract=fast",
        "-Wall",
        "-Wno-psabi",
    ]

setup(
    ext_modules=[
        Extension(
            "crossent._ckernels",
            sources=["src/crossent/_ckernels.c"],
            depends=["src/crossent/_ckernels_rows.h"],
            extra_compile_args=flags,
            optional=True,
        ),
        # per-row statistics of crossent.metrics (optional too: NumPy computes the same).
        # -ffp-contract=off: no fused multiply-adds, so that the float32 exp rounds exactly
        # like its NumPy replica
        Extension(
            "crossent._cmetrics",
            sources=["src/crossent/_cmetrics.c"],
            depends=["src/crossent/_cmetrics_rows.h"],
            extra_compile_args=flags + ([] if sys.platform == "win32" else ["-ffp-contract=off"]),
            optional=True,
        ),
    ]
)
