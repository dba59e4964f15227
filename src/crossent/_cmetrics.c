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
 * Each row is read once from memory (pass 1) and re-read from L1 (pass 2, the exp-sum).
 * The Python side computes the same statistics with NumPy when this extension is missing
 * (crossent/metrics.py: _logit_stats_numpy, _prob_stats_numpy) and the figures agree to
 * 1e-12 relative: the float32 exponential below is replicated operation by operation in
 * NumPy (this file is compiled with -ffp-contract=off, so no multiply-add is fused and
 * every float32 operation rounds exactly as NumPy's does), float64 logits use an exp
 * accurate to ~1 ulp, and every sum is accumulated in float64.
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

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64)) && \
    !defined(CROSSENT_NO_MULTIVERSION)
/* "avx": AVX without AVX2 (some virtual machines hide AVX2) still gets 8-wide floats */
#define MULTIVERSION \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "avx", "default")))
#else
#define MULTIVERSION
#endif

#define INLINE static inline __attribute__((always_inline))

INLINE uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
INLINE float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint64_t d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
INLINE double u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/* exp in float32 for x <= 0 (arguments are z - max z), written once as a sequence of
 * steps (EACH(step) runs a step; the scalar exp runs each once). The steps use only + - *
 * (and one select and a shift, spelled per type), and crossent.metrics._exp_f32 performs
 * the same operations in the same order, so NumPy gives the same bits.
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

/* exp in float64 for x <= 0: the same scheme, degree-13 Taylor polynomial by Horner's
 * rule (~1 ulp). Clamped at -746, where the result rounds to 0. */
#define EXP_F64_LO (-746.0)
#define EXP_F64_MAGIC 0x1.800000000043fp+52 /* 1.5 * 2^52 + 1087 */
#define EXP_F64_STEPS(EACH, X, T, N, R, P, CLAMP, POW2)                                  \
    EACH(X = CLAMP(X));                                                                   \
    EACH(T = X * 1.4426950408889634 + EXP_F64_MAGIC);                                     \
    EACH(N = T - EXP_F64_MAGIC);                                                          \
    EACH(R = (X - N * 6.93147180369123816490e-01) - N * 1.90821492927058770002e-10);      \
    EACH(P = R * (1.0 / 6227020800.0) + 1.0 / 479001600.0);                               \
    EACH(P = P * R + 1.0 / 39916800.0);                                                   \
    EACH(P = P * R + 1.0 / 3628800.0);                                                    \
    EACH(P = P * R + 1.0 / 362880.0);                                                     \
    EACH(P = P * R + 1.0 / 40320.0);                                                      \
    EACH(P = P * R + 1.0 / 5040.0);                                                       \
    EACH(P = P * R + 1.0 / 720.0);                                                        \
    EACH(P = P * R + 1.0 / 120.0);                                                        \
    EACH(P = P * R + 1.0 / 24.0);                                                         \
    EACH(P = P * R + 1.0 / 6.0);                                                          \
    EACH(P = P * R + 0.5);                                                                \
    EACH(P = P * R + 1.0);                                                                \
    EACH(P = P * R + 1.0);                                                                \
    EACH(X = P * POW2(T) * 0x1p-64)

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
    double t, n, r, p;
    EXP_F64_STEPS(ONCE, x, t, n, r, p, CLAMP_F64, POW2_F64);
    return x;
}

/* ------------------------------------------------------------------- logits */

typedef struct {
    double *m, *zy, *ey, *s1, *s2, *above;
    int64_t *pred;
} LogitOut;

/* the first index of a row holding v (0 if none): a vectorised min-reduction */
#define FIRST_EQUAL(NAME, T)                                                              \
    INLINE int64_t first_equal_##NAME(const T *r, Py_ssize_t C, T v) {                    \
        int64_t first = C;                                                                \
        _Pragma("omp simd reduction(min:first)")                                          \
        for (Py_ssize_t c = 0; c < C; c++) first = (r[c] == v && c < first) ? c : first;   \
        return first == C ? 0 : first;                                                    \
    }

FIRST_EQUAL(logit_rows_f32, float)
FIRST_EQUAL(logit_rows_f64, double)

