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

enum { DT_F32 = 0, DT_F64 = 1, DT_BF16 = 2, DT_F16 = 3 };


#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64)) && \
    !defined(CROSSENT_NO_MULTIVERSION)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

#define INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- bit casts */

INLINE uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
INLINE float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint64_t d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
INLINE double u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/* ------------------------------------------------------------- exp, float32
 * Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial (its
 * truncation error is 0.1 ulp), scaled by 2^n in two steps so that results in the
 * subnormal range are rounded once, correctly. Below -104 the result is 0 (also for
 * -inf), above 88.72 it is inf; NaN stays NaN because every select tests "x < lo" or
 * "x > hi", which is false for NaN. */
INLINE float exp_f32(float x) {
    const float hi = 88.72283935546875f, lo = -104.0f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = xc * 1.44269504088896341f + magic;
    float n = t - magic;
    int32_t ni = (int32_t)(f2u(t) - f2u(magic));
    float r = xc - n * 0.693145751953125f;  /* ln2 hi */
    r = r - n * 1.428606765330187e-06f;     /* ln2 lo */
    float p = 1.9841270114e-4f;
    p = p * r + 1.3888889225e-3f;
    p = p * r + 8.3333337680e-3f;
    p = p * r + 4.1666667908e-2f;
    p = p * r + 1.6666667163e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n1 = ni >> 1, n2 = ni - n1;
    float res = p * u2f((uint32_t)(n1 + 127) << 23) * u2f((uint32_t)(n2 + 127) << 23);
    res = x > hi ? INFINITY : res;
    res = x < lo ? 0.0f : res;
    return res;
}

/* ------------------------------------------------------------- exp, float64 */
INLINE double exp_f64(double x) {
    const double hi = 709.782712893384, lo = -746.0;
    double xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double t = xc * 1.4426950408889634 + magic;
    double n = t - magic;
    int64_t ni = (int64_t)(d2u(t) - d2u(magic));
    double r = xc - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;          /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t n1 = ni >> 1, n2 = ni - n1;
    double res = p * u2d((uint64_t)(n1 + 1023) << 52) * u2d((uint64_t)(n2 + 1023) << 52);
    res = x > hi ? INFINITY : res;
    res = x < lo ? 0.0 : res;
    return res;
}

/* ------------------------------------------------- expm1 and tanh (softcap)
 * tanh(u) = sign(u) * (-expm1(-2|u|)) / (2 + expm1(-2|u|)): no cancellation near 0,
 * because expm1 is evaluated by its own Taylor series where |x| < ln2/2. */
INLINE float expm1_f32(float x) {
    float p = 2.4801587642e-5f; /* 1/8! */
    p = p * x + 1.9841270114e-4f;
    p = p * x + 1.3888889225e-3f;
    p = p * x + 8.3333337680e-3f;
    p = p * x + 4.1666667908e-2f;
    p = p * x + 1.6666667163e-1f;
    p = p * x + 0.5f;
    float small = x + x * x * p;
    float big = exp_f32(x) - 1.0f;
    return (x > -0.34657359f && x < 0.34657359f) ? small : big;
}

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

INLINE float tanh_f32(float u) {
    float a = u < 0.0f ? -u : u;
    float e = expm1_f32(-2.0f * a);
    float t = -e / (2.0f + e);
    return u < 0.0f ? -t : t;
}

INLINE double tanh_f64(double u) {
    double a = u < 0.0 ? -u : u;
    double e = expm1_f64(-2.0 * a);
    double t = -e / (2.0 + e);
    return u < 0.0 ? -t : t;
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
    char *grad;             /* gradient (storage dtype), rows of n_cols, stride grad_stride */
    Py_ssize_t grad_stride;
    int n_threads;
} Problem;

static inline size_t elsize(int dtype) { return dtype == DT_F64 ? 8 : dtype == DT_F32 ? 4 : 2; }

typedef struct {
    const Problem *pb;
    Py_ssize_t r0, r1;
    int failed;
} Task;

