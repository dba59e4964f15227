/*
 * crossent._ckernels: fused CPU kernels for softmax cross-entropy.
 *
 * Why C: cross-entropy on logits is memory-bound in principle but compute-bound on exp in
 * practice (torch.compile and XLA reach 3-4 read passes on this class of machine). Here
 * each row is read once from memory; the second pass (the exp-sum) and the gradient pass
 * re-read it from L1/L2, and exp is a branch-free polynomial that the compiler vectorises
 * (AVX-512, AVX2 or NEON; function multi-versioning picks the best at load time).
 *
 * No -ffast-math: it would let the compiler assume there is no inf or NaN, and -inf logits
 * (masked classes) and NaN propagation are part of the library's contract. Selects
 * (x < lo ? 0 : y) are written so that a NaN input falls through to a NaN result.
 *
 * The Python side (crossent/_kernels.py) validates everything, converts targets to int64
 * (-1 marks an ignored row), weights and soft targets to the compute dtype, and computes
 * the per-row upstream gradient; the kernels trust their arguments.
 *
 * No NumPy C API: arrays arrive as raw addresses (NumPy's ctypes.data, torch's data_ptr()),
 * so the only build dependencies are a C compiler and the Python headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

enum { DT_F32 = 0, DT_F64 = 1, DT_BF16 = 2, DT_F16 = 3 };


/* No target_clones: the instruction set (and with it the vector width, CROSSENT_VBYTES)
 * is chosen per module at build time (setup.py) and the module at import
 * (crossent._kernels). */

#define INLINE static inline __attribute__((always_inline))

/* a * b + c rounded once, in every copy of an expression. With -ffp-contract=fast GCC
 * decides per inlined copy (and per vector body / scalar remainder) which product of
 * `a * b - c * d` to fuse; the same row computed by two callers (one thread's rows, the
 * threads' shares of a wide row) then differed in the last bit. Spelled out where a loop
 * mixes two products; without FMA hardware nothing is fused anyway. */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define FMA_T(a, b, c) _Generic((a), float: __builtin_fmaf, double: __builtin_fma)(a, b, c)
#else
#define FMA_T(a, b, c) ((a) * (b) + (c))
#endif

/* ---------------------------------------------------------------- bit casts */

INLINE uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
INLINE float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint64_t d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
INLINE double u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/* ------------------------------------------------------------- exp, float32
 * The argument reduction and the polynomials are macros shared by the scalar exps and the
 * vector exps of the row kernels (they only use + - *, which mean the same on both): the
 * two must give the same bits wherever both apply, so that a row's result never depends
 * on which of them computed it. */
#define LN2_HI_F32 0.693145751953125f
#define LN2_LO_F32 1.428606765330187e-06f
#define LN2_HI_F64 6.93147180369123816490e-01
#define LN2_LO_F64 1.90821492927058770002e-10
/* r = x - n ln2, ln2 split in two so that n * LN2_HI is exact */
#define EXP_REDUCE_F32(x, n) (((x) - (n) * LN2_HI_F32) - (n) * LN2_LO_F32)
#define EXP_REDUCE_F64(x, n) (((x) - (n) * LN2_HI_F64) - (n) * LN2_LO_F64)
/* e^r on |r| <= ln2/2 as 1 + r + r^2 P(r), P of degree 4 fitted for the least maximal
 * relative error (Lawson's iteration; 3e-9, 0.05 ulp) */
#define EXP_POLY_F32(r)                                                                  \
    ((((((r) * 0x1.6a243ep-10f + 0x1.1239d6p-7f) * (r) + 0x1.5558f2p-5f) * (r) +         \
       0x1.555492p-3f) * (r) + 0x1.fffffcp-2f) * (r) + 1.0f) * (r) + 1.0f
/* e^r by its Taylor series to r^13 (truncation far below a float64 ulp) */
#define EXP_POLY_F64(r)                                                                  \
    (((((((((((((r) * (1.0 / 6227020800.0) + 1.0 / 479001600.0) * (r) +                  \
              1.0 / 39916800.0) * (r) + 1.0 / 3628800.0) * (r) + 1.0 / 362880.0) * (r) +   \
           1.0 / 40320.0) * (r) + 1.0 / 5040.0) * (r) + 1.0 / 720.0) * (r) + 1.0 / 120.0) * \
        (r) + 1.0 / 24.0) * (r) + 1.0 / 6.0) * (r) + 0.5) * (r) + 1.0) * (r) + 1.0

/* exp in float32: x = (16 k + j) ln2/16 + r, |r| <= ln2/32, so e^x = 2^k 2^(j/16) e^r with
 * 2^(j/16) from a 16-entry table (one register: a vector lookup is one permute) and
 * e^r - 1 a degree-3 polynomial. Against a degree-6 polynomial on |r| <= ln2/2 this saves
 * three multiply-adds per element, and the multiply-add pipes are what bound the row
 * kernels. Error: the table entries' rounding (<= 0.5 ulp) and the final rounding; 0.99
 * ulp measured over every float32 input (benchmarks/exp_accuracy.py). */
#define LOG2E16_F32 0x1.715476p+4f /* 16 / ln2 */
/* ln2/16 split in two so that n * LN2_16_HI_F32 is exact for |n| < 2^12 (|x| < 177) */
#define LN2_16_HI_F32 0x1.62ep-5f
#define LN2_16_LO_F32 0x1.0bfbe8p-19f
#define EXP_REDUCE16_F32(x, n) (((x) - (n) * LN2_16_HI_F32) - (n) * LN2_16_LO_F32)
/* e^r - 1 on |r| <= ln2/32 as r + r^2 (c2 + c3 r), fitted for the least maximal relative
 * error of 1 + q (Lawson's iteration; 1.6e-9, 0.013 ulp) */
#define EXPM1_POLY16_F32(r) ((r) + ((r) * (r)) * ((r) * 0x1.55559ap-3f + 0x1.00022p-1f))
#define EXP2_16THS_F32                                                                   \
    {0x1p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f,             \
     0x1.3dea64p+0f, 0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f,      \
     0x1.8ace54p+0f, 0x1.9c4918p+0f, 0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f,      \
     0x1.ea4afap+0f}
static const float exp2_16ths_f32[16] = EXP2_16THS_F32;

/* exp_f32, expm1_f32 and tanh_f32 are written once as bodies over a float type FT (float
 * or a vector of floats) and its integer type IT, with SEL(c, a, b) for c ? a : b and AS_F /
 * AS_I for bit casts, and instantiated for both: the vector forms give the scalar forms'
 * bits by construction, and the compiler need not vectorise a table lookup (GCC emulates
 * the gather with scalar loads, which made the loops calling exp 40 % slower).
 *
 * exp: below -104 the result is 0 (also for -inf), above 88.72 it is inf; NaN stays NaN
 * because every select tests "x < lo" or "x > hi", which is false for NaN. The scale 2^k
 * is applied in two steps so that a result in the subnormal range is rounded there
 * (after the rounding of T (1 + q)). */
#define EXP_F32_BODY(FT, IT, SEL, AS_F, AS_I, TABLE)                                      \
    const FT hi = (FT){0} + 88.72283935546875f, lo = (FT){0} - 104.0f;                    \
    FT xc = SEL(x > hi, hi, x);                                                           \
    xc = SEL(xc < lo, lo, xc);                                                            \
    /* + 1.5 * 2^23 rounds to an integer n, which t's low bits then hold */               \
    FT t = xc * LOG2E16_F32 + 12582912.0f;                                                \
    FT n = t - 12582912.0f;                                                               \
    IT ni = AS_I(t) - 0x4b400000;                                                         \
    FT r = EXP_REDUCE16_F32(xc, n);                                                       \
    FT q = EXPM1_POLY16_F32(r);                                                           \
    FT tj = TABLE(ni);                                                                    \
    IT k = ni >> 4, k1 = k >> 1, k2 = k - k1;                                             \
    FT res = (tj * q + tj) * AS_F((k1 + 127) << 23) * AS_F((k2 + 127) << 23);             \
    res = SEL(x > hi, (FT){0} + INFINITY, res);                                           \
    return SEL(x < lo, (FT){0}, res);

/* expm1: tanh(u) = sign(u) * (-expm1(-2|u|)) / (2 + expm1(-2|u|)): no cancellation near
 * 0, because expm1 is evaluated by its own Taylor series where |x| < ln2/2. Beyond: x =
 * n ln2 + r, expm1(x) = 2^n expm1(r) + (2^n - 1), both terms exact enough (2^n - 1 is
 * exact for |n| <= 24) that no cancellation amplifies exp's error, as exp(x) - 1 would
 * (3 ulp near x = 0.37). Nested selects, not a conjunction of masks: GCC 12 computes a
 * vector select on combined masks lane by lane. */
/* (expm1(v) - v) / v^2 by its Taylor series to v^8 / 8!, Horner's scheme */
#define EXPM1_TAYLOR_F32(FT, v)                                                           \
    ((((((((FT){0} + 2.4801587642e-5f) * (v) + 1.9841270114e-4f) * (v) + 1.3888889225e-3f) * \
         (v) + 8.3333337680e-3f) * (v) + 4.1666667908e-2f) * (v) + 1.6666667163e-1f) *     \
      (v) + 0.5f)
#define EXPM1_F32_BODY(FT, IT, SEL, AS_F, AS_I, EXPF)                                     \
    FT p = EXPM1_TAYLOR_F32(FT, x);                                                       \
    FT small = x + x * x * p;                                                             \
    FT xc = SEL(x < -18.0f, (FT){0} - 18.0f, SEL(x > 20.0f, (FT){0} + 20.0f, x));        \
    FT t = xc * 1.44269504088896341f + 12582912.0f;                                       \
    FT n = t - 12582912.0f;                                                               \
    IT ni = AS_I(t) - 0x4b400000;                                                         \
    FT r = EXP_REDUCE_F32(xc, n);                                                         \
    FT q = EXPM1_TAYLOR_F32(FT, r);                                                       \
    FT em = r + r * r * q;                                                                \
    FT two = AS_F((ni + 127) << 23);                                                      \
    FT mid = two * em + (two - 1.0f);                                                     \
    FT res = SEL(x > -0.34657359f, SEL(x < 0.34657359f, small, mid), mid);                \
    res = SEL(x > 20.0f, EXPF(x) - 1.0f, res); /* the -1 is below half an ulp there */   \
    return SEL(x < -18.0f, (FT){0} - 1.0f, res); /* e^x below half an ulp of 1 */

