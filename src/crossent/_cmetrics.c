/*
 * crossent._cmetrics: per-row statistics for crossent.metrics.Evaluator in one pass.
 *
 * The evaluator's figures (loss, accuracy, top-k, Brier, calibration, per-class tables,
 * worst examples) all follow from a handful of per-row reductions:
 *
 *   logits z:  m = max z, pred = first arg-max, e_c = exp(z_c - m),
 *              s1 = sum_{c != pred} e_c, s2 = sum_{c != pred} e_c^2, e_y, z_y,
 *              above = #{c : z_c > z_y}
 *              loss = log1p(s1) + m - z_y, p_y = e_y / (1 + s1), conf = 1 / (1 + s1),
 *              Brier from s2, s1 and e_y;
 *   probs p:   m = max p, lo = min p, sum p, pred, p_y, sq = sum_{c != y} p_c^2, above.
 *
 * Each row is read once from memory (pass 1: max, arg-max, rank of the label) and re-read
 * from L1 (pass 2, the exp-sum). The Python side computes the same statistics with NumPy
 * when this extension is missing (crossent/metrics.py: _logit_stats, _prob_stats) and the
 * figures agree to 1e-12 relative: the float32 exponential below is replicated operation
 * by operation in NumPy (this file is compiled with -ffp-contract=off, so no multiply-add
 * is fused and every float32 operation rounds exactly as NumPy's does), float64 logits use
 * an exp accurate to ~1 ulp, and every sum is accumulated in float64.
 *
 * No -ffast-math (inf and NaN are part of the contract); rows whose maximum is not finite
 * or whose sums are NaN are counted and the caller scores such blocks with NumPy.
 * No NumPy C API: arrays arrive as raw addresses.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { DT_F32 = 0, DT_F64 = 1 };

#if !defined(__GNUC__)
#error "crossent._cmetrics needs GCC or Clang vector extensions (NumPy computes the same)"
#endif

#define INLINE static inline __attribute__((always_inline))

INLINE uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
INLINE float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint64_t d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
INLINE double u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/* exp in float32 for x <= 0 (arguments are z - max z), written once as a sequence of
 * steps shared by the scalar exp_f32 below and the vector exp of the row kernels. The steps
 * use only + - * (and one select and a shift, spelled per type), which round the same way
 * on both: the two give the same bits, and crossent.metrics._exp_f32 performs the same
 * operations in the same order, so NumPy gives them too. EACH(step) runs a step on every
 * vector of a group before the next step, so that the groups' dependency chains interleave
 * (a chain is ~25 operations long; one at a time, the out-of-order core, whose FP scheduler
 * holds about one block's work, waits on each).
 *
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2 (ln2 split in two so that n * LN2_HI
 * is exact), e^r = 1 + (r + r^2 Q(r)) with Q of degree 4 fitted for the least maximal
 * relative error (3e-9); evaluated in that form rather than by Horner's rule to the end,
 * the rounding errors of the last steps shrink: the result is within 0.99 ulp of e^x over
 * all of [-104, 0] (every float32 checked) without fused multiply-adds, at 12 operations
 * for the polynomial (the degree-7 Taylor series it replaces: 14, 1.2 ulp).
 * The scale 2^n comes from the bits of t = x log2(e) + 1.5 * 2^23 + 191 shifted left by 23,
 * as 2^(n + 64) * 2^-64 so that results in the subnormal range are rounded once.
 * x is clamped at -104, where the result rounds to 0 (e^-104 < 2^-150): below, -inf
 * included, the result is 0 with no further select; NaN stays NaN (x < lo is false). */