/*
 * The row kernel, written once for float (f32/bf16/f16 storage) and once for double.
 * LOAD(i) reads element i of the current row as the compute type; STORE(i, v) writes the
 * gradient. Pass 1 reads the row from memory (softcap applied and kept in `zbuf`);
 * pass 2 re-reads it from cache for the exp-sum, keeping the maximal terms out of the sum
 * (lse = m + log1p(rest + (top - 1)), as crossent._reference does); pass 3 writes the
 * gradient from the exponentials pass 2 left in `ebuf`.
 */
#define SIMD_REDUCE(clause) _Pragma(clause)
#define DEFINE_ROWS(NAME, T, EXP, EXPM1, TANH, LOG1P, LOAD, STORE)                         \
    MULTIVERSION static void NAME(const Problem *pb, Py_ssize_t r0, Py_ssize_t r1,           \
                                  T *restrict zbuf, T *restrict ebuf) {                      \
        const Py_ssize_t C = pb->n_cols;                                                     \
        const T eps = (T)pb->label_smoothing, zl = (T)pb->z_loss, cap = (T)pb->softcap;      \
        const T *restrict w = (const T *)pb->w;                                              \
        const int soft = pb->q != NULL, want_grad = pb->g != NULL;                           \
        const int use_zbuf = cap > 0 || pb->dtype >= DT_BF16;                                \
        const T qeps = eps / (T)C, qkeep = 1 - eps, w_sum = (T)pb->w_sum;                    \
        const size_t esz = elsize(pb->dtype);                                                \
        for (Py_ssize_t r = r0; r < r1; r++) {                                               \
            const char *xrow = pb->x + (size_t)r * pb->row_stride * esz;                     \
            const T *restrict z;                                                             \
            /* pass 1: (load, softcap), max */                                               \
            if (use_zbuf) {                                                                  \
                if (cap > 0) {                                                               \
                    SIMD_REDUCE("omp simd")                                                  \
                    for (Py_ssize_t c = 0; c < C; c++) zbuf[c] = cap * TANH(LOAD(xrow, c) / cap); \
                } else {                                                                     \
                    SIMD_REDUCE("omp simd")                                                  \
                    for (Py_ssize_t c = 0; c < C; c++) zbuf[c] = LOAD(xrow, c);              \
                }                                                                            \
                z = zbuf;                                                                    \
            } else {                                                                         \
                z = (const T *)xrow;                                                         \
            }                                                                                \
            T m = -INFINITY;                                                                 \
            int any_nan = 0;                                                                 \
            SIMD_REDUCE("omp simd reduction(max:m) reduction(|:any_nan)")                    \
            for (Py_ssize_t c = 0; c < C; c++) {                                             \
                T v = z[c];                                                                  \
                m = v > m ? v : m;                                                           \
                any_nan |= (v != v);                                                         \
            }                                                                                \
            /* the inf-safe shift: an infinite (or, with NaN, any) maximum shifts by 0 */    \
            if (!isfinite(m) || any_nan) m = 0;                                              \
            /* pass 2: sum of exp(z - m) without the maximal terms */                        \
            T rest = 0, top = 0;                                                             \
            if (want_grad) {                                                                 \
                SIMD_REDUCE("omp simd reduction(+:rest,top)")                                \
                for (Py_ssize_t c = 0; c < C; c++) {                                         \
                    T s = z[c] - m;                                                          \
                    T e = EXP(s);                                                            \
                    ebuf[c] = e;                                                             \
                    rest += s == 0 ? 0 : e;                                                  \
                    top += s == 0 ? 1 : 0;                                                   \
                }                                                                            \
            } else {                                                                         \
                SIMD_REDUCE("omp simd reduction(+:rest,top)")                                \
                for (Py_ssize_t c = 0; c < C; c++) {                                         \
                    T s = z[c] - m;                                                          \
                    T e = EXP(s);                                                            \
                    rest += s == 0 ? 0 : e;                                                  \
                    top += s == 0 ? 1 : 0;                                                   \
                }                                                                            \
            }                                                                                \
            const T *restrict qrow = soft ? (const T *)pb->q + (size_t)r * C : NULL;         \
            const int64_t yi = soft ? 0 : pb->y[r];                                          \
            const int ignored = !soft && yi < 0;                                             \
            /* sum_c a_c (m - z_c) and sum_c a_c with a = w q' (soft) or w (smoothing);     \
               0 * inf = 0 where a_c = 0 and z_c = -inf */                                   \
            T sw = 0, swz = 0;                                                               \
            if (soft) {                                                                      \
                SIMD_REDUCE("omp simd reduction(+:sw,swz)")                                  \
                for (Py_ssize_t c = 0; c < C; c++) {                                         \
                    T a = qkeep * qrow[c] + qeps;                                            \
                    if (w) a = a * w[c];                                                     \
                    T d = m - z[c];                                                          \
                    swz += (a == 0 && d == INFINITY) ? 0 : a * d;                            \
                    sw += a;                                                                 \
                }                                                                            \
            } else if (eps > 0 && !ignored) {                                                \
                SIMD_REDUCE("omp simd reduction(+:swz)")                                     \
                for (Py_ssize_t c = 0; c < C; c++) {                                         \
                    T a = w ? w[c] : 1;                                                      \
                    T d = m - z[c];                                                          \
                    swz += (a == 0 && d == INFINITY) ? 0 : a * d;                            \
                }                                                                            \
            }                                                                                \
            const T lse_s = LOG1P(rest + (top - 1));                                         \
            const T lse = m + lse_s;                                                         \
            ((T *)pb->lse)[r] = lse;                                                         \
            T loss = 0, w_y = 1, s_y = 0, coef = 0;                                          \
            if (soft) {                                                                      \
                loss = lse_s * sw + swz;                                                     \
                if (zl > 0) loss += zl * (lse * lse);                                        \
                coef = zl > 0 ? sw + 2 * zl * lse : sw;                                      \
            } else if (!ignored) {                                                           \
                s_y = z[yi] - m;                                                             \
                w_y = w ? w[yi] : 1;                                                         \
                if (eps < 1) {                                                               \
                    T nll = lse_s - s_y;                                                     \
                    T term = (w_y == 0 && nll == INFINITY) ? 0 : w_y * nll;                  \
                    loss = eps > 0 ? qkeep * term : term;                                    \
                }                                                                            \
                if (eps > 0) loss += qeps * (w_sum * lse_s + swz);                           \
                if (zl > 0) {                                                                \
                    T l2 = lse * lse;                                                        \
                    loss += zl * ((w_y == 0 && l2 == INFINITY) ? 0 : w_y * l2);              \
                }                                                                            \
                coef = qkeep * w_y + qeps * w_sum;                                           \
                if (zl > 0) coef += 2 * zl * w_y * lse;                                      \
            }                                                                                \
            ((T *)pb->loss)[r] = loss;                                                       \
            if (!want_grad) continue;                                                        \
            /* pass 3: the gradient, from the exponentials in ebuf */                       \
            char *grow = pb->grad + (size_t)r * pb->grad_stride * esz;                       \
            if (ignored) {                                                                   \
                memset(grow, 0, (size_t)C * esz);                                            \
                continue;                                                                    \
            }                                                                                \
            const T gr = ((const T *)pb->g)[r];                                              \
            const T pc = EXP(-lse_s) * coef * gr;                                            \
            if (soft) {                                                                      \
                SIMD_REDUCE("omp simd")                                                      \
                for (Py_ssize_t c = 0; c < C; c++) {                                         \
                    T a = qkeep * qrow[c] + qeps;                                            \
                    if (w) a = a * w[c];                                                     \
                    ebuf[c] = ebuf[c] * pc - a * gr;                                         \
                }                                                                            \
            } else if (eps > 0) {                                                            \
                const T sub = qeps * gr;                                                     \
                SIMD_REDUCE("omp simd")                                                      \
                for (Py_ssize_t c = 0; c < C; c++)                                           \
                    ebuf[c] = ebuf[c] * pc - (w ? w[c] * sub : sub);                         \
            } else {                                                                         \
                SIMD_REDUCE("omp simd")                                                      \
                for (Py_ssize_t c = 0; c < C; c++) ebuf[c] = ebuf[c] * pc;                   \
            }                                                                                \
            if (!soft) {                                                                     \
                /* p_y - 1 = expm1(s_y - lse_s): exact for a confident row */                \
                T p_y = EXP(s_y - lse_s);                                                    \
                ebuf[yi] = gr * (qkeep * w_y * EXPM1(s_y - lse_s) + p_y * (coef - qkeep * w_y) - \
                                 qeps * w_y);                                                \
            }                                                                                \
            if (cap > 0) {                                                                   \
                SIMD_REDUCE("omp simd")                                                      \
                for (Py_ssize_t c = 0; c < C; c++) {                                         \
                    T t = z[c] / cap;                                                        \
                    ebuf[c] *= (1 - t * t);                                                  \
                }                                                                            \
            }                                                                                \
            SIMD_REDUCE("omp simd")                                                          \
            for (Py_ssize_t c = 0; c < C; c++) STORE(grow, c, ebuf[c]);                      \
        }                                                                                    \
    }

