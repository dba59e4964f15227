/*
 * Row kernels of crossent._cmetrics, written once and instantiated per dtype and vector
 * width. _cmetrics.c includes this file once per (instruction set, dtype) after defining:
 *   SFX           name suffix (f32_v4, f64_base, ...)
 *   ISA_ATTR      the target attribute of the kernels (or nothing)
 *   IS_F32        1 for float32 rows (the float32 exp), 0 for float64
 *   T, VT, VI, VU the element type, its vector, the integer vectors of the same lanes
 *   VD            the vector of doubles as wide as VT (the float64 sums)
 *   IT, IT_MAX    the integer lane type (comparison masks, column indices), its maximum
 *   VL, IOTA      lanes per vector, (VI){0, 1, ..., VL - 1}
 *   PASS2_U       blocks per step of the exp pass
 *   MASKLOAD(p, n)  optional: the first n < VL elements at p, zeros after, by a masked load
 * and undefines them (but ISA_ATTR and PASS2_U) at its end, MASKLOAD included.
 *
 * A row is processed in blocks of VL elements: `full` elements in whole blocks, then, when
 * C is not a multiple of VL, one more block, the row's last VL elements (C >= VL: it
 * overlaps the previous block, and `fresh` masks off the lanes already counted) or, for a
 * row shorter than a vector, its C elements padded with zeros (`fresh`: the first C
 * lanes). Nothing is read outside the row.
 *
 * The first arg-max comes from the max pass: each lane keeps its maximum and the column
 * where it first reached it (strictly greater values only replace it), so the smallest
 * such column among the lanes holding the row's maximum is the first index holding it (an
 * overlapping last block revisits columns, in other lanes, never replacing a smaller one).
 */

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define VLOAD CAT(vload, SFX)
#define SPLAT CAT(splat, SFX)
#define SPLATI CAT(splati, SFX)
#define HMAX CAT(hmax, SFX)
#define HMIN CAT(hmin, SFX)
#define HMINI CAT(hmini, SFX)
#define HSUMI CAT(hsumi, SFX)
#define HSUMD CAT(hsumd, SFX)
#define VEXPN CAT(vexpn, SFX)
#define WIDEN CAT(widen, SFX)
#define GEOMETRY CAT(Geometry, SFX)
#define ROW_GEOMETRY CAT(row_geometry, SFX)
#define LOGIT_PASS1 CAT(logit_pass1, SFX)
#define LOGIT_PASS2 CAT(logit_pass2, SFX)
#define LOGIT_PASS2_ROWS CAT(logit_pass2_rows, SFX)
#define LOGIT_GROUP CAT(logit_group, SFX)
#define LOGIT_ROWS CAT(logit_rows, SFX)
#define PROB_BLOCK CAT(prob_block, SFX)
#define PROB_ROWS CAT(prob_rows, SFX)
#define EXP_BUFFER CAT(exp_buffer, SFX)
/* float32 lanes widen into two vectors of doubles, float64 lanes are summed as they are */
#define NACC (IS_F32 ? 2 : 1)

