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

import platform

# The kernels are built once per x86-64 level, each with vectors as wide as its registers
# (GCC 12 computes comparisons of wider vectors lane by lane: a 64-byte source compiled
# for AVX2 ran 10x slower): _ckernels for any CPU (16-byte vectors: SSE2, NEON on ARM),
# _ckernels_v3 for AVX2 + FMA, _ckernels_v4 for AVX-512. crossent._kernels imports the
# best the processor runs. Each is optional: a compiler without -march=x86-64-v4 (GCC < 11,
# old Clang) leaves the level below in charge.
X86 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32"
KERNEL_SOURCES = dict(sources=["src/crossent/_ckernels.c"],
                      depends=["src/crossent/_ckernels_rows.h", "src/crossent/_ckernels_pool.h"],
                      optional=True)


def kernels(name: str, march: str | None, vbytes: int) -> Extension:
    extra = [] if sys.platform == "win32" else [f"-DCROSSENT_VBYTES={vbytes}",
                                                f"-DCROSSENT_MODULE={name}"]
    if march:
        extra.append(f"-march={march}")
    return Extension(f"crossent.{name}", extra_compile_args=flags + extra, **KERNEL_SOURCES)


setup(
    ext_modules=[
        kernels("_ckernels", None, 16),
        *([kernels("_ckernels_v3", "x86-64-v3", 32), kernels("_ckernels_v4", "x86-64-v4", 64)]
          if X86 else []),
        # per-row statistics of crossent.metrics (optional too: NumPy computes the same).
        # -ffp-contract=off: no fused multiply-adds, so that the float32 exp rounds exactly
        # like its NumPy replica
        Extension(
            "crossent._cmetrics",
            sources=["src/crossent/_cmetrics.c"],
            depends=["src/crossent/_cmetrics_rows.h", "src/crossent/_cmetrics_width32.h"],
            extra_compile_args=flags + ([] if sys.platform == "win32" else ["-ffp-contract=off"]),
            optional=True,
        ),
    ]
)