#define LOAD_F32(row, c) (((const float *)(row))[c])
#define STORE_F32(row, c, v) (((float *)(row))[c] = (v))
#define LOAD_F64(row, c) (((const double *)(row))[c])
#define STORE_F64(row, c, v) (((double *)(row))[c] = (v))
#define LOAD_BF16(row, c) bf16_to_f32(((const uint16_t *)(row))[c])
#define STORE_BF16(row, c, v) (((uint16_t *)(row))[c] = f32_to_bf16(v))

DEFINE_ROWS(rows_f32, float, exp_f32, expm1_f32, tanh_f32, log1pf, LOAD_F32, STORE_F32)
DEFINE_ROWS(rows_f64, double, exp_f64, expm1_f64, tanh_f64, log1p, LOAD_F64, STORE_F64)
DEFINE_ROWS(rows_bf16, float, exp_f32, expm1_f32, tanh_f32, log1pf, LOAD_BF16, STORE_BF16)
#if HAVE_F16
#define LOAD_F16(row, c) f16_to_f32(((const uint16_t *)(row))[c])
#define STORE_F16(row, c, v) (((uint16_t *)(row))[c] = f32_to_f16(v))
DEFINE_ROWS(rows_f16, float, exp_f32, expm1_f32, tanh_f32, log1pf, LOAD_F16, STORE_F16)
#endif