#define EXP_F32_LO (-0x1.ap+6f)          /* -104 */
#define EXP_F32_MAGIC 0x1.80017ep+23f    /* 1.5 * 2^23 + 191 */
#define EXP_F32_STEPS(EACH, X, T, N, R, R2, Q, CLAMP, POW2)                              \
    EACH(X = CLAMP(X));                                                                   \
    EACH(T = X * 0x1.715476p+0f + EXP_F32_MAGIC);                                         \
    EACH(N = T - EXP_F32_MAGIC);                                                          \
    EACH(R = (X - N * 0x1.62e4p-1f) - N * 0x1.7f7d1cp-20f);                               \
    EACH(R2 = R * R);                                                                     \
    EACH(Q = 0x1.6a243ep-10f * R + 0x1.1239d6p-7f);                                       \
    EACH(Q = Q * R + 0x1.5558f2p-5f);                                                     \
    EACH(Q = Q * R + 0x1.555492p-3f);                                                     \
    EACH(Q = Q * R + 0x1.fffffcp-2f);                                                     \
    EACH(X = ((R + R2 * Q) + 1.0f) * POW2(T) * 0x1p-64f)

/* exp in float64 for x <= 0: the same scheme, e^r = 1 + (r + r^2 Q(r)) with Q of degree 9
 * (a Chebyshev fit of (e^r - 1 - r) / r^2, 1.6e-17 relative; 22 operations against the
 * 26 of the degree-13 Taylor series it replaces), within 1.03 ulp of e^x (1.17 before).
 * Clamped at -746, where the result rounds to 0. */
#define EXP_F64_LO (-746.0)
#define EXP_F64_MAGIC 0x1.800000000043fp+52 /* 1.5 * 2^52 + 1087 */
#define EXP_F64_STEPS(EACH, X, T, N, R, R2, Q, CLAMP, POW2)                              \
    EACH(X = CLAMP(X));                                                                   \
    EACH(T = X * 1.4426950408889634 + EXP_F64_MAGIC);                                     \
    EACH(N = T - EXP_F64_MAGIC);                                                          \
    EACH(R = (X - N * 6.93147180369123816490e-01) - N * 1.90821492927058770002e-10);      \
    EACH(R2 = R * R);                                                                     \
    EACH(Q = 0x1.af389ecfc4b9cp-26 * R + 0x1.28917c89a43a7p-22);                          \
    EACH(Q = Q * R + 0x1.71de0db2f6b19p-19);                                              \
    EACH(Q = Q * R + 0x1.a019b9149a41cp-16);                                              \
    EACH(Q = Q * R + 0x1.a01a01a7c2efep-13);                                              \
    EACH(Q = Q * R + 0x1.6c16c17889ef1p-10);                                              \
    EACH(Q = Q * R + 0x1.11111111109b5p-7);                                               \
    EACH(Q = Q * R + 0x1.5555555553d68p-5);                                               \
    EACH(Q = Q * R + 0x1.5555555555556p-3);                                               \
    EACH(Q = Q * R + 0x1.0000000000001p-1);                                               \
    EACH(X = ((R + R2 * Q) + 1.0) * POW2(T) * 0x1p-64)

#define ONCE(step) step
#define CLAMP_F32(x) ((x) < EXP_F32_LO ? EXP_F32_LO : (x))
#define CLAMP_F64(x) ((x) < EXP_F64_LO ? EXP_F64_LO : (x))
#define POW2_F32(t) u2f(f2u(t) << 23)
#define POW2_F64(t) u2d(d2u(t) << 52)

INLINE float exp_f32(float x) {
    float t, n, r, r2, q;
    EXP_F32_STEPS(ONCE, x, t, n, r, r2, q, CLAMP_F32, POW2_F32);
    return x;
}

INLINE double exp_f64(double x) {
    double t, n, r, r2, q;
    EXP_F64_STEPS(ONCE, x, t, n, r, r2, q, CLAMP_F64, POW2_F64);
    return x;
}

/* ------------------------------------------------------------------ vectors
 * The row loops are written by hand with GCC/Clang generic vectors (the auto-vectoriser
 * made slow code of them: float32 exponentials summed in float64 with the arg-max term
 * masked, a scalar search for the arg-max, scalar remainders; ~1 ns per element at
 * C = 1000 and 10-17 ns at C = 10 on a Zen 4 core).
 *
 * The vectors are as wide as the registers of the instruction set they are compiled for:
 * GCC 12 turns comparisons and selects of vectors wider than the target's registers into
 * scalar code (a 64-byte source compiled for AVX2 ran 5x slower than for AVX-512), so the
 * kernels are instantiated once per width (target attributes, and a table of functions
 * picked at import) rather than multiversioned from one source with target_clones. On
 * x86-64 with GCC: 64 bytes for x86-64-v4 (AVX-512), 32 for x86-64-v3 (AVX2) and for AVX
 * without AVX2, 16 for the SSE2 baseline; the first the processor runs is used (isa()
 * names it and, for the tests, picks another). Elsewhere (Clang, ARM): one instantiation,
 * as wide as the compiler's target (16 bytes unless built with -mavx2 / -mavx512*). */