INLINE VT VLOAD(const T *p) {
    VT v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* the first n < VL elements, then zeros (only in the kernels: MASKLOAD, where defined, is an
 * intrinsic that inlines only into functions of its instruction set) */
#ifdef MASKLOAD
#define VLOAD_PART(p, n) MASKLOAD(p, n)
#else
#define VLOAD_PART CAT(vload_part, SFX)
INLINE VT VLOAD_PART(const T *p, Py_ssize_t n) {
    T t[VL];
    for (int j = 0; j < VL; j++) t[j] = j < n ? p[j] : (T)0;
    VT v;
    memcpy(&v, t, sizeof v);
    return v;
}
#endif

/* x in every lane. Written as arithmetic on a zero vector because GCC 12 builds
 * initialisers ({x, x, ...}) and even (VI){0} + x lane by lane, with VL masked broadcasts,
 * in AVX-512 code of a function with a target attribute; these forms give one broadcast.
 * 0 + x turns -0.0 into +0.0, which no comparison or difference here can tell apart. */
INLINE VT SPLAT(T x) { return (VT){0} + x; }
INLINE VI SPLATI(IT x) { return (VI){0} - (IT)(-x); }

/* Horizontal reductions: fold the vector onto its halves down to 16 bytes (one shuffle and
 * one operation a step), then the last 2 or 4 lanes in scalar; no NaN reaches them. */
#ifndef HREDUCE
#define VOP_MAX(a, b) SEL(__typeof__((a) > (b)), (a) > (b), a, b)
#define VOP_MIN(a, b) SEL(__typeof__((a) < (b)), (a) < (b), a, b)
#define VOP_ADD(a, b) ((a) + (b))
#define SOP_MAX(a, b) ((b) > (a) ? (b) : (a))
#define SOP_MIN(a, b) ((b) < (a) ? (b) : (a))
#define SOP_ADD(a, b) ((a) + (b))
#define HREDUCE(NAME, ET, VTYPE, OP)                                                      \
    INLINE ET NAME(VTYPE v) {                                                             \
        typedef ET h32 __attribute__((vector_size(32)));                                  \
        typedef ET h16 __attribute__((vector_size(16)));                                  \
        h16 q;                                                                            \
        if (sizeof(VTYPE) == 64) {                                                        \
            h32 a, b;                                                                     \
            memcpy(&a, &v, 32);                                                           \
            memcpy(&b, (const char *)&v + 32, 32);                                        \
            a = VOP_##OP(a, b);                                                           \
            h16 c, d;                                                                     \
            memcpy(&c, &a, 16);                                                           \
            memcpy(&d, (const char *)&a + 16, 16);                                        \
            q = VOP_##OP(c, d);                                                           \
        } else if (sizeof(VTYPE) == 32) {                                                 \
            h16 c, d;                                                                     \
            memcpy(&c, &v, 16);                                                           \
            memcpy(&d, (const char *)&v + 16, 16);                                        \
            q = VOP_##OP(c, d);                                                           \
        } else {                                                                          \
            memcpy(&q, &v, 16);                                                           \
        }                                                                                 \
        ET r = q[0];                                                                      \
        for (int j = 1; j < (int)(16 / sizeof(ET)); j++) r = SOP_##OP(r, q[j]);           \
        return r;                                                                         \
    }
#endif
HREDUCE(HMAX, T, VT, MAX)
HREDUCE(HMIN, T, VT, MIN)
HREDUCE(HMINI, IT, VI, MIN)
HREDUCE(HSUMI, IT, VI, ADD)
HREDUCE(HSUMD, double, VD, ADD)

#if IS_F32
#define EXP_STEPS_ EXP_F32_STEPS
#define EXP_LO_ EXP_F32_LO
#define EXPONENT_SHIFT_ 23
#define SEXP_ exp_f32
#else
#define EXP_STEPS_ EXP_F64_STEPS
#define EXP_LO_ EXP_F64_LO
#define EXPONENT_SHIFT_ 52
#define SEXP_ exp_f64
#endif
#define VCLAMP(x) SEL(VI, (x) < lo, lo, x)
#define VPOW2(t) ((VT)((VU)(t) << EXPONENT_SHIFT_))
INLINE void VEXPN(VT *x, int U) {
    const VT lo = (VT){0} + EXP_LO_;
    VT t[EXP_UMAX], n[EXP_UMAX], r[EXP_UMAX], r2[EXP_UMAX], q[EXP_UMAX];
    EXP_STEPS_(EACH_U, x[u], t[u], n[u], r[u], r2[u], q[u], VCLAMP, VPOW2);
}
#undef VCLAMP
#undef EXP_STEPS_
#undef EXP_LO_
#undef EXPONENT_SHIFT_
#undef VPOW2

/* The lanes as NACC vectors of doubles (exact). A loop, which the SLP vectoriser makes
 * vcvtps2pd ymm -> zmm of: GCC 12 splits __builtin_convertvector of half vectors into xmm
 * pieces (8 instructions for 16 floats, not 3). */
INLINE void WIDEN(VT v, VD d[NACC]) {
    T a[VL];
    double b[VL];
    memcpy(a, &v, sizeof a);
    for (int j = 0; j < VL; j++) b[j] = (double)a[j];
    memcpy(d, b, sizeof b);
}

/* the block layout of rows of C elements (see above) and the prefetch distance */
typedef struct {
    Py_ssize_t full, last, ahead;
    int has_last;
    VI fresh, last_idx; /* last_idx: the column of each lane of the last block */
} GEOMETRY;

INLINE GEOMETRY ROW_GEOMETRY(Py_ssize_t C, Py_ssize_t stride) {
    GEOMETRY g;
    const VI iota = IOTA;
    g.full = C - C % VL;
    g.has_last = g.full < C;
    g.last = C >= VL ? C - VL : 0;
    g.fresh = C >= VL ? (VI)(iota >= SPLATI((IT)(g.full - g.last))) : (VI)(iota < SPLATI((IT)C));
    g.last_idx = iota + SPLATI((IT)g.last);
    /* The second pass over a row (from L1) prefetches the row PREFETCH_BYTES or more ahead,
     * block by block (the hardware prefetchers stop at page boundaries, and the pages of a
     * memory-mapped file are scattered). Rows longer than PREFETCH_MAX_ROW are read from L2
     * on the second pass anyway: no prefetch (distance 0: the current block). */
    const size_t row_bytes = (size_t)C * sizeof(T);
    g.ahead = 0;
    if (row_bytes <= PREFETCH_MAX_ROW)
        g.ahead = stride * (Py_ssize_t)((PREFETCH_BYTES + row_bytes - 1) / row_bytes);
    return g;
}

/* ------------------------------------------------------------------- logits */

/* max, its first index and #{v > z_y} over the lanes in `fresh` (idx: the lanes' columns) */
INLINE void LOGIT_PASS1(VT v, VI idx, VI fresh, VT vzy, VT *vmax, VI *vargmax, VI *vabove) {
    const VI gt = (VI)(v > *vmax) & fresh;
    *vmax = SEL(VI, gt, v, *vmax);
    *vargmax = SEL(VI, gt, idx, *vargmax);
    *vabove -= (VI)(v > vzy) & fresh; /* a true comparison is -1 */
}

/* e = exp(v - m) summed in float64 (and squared) but for the maximal terms, counted apart;
 * U blocks at once (their exps interleaved), the lanes in `fresh` */
INLINE void LOGIT_PASS2(const T *p, int U, VI fresh, VT vm, VD s1[NACC], VD s2[NACC],
                        VI *vties) {
    VT v[EXP_UMAX], e[EXP_UMAX];
    VI top[EXP_UMAX];
    for (int u = 0; u < U; u++) {
        v[u] = VLOAD(p + u * VL);
        top[u] = (VI)(v[u] == vm) & fresh;
        e[u] = v[u] - vm;
    }
    VEXPN(e, U);
    for (int u = 0; u < U; u++) {
        e[u] = (VT)((VI)e[u] & (fresh & ~top[u]));
        *vties -= top[u];
        VD d[NACC];
        WIDEN(e[u], d);
        for (int k = 0; k < NACC; k++) {
            s1[k] += d[k];
            s2[k] += d[k] * d[k]; /* exact for float32 e: a 48-bit product */
        }
    }
}

/* Pass 2 of one block of each of R rows (v[k], maximum vm[k]): their exps interleaved. */
INLINE void LOGIT_PASS2_ROWS(const VT *v, int R, VI fresh, const VT *vm, VD (*s1)[NACC],
                             VD (*s2)[NACC], VI *vties) {
    VT e[EXP_UMAX];
    VI keep[EXP_UMAX];
    for (int k = 0; k < R; k++) {
        const VI top = (VI)(v[k] == vm[k]) & fresh;
        vties[k] -= top;
        keep[k] = fresh & ~top;
        e[k] = v[k] - vm[k];
    }
    VEXPN(e, R);
    for (int k = 0; k < R; k++) {
        VD d[NACC];
        WIDEN((VT)((VI)e[k] & keep[k]), d);
        for (int a = 0; a < NACC; a++) {
            s1[k][a] += d[a];
            s2[k][a] += d[a] * d[a];
        }
    }
}

/* GROUP_ROWS rows at once, for short rows: a row of a few blocks is one dependency chain
 * (max, then exp, then sums) too short for the out-of-order core to overlap with the next
 * row's, so the rows of a group go through each step together. */
ISA_ATTR static Py_ssize_t LOGIT_GROUP(const T *x, Py_ssize_t i0, Py_ssize_t C,
                                       Py_ssize_t stride, const int64_t *y, const GEOMETRY *g,
                                       LogitOut o) {
    enum { R = GROUP_ROWS };
    const VI iota = IOTA, zero = {0}, all = zero - 1, no_index = zero + IT_MAX;
    const T *r[R];
    T zy[R], mx[R];
    VT vzy[R], vmax[R], vlast[R], vm[R];
    VI vargmax[R], vabove[R], vties[R];
    VD s1v[R][NACC], s2v[R][NACC];
    for (int k = 0; k < R; k++) {
        r[k] = x + (i0 + k) * stride;
        zy[k] = r[k][y[i0 + k]];
        vzy[k] = SPLAT(zy[k]);
        vmax[k] = (VT){0} - INFINITY;
        vlast[k] = (VT){0};
        vargmax[k] = vabove[k] = vties[k] = zero;
        for (int a = 0; a < NACC; a++) s1v[k][a] = s2v[k][a] = (VD){0};
    }
    VI idx = iota;
    for (Py_ssize_t c = 0; c < g->full; c += VL, idx += VL)
        for (int k = 0; k < R; k++)
            LOGIT_PASS1(VLOAD(r[k] + c), idx, all, vzy[k], &vmax[k], &vargmax[k], &vabove[k]);
    if (g->has_last)
        for (int k = 0; k < R; k++) {
            vlast[k] = C >= VL ? VLOAD(r[k] + g->last) : VLOAD_PART(r[k], C);
            LOGIT_PASS1(vlast[k], g->last_idx, g->fresh, vzy[k], &vmax[k], &vargmax[k],
                        &vabove[k]);
        }
    int64_t pred[R];
    for (int k = 0; k < R; k++) {
        mx[k] = HMAX(vmax[k]);
        vm[k] = SPLAT(mx[k]);
        pred[k] = HMINI(SEL(VI, (VI)(vmax[k] == vm[k]), vargmax[k], no_index));
    }
    for (Py_ssize_t c = 0; c < g->full; c += VL) {
        VT v[R];
        for (int k = 0; k < R; k++) {
            __builtin_prefetch(r[k] + c + g->ahead);
            v[k] = VLOAD(r[k] + c);
        }
        LOGIT_PASS2_ROWS(v, R, all, vm, s1v, s2v, vties);
    }
    if (g->has_last) {
        for (int k = 0; k < R; k++) __builtin_prefetch(r[k] + g->last + g->ahead);
        LOGIT_PASS2_ROWS(vlast, R, g->fresh, vm, s1v, s2v, vties);
    }
    /* e_y of the R rows in one vector exp (the scalar exps' dependency chains, one after
       another, took a third of the time at C = 5) */
    enum { NV = (R + VL - 1) / VL };
    T ey[NV * VL];
    for (int j = 0; j < R; j++) ey[j] = zy[j] - mx[j];
    for (int j = R; j < NV * VL; j++) ey[j] = 0;
    {
        VT ev[NV];
        memcpy(ev, ey, sizeof ev);
        VEXPN(ev, NV);
        memcpy(ey, ev, sizeof ev);
    }
    Py_ssize_t irregular = 0;
    for (int k = 0; k < R; k++) {
        const Py_ssize_t i = i0 + k;
        for (int a = 1; a < NACC; a++) {
            s1v[k][0] += s1v[k][a];
            s2v[k][0] += s2v[k][a];
        }
        const double ties = (double)HSUMI(vties[k]);
        const double s1 = HSUMD(s1v[k][0]) + (ties - 1.0);
        const double s2 = HSUMD(s2v[k][0]) + (ties - 1.0);
        if (!isfinite((double)mx[k]) || !isfinite(s1) || !isfinite(s2)) irregular++;
        o.m[i] = (double)mx[k];
        o.zy[i] = (double)zy[k];
        o.ey[i] = (double)ey[k];
        o.s1[i] = s1;
        o.s2[i] = s2;
        o.above[i] = (double)HSUMI(vabove[k]);
        o.pred[i] = pred[k];
    }
    return irregular;
}

ISA_ATTR static Py_ssize_t LOGIT_ROWS(const T *x, Py_ssize_t n_rows, Py_ssize_t C,
                                      Py_ssize_t stride, const int64_t *y, LogitOut o) {
    const VI iota = IOTA, zero = {0}, all = zero - 1, no_index = zero + IT_MAX;
    const VT minus_inf = (VT){0} - INFINITY;
    const GEOMETRY g = ROW_GEOMETRY(C, stride);
    Py_ssize_t irregular = 0, i = 0;
    if (C <= GROUP_MAX_BLOCKS * VL)
        for (; i + GROUP_ROWS <= n_rows; i += GROUP_ROWS)
            irregular += LOGIT_GROUP(x, i, C, stride, y, &g, o);
    for (; i < n_rows; i++) {
        const T *r = x + i * stride;
        const int64_t yi = y[i];
        const T zy = r[yi];
        const VT vzy = SPLAT(zy);
        /* pass 1 (from memory): the maximum, its first index, the classes above the label */
        VT vmax = minus_inf, vlast = {0};
        VI vargmax = zero, vabove = zero, idx = iota;
        for (Py_ssize_t c = 0; c < g.full; c += VL, idx += VL)
            LOGIT_PASS1(VLOAD(r + c), idx, all, vzy, &vmax, &vargmax, &vabove);
        if (g.has_last) {
            vlast = C >= VL ? VLOAD(r + g.last) : VLOAD_PART(r, C);
            LOGIT_PASS1(vlast, g.last_idx, g.fresh, vzy, &vmax, &vargmax, &vabove);
        }
        const T mx = HMAX(vmax);
        const VT vm = SPLAT(mx);
        const int64_t pred = HMINI(SEL(VI, (VI)(vmax == vm), vargmax, no_index));
        /* pass 2 (from L1): the exp-sums */
        VD s1v[NACC], s2v[NACC];
        for (int k = 0; k < NACC; k++) s1v[k] = s2v[k] = (VD){0};
        VI vties = zero;
        Py_ssize_t c = 0;
        for (; c + PASS2_U * VL <= g.full; c += PASS2_U * VL) {
            for (int u = 0; u < PASS2_U; u++) __builtin_prefetch(r + c + u * VL + g.ahead);
            LOGIT_PASS2(r + c, PASS2_U, all, vm, s1v, s2v, &vties);
        }
        for (; c < g.full; c += VL) {
            __builtin_prefetch(r + c + g.ahead);
            LOGIT_PASS2(r + c, 1, all, vm, s1v, s2v, &vties);
        }
        if (g.has_last) {
            __builtin_prefetch(r + g.last + g.ahead);
            T buf[VL]; /* vlast, in memory for LOGIT_PASS2 (a register move once inlined) */
            memcpy(buf, &vlast, sizeof buf);
            LOGIT_PASS2(buf, 1, g.fresh, vm, s1v, s2v, &vties);
        }
        for (int k = 1; k < NACC; k++) {
            s1v[0] += s1v[k];
            s2v[0] += s2v[k];
        }
        /* the maximal terms are 1 each: all but one of them join the sums */
        const double ties = (double)HSUMI(vties);
        const double s1 = HSUMD(s1v[0]) + (ties - 1.0);
        const double s2 = HSUMD(s2v[0]) + (ties - 1.0);
        if (!isfinite((double)mx) || !isfinite(s1) || !isfinite(s2)) irregular++;
        o.m[i] = (double)mx;
        o.zy[i] = (double)zy;
        o.ey[i] = (double)SEXP_(zy - mx);
        o.s1[i] = s1;
        o.s2[i] = s2;
        o.above[i] = (double)HSUMI(vabove);
        o.pred[i] = pred;
    }
    return irregular;
}

/* -------------------------------------------------------------------- probs */

/* max and its first index, min, #{v > p_y}, sum over the lanes in `fresh`; the squares
 * over the lanes in `sq` (fresh but the label's column) */
INLINE void PROB_BLOCK(VT v, VI idx, VI fresh, VI sq, VT vpy, VT *vmax, VI *vargmax,
                       VT *vmin, VI *vabove, VD sum[NACC], VD sqs[NACC]) {
    const VI gt = (VI)(v > *vmax) & fresh;
    *vmax = SEL(VI, gt, v, *vmax);
    *vargmax = SEL(VI, gt, idx, *vargmax);
    *vmin = SEL(VI, (VI)(v < *vmin) & fresh, v, *vmin);
    *vabove -= (VI)(v > vpy) & fresh;
    VD d[NACC], q[NACC];
    WIDEN((VT)((VI)v & fresh), d);
    WIDEN((VT)((VI)v & sq), q); /* the same conversion where sq == fresh: folded */
    for (int k = 0; k < NACC; k++) {
        sum[k] += d[k];
        sqs[k] += q[k] * q[k];
    }
}

ISA_ATTR static Py_ssize_t PROB_ROWS(const T *x, Py_ssize_t n_rows, Py_ssize_t C,
                                     Py_ssize_t stride, const int64_t *y, ProbOut o) {
    const VI iota = IOTA, zero = {0}, all = zero - 1, no_index = zero + IT_MAX;
    const VT minus_inf = (VT){0} - INFINITY, plus_inf = (VT){0} + INFINITY;
    const GEOMETRY g = ROW_GEOMETRY(C, stride);
    Py_ssize_t irregular = 0;
    for (Py_ssize_t i = 0; i < n_rows; i++) {
        const T *r = x + i * stride;
        const int64_t yi = y[i];
        const T py = r[yi];
        const VT vpy = SPLAT(py);
        const VI vy = SPLATI((IT)yi);
        VT vmax = minus_inf, vmin = plus_inf;
        VI vargmax = zero, vabove = zero, idx = iota;
        VD sum[NACC], sq[NACC];
        for (int k = 0; k < NACC; k++) sum[k] = sq[k] = (VD){0};
        /* one pass; the label's column is left out of the squares (sum_{c != y} p_c^2,
           not sum - p_y^2, which cancels for a confident row) in the block holding it */
        for (Py_ssize_t c = 0; c < g.full; c += VL, idx += VL) {
            __builtin_prefetch(r + c + g.ahead);
            const VT v = VLOAD(r + c);
            if (yi - c >= 0 && yi - c < VL)
                PROB_BLOCK(v, idx, all, (VI)(idx != vy), vpy, &vmax, &vargmax, &vmin, &vabove,
                           sum, sq);
            else
                PROB_BLOCK(v, idx, all, all, vpy, &vmax, &vargmax, &vmin, &vabove, sum, sq);
        }
        if (g.has_last) {
            __builtin_prefetch(r + g.last + g.ahead);
            const VT v = C >= VL ? VLOAD(r + g.last) : VLOAD_PART(r, C);
            PROB_BLOCK(v, g.last_idx, g.fresh, g.fresh & (VI)(g.last_idx != vy), vpy, &vmax,
                       &vargmax, &vmin, &vabove, sum, sq);
        }
        for (int k = 1; k < NACC; k++) {
            sum[0] += sum[k];
            sq[0] += sq[k];
        }
        const T mx = HMAX(vmax);
        const int64_t pred = HMINI(SEL(VI, (VI)(vmax == SPLAT(mx)), vargmax, no_index));
        const double s = HSUMD(sum[0]), q = HSUMD(sq[0]);
        if (isnan(s) || isnan(q) || py != py) irregular++;
        o.m[i] = (double)mx;
        o.lo[i] = (double)HMIN(vmin);
        o.sum[i] = s;
        o.py[i] = (double)py;
        o.sq[i] = q;
        o.above[i] = (double)HSUMI(vabove);
        o.pred[i] = pred;
    }
    return irregular;
}

/* the vector exp over a buffer (tests: the same bits as the scalar exp, and for float32 as
 * NumPy's replica) */
ISA_ATTR static void EXP_BUFFER(const T *x, T *out, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        VT e[2] = {VLOAD(x + i), VLOAD(x + i + VL)};
        VEXPN(e, 2);
        memcpy(out + i, e, sizeof e);
    }
    for (; i < n; i += VL) {
        const Py_ssize_t k = n - i < VL ? n - i : VL;
        T t[VL];
        VT v = k == VL ? VLOAD(x + i) : VLOAD_PART(x + i, k);
        VEXPN(&v, 1);
        memcpy(t, &v, sizeof t);
        memcpy(out + i, t, (size_t)k * sizeof(T));
    }
}

#undef CAT2
#undef CAT
#undef VLOAD
#undef VLOAD_PART
#undef SPLAT
#undef SPLATI
#undef HMAX
#undef HMIN
#undef HMINI
#undef HSUMI
#undef HSUMD
#undef VEXPN
#undef SEXP_
#undef WIDEN
#undef GEOMETRY
#undef ROW_GEOMETRY
#undef LOGIT_PASS1
#undef LOGIT_PASS2
#undef LOGIT_PASS2_ROWS
#undef LOGIT_GROUP
#undef LOGIT_ROWS
#undef PROB_BLOCK
#undef PROB_ROWS
#undef EXP_BUFFER
#undef NACC
#undef SFX
#undef IS_F32
#undef T
#undef VT
#undef VI
#undef VU
#undef VD
#undef IT
#undef IT_MAX
#undef VL
#undef IOTA
#undef MASKLOAD