/* tanh: away from 0, 1 - 2 / (e^2a + 1): the quotient is small there, so its error
 * shrinks in the difference (the expm1 form reaches 2.5 ulp near |u| = 4.5) */
#define TANH_F32_BODY(FT, SEL, EXPF, EXPM1F)                                              \
    FT a = SEL(u < 0.0f, -u, u);                                                          \
    FT e = EXPM1F(-2.0f * a);                                                             \
    FT t = -e / (2.0f + e);                                                               \
    t = SEL(a > 0.55f, 1.0f - 2.0f / (EXPF(2.0f * a) + 1.0f), t);                         \
    return SEL(u < 0.0f, -t, t);

INLINE float sel_s32(int c, float a, float b) { return c ? a : b; }
#define AS_F_S32(i) u2f((uint32_t)(i))
#define AS_I_S32(f) ((int32_t)f2u(f))
#define TABLE_S32(ni) exp2_16ths_f32[(ni) & 15]
INLINE float exp_f32(float x) { EXP_F32_BODY(float, int32_t, sel_s32, AS_F_S32, AS_I_S32, TABLE_S32) }

/* ------------------------------------------------------------- exp, float64 */
INLINE double exp_f64(double x) {
    const double hi = 709.782712893384, lo = -746.0;
    double xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double t = xc * 1.4426950408889634 + magic;
    double n = t - magic;
    int64_t ni = (int64_t)(d2u(t) - d2u(magic));
    double r = EXP_REDUCE_F64(xc, n);
    double p = EXP_POLY_F64(r);
    int64_t n1 = ni >> 1, n2 = ni - n1;
    double res = p * u2d((uint64_t)(n1 + 1023) << 52) * u2d((uint64_t)(n2 + 1023) << 52);
    res = x > hi ? INFINITY : res;
    res = x < lo ? 0.0 : res;
    return res;
}

/* ------------------------------------------------- expm1 and tanh (softcap) */
INLINE float expm1_f32(float x) { EXPM1_F32_BODY(float, int32_t, sel_s32, AS_F_S32, AS_I_S32, exp_f32) }

INLINE double expm1_f64(double x) {
    double p = 1.0 / 6227020800.0;
    p = p * x + 1.0 / 479001600.0;
    p = p * x + 1.0 / 39916800.0;
    p = p * x + 1.0 / 3628800.0;
    p = p * x + 1.0 / 362880.0;
    p = p * x + 1.0 / 40320.0;
    p = p * x + 1.0 / 5040.0;
    p = p * x + 1.0 / 720.0;
    p = p * x + 1.0 / 120.0;
    p = p * x + 1.0 / 24.0;
    p = p * x + 1.0 / 6.0;
    p = p * x + 0.5;
    double small = x + x * x * p;
    double big = exp_f64(x) - 1.0;
    return (x > -0.34657359027997264 && x < 0.34657359027997264) ? small : big;
}

INLINE float tanh_f32(float u) { TANH_F32_BODY(float, sel_s32, exp_f32, expm1_f32) }

INLINE double tanh_f64(double u) {
    double a = u < 0.0 ? -u : u;
    double e = expm1_f64(-2.0 * a);
    double t = -e / (2.0 + e);
    return u < 0.0 ? -t : t;
}

/* ------------------------------------------------------------ log and log1p
 * u = 2^k f with f in [sqrt(1/2), sqrt(2)); log f = 2 atanh(g), g = (f - 1) / (f + 1),
 * |g| <= 0.1716, by its odd series (truncation below 0.01 ulp); k ln2 is added with ln2
 * split in two so that the sum is exact to the last bit. log1p(x) = log(1 + x) plus the
 * first-order correction for the rounding of 1 + x. Special values by select: log(0) =
 * -inf, log(x < 0) = NaN, log(inf) = inf, NaN stays NaN. */
INLINE float log_f32(float u) {
    const float tiny = 1.17549435e-38f; /* FLT_MIN: below it, rescale the subnormal */
    float us = u < tiny ? u * 8388608.0f : u;
    int32_t kadj = u < tiny ? -23 : 0;
    uint32_t bits = f2u(us);
    int32_t k = (int32_t)((bits >> 23) & 0xff) - 127 + kadj;
    float f = u2f((bits & 0x007fffffu) | 0x3f800000u); /* [1, 2) */
    int big = f > 1.41421356f;
    f = big ? f * 0.5f : f;
    k = big ? k + 1 : k;
    float g = (f - 1.0f) / (f + 1.0f);
    float s = g * g;
    float p = 0.11111111f;
    p = p * s + 0.14285715f;
    p = p * s + 0.2f;
    p = p * s + 0.33333334f;
    float logf_ = 2.0f * g + 2.0f * g * s * p;
    float kf = (float)k;
    float res = kf * LN2_HI_F32 + (kf * LN2_LO_F32 + logf_);
    res = u == 0.0f ? -INFINITY : res;
    res = u < 0.0f ? NAN : res;
    res = u == INFINITY ? INFINITY : res;
    res = u != u ? u : res;
    return res;
}

INLINE float log1p_f32(float x) {
    /* near 0 (1 + x within [sqrt(1/2), sqrt(2))): the series in g = x / (2 + x) directly,
       which needs no correction; elsewhere log(1 + x) corrected for the rounding of 1 + x */
    float g = x / (2.0f + x);
    float s = g * g;
    float p = 0.11111111f;
    p = p * s + 0.14285715f;
    p = p * s + 0.2f;
    p = p * s + 0.33333334f;
    float near = 2.0f * g + 2.0f * g * s * p;
    float u = 1.0f + x;
    float far = log_f32(u) + (x - (u - 1.0f)) / u;
    float res = (x > -0.29289322f && x < 0.41421356f) ? near : far;
    res = u == 0.0f ? -INFINITY : res;
    res = x == INFINITY ? INFINITY : res;
    return res;
}