#define DEFINE_VTYPES(W, F32, I32, U32, F64, I64, U64)                                   \
    typedef float F32 __attribute__((vector_size(W)));                                    \
    typedef int32_t I32 __attribute__((vector_size(W)));                                  \
    typedef uint32_t U32 __attribute__((vector_size(W)));                                 \
    typedef double F64 __attribute__((vector_size(W)));                                   \
    typedef int64_t I64 __attribute__((vector_size(W)));                                  \
    typedef uint64_t U64 __attribute__((vector_size(W)));
DEFINE_VTYPES(16, f32x4, i32x4, u32x4, f64x2, i64x2, u64x2)
DEFINE_VTYPES(32, f32x8, i32x8, u32x8, f64x4, i64x4, u64x4)
DEFINE_VTYPES(64, f32x16, i32x16, u32x16, f64x8, i64x8, u64x8)

/* m ? a : b, lane by lane (C has no ?: on vectors), m a comparison result (0 or -1 lanes)
 * of integer vector type MT; the compiler emits a blend or a masked move */
#define SEL(MT, m, a, b) ((__typeof__(a))(((MT)(m) & (MT)(a)) | (~(MT)(m) & (MT)(b))))

/* the exps of the rows: x[0..U-1] in place, the steps of exp_f32 / exp_f64 (same bits),
 * each step over the U vectors before the next (U is a constant after inlining: the loops
 * unroll and the arrays live in registers) */
#define EXP_UMAX 4
#define EACH_U(step)                                                                       \
    for (int u = 0; u < U; u++) {                                                         \
        step;                                                                             \
    }

#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 4096 /* how far ahead the second pass prefetches the rows to come */
#endif
#define PREFETCH_MAX_ROW 16384
#ifndef PASS2_U
#define PASS2_U 2 /* blocks per step of the exp pass (their dependency chains interleave) */
#endif
#ifndef GROUP_ROWS
#define GROUP_ROWS 4 /* short rows: rows per step (<= EXP_UMAX) */
#endif
#ifndef GROUP_MAX_BLOCKS
#define GROUP_MAX_BLOCKS 8 /* rows of up to this many vectors are short */
#endif

/* the largest C the kernels take (float32 column indices in int32 lanes) */
#define MAX_COLUMNS (INT32_MAX - 64)

typedef struct {
    double *m, *zy, *ey, *s1, *s2, *above;
    int64_t *pred;
} LogitOut;

typedef struct {
    double *m, *lo, *sum, *py, *sq, *above;
    int64_t *pred;
} ProbOut;

/* One instruction set's kernels. */
typedef struct {
    const char *name;
    int (*supported)(void);
    Py_ssize_t (*logit_f32)(const float *, Py_ssize_t, Py_ssize_t, Py_ssize_t, const int64_t *, LogitOut);
    Py_ssize_t (*logit_f64)(const double *, Py_ssize_t, Py_ssize_t, Py_ssize_t, const int64_t *, LogitOut);
    Py_ssize_t (*prob_f32)(const float *, Py_ssize_t, Py_ssize_t, Py_ssize_t, const int64_t *, ProbOut);
    Py_ssize_t (*prob_f64)(const double *, Py_ssize_t, Py_ssize_t, Py_ssize_t, const int64_t *, ProbOut);
    void (*exp_f32)(const float *, float *, Py_ssize_t);
    void (*exp_f64)(const double *, double *, Py_ssize_t);
} Isa;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(CROSSENT_NO_MULTIVERSION)
#define X86_LEVELS 1
#else
#define X86_LEVELS 0
#endif