static void *run_task(void *arg) {
    Task *t = (Task *)arg;
    const Problem *pb = t->pb;
    size_t esz = pb->dtype == DT_F64 ? 8 : 4;
    size_t n = (size_t)(pb->n_cols > 0 ? pb->n_cols : 1);
    void *zbuf = malloc(n * esz), *ebuf = malloc(n * esz);
    if (!zbuf || !ebuf) {
        free(zbuf);
        free(ebuf);
        t->failed = 1;
        return NULL;
    }
    switch (pb->dtype) {
    case DT_F32: rows_f32(pb, t->r0, t->r1, zbuf, ebuf); break;
    case DT_F64: rows_f64(pb, t->r0, t->r1, zbuf, ebuf); break;
    case DT_BF16: rows_bf16(pb, t->r0, t->r1, zbuf, ebuf); break;
#if HAVE_F16
    case DT_F16: rows_f16(pb, t->r0, t->r1, zbuf, ebuf); break;
#endif
    default: t->failed = 1;
    }
    free(zbuf);
    free(ebuf);
    return NULL;
}

/* Split rows evenly over threads; the calling thread takes the first share. */
static int run_parallel(const Problem *pb) {
    int nt = pb->n_threads < 1 ? 1 : pb->n_threads;
    if (nt > 256) nt = 256;
    if ((Py_ssize_t)nt > pb->n_rows) nt = pb->n_rows > 0 ? (int)pb->n_rows : 1;
    Task tasks[256];
    pthread_t threads[256];
    int started[256] = {0};
    for (int i = 0; i < nt; i++) {
        tasks[i].pb = pb;
        tasks[i].r0 = pb->n_rows * i / nt;
        tasks[i].r1 = pb->n_rows * (i + 1) / nt;
        tasks[i].failed = 0;
    }
    for (int i = 1; i < nt; i++)
        started[i] = pthread_create(&threads[i], NULL, run_task, &tasks[i]) == 0;
    run_task(&tasks[0]);
    int failed = tasks[0].failed;
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(threads[i], NULL);
        else run_task(&tasks[i]); /* could not start a thread: do its share here */
        failed |= tasks[i].failed;
    }
    return failed;
}