#define LOGIT_ROWS(NAME, T, EXP)                                                          \
    MULTIVERSION static Py_ssize_t NAME(const T *x, Py_ssize_t n_rows, Py_ssize_t C,        \
                                        Py_ssize_t stride, const int64_t *y, LogitOut o) {  \
        Py_ssize_t irregular = 0;                                                         \
        for (Py_ssize_t i = 0; i < n_rows; i++) {                                         \
            const T *r = x + i * stride;                                                  \
            const int64_t yi = y[i];                                                      \
            const T zy = r[yi];                                                           \
            T mx = -INFINITY, above = 0;                                                  \
            _Pragma("omp simd reduction(max:mx) reduction(+:above)")                      \
            for (Py_ssize_t c = 0; c < C; c++) {                                          \
                T v = r[c];                                                               \
                mx = v > mx ? v : mx;                                                     \
                above += v > zy ? (T)1 : (T)0;                                            \
            }                                                                             \
            double s1 = 0.0, s2 = 0.0;                                                    \
            T ties = 0;                                                                   \
            _Pragma("omp simd reduction(+:s1, s2, ties)")                                 \
            for (Py_ssize_t c = 0; c < C; c++) {                                          \
                T v = r[c];                                                               \
                int top = v == mx;                                                        \
                T e = top ? (T)0 : EXP(v - mx);                                           \
                ties += top ? (T)1 : (T)0;                                                \
                double de = (double)e;                                                    \
                s1 += de;                                                                 \
                s2 += de * de;                                                            \
            }                                                                             \
            /* the maximal terms are 1 each: all but one of them join the sums */         \
            s1 += (double)ties - 1.0;                                                     \
            s2 += (double)ties - 1.0;                                                     \
            int64_t pred = yi;                                                            \
            if (!(ties == (T)1 && zy == mx)) pred = first_equal_##NAME(r, C, mx);        \
            if (!isfinite((double)mx) || !isfinite(s1) || !isfinite(s2)) irregular++;     \
            o.m[i] = (double)mx;                                                          \
            o.zy[i] = (double)zy;                                                         \
            o.ey[i] = (double)EXP(zy - mx);                                               \
            o.s1[i] = s1;                                                                 \
            o.s2[i] = s2;                                                                 \
            o.above[i] = (double)above;                                                   \
            o.pred[i] = pred;                                                             \
        }                                                                                 \
        return irregular;                                                                 \
    }

LOGIT_ROWS(logit_rows_f32, float, exp_f32)
LOGIT_ROWS(logit_rows_f64, double, exp_f64)

/* -------------------------------------------------------------------- probs */

typedef struct {
    double *m, *lo, *sum, *py, *sq, *above;
    int64_t *pred;
} ProbOut;

#define PROB_ROWS(NAME, T)                                                                \
    MULTIVERSION static Py_ssize_t NAME(const T *x, Py_ssize_t n_rows, Py_ssize_t C,        \
                                        Py_ssize_t stride, const int64_t *y, ProbOut o) {   \
        Py_ssize_t irregular = 0;                                                         \
        for (Py_ssize_t i = 0; i < n_rows; i++) {                                         \
            const T *r = x + i * stride;                                                  \
            const int64_t yi = y[i];                                                      \
            const T py = r[yi];                                                           \
            T mx = -INFINITY, mn = INFINITY;                                              \
            double sum = 0.0, sq = 0.0, above = 0.0;                                      \
            /* the label's column is left out of the squares: sum_{c != y} p_c^2 */      \
            _Pragma("omp simd reduction(max:mx) reduction(min:mn) reduction(+:sum, sq, above)") \
            for (Py_ssize_t c = 0; c < yi; c++) {                                         \
                T v = r[c];                                                               \
                double d = (double)v;                                                     \
                mx = v > mx ? v : mx;                                                     \
                mn = v < mn ? v : mn;                                                     \
                sum += d;                                                                 \
                sq += d * d;                                                              \
                above += v > py ? 1.0 : 0.0;                                              \
            }                                                                             \
            _Pragma("omp simd reduction(max:mx) reduction(min:mn) reduction(+:sum, sq, above)") \
            for (Py_ssize_t c = yi + 1; c < C; c++) {                                     \
                T v = r[c];                                                               \
                double d = (double)v;                                                     \
                mx = v > mx ? v : mx;                                                     \
                mn = v < mn ? v : mn;                                                     \
                sum += d;                                                                 \
                sq += d * d;                                                              \
                above += v > py ? 1.0 : 0.0;                                              \
            }                                                                             \
            mx = py > mx ? py : mx;                                                       \
            mn = py < mn ? py : mn;                                                       \
            sum += (double)py;                                                            \
            int64_t pred = 0;                                                             \
            while (pred < C && !(r[pred] == mx)) pred++;                                  \
            if (pred == C) pred = 0;                                                      \
            if (isnan(sum) || isnan(sq) || py != py) irregular++;                         \
            o.m[i] = (double)mx;                                                          \
            o.lo[i] = (double)mn;                                                         \
            o.sum[i] = sum;                                                               \
            o.py[i] = (double)py;                                                         \
            o.sq[i] = sq;                                                                 \
            o.above[i] = above;                                                           \
            o.pred[i] = pred;                                                             \
        }                                                                                 \
        return irregular;                                                                 \
    }