#define IOTA2 {0, 1}
#define IOTA4 {0, 1, 2, 3}
#define IOTA8 {0, 1, 2, 3, 4, 5, 6, 7}
#define IOTA16 {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

/* ---------------------------------------------------------------- x86-64-v4 */
#if X86_LEVELS
/* Masked loads for rows shorter than a vector (the lanes masked off are not read and do not
 * fault): the generic element-by-element fill costs a store-forwarding stall a row. The
 * intrinsics only inline into functions of their instruction set, so MASKLOAD appears in
 * the kernels themselves, not in the inline helpers (which have no target attribute: with
 * it, GCC 12 allocates the exp loop's registers worse, 30 % slower). */
#include <immintrin.h>
#define ONES_BELOW(n) ((1u << (n)) - 1u)
#define ISA_ATTR __attribute__((target("arch=x86-64-v4")))
#define IS_F32 1
#define SFX f32_v4
#define MASKLOAD(p, n) ((f32x16)_mm512_maskz_loadu_ps((__mmask16)ONES_BELOW(n), p))
#define T float
#define VT f32x16
#define VI i32x16
#define VU u32x16
#define VD f64x8
#define IT int32_t
#define IT_MAX INT32_MAX
#define VL 16
#define IOTA IOTA16
#include "_cmetrics_rows.h"
#define IS_F32 0
#define SFX f64_v4
#define MASKLOAD(p, n) ((f64x8)_mm512_maskz_loadu_pd((__mmask8)ONES_BELOW(n), p))
#define T double
#define VT f64x8
#define VI i64x8
#define VU u64x8
#define VD f64x8
#define IT int64_t
#define IT_MAX INT64_MAX
#define VL 8
#define IOTA IOTA8
#include "_cmetrics_rows.h"
#undef ISA_ATTR
static int supported_v4(void) {
#if __GNUC__ >= 12
    return __builtin_cpu_supports("x86-64-v4");
#else
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2");
#endif
}

/* ---------------------------------------------------------------- x86-64-v3 */
#define ISA_ATTR __attribute__((target("arch=x86-64-v3")))
#define ISA_SFX(t) t##_v3
#include "_cmetrics_width32.h"
#undef ISA_SFX
#undef ISA_ATTR
static int supported_v3(void) {
#if __GNUC__ >= 12
    return __builtin_cpu_supports("x86-64-v3");
#else
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
#endif
}

/* ---------------------------------------------------------------------- AVX
 * AVX without AVX2 (some virtual machines hide AVX2): 8-wide floats, the integer lane
 * operations split in halves */
#define ISA_ATTR __attribute__((target("avx")))
#define ISA_SFX(t) t##_avx
#include "_cmetrics_width32.h"
#undef ISA_SFX
#undef ISA_ATTR
static int supported_avx(void) { return __builtin_cpu_supports("avx"); }
#endif /* X86_LEVELS */

/* ------------------------------------------------- the baseline (or the only one) */
#if X86_LEVELS || !(defined(__AVX2__) || defined(__AVX512F__))
#define BASE_BYTES 16
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define BASE_BYTES 64
#else
#define BASE_BYTES 32
#endif
#define ISA_ATTR
#define IS_F32 1
#define SFX f32_base
#define T float
#define IT int32_t
#define IT_MAX INT32_MAX
#if BASE_BYTES == 16
#define VT f32x4
#define VI i32x4
#define VU u32x4
#define VD f64x2
#define VL 4
#define IOTA IOTA4
#elif BASE_BYTES == 32
#define VT f32x8
#define VI i32x8
#define VU u32x8
#define VD f64x4
#define VL 8
#define IOTA IOTA8
#else
#define VT f32x16
#define VI i32x16
#define VU u32x16
#define VD f64x8
#define VL 16
#define IOTA IOTA16
#endif
#include "_cmetrics_rows.h"
#define IS_F32 0
#define SFX f64_base
#define T double
#define IT int64_t
#define IT_MAX INT64_MAX
#if BASE_BYTES == 16
#define VT f64x2
#define VI i64x2
#define VU u64x2
#define VD f64x2
#define VL 2
#define IOTA IOTA2
#elif BASE_BYTES == 32
#define VT f64x4
#define VI i64x4
#define VU u64x4
#define VD f64x4
#define VL 4
#define IOTA IOTA4
#else
#define VT f64x8
#define VI i64x8
#define VU u64x8
#define VD f64x8
#define VL 8
#define IOTA IOTA8
#endif
#include "_cmetrics_rows.h"
#undef ISA_ATTR
static int supported_base(void) { return 1; }