static PyObject *py_softmax_ce(PyObject *self, PyObject *args) {
    Problem pb;
    unsigned long long x, y, q, w, loss, lse, g, grad;
    memset(&pb, 0, sizeof pb);
    if (!PyArg_ParseTuple(args, "iKnnnKKKddddKKKKni", &pb.dtype, &x, &pb.n_rows, &pb.n_cols,
                          &pb.row_stride, &y, &q, &w, &pb.label_smoothing, &pb.z_loss,
                          &pb.softcap, &pb.w_sum, &loss, &lse, &g, &grad, &pb.grad_stride,
                          &pb.n_threads))
        return NULL;
    if (pb.dtype < DT_F32 || pb.dtype > DT_F16 || (pb.dtype == DT_F16 && !HAVE_F16)) {
        PyErr_Format(PyExc_ValueError, "unsupported dtype code %d", pb.dtype);
        return NULL;
    }
    if (!y && !q) {
        PyErr_SetString(PyExc_ValueError, "need class indices or soft targets");
        return NULL;
    }
    pb.x = (const char *)(uintptr_t)x;
    pb.y = (const int64_t *)(uintptr_t)y;
    pb.q = (const char *)(uintptr_t)q;
    pb.w = (const char *)(uintptr_t)w;
    pb.loss = (char *)(uintptr_t)loss;
    pb.lse = (char *)(uintptr_t)lse;
    pb.g = (const char *)(uintptr_t)g;
    pb.grad = (char *)(uintptr_t)grad;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = run_parallel(&pb);
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Vectorised exp over a float32/float64 buffer: exposed so the tests can compare it with
 * libm over every float32 input of interest. */
MULTIVERSION static void exp_buf_f32(const float *x, float *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = exp_f32(x[i]);
}
MULTIVERSION static void exp_buf_f64(const double *x, double *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = exp_f64(x[i]);
}
MULTIVERSION static void expm1_buf_f32(const float *x, float *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = expm1_f32(x[i]);
}
MULTIVERSION static void tanh_buf_f32(const float *x, float *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = tanh_f32(x[i]);
}

static PyObject *py_elementwise(PyObject *self, PyObject *args) {
    const char *name;
    unsigned long long x, out;
    Py_ssize_t n;
    int dtype;
    if (!PyArg_ParseTuple(args, "siKKn", &name, &dtype, &x, &out, &n)) return NULL;
    void *px = (void *)(uintptr_t)x, *po = (void *)(uintptr_t)out;
    if (strcmp(name, "exp") == 0 && dtype == DT_F32) exp_buf_f32(px, po, n);
    else if (strcmp(name, "exp") == 0 && dtype == DT_F64) exp_buf_f64(px, po, n);
    else if (strcmp(name, "expm1") == 0 && dtype == DT_F32) expm1_buf_f32(px, po, n);
    else if (strcmp(name, "tanh") == 0 && dtype == DT_F32) tanh_buf_f32(px, po, n);
    else {
        PyErr_Format(PyExc_ValueError, "no elementwise kernel %s for dtype %d", name, dtype);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return PyUnicode_FromString("x86-64-v4 (AVX-512)");
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return PyUnicode_FromString("x86-64-v3 (AVX2+FMA)");
    return PyUnicode_FromString("x86-64 (SSE2)");
#elif defined(__aarch64__)
    return PyUnicode_FromString("aarch64 (NEON)");
#else
    return PyUnicode_FromString("generic");
#endif
}

static PyMethodDef methods[] = {
    {"softmax_ce", py_softmax_ce, METH_VARARGS,
     "Fused softmax cross-entropy (loss, lse and optionally the gradient) over rows."},
    {"elementwise", py_elementwise, METH_VARARGS, "The kernels' exp/expm1/tanh over a buffer."},
    {"isa", py_isa, METH_NOARGS, "The instruction set the multi-versioned kernels use."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_ckernels",
                                       "crossent's fused CPU kernels.", -1, methods};

PyMODINIT_FUNC PyInit__ckernels(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    PyModule_AddIntConstant(m, "HAVE_F16", HAVE_F16);
    return m;
}