PROB_ROWS(prob_rows_f32, float)
PROB_ROWS(prob_rows_f64, double)

/* ------------------------------------------------------------------- Python */

/* The kernels as (dtype code, x, rows, C, stride, y, 7 output addresses); both Python
 * entry points parse the same arguments and differ only in the kernel and output layout. */
typedef Py_ssize_t (*rows_fn)(int code, Py_ssize_t x, Py_ssize_t n, Py_ssize_t C,
                              Py_ssize_t stride, Py_ssize_t y, const Py_ssize_t *out);

static Py_ssize_t logit_rows(int code, Py_ssize_t x, Py_ssize_t n, Py_ssize_t C,
                             Py_ssize_t stride, Py_ssize_t y, const Py_ssize_t *out) {
    LogitOut o = {(double *)out[0], (double *)out[1], (double *)out[2], (double *)out[3],
                  (double *)out[4], (double *)out[5], (int64_t *)out[6]};
    if (code == DT_F32) return logit_rows_f32((const float *)x, n, C, stride, (const int64_t *)y, o);
    return logit_rows_f64((const double *)x, n, C, stride, (const int64_t *)y, o);
}

static Py_ssize_t prob_rows(int code, Py_ssize_t x, Py_ssize_t n, Py_ssize_t C,
                            Py_ssize_t stride, Py_ssize_t y, const Py_ssize_t *out) {
    ProbOut o = {(double *)out[0], (double *)out[1], (double *)out[2], (double *)out[3],
                 (double *)out[4], (double *)out[5], (int64_t *)out[6]};
    if (code == DT_F32) return prob_rows_f32((const float *)x, n, C, stride, (const int64_t *)y, o);
    return prob_rows_f64((const double *)x, n, C, stride, (const int64_t *)y, o);
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

static PyObject *py_exp_f32(PyObject *self, PyObject *args) {
    Py_ssize_t xp, op, n;
    if (!PyArg_ParseTuple(args, "nnn", &xp, &op, &n)) return NULL;
    const float *x = (const float *)xp;
    float *out = (float *)op;
    for (Py_ssize_t i = 0; i < n; i++) out[i] = exp_f32(x[i]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"logit_rows", py_logit_rows, METH_VARARGS,
     "Per-row max, arg-max, exp-sums and rank of the label for logits; returns the number "
     "of rows with a non-finite maximum or sum."},
    {"prob_rows", py_prob_rows, METH_VARARGS,
     "Per-row max, min, sum, squares and rank of the label for probabilities; returns the "
     "number of rows with NaN."},
    {"exp_f32", py_exp_f32, METH_VARARGS, "The float32 exp of logit_rows over a buffer (tests)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_cmetrics",
                                       "crossent.metrics' per-row statistics kernels.", -1,
                                       methods};

PyMODINIT_FUNC PyInit__cmetrics(void) { return PyModule_Create(&moduledef); }