INLINE double log_f64(double u) {
    const double tiny = 2.2250738585072014e-308;
    double us = u < tiny ? u * 4503599627370496.0 : u; /* 2^52 */
    int64_t kadj = u < tiny ? -52 : 0;
    uint64_t bits = d2u(us);
    int64_t k = (int64_t)((bits >> 52) & 0x7ff) - 1023 + kadj;
    double f = u2d((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
    int big = f > 1.4142135623730951;
    f = big ? f * 0.5 : f;
    k = big ? k + 1 : k;
    double g = (f - 1.0) / (f + 1.0);
    double s = g * g;
    double p = 1.0 / 21.0;
    p = p * s + 1.0 / 19.0;
    p = p * s + 1.0 / 17.0;
    p = p * s + 1.0 / 15.0;
    p = p * s + 1.0 / 13.0;
    p = p * s + 1.0 / 11.0;
    p = p * s + 1.0 / 9.0;
    p = p * s + 1.0 / 7.0;
    p = p * s + 1.0 / 5.0;
    p = p * s + 1.0 / 3.0;
    double logf_ = 2.0 * g + 2.0 * g * s * p;
    double kf = (double)k;
    double res = kf * LN2_HI_F64 + (kf * LN2_LO_F64 + logf_);
    res = u == 0.0 ? -INFINITY : res;
    res = u < 0.0 ? NAN : res;
    res = u == INFINITY ? INFINITY : res;
    res = u != u ? u : res;
    return res;
}

INLINE double log1p_f64(double x) {
    double g = x / (2.0 + x);
    double s = g * g;
    double p = 1.0 / 21.0;
    p = p * s + 1.0 / 19.0;
    p = p * s + 1.0 / 17.0;
    p = p * s + 1.0 / 15.0;
    p = p * s + 1.0 / 13.0;
    p = p * s + 1.0 / 11.0;
    p = p * s + 1.0 / 9.0;
    p = p * s + 1.0 / 7.0;
    p = p * s + 1.0 / 5.0;
    p = p * s + 1.0 / 3.0;
    double near = 2.0 * g + 2.0 * g * s * p;
    double u = 1.0 + x;
    double far = log_f64(u) + (x - (u - 1.0)) / u;
    double res = (x > -0.2928932188134524 && x < 0.41421356237309515) ? near : far;
    res = u == 0.0 ? -INFINITY : res;
    res = x == INFINITY ? INFINITY : res;
    return res;
}

/* --------------------------------------------------- 16-bit loads and stores */
INLINE float bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

INLINE uint16_t f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16; /* round to nearest even */
    return (f != f) ? (uint16_t)0x7FC0 : (uint16_t)rounded;
}

#if defined(__FLT16_MAX__)
typedef _Float16 f16_t;
INLINE float f16_to_f32(uint16_t h) { f16_t v; memcpy(&v, &h, 2); return (float)v; }
INLINE uint16_t f32_to_f16(float f) { f16_t v = (f16_t)f; uint16_t h; memcpy(&h, &v, 2); return h; }
#define HAVE_F16 1
#else
#define HAVE_F16 0
#endif

/* ------------------------------------------------------------ vector code
 * The hot loops (max and exp-sum along a row) are written with GCC/Clang generic vectors
 * one register wide (CROSSENT_VBYTES below). Written by hand rather
 * than left to the auto-vectoriser because the fast loop needs a masked tail, a block
 * structure and selects that GCC otherwise compiles to scalar code (it did: 1000+ scalar
 * instructions in the row kernel, and ~2x the time of these loops). */
#if defined(__GNUC__)
#define HAVE_VEC 1
/* The vector width: the register width of the instruction set the module is compiled for
 * (setup.py builds one module per x86-64 level: 64 bytes for AVX-512, 32 for AVX2, 16
 * for the baseline and for NEON). GCC 12 computes comparisons and selects of vectors wider
 * than the target's registers lane by lane: one 64-byte source multiversioned for AVX2 ran
 * 10x slower than for AVX-512. */
#ifndef CROSSENT_VBYTES
#define CROSSENT_VBYTES 64
#endif
#define VB CROSSENT_VBYTES
#define L32 (VB / 4) /* float lanes */
#define L64 (VB / 8) /* double lanes */
typedef float vf32 __attribute__((vector_size(VB)));
typedef int32_t vi32 __attribute__((vector_size(VB)));
typedef double vf64 __attribute__((vector_size(VB)));
typedef int64_t vi64 __attribute__((vector_size(VB)));
typedef float vf32h __attribute__((vector_size(VB / 2)));

/* a ? x : y, lane by lane (C has no ?: on vectors); the compiler emits a blend */
INLINE vf32 sel_f32(vi32 a, vf32 x, vf32 y) { return (vf32)((a & (vi32)x) | (~a & (vi32)y)); }
INLINE vf64 sel_f64(vi64 a, vf64 x, vf64 y) { return (vf64)((a & (vi64)x) | (~a & (vi64)y)); }

/* a > b ? a : b and a < b ? a : b, lane by lane (NaN in either: b). One instruction where
 * the ISA's max/min has exactly these semantics (x86's MAXPS/MINPS return the second
 * operand unless the first is greater/less); GCC 12 compiles the select itself to a
 * compare and two masked xors (pass 1 of the forward took 11 instructions per vector). */
#if VB == 64 && defined(__AVX512F__)
#define X86_MM(op, sfx) _mm512_##op##_##sfx
#define X86_PS __m512
#define X86_PD __m512d
#elif VB == 32 && defined(__AVX__)
#define X86_MM(op, sfx) _mm256_##op##_##sfx
#define X86_PS __m256
#define X86_PD __m256d
#elif VB == 16 && defined(__SSE2__)
#define X86_MM(op, sfx) _mm_##op##_##sfx
#define X86_PS __m128
#define X86_PD __m128d
#endif
#ifdef X86_MM
INLINE vf32 maxk_f32(vf32 a, vf32 b) { return (vf32)X86_MM(max, ps)((X86_PS)a, (X86_PS)b); }
INLINE vf32 mink_f32(vf32 a, vf32 b) { return (vf32)X86_MM(min, ps)((X86_PS)a, (X86_PS)b); }
INLINE vf64 maxk_f64(vf64 a, vf64 b) { return (vf64)X86_MM(max, pd)((X86_PD)a, (X86_PD)b); }
INLINE vf64 mink_f64(vf64 a, vf64 b) { return (vf64)X86_MM(min, pd)((X86_PD)a, (X86_PD)b); }
#else
INLINE vf32 maxk_f32(vf32 a, vf32 b) { return sel_f32(a > b, a, b); }
INLINE vf32 mink_f32(vf32 a, vf32 b) { return sel_f32(a < b, a, b); }
INLINE vf64 maxk_f64(vf64 a, vf64 b) { return sel_f64(a > b, a, b); }
INLINE vf64 mink_f64(vf64 a, vf64 b) { return sel_f64(a < b, a, b); }
#endif
/* The split exp-sum's step: e into *rest, or (where s == 0, a maximal term) 1 into *top.
 * With AVX-512 two masked adds (a lane left as it is = adding the generic form's +0: the
 * same bits); the generic selects compiled to a masked move and a masked broadcast more,
 * two of the ~22 instructions per vector of the tiles' exp-sum loop. */
#if VB == 64 && defined(__AVX512F__)
INLINE void split_add_f32(vf32 s, vf32 e, vf32 *rest, vf32 *top) {
    const __mmask16 k = _mm512_cmpeq_ps_mask((__m512)s, _mm512_setzero_ps());
    *rest = (vf32)_mm512_mask_add_ps((__m512)*rest, (__mmask16)~k, (__m512)*rest, (__m512)e);
    *top = (vf32)_mm512_mask_add_ps((__m512)*top, k, (__m512)*top, _mm512_set1_ps(1.0f));
}
INLINE void split_add_f64(vf64 s, vf64 e, vf64 *rest, vf64 *top) {
    const __mmask8 k = _mm512_cmpeq_pd_mask((__m512d)s, _mm512_setzero_pd());
    *rest = (vf64)_mm512_mask_add_pd((__m512d)*rest, (__mmask8)~k, (__m512d)*rest, (__m512d)e);
    *top = (vf64)_mm512_mask_add_pd((__m512d)*top, k, (__m512d)*top, _mm512_set1_pd(1.0));
}
#else
INLINE void split_add_f32(vf32 s, vf32 e, vf32 *rest, vf32 *top) {
    const vi32 is_top = s == (vf32){0};
    *rest += sel_f32(is_top, (vf32){0}, e);
    *top += sel_f32(is_top, (vf32){0} + 1, (vf32){0});
}
INLINE void split_add_f64(vf64 s, vf64 e, vf64 *rest, vf64 *top) {
    const vi64 is_top = s == (vf64){0};
    *rest += sel_f64(is_top, (vf64){0}, e);
    *top += sel_f64(is_top, (vf64){0} + 1, (vf64){0});
}
#endif

/* 2^(j/16) for j = i mod 16, lane by lane: one permute of a register holding the table
 * (16 lanes), two of two halves (8 lanes), loads elsewhere */
INLINE vf32 table16_f32(vi32 i) {
#if L32 == 16 && !defined(__clang__)
    const vf32 table = EXP2_16THS_F32;
    return __builtin_shuffle(table, i); /* the index is taken modulo 16 */
#elif L32 == 8 && !defined(__clang__)
    const vf32 lo = {0x1p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f,
                     0x1.3dea64p+0f, 0x1.4bfdaep+0f, 0x1.5ab07ep+0f};
    const vf32 hi = {0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
                     0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};
    return __builtin_shuffle(lo, hi, i); /* two inputs: the index is taken modulo 16 */
#else
    vf32 r;
    for (int j = 0; j < L32; j++) r[j] = exp2_16ths_f32[i[j] & 15];
    return r;
#endif
}

/* exp(s) for s <= 0 (and NaN, and -inf), cheaper than exp_f32: no upper clamp, one select
 * less, and the scale 2^k applied in one step.
 *
 * With AVX-512 the scale is scalef (x 2^floor(n / 16) = 2^k), which rounds once into the
 * subnormal range, as exp_f32's two multiplies by 2^k1 and 2^k2 do after T (1 + q) is
 * rounded: this is then exp_f32, bit for bit, for every s <= 0 (checked exhaustively; below
 * -104, where exp_f32 returns 0, the clamp gives exp_f32(-104), which is 0 as well), and
 * pass 1 need not find each block's least value to know that the fast exp applies.
 *
 * Elsewhere k goes into T's exponent with an integer add: the same bits as exp_f32 for
 * s >= -87 (every result normal), 0 for s <= -88.03, -inf included; between -88.03 and -87
 * a result below 2^-126 may be inexact, so the row kernels call it only on blocks whose
 * finite values all lie above -87 (see FAST_EXP_MIN). The clamp there is at -2032 ln2/16,
 * where the table index is 0 and k = -127: T 2^k is then exactly 0 as bits,
 * 0x3f800000 - (127 << 23). (A select used only as a select: GCC 12 computed a select
 * whose mask it could merge with another one lane by lane.) */
#if L32 == 16 && defined(__AVX512F__)
#define EXPNEG_EXACT_F32 1
#define EXPNEG_LO_F32 (-104.0f)
#else
#define EXPNEG_EXACT_F32 0
#define EXPNEG_LO_F32 (-0x1.601e68p+6f)
#endif
INLINE vf32 vexp_neg_f32(vf32 s) {
    s = maxk_f32((vf32){0} + EXPNEG_LO_F32, s); /* NaN: not below lo, stays NaN */
    const float magic = 12582912.0f;
    vf32 t = s * LOG2E16_F32 + magic;
    vf32 n = t - magic;
    vf32 r = EXP_REDUCE16_F32(s, n);
    vf32 q = EXPM1_POLY16_F32(r);
    vi32 ti = (vi32)t; /* t's low bits hold n = 16 k + j */
    vf32 tj = table16_f32(ti);
#if EXPNEG_EXACT_F32
    return (vf32)_mm512_scalef_ps((__m512)(tj * q + tj), (__m512)(n * 0.0625f));
#elif defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    /* T 2^k by adding k to T's exponent: (ti << 19) keeps n's bits from bit 19 up, the
       mask drops j's; exact while k >= -126 (s > -87.34). T 2^k (1 + q) is then one
       fused multiply-add, rounded once as exp_f32's T (1 + q) is. */
    vf32 ts = (vf32)((vi32)tj + ((ti << 19) & (int32_t)0xff800000));
    return ts * q + ts;
#else
    /* without a fused multiply-add, T 2^k q would round in the subnormal range where
       exp_f32's T q does not: scale after, by 2^k built in one step (0 for k = -127) */
    return (tj * q + tj) * (vf32)(((ti >> 4) + 127) << 23);
#endif
}

/* exp_f32, expm1_f32 and tanh_f32 lane by lane, with their bits (see EXP_F32_BODY) */
#define AS_F_V32(i) ((vf32)(i))
#define AS_I_V32(f) ((vi32)(f))
#define TABLE_V32(ni) table16_f32(ni)
INLINE vf32 vexp_f32(vf32 x) { EXP_F32_BODY(vf32, vi32, sel_f32, AS_F_V32, AS_I_V32, TABLE_V32) }
INLINE vf32 vexpm1_f32(vf32 x) { EXPM1_F32_BODY(vf32, vi32, sel_f32, AS_F_V32, AS_I_V32, vexp_f32) }
INLINE vf32 vtanh_f32(vf32 u) { TANH_F32_BODY(vf32, sel_f32, vexp_f32, vexpm1_f32) }

/* the same for float64: with AVX-512 exp_f64's bits for every s <= 0 (0 below -746);
 * elsewhere one rounding for s >= -708, 0 for s <= -709 (n = -1023) */
#if L64 == 8 && defined(__AVX512F__)
#define EXPNEG_EXACT_F64 1
#define EXPNEG_LO_F64 (-746.0)
#else
#define EXPNEG_EXACT_F64 0
#define EXPNEG_LO_F64 (-709.0)
#endif
INLINE vf64 vexp_neg_f64(vf64 s) {
    s = maxk_f64((vf64){0} + EXPNEG_LO_F64, s);
    const double magic = 6755399441055744.0;
    vf64 t = s * 1.4426950408889634 + magic;
    vf64 n = t - magic;
    vf64 r = EXP_REDUCE_F64(s, n);
    vf64 p = EXP_POLY_F64(r);
#if EXPNEG_EXACT_F64
    return (vf64)_mm512_scalef_pd((__m512d)p, (__m512d)n);
#else
    vi64 scale = ((vi64)t << 52) + 0x3ff0000000000000LL;
    return p * (vf64)scale;
#endif
}

/* horizontal reductions: a tree of halvings, log2(lanes) steps (no NaN reaches them).
 * Each step adds (or takes the max of) the upper half onto the lower through memory-free
 * half-width views. */
#define VMAX(SEL, a, b) SEL((a) > (b), (a), (b))
#define VMIN(SEL, a, b) SEL((a) < (b), (a), (b))
#define MAX_S(a, b) ((a) > (b) ? (a) : (b))
#define MIN_S(a, b) ((a) < (b) ? (a) : (b))
#define ADD(a, b) ((a) + (b))
#define MAX_F32(a, b) VMAX(sel_f32, a, b)
#define MIN_F32(a, b) VMIN(sel_f32, a, b)
#define MAX_F64(a, b) VMAX(sel_f64, a, b)
#define MIN_F64(a, b) VMIN(sel_f64, a, b)
/* fold the lanes of v (an array of n, a power of two) with OP: halves, then pairs... */
#define HFOLD(T, n, v, OP)                                                                 \
    T t_[n];                                                                              \
    memcpy(t_, &(v), sizeof t_);                                                          \
    for (int w_ = (n) / 2; w_ >= 1; w_ /= 2)                                              \
        for (int j_ = 0; j_ < w_; j_++) t_[j_] = OP(t_[j_], t_[j_ + w_]);                 \
    return t_[0];
#if VB == 64 && defined(__AVX512F__)
/* GCC's reductions fold in registers in the same order (upper half onto the lower, then
 * quarters, then pairs): the same bits, without the trip through the stack that the
 * generic fold takes (three per row: a few percent of the forward at C = 1000) */
INLINE float hmax_f32(vf32 v) { return _mm512_reduce_max_ps((__m512)v); }
INLINE float hmin_f32(vf32 v) { return _mm512_reduce_min_ps((__m512)v); }
INLINE float hsum_f32(vf32 v) { return _mm512_reduce_add_ps((__m512)v); }
INLINE double hmax_f64(vf64 v) { return _mm512_reduce_max_pd((__m512d)v); }
INLINE double hmin_f64(vf64 v) { return _mm512_reduce_min_pd((__m512d)v); }
INLINE double hsum_f64(vf64 v) { return _mm512_reduce_add_pd((__m512d)v); }
#else
INLINE float hmax_f32(vf32 v) { HFOLD(float, L32, v, MAX_S) }
INLINE float hmin_f32(vf32 v) { HFOLD(float, L32, v, MIN_S) }
INLINE float hsum_f32(vf32 v) { HFOLD(float, L32, v, ADD) }
INLINE double hmax_f64(vf64 v) { HFOLD(double, L64, v, MAX_S) }
INLINE double hmin_f64(vf64 v) { HFOLD(double, L64, v, MIN_S) }
INLINE double hsum_f64(vf64 v) { HFOLD(double, L64, v, ADD) }
#endif
/* whether any lane of a comparison is true: one test instruction where the ISA has it
 * (the generic OR over the lanes compiled to ~12 extracts and ORs, and pass 2 asks twice
 * per block of SUM_BLOCK classes) */
INLINE int any_i64(vi64 x) {
#if VB == 64 && defined(__AVX512F__)
    return _mm512_test_epi64_mask((__m512i)x, (__m512i)x) != 0;
#elif VB == 32 && defined(__AVX__)
    return !_mm256_testz_si256((__m256i)x, (__m256i)x);
#elif VB == 16 && defined(__SSE2__)
    return _mm_movemask_epi8((__m128i)x) != 0;
#else
    int64_t t[L64], r = 0;
    memcpy(t, &x, sizeof t);
    for (int j = 0; j < L64; j++) r |= t[j];
    return r != 0;
#endif
}
INLINE int any_i32(vi32 m) { return any_i64((vi64)m); }
/* 0, 1, 2, ... lane by lane (constant-folded) */
INLINE vi32 iota_i32(void) { vi32 v; for (int j = 0; j < L32; j++) v[j] = j; return v; }
INLINE vi64 iota_i64(void) { vi64 v; for (int j = 0; j < L64; j++) v[j] = j; return v; }

#if L32 == 16
/* a 16 x 16 transpose in registers: four rounds of two-input shuffles, each swapping
 * the off-diagonal blocks of size 8, 4, 2, 1 (a[i][j] <-> a[j][i]) */
INLINE void transpose16_f32(vf32 a[16]) {
    for (int i = 0; i < 16; i++)
        if (!(i & 8)) {
            vf32 x = a[i], y = a[i + 8];
            a[i] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
            a[i + 8] = __builtin_shufflevector(x, y, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
        }
    for (int i = 0; i < 16; i++)
        if (!(i & 4)) {
            vf32 x = a[i], y = a[i + 4];
            a[i] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
            a[i + 4] = __builtin_shufflevector(x, y, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
        }
    for (int i = 0; i < 16; i++)
        if (!(i & 2)) {
            vf32 x = a[i], y = a[i + 2];
            a[i] = __builtin_shufflevector(x, y, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
            a[i + 2] = __builtin_shufflevector(x, y, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
        }
    for (int i = 0; i < 16; i++)
        if (!(i & 1)) {
            vf32 x = a[i], y = a[i + 1];
            a[i] = __builtin_shufflevector(x, y, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
            a[i + 1] = __builtin_shufflevector(x, y, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
        }
}

#endif

/* block sums are added in double: the float32 lanes sum at most SUM_BLOCK / L32 terms */
INLINE void widen_add_f32(vf64 acc[2], vf32 v) {
    /* the halves by shuffles or casts, not memcpy: a memcpy from part of v made GCC keep
       the block sums that v comes from in memory, a store-to-load chain through the stack
       on every step of the exp loop; and one conversion per half (GCC 12 converts a
       generic half in quarters) */
#if VB == 64 && defined(__AVX512F__)
    const __m512 x = (__m512)v;
    acc[0] += (vf64)_mm512_cvtps_pd(_mm512_castps512_ps256(x));
    acc[1] += (vf64)_mm512_cvtps_pd((__m256)_mm512_extractf64x4_pd((__m512d)x, 1));
#elif VB == 32 && defined(__AVX__)
    const __m256 x = (__m256)v;
    acc[0] += (vf64)_mm256_cvtps_pd(_mm256_castps256_ps128(x));
    acc[1] += (vf64)_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
#else
#if L32 == 16
    vf32h lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    vf32h hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#elif L32 == 8
    vf32h lo = __builtin_shufflevector(v, v, 0, 1, 2, 3);
    vf32h hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
    vf32h lo = __builtin_shufflevector(v, v, 0, 1);
    vf32h hi = __builtin_shufflevector(v, v, 2, 3);
#endif
    acc[0] += __builtin_convertvector(lo, vf64);
    acc[1] += __builtin_convertvector(hi, vf64);
#endif
}
INLINE void widen_add_f64(vf64 acc[2], vf64 v) { acc[0] += v; }

/* A gradient at least this big is written with streaming (non-temporal) stores: it does
 * not fit the caches anyway, and a plain store first reads each line from memory (read
 * for ownership), so that writing 1 GB moved 2 GB. Measured: loss + gradient of 8192 x
 * 32000 float32 ~25 % faster. Smaller ones stay cached for whoever reads them next. */
/* the gradient pass works through a row in chunks of this many bytes of float32/64
 * values (a few KB: computed, then written out while in L1) */
#define GRAD_CHUNK_BYTES 4096
#ifndef STREAM_MIN_BYTES
#define STREAM_MIN_BYTES ((size_t)16 << 20)
#endif

/* memcpy(dst, src, n) with streaming stores for the aligned middle where the ISA has them;
 * STREAM_FENCE() orders them before the results are handed over (end of a thread's part) */
INLINE void stream_copy(char *dst, const char *src, size_t n) {
#if VB == 64 && defined(__AVX512F__)
#define STREAM_VEC(d, s) _mm512_stream_si512((void *)(d), _mm512_loadu_si512((const void *)(s)))
#elif VB == 32 && defined(__AVX__)
#define STREAM_VEC(d, s) _mm256_stream_si256((__m256i *)(d), _mm256_loadu_si256((const __m256i *)(s)))
#elif VB == 16 && defined(__SSE2__)
#define STREAM_VEC(d, s) _mm_stream_si128((__m128i *)(d), _mm_loadu_si128((const __m128i *)(s)))
#endif
#ifdef STREAM_VEC
    size_t head = (size_t)(-(uintptr_t)dst) % VB;
    if (head > n) head = n;
    memcpy(dst, src, head);
    size_t i = head;
    for (; i + VB <= n; i += VB) STREAM_VEC(dst + i, src + i);
    memcpy(dst + i, src + i, n - i);
#undef STREAM_VEC
#else
    memcpy(dst, src, n);
#endif
}
#if defined(__SSE__) || defined(__x86_64__)
#define STREAM_FENCE() _mm_sfence()
#else
#define STREAM_FENCE() __sync_synchronize()
#endif

/* VL consecutive elements of a row as a compute vector; _tail: the first n, then fill */
#define DEFINE_VLOAD(NAME, VT, T, VL, LOADER)                                            \
    INLINE VT NAME(const char *row, Py_ssize_t c) {                                      \
        T t[VL];                                                                         \
        for (int j = 0; j < VL; j++) t[j] = LOADER(row, c + j);                          \
        VT v;                                                                            \
        memcpy(&v, t, sizeof v);                                                         \
        return v;                                                                        \
    }                                                                                    \
    INLINE VT NAME##_tail(const char *row, Py_ssize_t c, int n, T fill) {                \
        T t[VL];                                                                         \
        for (int j = 0; j < VL; j++) t[j] = j < n ? LOADER(row, c + j) : fill;           \
        /* the barrier makes the vector a plain load: seeing it built lane by lane, GCC    \
           computed everything downstream lane by lane too (a scalar compare and select  \
           per lane in the row's last vector, ~250 ns per row) */                        \
        __asm__ volatile("" : : "r"(t) : "memory");                                      \
        VT v;                                                                            \
        memcpy(&v, t, sizeof v);                                                         \
        return v;                                                                        \
    }
#else
#define HAVE_VEC 0
#endif

/* ------------------------------------------------------------- the problem */
typedef struct {
    int dtype;              /* DT_*: the logits' (and gradient's) storage type */
    const char *x;          /* logits, rows of n_cols contiguous elements */
    Py_ssize_t n_rows, n_cols, row_stride; /* row_stride in elements */
    const int64_t *y;       /* class index per row, -1 = ignored; NULL with soft targets */
    const char *q;          /* soft targets (compute dtype), contiguous rows; or NULL */
    const char *w;          /* class weights (compute dtype) or NULL */
    double label_smoothing, z_loss, softcap; /* softcap 0 = none */
    double w_sum;           /* sum of w (or n_cols) */
    char *loss, *lse;       /* per-row outputs (compute dtype) */
    const char *g;          /* per-row upstream gradient (compute dtype), or NULL: no grad */
    Py_ssize_t g_stride;    /* elements between rows' g; 0: one value for every row (a
                               reduced loss's 1/N), so no N-sized array is built per call */
    const char *lse_in;     /* per-row lse from the forward pass (compute dtype), or NULL:
                               then the gradient needs no max/sum pass (autograd backward) */
    char *grad;             /* gradient (storage dtype), rows of n_cols, stride grad_stride */
    Py_ssize_t grad_stride;
    int n_threads;
    Py_ssize_t wide_min;    /* fewer rows than threads: split the class axis when every
                               thread gets at least this many classes */
    int stream;             /* write the gradient with streaming stores (stream_copy) */
    int64_t y_lo;           /* the least valid label: -1 (ignored rows allowed) or 0 */
    Py_ssize_t inner;       /* 0: rows of n_cols contiguous classes (row_stride apart). > 0:
                               the planar layout (N, C, S) of C-contiguous logits and
                               gradient, class axis in the middle (PyTorch's (N, C, d...)):
                               row r = n * S + s, its class c at n * C * S + c * S + s,
                               S = inner; tiles only, class-index targets only */
} Problem;

/* the planar layout's element offset of (row r, class 0); the row's class c is c * inner
 * elements further, and the next rows of the same n follow contiguously */
static inline size_t planar_base(const Problem *pb, Py_ssize_t r) {
    const Py_ssize_t n = r / pb->inner, s = r - n * pb->inner;
    return (size_t)n * (size_t)pb->n_cols * (size_t)pb->inner + (size_t)s;
}

#include "_ckernels_pool.h"

/* One row of the wide mode (WIDE_ROWS): what the phases share. */
typedef struct WideJob {
    const Problem *pb;
    Py_ssize_t r;
    int nt, phase, general, wsum;
    void *zbuf, *ebuf, *stats, *bsum, *bw; /* whole-row and per-block scratch */
    double m, row_max, pc, gr, target;
} WideJob;

typedef struct {
    WideJob *job;
    void (*fn)(WideJob *, int);
    Py_ssize_t next;
} WideRun;

static void wide_share(void *ctx, int tid) {
    WideRun *w = (WideRun *)ctx;
    Py_ssize_t share;
    (void)tid;
    while ((share = pool_claim(&w->next, w->job->nt)) >= 0) w->fn(w->job, (int)share);
    if (w->job->pb->stream) STREAM_FENCE();
}

/* run fn(job, share) for share = 0 .. nt - 1 (the class axis' shares), on the threads */
static void wide_run(WideJob *job, void (*fn)(WideJob *, int)) {
    WideRun w = {job, fn, 0};
    pool_run(job->nt, wide_share, &w);
}

static inline size_t elsize(int dtype) { return dtype == DT_F64 ? 8 : dtype == DT_F32 ? 4 : 2; }

typedef struct {
    int dtype;
    const char *x;
    Py_ssize_t n_rows, n_cols, row_stride;
    int probs;              /* 1: x holds probabilities (log taken), 0: log-probabilities */
    double clip;            /* probabilities clipped to [clip, 1 - clip] (0: none) */
    const int64_t *y;       /* class index per row, -1 = ignored; or NULL with soft targets */
    const char *q;          /* soft targets (compute dtype), contiguous rows; or NULL */
    const char *w;          /* class weights (compute dtype) or NULL */
    double label_smoothing;
    char *loss;
    int n_threads;
} NllProblem;

/* Rows split into items of `rows` rows, claimed by the threads (pool_run). */
typedef struct {
    const Problem *pb;
    Py_ssize_t rows, n_items, next;
    Py_ssize_t first_bad; /* the least row with a label outside [-1, C), or -1 */
    int failed;
} RowsJob;

/* Keep the least bad row any thread found in *slot (-1: none yet). */
static void note_first_bad(Py_ssize_t *slot, Py_ssize_t bad) {
    Py_ssize_t seen = __atomic_load_n(slot, __ATOMIC_RELAXED);
    while ((seen < 0 || bad < seen) &&
           !__atomic_compare_exchange_n(slot, &seen, bad, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* The kernels index a row by its label, so a label outside [-1, C) (-1: ignored) would
 * read outside the row. Every caller validates labels first; this check turns a slip
 * there (one happened: uint8 labels wrapped to 255) into an error instead of a wild read.
 * A caller whose labels must all be class indices asks for [0, C) (y_lo = 0) and need not
 * scan them itself (the torch plain path). The first loop has no branch, so it
 * vectorises: a compare per row, next to a row's C loads. Returns the first bad row of
 * [r0, r1), or -1. */
static Py_ssize_t first_bad_label(const Problem *pb, Py_ssize_t r0, Py_ssize_t r1) {
    const int64_t *y = pb->y;
    const uint64_t lo = (uint64_t)pb->y_lo, span = (uint64_t)pb->n_cols - lo;
    uint64_t any = 0;
    for (Py_ssize_t r = r0; r < r1; r++) any |= (uint64_t)y[r] - lo >= span;
    if (!any) return -1;
    for (Py_ssize_t r = r0; r < r1; r++)
        if ((uint64_t)y[r] - lo >= span) return r;
    return -1;
}

/*
 * The row kernel, written once for float (f32/bf16/f16 storage) and once for double.
 * LOAD(i) reads element i of the current row as the compute type; STORE(i, v) writes the
 * gradient. Pass 1 reads the row from memory (softcap applied and kept in `zbuf`);
 * pass 2 re-reads it from cache for the exp-sum, keeping the maximal terms out of the sum
 * (lse = m + log1p(rest + (top - 1)), as crossent._reference does); pass 3 writes the
 * gradient from the exponentials pass 2 left in `ebuf`.
 */
/* Compensated (Neumaier) sum in double of per-block partial sums. */
typedef struct {
    double s, c;
} Sum;
INLINE void sum_add(Sum *a, double x) {
    double t = a->s + x;
    if (fabs(a->s) >= fabs(x)) a->c += (a->s - t) + x;
    else a->c += (x - t) + a->s;
    a->s = t;
}
INLINE double sum_value(const Sum *a) {
    /* inf/NaN: the compensation is meaningless (inf - inf), the plain sum is right */
    return isfinite(a->s) ? a->s + a->c : a->s;
}
/* Terms per vectorised partial sum: 16 per float32 lane before the block's sum is added in
 * double (error at most 15 roundings of a sum of exps <= 16), so 256 with AVX-512. A block
 * costs some fixed work (two statistics vectors, two tests, the widening): 256 instead of
 * 128 made the AVX-512 forward 6-13 % faster. */
#ifndef SUM_BLOCK
#define SUM_BLOCK (16 * L32)
#endif
/* EPI_BYTES / sizeof(T) rows are finished together (a vector lane each, _ckernels_rows.h
 * EPI_RUN); with the gradient, as many as keep their exponentials within EPI_GRAD_BYTES */
#define EPI_BYTES 64
#ifndef EPI_GRAD_BYTES
#define EPI_GRAD_BYTES (8 * 1024)
#endif
/* the elements of one row's slot in ebuf: whole 64-byte lines */
static Py_ssize_t epi_slot(Py_ssize_t n_cols, size_t esz) {
    const Py_ssize_t per_line = 64 / (Py_ssize_t)esz;
    return (n_cols + per_line - 1) / per_line * per_line;
}
/* rows per batch with the gradient (1: rows finished one at a time) */
static int epi_grad_rows(Py_ssize_t n_cols, size_t esz) {
    const Py_ssize_t n = EPI_GRAD_BYTES / ((n_cols > 0 ? n_cols : 1) * (Py_ssize_t)esz);
    const Py_ssize_t most = EPI_BYTES / (Py_ssize_t)esz;
    return n < 1 ? 1 : (n > most ? (int)most : (int)n);
}
#ifndef PIPELINE_MIN_BYTES
#define PIPELINE_MIN_BYTES 16384 /* rows this long overlap their gradient pass with the next row */
#endif
#ifndef NEAR_PREFETCH_BYTES
#define NEAR_PREFETCH_BYTES 8192 /* rows up to this long: the next one prefetched into L1 */
#endif
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 16384 /* how far ahead the exp pass prefetches the rows to come */
#endif

#define TILE 16   /* rows per tile in the small-C kernels: one vector lane per row */
#ifndef PLANAR_PREFETCH
#define PLANAR_PREFETCH 256 /* planar layout: how far ahead in a column the tiles prefetch */
#endif
/* Rows of up to small_c(dtype) classes are processed as lanes of a tile (TILE rows at a
 * time, vectorised across rows): below that a row is too short for the row kernels' fixed
 * costs (two horizontal reductions, a scalar log, the finish: ~70 ns a row, 2.2 ns per
 * element at C = 33 against 0.5 in a tile). Measured crossovers (one thread, AVX-512,
 * ns per element forward / loss + gradient, row kernels -> tiles): float32 C = 33
 * 2.25/3.25 -> 0.54/1.31, C = 64 1.21/1.69 -> 0.51/1.32, C = 80 0.98/1.46 -> 0.50/1.39,
 * C = 96 0.86/1.34 -> 0.48/1.54 (the tile's gradient loses from here); bfloat16 alike;
 * float64 (8 lanes a vector, half a tile) C = 33 3.15/4.72 -> 2.28/3.82 but C = 64
 * 1.82/2.89 -> 2.21/3.99. */
#define SMALL_C_MAX 80
static inline Py_ssize_t small_c(int dtype) { return dtype == DT_F64 ? 40 : SMALL_C_MAX; }

#define LOAD_F32(row, c) (((const float *)(row))[c])
#define STORE_F32(row, c, v) (((float *)(row))[c] = (v))
#define LOAD_F64(row, c) (((const double *)(row))[c])
#define STORE_F64(row, c, v) (((double *)(row))[c] = (v))
#define LOAD_BF16(row, c) bf16_to_f32(((const uint16_t *)(row))[c])
#define STORE_BF16(row, c, v) (((uint16_t *)(row))[c] = f32_to_bf16(v))
#define LOAD_F16(row, c) f16_to_f32(((const uint16_t *)(row))[c])
#define STORE_F16(row, c, v) (((uint16_t *)(row))[c] = f32_to_f16(v))

#if !HAVE_VEC
#error "the row kernels need GCC or Clang vector extensions (the install then uses the reference)"
#endif
DEFINE_VLOAD(vload_f32, vf32, float, L32, LOAD_F32)
#if L32 == 16 && defined(__AVX512BW__)
/* 16 bfloat16 into the upper halves of 16 dwords (that is the conversion): one zero-masked
 * word permute instead of a widening move and a shift */
DEFINE_VLOAD(vload_bf16_generic, vf32, float, L32, LOAD_BF16)
INLINE vf32 vload_bf16(const char *row, Py_ssize_t c) {
    const __m512i to_upper = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0,
                                              8, 0, 7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0,
                                              0, 0);
    const __m256i h = _mm256_loadu_si256((const __m256i *)(row + 2 * c));
    return (vf32)_mm512_maskz_permutexvar_epi16((__mmask32)0xAAAAAAAAu, to_upper,
                                                _mm512_castsi256_si512(h));
}
#define vload_bf16_tail vload_bf16_generic_tail
#else
DEFINE_VLOAD(vload_bf16, vf32, float, L32, LOAD_BF16)
#endif
DEFINE_VLOAD(vload_f64, vf64, double, L64, LOAD_F64)
#if HAVE_F16
DEFINE_VLOAD(vload_f16, vf32, float, L32, LOAD_F16)
#endif

/* a block may use the fast exp when its least finite s = z - m is at least this */
#define FAST_EXP_MIN_F32 (-87.0f)
#define FAST_EXP_MIN_F64 (-708.0)

#define T float
#define VT vf32
#define VI vi32
#define VL L32
#define VIOTA iota_i32()
#define SEL sel_f32
#define SPLIT_ADD split_add_f32
#define MAXK maxk_f32
#define MINK mink_f32
#define ANY any_i32
#define VLOADT vload_f32
#define VLOADT_tail vload_f32_tail
#define VEXPNEG vexp_neg_f32
#define VEXP vexp_f32
#define VEXPM1 vexpm1_f32
#define VTANH vtanh_f32
#define HMAX hmax_f32
#define HMIN hmin_f32
#define HSUM hsum_f32
#define WIDEN_ADD widen_add_f32
#define FAST_EXP_MIN FAST_EXP_MIN_F32
#define EXPNEG_EXACT EXPNEG_EXACT_F32
#define EXP exp_f32
#define EXPM1 expm1_f32
#define TANH tanh_f32
#define LOG log_f32
#define LOG1P log1p_f32
#define SUFFIX f32
#define LOAD LOAD_F32
#define STORE STORE_F32
#define VLOADX vload_f32
#define VLOADX_tail vload_f32_tail
#define STORAGE_IS_T 1
#define STORAGE_SIZE 4
#include "_ckernels_rows.h"
#undef STORAGE_SIZE
#define STORAGE_SIZE 2
#undef SUFFIX
#undef LOAD
#undef STORE
#undef VLOADX
#undef VLOADX_tail
#undef STORAGE_IS_T
#define STORAGE_IS_T 0
#define SUFFIX bf16
#define LOAD LOAD_BF16
#define STORE STORE_BF16
#define VLOADX vload_bf16
#define VLOADX_tail vload_bf16_tail
#include "_ckernels_rows.h"
#undef SUFFIX
#undef LOAD
#undef STORE
#undef VLOADX
#undef VLOADX_tail
#if HAVE_F16
#define SUFFIX f16
#define LOAD LOAD_F16
#define STORE STORE_F16
#define VLOADX vload_f16
#define VLOADX_tail vload_f16_tail
#include "_ckernels_rows.h"
#undef SUFFIX
#undef LOAD
#undef STORE
#undef VLOADX
#undef VLOADX_tail
#endif
#undef STORAGE_IS_T
#undef STORAGE_SIZE
#undef T
#undef VT
#undef VI
#undef VL
#undef VIOTA
#undef SEL
#undef SPLIT_ADD
#undef MAXK
#undef MINK
#undef ANY
#undef VLOADT
#undef VLOADT_tail
#undef VEXPNEG
#undef VEXP
#undef VEXPM1
#undef VTANH
#undef HMAX
#undef HMIN
#undef HSUM
#undef WIDEN_ADD
#undef FAST_EXP_MIN
#undef EXPNEG_EXACT
#undef EXP
#undef EXPM1
#undef TANH
#undef LOG
#undef LOG1P

#define T double
#define VT vf64
#define VI vi64
#define VL L64
#define VIOTA iota_i64()
#define SEL sel_f64
#define SPLIT_ADD split_add_f64
#define MAXK maxk_f64
#define MINK mink_f64
#define ANY any_i64
#define VLOADT vload_f64
#define VLOADT_tail vload_f64_tail
#define VEXPNEG vexp_neg_f64
#define HMAX hmax_f64
#define HMIN hmin_f64
#define HSUM hsum_f64
#define WIDEN_ADD widen_add_f64
#define FAST_EXP_MIN FAST_EXP_MIN_F64
#define EXPNEG_EXACT EXPNEG_EXACT_F64
#define EXP exp_f64
#define EXPM1 expm1_f64
#define TANH tanh_f64
#define LOG log_f64
#define LOG1P log1p_f64
#define SUFFIX f64
#define LOAD LOAD_F64
#define STORE STORE_F64
#define VLOADX vload_f64
#define VLOADX_tail vload_f64_tail
#define STORAGE_IS_T 1
#define STORAGE_SIZE 8
#include "_ckernels_rows.h"

typedef void (*row_kernel)(const Problem *, Py_ssize_t, Py_ssize_t, void *, void *, void *);

static void row_share(void *ctx, int tid) {
    RowsJob *j = (RowsJob *)ctx;
    const Problem *pb = j->pb;
    const int small = pb->n_cols <= small_c(pb->dtype) || pb->inner > 0;
    row_kernel k = NULL;
    switch (pb->dtype) {
    case DT_F32: k = small ? (row_kernel)tiles_f32 : (row_kernel)rows_f32; break;
    case DT_F64: k = small ? (row_kernel)tiles_f64 : (row_kernel)rows_f64; break;
    case DT_BF16: k = small ? (row_kernel)tiles_bf16 : (row_kernel)rows_bf16; break;
#if HAVE_F16
    case DT_F16: k = small ? (row_kernel)tiles_f16 : (row_kernel)rows_f16; break;
#endif
    }
    void *zbuf = NULL, *ebuf = NULL, *stats = NULL; /* on the first item (a late helper may get none) */
    Py_ssize_t i;
    while ((i = pool_claim(&j->next, j->n_items)) >= 0) {
        if (!stats) {
            size_t esz = pb->dtype == DT_F64 ? 8 : 4;
            size_t n = (size_t)(pb->n_cols > 0 ? pb->n_cols : 1) * (small ? TILE : 1);
            /* stats: two 64-byte vectors per block of SUM_BLOCK (ROW_EXPSUM) */
            size_t ns = 2 * (size_t)((pb->n_cols + SUM_BLOCK - 1) / SUM_BLOCK + 1);
            /* ebuf: two rows for ROWS (one row's gradient pass overlaps the next row's exps)
               or two batches of short rows (epi_grad_rows), each from a 64-byte boundary */
            zbuf = malloc(n * esz);
            const size_t ne = small ? n : (size_t)epi_slot(pb->n_cols > 0 ? pb->n_cols : 1, esz) *
                                              2 * (size_t)epi_grad_rows(pb->n_cols, esz);
            ebuf = aligned_alloc(64, (ne * esz + 63) / 64 * 64);
            stats = aligned_alloc(64, ns * 64);
            if (!zbuf || !ebuf || !stats || !k) {
                j->failed = 1; /* (a plain store: only ever set to 1, read after the join) */
                break;
            }
        }
        const Py_ssize_t r0 = i * j->rows, r1 = r0 + j->rows < pb->n_rows ? r0 + j->rows : pb->n_rows;
        if (pb->y && !pb->q) {
            const Py_ssize_t bad = first_bad_label(pb, r0, r1);
            if (bad >= 0) { /* the item is skipped: the call fails */
                note_first_bad(&j->first_bad, bad);
                continue;
            }
        }
        k(pb, r0, r1, zbuf, ebuf, stats);
    }
    if (pb->stream) STREAM_FENCE();
    free(stats);
    free(zbuf);
    free(ebuf);
}

/* The wide mode's scratch and driver. */
static int run_wide(const Problem *pb, int nt) {
    const Py_ssize_t C = pb->n_cols, nb = (C + SUM_BLOCK - 1) / SUM_BLOCK;
    const size_t esz = pb->dtype == DT_F64 ? 8 : 4;
    WideJob job;
    memset(&job, 0, sizeof job);
    job.pb = pb;
    job.nt = nt;
    job.zbuf = malloc((size_t)C * esz);
    job.ebuf = malloc((size_t)C * esz);
    job.stats = aligned_alloc(64, 2 * (size_t)nb * 64);
    job.bw = malloc(2 * (size_t)nb * esz);
    job.bsum = aligned_alloc(64, 2 * (size_t)nb * 64);
    int failed = !job.zbuf || !job.ebuf || !job.stats || !job.bw || !job.bsum;
    if (!failed) {
        switch (pb->dtype) {
        case DT_F32: wide_rows_f32(&job); break;
        case DT_F64: wide_rows_f64(&job); break;
        case DT_BF16: wide_rows_bf16(&job); break;
#if HAVE_F16
        case DT_F16: wide_rows_f16(&job); break;
#endif
        }
    }
    free(job.zbuf);
    free(job.ebuf);
    free(job.stats);
    free(job.bw);
    free(job.bsum);
    return failed;
}

/* Rows per item of a job: enough work that claiming it costs nothing (ITEM_MIN_ELEMENTS),
 * and about ITEMS_PER_THREAD items per thread, so that the threads end together however
 * late a helper joins; whole tiles of small-C rows. A row's result does not depend on the
 * item it falls in: the kernels treat every row alike. */
#define ITEM_MIN_ELEMENTS 16384
#define ITEMS_PER_THREAD 16

static Py_ssize_t item_rows(Py_ssize_t n_rows, Py_ssize_t n_cols, int nt, int tiled) {
    Py_ssize_t by_size = (ITEM_MIN_ELEMENTS + n_cols - 1) / (n_cols > 0 ? n_cols : 1);
    Py_ssize_t by_count = n_rows / ((Py_ssize_t)nt * ITEMS_PER_THREAD);
    Py_ssize_t rows = by_size > by_count ? by_size : by_count;
    if (tiled) rows = (rows + TILE - 1) / TILE * TILE;
    return rows > 0 ? rows : 1;
}

/* Rows claimed in items by up to n_threads threads (pool_run). Fewer rows than threads,
 * each wide enough: split the class axis instead (run_wide). */
static int run_parallel(const Problem *pb, int *wide, Py_ssize_t *bad) {
    int nt = pb->n_threads < 1 ? 1 : pb->n_threads;
    if (nt > POOL_MAX) nt = POOL_MAX;
    *wide = 0;
    *bad = -1;
    const int tiled = pb->n_cols <= small_c(pb->dtype) || pb->inner > 0;
    if ((Py_ssize_t)nt > pb->n_rows && !tiled && pb->wide_min > 0) {
        Py_ssize_t by_cols = pb->n_cols / pb->wide_min;
        int wide_nt = by_cols < nt ? (int)by_cols : nt;
        if (wide_nt >= 2) {
            *wide = wide_nt;
            if (pb->y && !pb->q && (*bad = first_bad_label(pb, 0, pb->n_rows)) >= 0)
                return 0;
            return run_wide(pb, wide_nt);
        }
    }
    RowsJob job = {pb, item_rows(pb->n_rows, pb->n_cols, nt, tiled), 0, 0, -1, 0};
    job.n_items = (pb->n_rows + job.rows - 1) / job.rows;
    if ((Py_ssize_t)nt > job.n_items) nt = job.n_items > 0 ? (int)job.n_items : 1;
    pool_run(nt, row_share, &job);
    *bad = job.first_bad;
    return job.failed;
}

/* nll_rows' job: rows in items as for the softmax kernels; first_bad the least bad row. */
typedef struct {
    const NllProblem *pb;
    Py_ssize_t rows, n_items, next, first_bad;
} NllJob;

static void nll_share(void *ctx, int tid) {
    NllJob *j = (NllJob *)ctx;
    const NllProblem *pb = j->pb;
    Py_ssize_t i;
    (void)tid;
    while ((i = pool_claim(&j->next, j->n_items)) >= 0) {
        const Py_ssize_t r0 = i * j->rows, r1 = r0 + j->rows < pb->n_rows ? r0 + j->rows : pb->n_rows;
        Py_ssize_t bad = -1;
        switch (pb->dtype) {
        case DT_F32: nll_rows_f32(pb, r0, r1, &bad); break;
        case DT_F64: nll_rows_f64(pb, r0, r1, &bad); break;
        case DT_BF16: nll_rows_bf16(pb, r0, r1, &bad); break;
#if HAVE_F16
        case DT_F16: nll_rows_f16(pb, r0, r1, &bad); break;
#endif
        }
        if (bad >= 0) note_first_bad(&j->first_bad, bad);
    }
}

static PyObject *py_nll_rows(PyObject *self, PyObject *args) {
    NllProblem pb;
    unsigned long long x, y, q, w, loss;
    memset(&pb, 0, sizeof pb);
    if (!PyArg_ParseTuple(args, "iKnnnidKKKdKi", &pb.dtype, &x, &pb.n_rows, &pb.n_cols,
                          &pb.row_stride, &pb.probs, &pb.clip, &y, &q, &w,
                          &pb.label_smoothing, &loss, &pb.n_threads))
        return NULL;
    if (pb.dtype < DT_F32 || pb.dtype > DT_F16 || (pb.dtype == DT_F16 && !HAVE_F16) ||
        (!y && !q)) {
        PyErr_SetString(PyExc_ValueError, "unsupported dtype or no targets");
        return NULL;
    }
    pb.x = (const char *)(uintptr_t)x;
    pb.y = (const int64_t *)(uintptr_t)y;
    pb.q = (const char *)(uintptr_t)q;
    pb.w = (const char *)(uintptr_t)w;
    pb.loss = (char *)(uintptr_t)loss;
    int nt = pb.n_threads < 1 ? 1 : (pb.n_threads > POOL_MAX ? POOL_MAX : pb.n_threads);
    NllJob job = {&pb, item_rows(pb.n_rows, pb.n_cols, nt, 0), 0, 0, -1};
    job.n_items = (pb.n_rows + job.rows - 1) / job.rows;
    if ((Py_ssize_t)nt > job.n_items) nt = job.n_items > 0 ? (int)job.n_items : 1;
    Py_BEGIN_ALLOW_THREADS
    pool_run(nt, nll_share, &job);
    Py_END_ALLOW_THREADS
    return PyLong_FromSsize_t(job.first_bad);
}

/* Array arguments: an address (an int: torch's data_ptr(), 0 for none), None, or an object
 * exposing a buffer (a NumPy array: its address without the ctypes round trip, ~1 us an
 * array, a third of a 64 x 10 call). The views are held until the call returns. */
typedef struct {
    Py_buffer views[12];
    int n;
} Views;

static int get_address(PyObject *o, int writable, Views *v, const char **out) {
    if (o == Py_None) {
        *out = NULL;
        return 1;
    }
    if (PyLong_Check(o)) {
        unsigned long long a = PyLong_AsUnsignedLongLong(o);
        if (a == (unsigned long long)-1 && PyErr_Occurred()) return 0;
        *out = (const char *)(uintptr_t)a;
        return 1;
    }
    if (v->n == (int)(sizeof v->views / sizeof v->views[0])) {
        PyErr_SetString(PyExc_ValueError, "too many array arguments");
        return 0;
    }
    /* strides allowed: a view of rows row_stride apart (the caller passes the layout) */
    if (PyObject_GetBuffer(o, &v->views[v->n], PyBUF_STRIDES | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return 0;
    *out = (const char *)v->views[v->n++].buf;
    return 1;
}

static void release_views(Views *v) {
    while (v->n > 0) PyBuffer_Release(&v->views[--v->n]);
}

static PyObject *py_softmax_ce(PyObject *self, PyObject *args) {
    Problem pb;
    PyObject *ox, *oy, *oq, *ow, *oloss, *olse, *og, *ograd, *olse_in = Py_None;
    const char *x, *y, *q, *w, *loss, *lse, *g, *grad, *lse_in;
    Views views;
    views.n = 0;
    memset(&pb, 0, sizeof pb);
    pb.wide_min = (Py_ssize_t)1 << 18;
    pb.g_stride = 1;
    int ignored_rows = 1;
    if (!PyArg_ParseTuple(args, "iOnnnOOOddddOOOOni|Onnpn", &pb.dtype, &ox, &pb.n_rows, &pb.n_cols,
                          &pb.row_stride, &oy, &oq, &ow, &pb.label_smoothing, &pb.z_loss,
                          &pb.softcap, &pb.w_sum, &oloss, &olse, &og, &ograd, &pb.grad_stride,
                          &pb.n_threads, &olse_in, &pb.wide_min, &pb.g_stride, &ignored_rows,
                          &pb.inner))
        return NULL;
    pb.y_lo = ignored_rows ? -1 : 0;
    if (!get_address(ox, 0, &views, &x) || !get_address(oy, 0, &views, &y) ||
        !get_address(oq, 0, &views, &q) || !get_address(ow, 0, &views, &w) ||
        !get_address(oloss, 1, &views, &loss) || !get_address(olse, 1, &views, &lse) ||
        !get_address(og, 0, &views, &g) || !get_address(ograd, 1, &views, &grad) ||
        !get_address(olse_in, 0, &views, &lse_in)) {
        release_views(&views);
        return NULL;
    }
    PyObject *res = NULL;
    if (pb.g_stride != 0 && pb.g_stride != 1) {
        PyErr_SetString(PyExc_ValueError, "g_stride must be 0 (one value) or 1 (per row)");
        goto done;
    }
    if (lse_in && (!g || !grad)) {
        PyErr_SetString(PyExc_ValueError, "a saved lse is only used to compute the gradient");
        goto done;
    }
    if (pb.dtype < DT_F32 || pb.dtype > DT_F16 || (pb.dtype == DT_F16 && !HAVE_F16)) {
        PyErr_Format(PyExc_ValueError, "unsupported dtype code %d", pb.dtype);
        goto done;
    }
    if (!y && !q) {
        PyErr_SetString(PyExc_ValueError, "need class indices or soft targets");
        goto done;
    }
    if (pb.inner < 0 || (pb.inner > 0 && (q || pb.n_rows % pb.inner != 0))) {
        PyErr_SetString(PyExc_ValueError,
                        "the planar layout needs class indices and rows = N * inner");
        goto done;
    }
    if (!lse_in && !loss) {
        PyErr_SetString(PyExc_ValueError, "the forward pass needs a loss buffer");
        goto done;
    }
    pb.x = x;
    pb.y = (const int64_t *)y;
    pb.q = q;
    pb.w = w;
    pb.loss = (char *)loss;
    pb.lse = (char *)lse;
    pb.g = g;
    pb.grad = (char *)grad;
    pb.lse_in = lse_in;
    pb.stream = pb.grad && (size_t)pb.n_rows * (size_t)pb.n_cols * elsize(pb.dtype) >= STREAM_MIN_BYTES;
    int failed, wide;
    Py_ssize_t bad;
    Py_BEGIN_ALLOW_THREADS
    failed = run_parallel(&pb, &wide, &bad);
    Py_END_ALLOW_THREADS
    if (failed)
        res = PyErr_NoMemory();
    else if (bad >= 0) /* outputs of other rows may have been written: the call failed */
        res = PyErr_Format(PyExc_IndexError,
                           "label y[%zd] = %lld is outside [%lld, %zd)%s: the kernel indexes "
                           "the row by it", bad, (long long)pb.y[bad], (long long)pb.y_lo,
                           pb.n_cols, pb.y_lo < 0 ? " (-1: ignored)" : "");
    else
        res = PyLong_FromLong(wide); /* threads sharing each row's classes (0: rows split) */
done:
    release_views(&views);
    return res;
}

/* The elementary functions over a buffer: exposed so that the tests can compare them with
 * libm over every float32 input of interest. */
#define ELEMENTWISE(NAME, T, F)                                                          \
    static void NAME(const T *x, T *out, Py_ssize_t n) {                    \
        for (Py_ssize_t i = 0; i < n; i++) out[i] = F(x[i]);                             \
    }
ELEMENTWISE(exp_buf_f32, float, exp_f32)
ELEMENTWISE(exp_buf_f64, double, exp_f64)
ELEMENTWISE(expm1_buf_f32, float, expm1_f32)
ELEMENTWISE(tanh_buf_f32, float, tanh_f32)
ELEMENTWISE(log_buf_f32, float, log_f32)
ELEMENTWISE(log1p_buf_f32, float, log1p_f32)
ELEMENTWISE(log_buf_f64, double, log_f64)
ELEMENTWISE(log1p_buf_f64, double, log1p_f64)

/* the vector exp of the row kernels' fast path, VL values at a time (tail padded) */
#define VEC_ELEMENTWISE(NAME, T, VT, VL, F)                                              \
    static void NAME(const T *x, T *out, Py_ssize_t n) {                    \
        for (Py_ssize_t i = 0; i < n; i += VL) {                                         \
            T t[VL] = {0};                                                               \
            Py_ssize_t k = n - i < VL ? n - i : VL;                                      \
            memcpy(t, x + i, (size_t)k * sizeof(T));                                     \
            VT v;                                                                        \
            memcpy(&v, t, sizeof v);                                                     \
            v = F(v);                                                                    \
            memcpy(out + i, &v, (size_t)k * sizeof(T));                                  \
        }                                                                                \
    }
VEC_ELEMENTWISE(exp_neg_buf_f32, float, vf32, L32, vexp_neg_f32)
VEC_ELEMENTWISE(exp_neg_buf_f64, double, vf64, L64, vexp_neg_f64)
VEC_ELEMENTWISE(vexp_buf_f32, float, vf32, L32, vexp_f32)
VEC_ELEMENTWISE(vexpm1_buf_f32, float, vf32, L32, vexpm1_f32)
VEC_ELEMENTWISE(vtanh_buf_f32, float, vf32, L32, vtanh_f32)

static PyObject *py_elementwise(PyObject *self, PyObject *args) {
    const char *name;
    unsigned long long x, out;
    Py_ssize_t n;
    int dtype;
    if (!PyArg_ParseTuple(args, "siKKn", &name, &dtype, &x, &out, &n)) return NULL;
    void *px = (void *)(uintptr_t)x, *po = (void *)(uintptr_t)out;
    if (strcmp(name, "exp") == 0 && dtype == DT_F32) exp_buf_f32(px, po, n);
    else if (strcmp(name, "exp") == 0 && dtype == DT_F64) exp_buf_f64(px, po, n);
    else if (strcmp(name, "exp_neg") == 0 && dtype == DT_F32) exp_neg_buf_f32(px, po, n);
    else if (strcmp(name, "exp_neg") == 0 && dtype == DT_F64) exp_neg_buf_f64(px, po, n);
    else if (strcmp(name, "vexp") == 0 && dtype == DT_F32) vexp_buf_f32(px, po, n);
    else if (strcmp(name, "vexpm1") == 0 && dtype == DT_F32) vexpm1_buf_f32(px, po, n);
    else if (strcmp(name, "vtanh") == 0 && dtype == DT_F32) vtanh_buf_f32(px, po, n);
    else if (strcmp(name, "expm1") == 0 && dtype == DT_F32) expm1_buf_f32(px, po, n);
    else if (strcmp(name, "tanh") == 0 && dtype == DT_F32) tanh_buf_f32(px, po, n);
    else if (strcmp(name, "log") == 0 && dtype == DT_F32) log_buf_f32(px, po, n);
    else if (strcmp(name, "log1p") == 0 && dtype == DT_F32) log1p_buf_f32(px, po, n);
    else if (strcmp(name, "log") == 0 && dtype == DT_F64) log_buf_f64(px, po, n);
    else if (strcmp(name, "log1p") == 0 && dtype == DT_F64) log1p_buf_f64(px, po, n);
    else {
        PyErr_Format(PyExc_ValueError, "no elementwise kernel %s for dtype %d", name, dtype);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* cpu(): the best x86-64 level this processor runs ("x86-64-v4", "x86-64-v3", or "" when
 * neither or not x86-64): crossent._kernels imports the module built for it */
static PyObject *py_cpu(PyObject *self, PyObject *noargs) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("bmi2"))
        return PyUnicode_FromString("x86-64-v4");
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("bmi2"))
        return PyUnicode_FromString("x86-64-v3");
#endif
    return PyUnicode_FromString("");
}

/* isa(): what this module's kernels were compiled for */
static PyObject *py_isa(PyObject *self, PyObject *noargs) {
#if defined(CROSSENT_ISA_NAME)
    const char *name = CROSSENT_ISA_NAME;
#elif defined(__AVX512F__)
    const char *name = "x86-64-v4 (AVX-512)";
#elif defined(__AVX2__)
    const char *name = "x86-64-v3 (AVX2+FMA)";
#elif defined(__x86_64__) || defined(_M_X64)
    const char *name = "x86-64 (SSE2)";
#elif defined(__aarch64__)
    const char *name = "aarch64 (NEON)";
#else
    const char *name = "generic";
#endif
#if HAVE_VEC
    return PyUnicode_FromFormat("%s, %d-byte vectors", name, (int)VB);
#else
    return PyUnicode_FromString(name);
#endif
}

static PyMethodDef methods[] = {
    {"softmax_ce", py_softmax_ce, METH_VARARGS,
     "Fused softmax cross-entropy (loss, lse and optionally the gradient) over rows."},
    {"nll_rows", py_nll_rows, METH_VARARGS,
     "cross_entropy / nll_loss over whole rows; returns the first row with a bad value or -1."},
    {"elementwise", py_elementwise, METH_VARARGS, "The kernels' exp/expm1/tanh over a buffer."},
    {"isa", py_isa, METH_NOARGS, "The instruction set this module's kernels were built for."},
    {"cpu", py_cpu, METH_NOARGS, "The best x86-64 level of this processor (or '')."},
    {NULL, NULL, 0, NULL}};

/* one source, several modules: _ckernels (any CPU), _ckernels_v3, _ckernels_v4 (setup.py) */
#ifndef CROSSENT_MODULE
#define CROSSENT_MODULE _ckernels
#endif
#define STR2(x) #x
#define STR(x) STR2(x)
#define INIT2(m) PyInit_##m
#define INIT(m) INIT2(m)
static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, STR(CROSSENT_MODULE),
                                       "crossent's fused CPU kernels.", -1, methods};

PyMODINIT_FUNC INIT(CROSSENT_MODULE)(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    PyModule_AddIntConstant(m, "HAVE_F16", HAVE_F16);
    PyModule_AddIntConstant(m, "EXPNEG_EXACT_F32", EXPNEG_EXACT_F32);
    PyModule_AddIntConstant(m, "EXPNEG_EXACT_F64", EXPNEG_EXACT_F64);
    return m;
}