#define ISA_ENTRY(NAME, S)                                                                 \
    {NAME, supported_##S, logit_rows_f32_##S, logit_rows_f64_##S, prob_rows_f32_##S,       \
     prob_rows_f64_##S, exp_buffer_f32_##S, exp_buffer_f64_##S}
static const Isa isas[] = {
#if X86_LEVELS
    ISA_ENTRY("x86-64-v4", v4),
    ISA_ENTRY("x86-64-v3", v3),
    ISA_ENTRY("avx", avx),
    ISA_ENTRY("sse2", base),
#else
    ISA_ENTRY(BASE_BYTES == 16 ? "vector16" : BASE_BYTES == 32 ? "vector32" : "vector64", base),
#endif
};
#define N_ISAS ((int)(sizeof isas / sizeof isas[0]))
static const Isa *isa = &isas[N_ISAS - 1]; /* set at import: the first supported */

/* ------------------------------------------------------------------- Python */

/* The kernels as (dtype code, x, rows, C, stride, y, 7 output addresses); both Python
 * entry points parse the same arguments and differ only in the kernel and output layout. */
typedef Py_ssize_t (*rows_fn)(int code, Py_ssize_t x, Py_ssize_t n, Py_ssize_t C,
                              Py_ssize_t stride, Py_ssize_t y, const Py_ssize_t *out);

static Py_ssize_t logit_rows(int code, Py_ssize_t x, Py_ssize_t n, Py_ssize_t C,
                             Py_ssize_t stride, Py_ssize_t y, const Py_ssize_t *out) {
    LogitOut o = {(double *)out[0], (double *)out[1], (double *)out[2], (double *)out[3],
                  (double *)out[4], (double *)out[5], (int64_t *)out[6]};
    if (code == DT_F32) return isa->logit_f32((const float *)x, n, C, stride, (const int64_t *)y, o);
    return isa->logit_f64((const double *)x, n, C, stride, (const int64_t *)y, o);
}

static Py_ssize_t prob_rows(int code, Py_ssize_t x, Py_ssize_t n, Py_ssize_t C,
                            Py_ssize_t stride, Py_ssize_t y, const Py_ssize_t *out) {
    ProbOut o = {(double *)out[0], (double *)out[1], (double *)out[2], (double *)out[3],
                 (double *)out[4], (double *)out[5], (int64_t *)out[6]};
    if (code == DT_F32) return isa->prob_f32((const float *)x, n, C, stride, (const int64_t *)y, o);
    return isa->prob_f64((const double *)x, n, C, stride, (const int64_t *)y, o);
}

static PyObject *call_rows(PyObject *args, const char *name, rows_fn fn) {
    int code;
    Py_ssize_t x, n, C, stride, y, out[7];
    if (!PyArg_ParseTuple(args, "innnnnnnnnnnn", &code, &x, &n, &C, &stride, &y, &out[0],
                          &out[1], &out[2], &out[3], &out[4], &out[5], &out[6]))
        return NULL;
    if (code != DT_F32 && code != DT_F64) {
        PyErr_Format(PyExc_ValueError, "%s: dtype code must be 0 (f32) or 1 (f64)", name);
        return NULL;
    }
    if (C < 1 || C > MAX_COLUMNS) {
        PyErr_Format(PyExc_ValueError, "%s: %zd columns (1 to %d)", name, C, MAX_COLUMNS);
        return NULL;
    }
    Py_ssize_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = fn(code, x, n, C, stride, y, out);
    Py_END_ALLOW_THREADS
    return PyLong_FromSsize_t(bad);
}

static PyObject *py_logit_rows(PyObject *self, PyObject *args) {
    return call_rows(args, "logit_rows", logit_rows);
}

static PyObject *py_prob_rows(PyObject *self, PyObject *args) {
    return call_rows(args, "prob_rows", prob_rows);
}

/* exp over a buffer (tests): mode 0 the scalar exp, 1 the vector exp of the row kernels in
 * the current instruction set */
static PyObject *py_exp_f32(PyObject *self, PyObject *args) {
    Py_ssize_t xp, op, n;
    int mode = 0;
    if (!PyArg_ParseTuple(args, "nnn|i", &xp, &op, &n, &mode)) return NULL;
    const float *x = (const float *)xp;
    float *out = (float *)op;
    if (mode == 1) {
        isa->exp_f32(x, out, n);
    } else {
        for (Py_ssize_t i = 0; i < n; i++) out[i] = exp_f32(x[i]);
    }
    Py_RETURN_NONE;
}

static PyObject *py_exp_f64(PyObject *self, PyObject *args) {
    Py_ssize_t xp, op, n;
    int mode = 0;
    if (!PyArg_ParseTuple(args, "nnn|i", &xp, &op, &n, &mode)) return NULL;
    const double *x = (const double *)xp;
    double *out = (double *)op;
    if (mode == 1) {
        isa->exp_f64(x, out, n);
    } else {
        for (Py_ssize_t i = 0; i < n; i++) out[i] = exp_f64(x[i]);
    }
    Py_RETURN_NONE;
}

/* isa(): the instruction set the kernels run in; isa(name): run in that one instead (tests,
 * benchmarks). Returns (current name, tuple of the names this processor supports). */
static PyObject *py_isa(PyObject *self, PyObject *args) {
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|s", &name)) return NULL;
    PyObject *names = PyTuple_New(0);
    if (!names) return NULL;
    int found = name == NULL;
    for (int k = 0; k < N_ISAS; k++) {
        if (!isas[k].supported()) continue;
        if (name && strcmp(name, isas[k].name) == 0) {
            isa = &isas[k];
            found = 1;
        }
        PyObject *s = PyUnicode_FromString(isas[k].name);
        if (!s || _PyTuple_Resize(&names, PyTuple_GET_SIZE(names) + 1) < 0) {
            Py_XDECREF(s);
            Py_XDECREF(names);
            return NULL;
        }
        PyTuple_SET_ITEM(names, PyTuple_GET_SIZE(names) - 1, s);
    }
    if (!found) {
        PyErr_Format(PyExc_ValueError, "isa: %s is not supported here", name);
        Py_DECREF(names);
        return NULL;
    }
    return Py_BuildValue("(sN)", isa->name, names);
}

static PyMethodDef methods[] = {
    {"logit_rows", py_logit_rows, METH_VARARGS,
     "Per-row max, arg-max, exp-sums and rank of the label for logits; returns the number "
     "of rows with a non-finite maximum or sum."},
    {"prob_rows", py_prob_rows, METH_VARARGS,
     "Per-row max, min, sum, squares and rank of the label for probabilities; returns the "
     "number of rows with NaN."},
    {"exp_f32", py_exp_f32, METH_VARARGS,
     "The float32 exp of logit_rows over a buffer (tests): mode 0 scalar, 1 vector."},
    {"exp_f64", py_exp_f64, METH_VARARGS,
     "The float64 exp of logit_rows over a buffer (tests): mode 0 scalar, 1 vector."},
    {"isa", py_isa, METH_VARARGS,
     "isa([name]) -> (current, supported): the instruction set of the kernels; a name "
     "switches to it."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_cmetrics",
                                       "crossent.metrics' per-row statistics kernels.", -1,
                                       methods};

PyMODINIT_FUNC PyInit__cmetrics(void) {
#if X86_LEVELS
    __builtin_cpu_init();
#endif
    for (int k = 0; k < N_ISAS; k++)
        if (isas[k].supported()) {
            isa = &isas[k];
            break;
        }
    return PyModule_Create(&moduledef);
}
