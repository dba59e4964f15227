/*
 * Row kernels of crossent._ckernels, written once and instantiated per storage type.
 * _ckernels.c includes this file once per type after defining:
 *   SUFFIX        name suffix (f32, f64, bf16, f16)
 *   T             compute type (float or double)
 *   EXP, EXPM1, TANH, LOG, LOG1P   elementary functions on T
 *   LOAD(row, c)  element c of a storage row, as T
 *   STORE(row, c, v)          store gradient element c
 *
 * Two layouts of the same computation:
 *   - rows_*: along each row (C large): pass 1 reads the row from memory (max, and the
 *     soft-capped values kept in zbuf), pass 2 re-reads it from cache for the exp-sum,
 *     pass 3 writes the gradient from the exponentials pass 2 left in ebuf;
 *   - tiles_*: across TILE rows at a time (C small, where a row is shorter than a vector
 *     register): the tile is transposed into zbuf so that every vector lane is a row.
 * The row kernels finish rows a vector lane each (EPI_RUN: log1p, the loss, the
 * gradient's factors), several rows at once; the tiles finish theirs the same way.
 */

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define ROWS CAT(rows, SUFFIX)
#define TILES CAT(tiles, SUFFIX)
#define FINISH CAT(row_finish, SUFFIX)
#define GRAD_TARGET CAT(grad_target, SUFFIX)
#define NLLROWS CAT(nll_rows, SUFFIX)
#define BLOCK_STATS CAT(block_stats, SUFFIX)
#define BLOCK_EXPSUM CAT(block_expsum, SUFFIX)
#define BLOCK_PASS2 CAT(block_pass2, SUFFIX)
#define ROW_SHIFT CAT(row_shift, SUFFIX)
#define BLOCK_WSUM CAT(block_wsum, SUFFIX)
#define ROW_GRAD CAT(row_grad, SUFFIX)
#define ROW_GRAD_CHUNK CAT(row_grad_chunk, SUFFIX)
#define PEND CAT(pending, SUFFIX)
#define PEND_STEP CAT(pending_step, SUFFIX)
#define GRAD_CHUNK_END CAT(grad_chunk_end, SUFFIX)
#define WIDE_PHASE CAT(wide_phase, SUFFIX)
#define WIDE_ROWS CAT(wide_rows, SUFFIX)
#define USE_ZBUF CAT(use_zbuf, SUFFIX)
#define ROW_ZBUF CAT(row_zbuf, SUFFIX)
#define ROW_FINISH CAT(row_finish_all, SUFFIX)
#define ROW_EXPSUM CAT(row_expsum, SUFFIX)
#define VEXP_ANY CAT(vexp_any, SUFFIX)
#define VEXP_EXPM1_LIVE CAT(vexp_expm1_live, SUFFIX)
#define SOFTCAP CAT(softcap, SUFFIX)
#define VFINISH CAT(vrow_finish, SUFFIX)
#define TILE_GRAD CAT(tile_grad, SUFFIX)
#define TILE_WSUM CAT(tile_wsum, SUFFIX)
#define TILE_QCOL CAT(tile_qcol, SUFFIX)
#define TILE_ACOL CAT(tile_acol, SUFFIX)
#define TILE_STORE_PLANAR CAT(tile_store_planar, SUFFIX)
#define EPI CAT(epilogues, SUFFIX)
#define EPI_RUN CAT(epi_run, SUFFIX)
#define EPI_FILL CAT(epi_fill, SUFFIX)
#define EPI_STORE CAT(epi_store, SUFFIX)
#define EPI_GRAD CAT(epi_grad, SUFFIX)

/* The per-row epilogue: loss and lse from the row statistics; returns the gradient's
 * softmax coefficient (A in crossent._reference.softmax_grad_index). */
INLINE T FINISH(const Problem *pb, T m, T lse_s, T sw, T swz, T z_y, T w_y, int ignored,
                T *loss_out, T *lse_out) {
    const int soft = pb->q != NULL;
    const T eps = (T)pb->label_smoothing, zl = (T)pb->z_loss, w_sum = (T)pb->w_sum;
    const T qeps = eps / (T)pb->n_cols, qkeep = 1 - eps;
    const T lse = m + lse_s;
    T loss = 0, coef = 0;
    *lse_out = lse;
    if (soft) {
        loss = lse_s * sw + swz;
        if (zl > 0) loss += (zl * lse) * lse; /* not lse * lse: it overflows first */
        coef = zl > 0 ? sw + 2 * zl * lse : sw;
    } else if (!ignored) {
        if (eps < 1) {
            T nll = lse_s - (z_y - m);
            T term = (w_y == 0 && nll == INFINITY) ? 0 : w_y * nll; /* 0 * inf = 0 */
            loss = eps > 0 ? qkeep * term : term;
        }
        if (eps > 0) loss += qeps * (w_sum * lse_s + swz);
        if (zl > 0) {
            /* the weight first: (zl lse) lse alone overflows where w_y zl lse^2 does not
               (w_y < 1); 0 * inf = 0 where w_y = 0 and lse is infinite */
            T zt = ((w_y * zl) * lse) * lse;
            loss += (w_y == 0 && isinf(lse)) ? 0 : zt;
        }
        coef = qkeep * w_y + qeps * w_sum;
        if (zl > 0) coef += 2 * zl * w_y * lse;
    }
    *loss_out = loss;
    return coef;
}

/* FINISH over vector lanes, a row each (ignored rows: loss and coefficient 0) */
INLINE VT VFINISH(const Problem *pb, VT m, VT lse_s, VT sw, VT swz, VT z_y, VT w_y, VI ign,
                  VT *loss_out, VT *lse_out) {
    const int soft = pb->q != NULL;
    const T eps = (T)pb->label_smoothing, zl = (T)pb->z_loss, w_sum = (T)pb->w_sum;
    const T qeps = eps / (T)pb->n_cols, qkeep = 1 - eps;
    const VT zero = {0}, inf = (VT){0} + (T)INFINITY;
    const VT lse = m + lse_s;
    VT loss = zero, coef;
    if (soft) {
        loss = lse_s * sw + swz;
        if (zl > 0) loss += (zl * lse) * lse;
        coef = zl > 0 ? sw + 2 * zl * lse : sw;
    } else {
        if (eps < 1) {
            VT nll = lse_s - (z_y - m);
            VT term = SEL((w_y == zero) & (nll == inf), zero, w_y * nll); /* 0 * inf = 0 */
            loss = eps > 0 ? qkeep * term : term;
        }
        if (eps > 0) loss += qeps * (w_sum * lse_s + swz);
        if (zl > 0) { /* as FINISH: the weight first, 0 * inf = 0 */
            VT zt = ((w_y * zl) * lse) * lse;
            loss += SEL((w_y == zero) & ((lse == inf) | (lse == -inf)), zero, zt);
        }
        coef = qkeep * w_y + qeps * w_sum;
        if (zl > 0) coef += 2 * zl * w_y * lse;
        loss = SEL(ign, zero, loss);
        coef = SEL(ign, zero, coef);
    }
    *loss_out = loss;
    *lse_out = lse;
    return coef;
}

/* The gradient's target entry: p_y - 1 = expm1(s_y - lse_s), exact for a confident row
 * where p_y rounds to 1 (Liger PR #1329's catastrophic cancellation). */
INLINE T GRAD_TARGET(const Problem *pb, T s_y, T lse_s, T w_y, T coef, T gr) {
    const T eps = (T)pb->label_smoothing;
    const T qeps = eps / (T)pb->n_cols, qkeep = 1 - eps;
    T p_y = EXP(s_y - lse_s);
    return gr * (qkeep * w_y * EXPM1(s_y - lse_s) + p_y * (coef - qkeep * w_y) - qeps * w_y);
}

/* Pass 1 over one block of a row: its maximum (NaN ignored: a NaN reaches the sum
 * through exp and makes the row's loss NaN) and, where the fast exp is not exact
 * everywhere (!EXPNEG_EXACT: builds without AVX-512), its least finite value (the block
 * may use the fast exp when every finite s = z - m is above FAST_EXP_MIN), each as a vector whose
 * lanes hold the statistic of every VL-th element: pass 2 tests them lane-wise, with no
 * horizontal reduction per block (those were a tenth of the forward's time at C = 1000). */
INLINE void BLOCK_STATS(const char *src, const int from_t, Py_ssize_t c0, Py_ssize_t c1,
                        VT *bmax, VT *bmin) {
    const VT ninf = (VT){0} - (T)INFINITY, pinf = (VT){0} + (T)INFINITY;
    /* four running maxima (and minima): one was a chain of dependent max instructions,
       2 cycles per vector, a sixth of the forward at C = 1000 with the row in cache */
    VT mx0 = ninf, mx1 = ninf, mx2 = ninf, mx3 = ninf;
    VT mn0 = pinf, mn1 = pinf, mn2 = pinf, mn3 = pinf;
    Py_ssize_t c = c0;
#define STATS_STEP(u)                                                                    \
    {                                                                                    \
        VT v = from_t ? VLOADT(src, c + u * VL) : VLOADX(src, c + u * VL);               \
        mx##u = MAXK(v, mx##u);                                                          \
        if (!EXPNEG_EXACT) mn##u = MINK(SEL(v > ninf, v, pinf), mn##u);                  \
    }
    for (; c + 4 * VL <= c1; c += 4 * VL) {
        STATS_STEP(0) STATS_STEP(1) STATS_STEP(2) STATS_STEP(3)
    }
#undef STATS_STEP
    VT vmax = MAXK(MAXK(mx0, mx1), MAXK(mx2, mx3));
    VT vmin = MINK(MINK(mn0, mn1), MINK(mn2, mn3));
    for (; c + VL <= c1; c += VL) {
        VT v = from_t ? VLOADT(src, c) : VLOADX(src, c);
        vmax = MAXK(v, vmax);
        if (!EXPNEG_EXACT) vmin = MINK(SEL(v > ninf, v, pinf), vmin);
    }
    if (c < c1) {
        /* the block's last VL elements when it has that many (repeating some changes
           neither the maximum nor the minimum), else the rest padded with -inf */
        const int n = (int)(c1 - c);
        VT v = c1 - c0 >= VL ? (from_t ? VLOADT(src, c1 - VL) : VLOADX(src, c1 - VL))
                        : (from_t ? VLOADT_tail(src, c, n, -(T)INFINITY)
                                  : VLOADX_tail(src, c, n, -(T)INFINITY));
        vmax = MAXK(v, vmax);
        if (!EXPNEG_EXACT) vmin = MINK(SEL(v > ninf, v, pinf), vmin);
    }
    *bmax = vmax;
    *bmin = vmin;
}

/* exp lane by lane with the general EXP (any s: +inf, NaN, deep underflow) */
INLINE VT VEXP_ANY(VT s) {
#ifdef VEXP
    return VEXP(s);
#else
    T t[VL];
    memcpy(t, &s, sizeof s);
    for (int j = 0; j < VL; j++) t[j] = EXP(t[j]);
    memcpy(&s, t, sizeof s);
    return s;
#endif
}

/* exp(s) and expm1(s) of a vector's first `live` lanes (the others: 0): where there is no
 * vector form (float64), the scalar ones lane by lane, and only for the lanes in use (a
 * row finished alone would otherwise pay a float64 vector's 8 scalar exps per call) */
INLINE void VEXP_EXPM1_LIVE(VT s, int live, VT *e_out, VT *em1_out) {
#if defined(VEXP) && defined(VEXPM1)
    (void)live;
    *e_out = VEXP(s);
    *em1_out = VEXPM1(s);
#else
    T t[VL], u[VL];
    memcpy(t, &s, sizeof s);
    for (int j = 0; j < VL; j++) {
        u[j] = j < live ? EXPM1(t[j]) : 0;
        t[j] = j < live ? EXP(t[j]) : 0;
    }
    memcpy(e_out, t, sizeof t);
    memcpy(em1_out, u, sizeof u);
#endif
}

/* cap tanh(v / cap) over n values, in place in dst (from src) */
INLINE void SOFTCAP(T *dst, const char *src, const int from_t, Py_ssize_t n, T cap) {
    Py_ssize_t c = 0;
#ifdef VTANH
    for (; c + VL <= n; c += VL) {
        VT v = from_t ? VLOADT(src, c) : VLOADX(src, c);
        v = cap * VTANH(v / cap);
        memcpy(dst + c, &v, sizeof v);
    }
#endif
    if (from_t) {
#pragma omp simd
        for (Py_ssize_t i = c; i < n; i++) dst[i] = cap * TANH(((const T *)src)[i] / cap);
    } else {
#pragma omp simd
        for (Py_ssize_t i = c; i < n; i++) dst[i] = cap * TANH(LOAD(src, i) / cap);
    }
}

/* Pass 2 over one block: exp(z - m) into ebuf (if want_e) and summed; with split, the
 * maximal terms (s == 0, each exactly 1) are counted in top instead of summed, so that a
 * confident row's small rest keeps its precision (lse = m + log1p(rest + top - 1)). Only
 * the block(s) holding the row maximum need the split. The constant flags specialise the
 * loop at each call site (always inline). */
INLINE void BLOCK_EXPSUM(const char *src, const int from_t, Py_ssize_t c0, Py_ssize_t c1,
                         T m, const int fast, const int split, const int want_e,
                         T *restrict ebuf, VT *br_out, VT *bt_out, const char *next,
                         const char *near) {
    const VT vm = (VT){0} + m, zero = {0}, one = (VT){0} + 1;
    VT br = zero, bt = zero;
    Py_ssize_t c = c0;
#define EXPSUM_STEP(V, STORE_E)                                                          \
    {                                                                                    \
        VT s = (V) - vm;                                                                 \
        VT e = fast ? VEXPNEG(s) : VEXP_ANY(s);                                          \
        if (want_e) STORE_E;                                                             \
        if (split) {                                                                     \
            VI is_top = s == zero;                                                       \
            br += SEL(is_top, zero, e);                                                  \
            bt += SEL(is_top, one, zero);                                                \
        } else {                                                                         \
            br += e;                                                                     \
        }                                                                                \
    }
    /* while the exps are computed, fetch the next row into L2: pass 1 of the next row then
       finds it there instead of waiting for memory (one prefetch per VL elements) */
    for (; c + VL <= c1; c += VL) {
        if (next) __builtin_prefetch(next + c * STORAGE_SIZE, 0, 2);
        if (near) __builtin_prefetch(near + c * STORAGE_SIZE, 0, 3);
        EXPSUM_STEP(from_t ? VLOADT(src, c) : VLOADX(src, c), memcpy(ebuf + c, &e, sizeof e))
    }
    if (c < c1 && c1 - c0 >= VL) {
        /* the block's last VL elements, those already summed masked to -inf (exp 0, never
           top): a full vector load. A vector padded lane by lane made GCC compute the
           whole step lane by lane, ~250 ns per row. Within the block: in wide mode the
           previous block's ebuf may belong to another thread. */
        const Py_ssize_t o = c1 - VL;
        const VI done = VIOTA < (VI){0} + (int)(VL - (c1 - c));
        VT v = from_t ? VLOADT(src, o) : VLOADX(src, o);
        EXPSUM_STEP(SEL(done, (VT){0} - (T)INFINITY, v), {
            VT old;
            memcpy(&old, ebuf + o, sizeof old);
            old = SEL(done, old, e);
            memcpy(ebuf + o, &old, sizeof old);
        })
    } else if (c < c1) {
        const int n = (int)(c1 - c);
        EXPSUM_STEP(from_t ? VLOADT_tail(src, c, n, -(T)INFINITY)
                           : VLOADX_tail(src, c, n, -(T)INFINITY),
                    memcpy(ebuf + c, &e, (size_t)n * sizeof(T)))
    }
#undef EXPSUM_STEP
    *br_out = br;
    *bt_out = bt;
}

/* pass 2 of one block, with the flags of its statistics: the block's partial sums */
INLINE void BLOCK_PASS2(const char *src, const int from_t, Py_ssize_t k, Py_ssize_t C,
                        const VT *stats, T m, T row_max, int general, int backward,
                        const int want_e, T *restrict ebuf, VT *br, VT *bt, const char *next,
                        const char *near) {
    const Py_ssize_t c0 = k * SUM_BLOCK, c1 = c0 + SUM_BLOCK < C ? c0 + SUM_BLOCK : C;
    const int split = !backward && (general || ANY(stats[2 * k] == row_max));
    /* min - m >= FAST_EXP_MIN for the least lane iff for every lane (the rounded
       difference is monotonic); the +inf of lanes without a finite value pass */
    const int fast = !general && (EXPNEG_EXACT || !ANY(stats[2 * k + 1] - m < FAST_EXP_MIN));
#define EXPSUM_CASE(F, S)                                                                \
    if (want_e) BLOCK_EXPSUM(src, from_t, c0, c1, m, F, S, 1, ebuf, br, bt, next, near); \
    else BLOCK_EXPSUM(src, from_t, c0, c1, m, F, S, 0, ebuf, br, bt, next, near);
    if (fast && !split) { EXPSUM_CASE(1, 0) }
    else if (fast) { EXPSUM_CASE(1, 1) }
    else if (!split) { EXPSUM_CASE(0, 0) }
    else { EXPSUM_CASE(0, 1) }
#undef EXPSUM_CASE
}

/* The shift from the row maximum: 0 for a row without a finite maximum (+inf, all -inf,
 * all NaN), as crossent._reference does; the saved lse in backward mode. Returns whether
 * the general exp is needed everywhere. */
INLINE int ROW_SHIFT(T row_max, const T *lse_in_r, T *m) {
    const int finite = isfinite(row_max);
    *m = lse_in_r ? *lse_in_r : (finite ? row_max : 0);
    return !finite || !isfinite(*m);
}

/* The previous row's gradient pass, done a slice at a time during the next row's exp
 * pass: its stores then stream out while the exps are computed instead of after them
 * (pass 3 alone is bound by the memory's write bandwidth, pass 2 by arithmetic). */
typedef struct {
    const T *z, *qrow;
    T *ebuf;
    char *grow; /* NULL: nothing pending */
    T pc, gr, target;
    int64_t yi;
    Py_ssize_t at; /* columns [0, at) done */
} PEND;

INLINE void ROW_GRAD_CHUNK(const Problem *pb, const T *restrict z, const T *restrict qrow,
                           T *restrict ebuf, char *grow, Py_ssize_t c0, Py_ssize_t c1, T pc,
                           T gr, int64_t yi, T target);
INLINE Py_ssize_t GRAD_CHUNK_END(const char *grow, Py_ssize_t c, Py_ssize_t c1);

/* the pending row's gradient: the chunks (GRAD_CHUNK_END) that end by column `upto` */
INLINE void PEND_STEP(const Problem *pb, PEND *p, Py_ssize_t upto) {
    if (!p || !p->grow) return;
    const Py_ssize_t C = pb->n_cols;
    while (p->at < C) {
        const Py_ssize_t e = GRAD_CHUNK_END(p->grow, p->at, C);
        if (e > upto && upto < C) break;
        ROW_GRAD_CHUNK(pb, p->z, p->qrow, p->ebuf, p->grow, p->at, e, p->pc, p->gr, p->yi,
                       p->target);
        p->at = e;
    }
    if (p->at >= C) p->grow = NULL;
}

/* Passes 1 and 2 over a row: the shift m (the maximum, or the saved lse), the sum of the
 * non-maximal exponentials (rest) and the number of maximal terms (top). `stats` holds two
 * vectors per block of SUM_BLOCK (BLOCK_STATS). A row whose maximum is not finite (+inf, all -inf, all
 * NaN) shifts by 0, as crossent._reference does, and uses the general exp. */
INLINE void ROW_EXPSUM(const Problem *pb, const char *src, const int from_t, Py_ssize_t C,
                       const T *lse_in_r, const int want_e, T *restrict ebuf,
                       VT *restrict stats, T *m_out, double *rest_out, double *top_out,
                       const char *next, const char *near, PEND *pend) {
    const Py_ssize_t nb = (C + SUM_BLOCK - 1) / SUM_BLOCK;
    VT vmax = (VT){0} - (T)INFINITY;
    for (Py_ssize_t k = 0; k < nb; k++) {
        const Py_ssize_t c0 = k * SUM_BLOCK, c1 = c0 + SUM_BLOCK < C ? c0 + SUM_BLOCK : C;
        BLOCK_STATS(src, from_t, c0, c1, &stats[2 * k], &stats[2 * k + 1]);
        vmax = MAXK(stats[2 * k], vmax);
    }
    const T row_max = HMAX(vmax);
    T m;
    const int general = ROW_SHIFT(row_max, lse_in_r, &m);
    vf64 rest[2] = {{0}, {0}};
    VT top = {0};
    for (Py_ssize_t k = 0; k < nb; k++) {
        VT br, bt;
        BLOCK_PASS2(src, from_t, k, C, stats, m, row_max, general, lse_in_r != NULL, want_e,
                    ebuf, &br, &bt, next, near);
        WIDEN_ADD(rest, br);
        top += bt;
        PEND_STEP(pb, pend, (k + 1) * SUM_BLOCK);
    }
    *m_out = m;
    *rest_out = hsum_f64(rest[0] + rest[1]);
    *top_out = (double)HSUM(top);
}

/* sum_c a_c (m - z_c) and sum_c a_c over block k, a = w q' (soft targets) or w (label
 * smoothing), with 0 * inf = 0. One loop per case: a branch inside keeps GCC from
 * vectorising, and a scalar running sum of C terms is biased by up to C/2 ulps. */
INLINE void BLOCK_WSUM(const Problem *pb, const T *restrict z, const T *restrict qrow, T m,
                       Py_ssize_t k, T *bw_out, T *bwz_out) {
    const Py_ssize_t C = pb->n_cols;
    const Py_ssize_t c0 = k * SUM_BLOCK, c1 = c0 + SUM_BLOCK < C ? c0 + SUM_BLOCK : C;
    const T *restrict w = (const T *)pb->w;
    const T eps = (T)pb->label_smoothing, qeps = eps / (T)C, qkeep = 1 - eps;
    T bw = 0, bwz = 0;
#define WSUM_LOOP(A_EXPR)                                                                \
    _Pragma("omp simd reduction(+ : bw, bwz)")                                           \
    for (Py_ssize_t c = c0; c < c1; c++) {                                               \
        T a = (A_EXPR);                                                                  \
        T d = m - z[c];                                                                  \
        bwz += (a == 0 && (d == INFINITY || d == -INFINITY)) ? 0 : a * d;                \
        bw += a;                                                                         \
    }
    if (qrow && w) {
        WSUM_LOOP((qkeep * qrow[c] + qeps) * w[c])
    } else if (qrow) {
        WSUM_LOOP(qkeep * qrow[c] + qeps)
    } else if (w) {
        WSUM_LOOP(w[c])
    } else {
        WSUM_LOOP((T)1)
    }
#undef WSUM_LOOP
    *bw_out = bw;
    *bwz_out = bwz;
}

/* pass 3 over columns [c0, c1): the gradient from the exponentials in ebuf; `target` is
 * the gradient's entry at the class index yi (index targets). A chunk at a time, each
 * written out while it is in L1: computed in place over the whole row and then copied
 * (or converted) out, ebuf made two more trips through L2 at C = 32000. */
INLINE void ROW_GRAD_CHUNK(const Problem *pb, const T *restrict z, const T *restrict qrow,
                           T *restrict ebuf, char *grow, Py_ssize_t c0, Py_ssize_t c1, T pc,
                           T gr, int64_t yi, T target) {
    const T *restrict w = (const T *)pb->w;
    const T eps = (T)pb->label_smoothing, cap = (T)pb->softcap;
    const T qeps = eps / (T)pb->n_cols, qkeep = 1 - eps;
    const int soft = qrow != NULL;
    if (soft) {
#pragma omp simd
        for (Py_ssize_t c = c0; c < c1; c++) {
            T a = FMA_T(qkeep, qrow[c], qeps);
            if (w) a = a * w[c];
            ebuf[c] = FMA_T(ebuf[c], pc, -(a * gr));
        }
    } else if (eps > 0) {
        const T sub = qeps * gr;
#pragma omp simd
        for (Py_ssize_t c = c0; c < c1; c++) ebuf[c] = FMA_T(ebuf[c], pc, -(w ? w[c] * sub : sub));
    } else {
#pragma omp simd
        for (Py_ssize_t c = c0; c < c1; c++) ebuf[c] = ebuf[c] * pc;
    }
    if (!soft && c0 <= yi && yi < c1) ebuf[yi] = target;
    if (cap > 0) {
#pragma omp simd
        for (Py_ssize_t c = c0; c < c1; c++) {
            T t = z[c] / cap;
            ebuf[c] *= FMA_T(-t, t, (T)1); /* d tanh = 1 - tanh^2 */
        }
    }
    if (pb->stream) {
        if (STORAGE_IS_T) {
            stream_copy(grow + c0 * STORAGE_SIZE, (const char *)(ebuf + c0),
                        (size_t)(c1 - c0) * sizeof(T));
            return;
        }
        /* 16-bit storage: converted on the stack, then streamed */
        char tmp[GRAD_CHUNK_BYTES / sizeof(T) * STORAGE_SIZE] __attribute__((aligned(64)));
#pragma omp simd
        for (Py_ssize_t j = 0; j < c1 - c0; j++) STORE(tmp, j, ebuf[c0 + j]);
        stream_copy(grow + c0 * STORAGE_SIZE, tmp, (size_t)(c1 - c0) * STORAGE_SIZE);
        return;
    }
#pragma omp simd
    for (Py_ssize_t c = c0; c < c1; c++) STORE(grow, c, ebuf[c]);
}

/* where the gradient pass's chunk starting at column c ends: GRAD_CHUNK_BYTES of ebuf,
 * ending on a 64-byte boundary of the gradient so that streaming stores write whole lines
 * (only the row's ends are partial). Every caller cuts a row at the same columns: a row's
 * bits then do not depend on who wrote it when (the vector loops' scalar remainders
 * may round differently from their vector bodies). */
INLINE Py_ssize_t GRAD_CHUNK_END(const char *grow, Py_ssize_t c, Py_ssize_t c1) {
    const uintptr_t at = (uintptr_t)(grow + c * STORAGE_SIZE);
    const uintptr_t end = (at + GRAD_CHUNK_BYTES / sizeof(T) * STORAGE_SIZE) & ~(uintptr_t)63;
    const Py_ssize_t e = c + (Py_ssize_t)((end - at) / STORAGE_SIZE);
    return (e > c1 || e <= c) ? c1 : e;
}

INLINE void ROW_GRAD(const Problem *pb, const T *restrict z, const T *restrict qrow,
                     T *restrict ebuf, char *grow, Py_ssize_t c0, Py_ssize_t c1, T pc, T gr,
                     int64_t yi, T target) {
    for (Py_ssize_t c = c0; c < c1;) {
        const Py_ssize_t e = GRAD_CHUNK_END(grow, c, c1);
        ROW_GRAD_CHUNK(pb, z, qrow, ebuf, grow, c, e, pc, gr, yi, target);
        c = e;
    }
}

/* zbuf holds the row in the compute type where later passes need it as an array:
 * softcapped values, and 16-bit storage with soft targets or smoothing (the weighted sums);
 * otherwise every pass reads the row itself (16-bit values converted on the fly) */
INLINE int USE_ZBUF(const Problem *pb) {
    return pb->softcap > 0 || (!STORAGE_IS_T && (pb->q != NULL || pb->label_smoothing > 0));
}

INLINE void ROW_ZBUF(const Problem *pb, const char *xrow, T *restrict zbuf, Py_ssize_t c0,
                     Py_ssize_t c1) {
    const T cap = (T)pb->softcap;
    if (cap > 0) {
        SOFTCAP(zbuf + c0, xrow + c0 * STORAGE_SIZE, 0, c1 - c0, cap);
    } else {
#pragma omp simd
        for (Py_ssize_t c = c0; c < c1; c++) zbuf[c] = LOAD(xrow, c);
    }
}

/* The epilogues of EPI_N rows at once, a vector lane each: log1p (three divisions in a
 * latency chain), FINISH and, for the gradient, the softmax factor and the target entry
 * (exp and expm1). One row at a time these were a quarter of the loss + gradient at
 * C = 100 and a tenth of the forward at C = 1000. Every caller goes through EPI_RUN, also
 * for a single row (splat over the lanes): a row's results are then the same bits whether
 * it was finished alone (long rows, wide rows) or with its neighbours, since every lane
 * runs the same vector instructions (EPI_N is a multiple of the vector width: no scalar
 * remainder). EPI_RUN is not inlined: one compiled copy serves every caller, since GCC's
 * contraction choices are made per copy (see FMA_T). */
#define EPI_N (EPI_BYTES / (int)sizeof(T))
typedef __typeof__(((VI){0})[0]) CAT(epi_mask, SUFFIX);
typedef struct {
    /* in: x = rest + (top - 1) (lse_s = log1p(x)), den = rest + top (1 with the saved
       lse), the shift, the weighted sums, the target's logit and weight, the upstream
       gradient */
    T x[EPI_N], den[EPI_N], m[EPI_N], sw[EPI_N], swz[EPI_N], z_y[EPI_N], w_y[EPI_N], gr[EPI_N];
    CAT(epi_mask, SUFFIX) ign[EPI_N]; /* -1: an ignored row */
    /* out */
    T lse_s[EPI_N], loss[EPI_N], lse[EPI_N], coef[EPI_N], pc[EPI_N], target[EPI_N];
} EPI;

/* the first n lanes of e (the others' outputs: unspecified) */
static __attribute__((noinline)) void EPI_RUN(const Problem *pb, EPI *restrict e, int n) {
    const T eps = (T)pb->label_smoothing, qeps = eps / (T)pb->n_cols, qkeep = 1 - eps;
    if (pb->lse_in) { /* backward with the saved lse: the shift is the lse */
        memset(e->lse_s, 0, sizeof e->lse_s);
    } else {
#pragma omp simd
        for (int b = 0; b < EPI_N; b++) e->lse_s[b] = LOG1P(e->x[b]);
    }
    for (int k = 0; k < n; k += VL) {
        VT m, ls, sw, swz, zy, wy, loss, lse, coef;
        VI ign;
        memcpy(&m, e->m + k, sizeof m);
        memcpy(&ls, e->lse_s + k, sizeof ls);
        memcpy(&sw, e->sw + k, sizeof sw);
        memcpy(&swz, e->swz + k, sizeof swz);
        memcpy(&zy, e->z_y + k, sizeof zy);
        memcpy(&wy, e->w_y + k, sizeof wy);
        memcpy(&ign, e->ign + k, sizeof ign);
        coef = VFINISH(pb, m, ls, sw, swz, zy, wy, ign, &loss, &lse);
        memcpy(e->coef + k, &coef, sizeof coef);
        memcpy(e->loss + k, &loss, sizeof loss);
        memcpy(e->lse + k, &lse, sizeof lse);
        if (!pb->g) continue;
        VT gr, den, pc, target = {0};
        memcpy(&gr, e->gr + k, sizeof gr);
        memcpy(&den, e->den + k, sizeof den);
        /* the softmax's 1 / sum exp(z - m), from the sum itself (exp(-lse_s) cost a
           vector exp per row where rows are finished one at a time, and added lse_s's
           error) */
        pc = coef * gr / den;
        if (!pb->q) {
            /* p_y - 1 = expm1(s_y - lse_s), exact for a confident row where p_y rounds to 1
               (Liger PR #1329's catastrophic cancellation) */
            VT p_y, p_y_m1;
            VEXP_EXPM1_LIVE((zy - m) - ls, n - k, &p_y, &p_y_m1);
            target = gr * (qkeep * wy * p_y_m1 + p_y * (coef - qkeep * wy) - qeps * wy);
        }
        memcpy(e->pc + k, &pc, sizeof pc);
        memcpy(e->target + k, &target, sizeof target);
    }
}

/* lane b of e (splat: every lane) <- row r's statistics after passes 1 and 2. A single row
 * is splat with whole-vector stores: EPI_RUN's vector loads of one stored lane would wait
 * for the store (no store forwarding). */
INLINE void EPI_FILL(const Problem *pb, EPI *e, int b, const int splat, Py_ssize_t r,
                     const char *xrow, const T *z, T m, double rest, double top, const Sum *sw,
                     const Sum *swz) {
    const T *restrict w = (const T *)pb->w;
    const int soft = pb->q != NULL;
    const int64_t yi = soft ? 0 : pb->y[r];
    const int ignored = !soft && yi < 0;
    const T x = (T)(rest + (top - 1)), den = pb->lse_in ? 1 : (T)(rest + top);
    const T sw_ = (T)sum_value(sw), swz_ = (T)sum_value(swz);
    const T z_y = (soft || ignored) ? 0 : (z ? z[yi] : LOAD(xrow, yi));
    const T w_y = (soft || ignored || !w) ? 1 : w[yi];
    const T gr = (pb->g && !ignored) ? ((const T *)pb->g)[r * pb->g_stride] : 0;
#define EPI_PUT(F, V, VTYPE)                                                             \
    if (splat) {                                                                         \
        for (int k = 0; k < EPI_N; k += VL) {                                            \
            const VTYPE v = (VTYPE){0} + (V);                                            \
            memcpy(e->F + k, &v, sizeof v);                                              \
        }                                                                                \
    } else {                                                                             \
        e->F[b] = (V);                                                                   \
    }
    EPI_PUT(x, x, VT)
    EPI_PUT(den, den, VT)
    EPI_PUT(m, m, VT)
    EPI_PUT(sw, sw_, VT)
    EPI_PUT(swz, swz_, VT)
    EPI_PUT(z_y, z_y, VT)
    EPI_PUT(w_y, w_y, VT)
    EPI_PUT(gr, gr, VT)
    EPI_PUT(ign, ignored ? -1 : 0, VI)
#undef EPI_PUT
}

/* the loss and lse of e's first n lanes: rows r0 .. r0 + n - 1 */
INLINE void EPI_STORE(const Problem *pb, const EPI *e, Py_ssize_t r0, int n) {
    if (pb->loss) memcpy((T *)pb->loss + r0, e->loss, (size_t)n * sizeof(T));
    if (pb->lse) memcpy((T *)pb->lse + r0, e->lse, (size_t)n * sizeof(T));
}

/* the gradient rows of lane b (row r): zeros for an ignored row */
INLINE void EPI_GRAD(const Problem *pb, const EPI *e, int b, Py_ssize_t r, const T *z,
                     T *restrict ebuf) {
    char *grow = pb->grad + (size_t)r * pb->grad_stride * elsize(pb->dtype);
    if (e->ign[b]) {
        memset(grow, 0, (size_t)pb->n_cols * elsize(pb->dtype));
        return;
    }
    const T *qrow = pb->q ? (const T *)pb->q + (size_t)r * pb->n_cols : NULL;
    const int64_t yi = pb->q ? 0 : pb->y[r];
    ROW_GRAD(pb, z, qrow, ebuf, grow, 0, pb->n_cols, e->pc[b], e->gr[b], yi, e->target[b]);
}

/* After passes 1 and 2 of one row finished alone (with the gradient: long rows, wide rows):
 * loss and lse written, e's lane 0 holding pc, gr and target for the gradient pass.
 * Returns whether that pass follows (0: an ignored row, its gradient zeroed here). */
INLINE int ROW_FINISH(const Problem *pb, EPI *restrict e, Py_ssize_t r, const char *xrow,
                      const T *z, T m, double rest, double top, const Sum *sw, const Sum *swz) {
    EPI_FILL(pb, e, 0, 1, r, xrow, z, m, rest, top, sw, swz);
    EPI_RUN(pb, e, 1);
    EPI_STORE(pb, e, r, 1); /* both NULL in backward-only (lse_in) mode */
    if (!pb->g) return 0;
    if (e->ign[0]) {
        memset(pb->grad + (size_t)r * pb->grad_stride * elsize(pb->dtype), 0,
               (size_t)pb->n_cols * elsize(pb->dtype));
        return 0;
    }
    return 1;
}

static void ROWS(const Problem *pb, Py_ssize_t r0, Py_ssize_t r1,
                              T *restrict zbuf, T *restrict ebuf, VT *restrict stats) {
    const Py_ssize_t C = pb->n_cols;
    const T eps = (T)pb->label_smoothing;
    const T *restrict lse_in = (const T *)pb->lse_in;
    const int soft = pb->q != NULL, want_grad = pb->g != NULL;
    const int use_zbuf = USE_ZBUF(pb);
    const size_t esz = elsize(pb->dtype);
    const Py_ssize_t row_bytes = C * (Py_ssize_t)esz;
    const Py_ssize_t ahead = row_bytes >= PREFETCH_BYTES ? 1 : PREFETCH_BYTES / row_bytes;
    /* the gradient pass of row r runs during the exp pass of row r + 1 (PEND), from the
       second half of ebuf; not with zbuf (it would be overwritten by then), nor for short
       rows (at C = 1000 the slicing cost more than the overlap gained: +8 %) */
    const int pipe = want_grad && !use_zbuf && row_bytes >= PIPELINE_MIN_BYTES;
    /* rows finished nb_epi at a time (EPI_RUN): EPI_N in the forward; with the gradient
       as many as keep their exponentials in L1 (EPI_GRAD_BYTES of ebuf per batch; more,
       and the gradient passes read ebuf from L2: +10 % at C = 300), not with zbuf (one
       row's). A batch's gradient passes then run one per row of the next batch, from the
       other half of ebuf (as PEND does for long rows): run after the batch's epilogue, all
       at once, they left the memory's reads idle and then its writes (+10-15 % at
       C = 300-500 with streaming stores). */
    const int nb_epi = !want_grad ? EPI_N : (use_zbuf || pipe) ? 1 : epi_grad_rows(C, sizeof(T));
    const int batch = nb_epi > 1;
    const Py_ssize_t ld_e = epi_slot(C, sizeof(T)); /* a row's slot in ebuf: 64-byte aligned */
    PEND pend;
    memset(&pend, 0, sizeof pend);
    EPI epis[2]; /* the batch being filled and the one whose gradient passes are pending */
    memset(epis, 0, sizeof epis); /* lanes past the last row: finite inputs */
    EPI *const epi = &epis[0];
    Py_ssize_t r_epi = r0, r_pend = r0;
    int n_pend = 0, at_pend = 0, par_pend = 0;
#define PEND_ROW()                                                                       \
    {                                                                                    \
        const Py_ssize_t rp = r_pend + at_pend;                                          \
        const char *xp = pb->x + (size_t)rp * pb->row_stride * esz;                      \
        EPI_GRAD(pb, &epis[par_pend], at_pend, rp, STORAGE_IS_T ? (const T *)xp : NULL,  \
                 ebuf + (par_pend * nb_epi + at_pend) * ld_e);                           \
        at_pend++;                                                                       \
    }
    for (Py_ssize_t r = r0; r < r1; r++) {
        const char *xrow = pb->x + (size_t)r * pb->row_stride * esz;
        const T *restrict z = STORAGE_IS_T ? (const T *)xrow : NULL;
        if (use_zbuf) {
            ROW_ZBUF(pb, xrow, zbuf, 0, C);
            z = zbuf;
        }
        T m;
        double rest, top;
        /* prefetch distance: about 16 KB ahead (short rows: several rows ahead, so that
           the memory latency is covered while two threads share the bandwidth) */
        const char *next = r + ahead < r1 ? xrow + ahead * pb->row_stride * esz : NULL;
        /* and a row that fits L1 with room to spare: the next one from L2 into L1, so that
           its pass 1 reads L1 (from L2 it was a sixth of the forward at C = 1000) */
        const char *near = ahead > 1 && row_bytes <= NEAR_PREFETCH_BYTES && r + 1 < r1
                               ? xrow + pb->row_stride * esz
                               : NULL;
        const int b = (int)((r - r0) % nb_epi); /* lane of the batch */
        const int par = (int)(((r - r0) / nb_epi) & 1); /* which of epis, which half of ebuf */
        if (b == 0) r_epi = r;
        T *restrict eb = pipe ? ebuf + (r & 1) * C
                              : (batch && want_grad ? ebuf + (par * nb_epi + b) * ld_e : ebuf);
        PEND *pp = pipe ? &pend : NULL;
        if (z) ROW_EXPSUM(pb, (const char *)z, 1, C, lse_in ? lse_in + r : NULL, want_grad, eb,
                          stats, &m, &rest, &top, next, near, pp);
        else ROW_EXPSUM(pb, xrow, 0, C, lse_in ? lse_in + r : NULL, want_grad, eb, stats, &m,
                        &rest, &top, next, near, pp);
        PEND_STEP(pb, pp, C);
        Sum sw = {0, 0}, swz = {0, 0};
        const T *restrict qrow = soft ? (const T *)pb->q + (size_t)r * C : NULL;
        const int64_t yi = soft ? 0 : pb->y[r];
        const int ignored = !soft && yi < 0;
        /* sum_c a_c (m - z_c) and sum_c a_c, a = w q' (soft) or w (smoothing); 0 * inf = 0 */
        if (soft || (eps > 0 && !ignored)) {
            for (Py_ssize_t k = 0; k * SUM_BLOCK < C; k++) {
                T bw, bwz;
                BLOCK_WSUM(pb, z, qrow, m, k, &bw, &bwz);
                sum_add(&sw, bw);
                sum_add(&swz, bwz);
            }
        }
        if (batch) {
            EPI_FILL(pb, &epis[par], b, 0, r, xrow, z, m, rest, top, &sw, &swz);
            if (at_pend < n_pend) PEND_ROW()
            if (b == nb_epi - 1 || r == r1 - 1) {
                while (at_pend < n_pend) PEND_ROW()
                EPI_RUN(pb, &epis[par], b + 1);
                EPI_STORE(pb, &epis[par], r_epi, b + 1);
                if (want_grad) {
                    r_pend = r_epi;
                    n_pend = b + 1;
                    at_pend = 0;
                    par_pend = par;
                }
            }
            continue;
        }
        if (!ROW_FINISH(pb, epi, r, xrow, z, m, rest, top, &sw, &swz)) continue;
        if (pipe) {
            char *grow = pb->grad + (size_t)r * pb->grad_stride * esz;
            pend = (PEND){z, qrow, eb, grow, epi->pc[0], epi->gr[0], epi->target[0], yi, 0};
        } else {
            EPI_GRAD(pb, epi, 0, r, z, ebuf);
        }
    }
    while (at_pend < n_pend) PEND_ROW()
#undef PEND_ROW
    PEND_STEP(pb, pipe ? &pend : NULL, C);
}

/* Rows fewer than threads (and wide): the class axis of each row split over the threads,
 * in three phases with a join after each: (1) block statistics, (2) the blocks' partial
 * exp-sums and weighted sums, (3) the gradient. Between the phases the calling thread
 * combines the per-block partials in block order, exactly as ROWS does, so a row's
 * results are the same bits whichever way it was computed. */
static void WIDE_PHASE(WideJob *j, int tid) {
    const Problem *pb = j->pb;
    const Py_ssize_t C = pb->n_cols, nb = (C + SUM_BLOCK - 1) / SUM_BLOCK, r = j->r;
    const Py_ssize_t k0 = nb * tid / j->nt, k1 = nb * (tid + 1) / j->nt;
    const Py_ssize_t c0 = k0 * SUM_BLOCK, c1 = k1 * SUM_BLOCK < C ? k1 * SUM_BLOCK : C;
    const size_t esz = elsize(pb->dtype);
    const char *xrow = pb->x + (size_t)r * pb->row_stride * esz;
    T *zbuf = (T *)j->zbuf, *ebuf = (T *)j->ebuf, *bw = (T *)j->bw;
    VT *bsum = (VT *)j->bsum, *stats = (VT *)j->stats;
    const T *z = USE_ZBUF(pb) ? zbuf : (STORAGE_IS_T ? (const T *)xrow : NULL);
    const char *src = z ? (const char *)z : xrow;
    const int from_t = z != NULL;
    const T *qrow = pb->q ? (const T *)pb->q + (size_t)r * C : NULL;
    if (j->phase == 1) {
        if (USE_ZBUF(pb)) ROW_ZBUF(pb, xrow, zbuf, c0, c1);
        for (Py_ssize_t k = k0; k < k1; k++) {
            const Py_ssize_t b0 = k * SUM_BLOCK, b1 = b0 + SUM_BLOCK < C ? b0 + SUM_BLOCK : C;
            if (from_t) BLOCK_STATS(src, 1, b0, b1, &stats[2 * k], &stats[2 * k + 1]);
            else BLOCK_STATS(src, 0, b0, b1, &stats[2 * k], &stats[2 * k + 1]);
        }
    } else if (j->phase == 2) {
        const T m = (T)j->m, row_max = (T)j->row_max;
        const int backward = pb->lse_in != NULL, want_e = pb->g != NULL;
        for (Py_ssize_t k = k0; k < k1; k++) {
#define PASS2(FT, WE)                                                                    \
    BLOCK_PASS2(src, FT, k, C, stats, m, row_max, j->general, backward, WE, ebuf,         \
                &bsum[2 * k], &bsum[2 * k + 1], NULL, NULL)
            if (from_t && want_e) PASS2(1, 1);
            else if (from_t) PASS2(1, 0);
            else if (want_e) PASS2(0, 1);
            else PASS2(0, 0);
#undef PASS2
            if (j->wsum) BLOCK_WSUM(pb, z, qrow, m, k, &bw[2 * k], &bw[2 * k + 1]);
        }
    } else {
        char *grow = pb->grad + (size_t)r * pb->grad_stride * esz;
        ROW_GRAD(pb, z, qrow, ebuf, grow, c0, c1, (T)j->pc, (T)j->gr,
                 pb->q ? 0 : pb->y[r], (T)j->target);
    }
}

static void WIDE_ROWS(WideJob *j) {
    const Problem *pb = j->pb;
    const Py_ssize_t C = pb->n_cols, nb = (C + SUM_BLOCK - 1) / SUM_BLOCK;
    const T *bw = (const T *)j->bw;
    const VT *bsum = (const VT *)j->bsum, *stats = (const VT *)j->stats;
    const size_t esz = elsize(pb->dtype);
    EPI epi;
    for (Py_ssize_t r = 0; r < pb->n_rows; r++) {
        const char *xrow = pb->x + (size_t)r * pb->row_stride * esz;
        const T *z = USE_ZBUF(pb) ? (const T *)j->zbuf : (STORAGE_IS_T ? (const T *)xrow : NULL);
        j->r = r;
        j->phase = 1;
        wide_run(j, WIDE_PHASE);
        VT vmax = (VT){0} - (T)INFINITY;
        for (Py_ssize_t k = 0; k < nb; k++) vmax = MAXK(stats[2 * k], vmax);
        T row_max = HMAX(vmax), m;
        const T *lse_in = (const T *)pb->lse_in;
        j->general = ROW_SHIFT(row_max, lse_in ? lse_in + r : NULL, &m);
        j->m = m;
        j->row_max = row_max;
        const int ignored = !pb->q && pb->y[r] < 0;
        j->wsum = pb->q != NULL || (pb->label_smoothing > 0 && !ignored);
        j->phase = 2;
        wide_run(j, WIDE_PHASE);
        vf64 rest[2] = {{0}, {0}};
        VT top = {0};
        Sum sw = {0, 0}, swz = {0, 0};
        for (Py_ssize_t k = 0; k < nb; k++) {
            WIDEN_ADD(rest, bsum[2 * k]);
            top += bsum[2 * k + 1];
            if (j->wsum) {
                sum_add(&sw, bw[2 * k]);
                sum_add(&swz, bw[2 * k + 1]);
            }
        }
        if (!ROW_FINISH(pb, &epi, r, xrow, z, m, hsum_f64(rest[0] + rest[1]),
                        (double)HSUM(top), &sw, &swz))
            continue;
        j->pc = epi.pc[0];
        j->gr = epi.gr[0];
        j->target = epi.target[0];
        j->phase = 3;
        wide_run(j, WIDE_PHASE);
    }
}


/* column c of a tile's soft targets, a lane per row: 0 without soft targets and past the
 * tile's last row */
INLINE void TILE_QCOL(const Problem *pb, Py_ssize_t r, int nb, Py_ssize_t c, T *qc) {
    const T *restrict q = (const T *)pb->q;
    for (int b = 0; b < TILE; b++) qc[b] = (q && b < nb) ? q[(size_t)(r + b) * pb->n_cols + c] : 0;
}

/* column c of a tile's target weights, a lane per row: ((1 - eps) q + eps / C) w_c with
 * soft targets, base w_c without (base 1: the smoothing sums; eps / C: the gradient's
 * smoothing term) */
INLINE void TILE_ACOL(const Problem *pb, Py_ssize_t r, int nb, Py_ssize_t c, T base, T *a) {
    const T *restrict w = (const T *)pb->w;
    const T eps = (T)pb->label_smoothing, qeps = eps / (T)pb->n_cols, qkeep = 1 - eps;
    const int soft = pb->q != NULL;
    const T wc = w ? w[c] : 1;
    T qc[TILE];
    TILE_QCOL(pb, r, nb, c, qc);
#pragma omp simd
    for (int b = 0; b < TILE; b++) a[b] = soft ? (qkeep * qc[b] + qeps) * wc : base * wc;
}

/* a finished tile gradient (ebuf, column by column) into the planar layout: each column
 * is consecutive values there (ignored rows: 0) */
INLINE void TILE_STORE_PLANAR(const Problem *pb, Py_ssize_t r, int nb, Py_ssize_t C,
                              const T *restrict ebuf, const int *ign) {
    const size_t esz = elsize(pb->dtype), cs = (size_t)pb->inner * esz;
    char *g0 = pb->grad + planar_base(pb, r) * esz;
    T keep[TILE];
    for (int b = 0; b < TILE; b++) keep[b] = b < nb && !ign[b];
    for (Py_ssize_t c = 0; c < C; c++) {
        char *col = g0 + c * cs;
        if (nb == TILE) {
#pragma omp simd
            for (int b = 0; b < TILE; b++) STORE(col, b, keep[b] != 0 ? ebuf[c * TILE + b] : 0);
        } else {
            for (int b = 0; b < nb; b++) STORE(col, b, keep[b] != 0 ? ebuf[c * TILE + b] : 0);
        }
    }
}

#if VL == TILE
/* The gradient of a tile, one row per lane, column by column in registers; the same code
 * for full and partial tiles, so a row's gradient does not depend on its neighbours. */
INLINE void TILE_GRAD(const Problem *pb, Py_ssize_t r, int nb, Py_ssize_t C,
                      const T *restrict zbuf, T *restrict ebuf, const T *m, const T *lse_s,
                      const T *coef, const T *gr, const T *z_y, const T *w_y,
                      const int64_t *yi, const int *ign) {
    const T eps = (T)pb->label_smoothing, cap = (T)pb->softcap;
    const T *restrict w = (const T *)pb->w;
    const int soft = pb->q != NULL;
    const T qeps = eps / (T)C, qkeep = 1 - eps;
    const size_t esz = elsize(pb->dtype);
    T sy[TILE];
    int32_t y32[TILE];
    for (int b = 0; b < TILE; b++) {
        sy[b] = (soft || ign[b] || b >= nb) ? 0 : z_y[b] - m[b];
        y32[b] = (soft || ign[b] || b >= nb) ? -1 : (int32_t)yi[b];
    }
    /* pc and GRAD_TARGET's expression for all rows at once, with the vector exp and expm1
       (a loop over the scalar ones would not vectorise: exp's table lookup) */
    VT vpc, vgt, vgr, vls, vcoef, vsy, vwy, vzy;
    VI vy;
    memcpy(&vgr, gr, sizeof vgr);
    memcpy(&vls, lse_s, sizeof vls);
    memcpy(&vcoef, coef, sizeof vcoef);
    memcpy(&vsy, sy, sizeof vsy);
    memcpy(&vwy, w_y, sizeof vwy);
    memcpy(&vzy, z_y, sizeof vzy);
    memcpy(&vy, y32, sizeof vy);
    vpc = VEXP(-vls) * vcoef * vgr;
    vgt = vgr * (qkeep * vwy * VEXPM1(vsy - vls) + VEXP(vsy - vls) * (vcoef - qkeep * vwy) -
                 qeps * vwy);
    if (cap > 0) {
        VT t = vzy / cap;
        vgt *= (1 - t * t);
    }
    for (Py_ssize_t c = 0; c < C; c++) {
        VT e, d;
        memcpy(&e, ebuf + c * TILE, sizeof e);
        d = e * vpc;
        const T wc = w ? w[c] : 1;
        if (soft) {
            T qc[TILE];
            TILE_QCOL(pb, r, nb, c, qc);
            VT vq;
            memcpy(&vq, qc, sizeof vq);
            d -= ((qkeep * vq + qeps) * wc) * vgr;
        } else if (eps > 0) {
            d -= (qeps * wc) * vgr;
        }
        if (cap > 0) {
            VT z;
            memcpy(&z, zbuf + c * TILE, sizeof z);
            VT t = z / cap;
            d *= 1 - t * t;
        }
        if (!soft) d = SEL(vy == (int32_t)c, vgt, d);
        memcpy(ebuf + c * TILE, &d, sizeof d);
    }
    if (pb->inner) {
        TILE_STORE_PLANAR(pb, r, nb, C, ebuf, ign);
        return;
    }
    const Py_ssize_t gs = pb->grad_stride;
    char *g0 = pb->grad + (size_t)r * gs * esz;
    if (STORAGE_IS_T && nb == TILE && gs == C) {
        /* transpose back in registers; stores in address order, each a full vector where it
           ends inside the tile (running past the row's end into the next rows, whose own
           stores come later and overwrite it), exact at the tile's end: what follows belongs
           to another tile, perhaps another thread, or to nothing */
        VT a[(SMALL_C_MAX + VL - 1) / VL][VL];
        const int groups = (int)((C + VL - 1) / VL);
        for (int k = 0; k < groups; k++) {
            for (int j = 0; j < VL; j++) {
                if (k * VL + j < C) memcpy(&a[k][j], ebuf + (k * VL + j) * TILE, sizeof(VT));
                else a[k][j] = (VT){0};
            }
            transpose16_f32(a[k]);
        }
        for (int b = 0; b < TILE; b++)
            for (int k = 0; k < groups; k++) {
                T *dst = (T *)g0 + b * C + k * VL;
                if (b * C + (k + 1) * VL <= TILE * C) {
                    memcpy(dst, &a[k][b], sizeof(VT));
                } else {
                    T lane[VL];
                    memcpy(lane, &a[k][b], sizeof lane);
                    for (Py_ssize_t c = 0; c < VL && k * VL + c < C; c++) dst[c] = lane[c];
                }
            }
        for (int b = 0; b < TILE; b++)
            if (ign[b]) memset(g0 + (size_t)b * gs * esz, 0, (size_t)C * esz);
        return;
    }
    for (int b = 0; b < nb; b++) {
        char *grow = g0 + (size_t)b * gs * esz;
        if (ign[b]) {
            memset(grow, 0, (size_t)C * esz);
            continue;
        }
        for (Py_ssize_t c = 0; c < C; c++) STORE(grow, c, ebuf[c * TILE + b]);
    }
}
#endif

/* sum_c a_c (m - z_c) and sum_c a_c per lane of a tile (soft targets or smoothing; as
 * BLOCK_WSUM, 0 * inf = 0); sw and swz are set */
INLINE void TILE_WSUM(const Problem *pb, Py_ssize_t r, int nb, const T *restrict zbuf,
                      const T *m, T *sw, T *swz) {
    const Py_ssize_t C = pb->n_cols;
    for (int b = 0; b < TILE; b++) sw[b] = swz[b] = 0;
    for (Py_ssize_t c = 0; c < C; c++) {
        T a[TILE];
        TILE_ACOL(pb, r, nb, c, 1, a);
#pragma omp simd
        for (int b = 0; b < TILE; b++) {
            T d = m[b] - zbuf[c * TILE + b];
            swz[b] += (a[b] == 0 && (d == INFINITY || d == -INFINITY)) ? 0 : a[b] * d;
            sw[b] += a[b];
        }
    }
}

/* TILE rows at once, one row per vector lane; zbuf and ebuf hold C * TILE values. */
static void TILES(const Problem *pb, Py_ssize_t r0, Py_ssize_t r1,
                               T *restrict zbuf, T *restrict ebuf, T *restrict unused) {
    (void)unused;
    const Py_ssize_t C = pb->n_cols;
    const T eps = (T)pb->label_smoothing, cap = (T)pb->softcap;
    const T *restrict w = (const T *)pb->w;
    const T *restrict lse_in = (const T *)pb->lse_in;
    const int soft = pb->q != NULL, want_grad = pb->g != NULL;
    const size_t esz = elsize(pb->dtype);
    for (Py_ssize_t r = r0, nb; r < r1; r += nb) {
        nb = r1 - r < TILE ? r1 - r : TILE;
        if (pb->inner && nb > pb->inner - r % pb->inner) /* a tile within one n */
            nb = pb->inner - r % pb->inner;
        /* transpose the tile in: zbuf[c * TILE + b] = z[r + b][c]; idle lanes get 0.
           A full tile is read column by column, one vector gather per column. The planar
           layout already holds a tile's column as consecutive values: a vector load. */
        if (pb->inner) {
            const char *x0 = pb->x + planar_base(pb, r) * esz;
            const size_t cs = (size_t)pb->inner * esz;
            for (Py_ssize_t c = 0; c < C; c++) {
                /* C columns are C streams a plane apart (C pages per tile): the
                   hardware's prefetchers lose track of them, -10-15 % at C = 19-150 */
                __builtin_prefetch(x0 + c * cs + PLANAR_PREFETCH, 0, 0);
                if (nb == TILE) {
#pragma omp simd
                    for (int b = 0; b < TILE; b++) zbuf[c * TILE + b] = LOAD(x0 + c * cs, b);
                } else {
                    for (int b = 0; b < TILE; b++)
                        zbuf[c * TILE + b] = b < nb ? LOAD(x0 + c * cs, b) : 0;
                }
            }
        } else
#if VL == TILE
        if (nb == TILE && r + 2 * TILE <= pb->n_rows) {
            /* VL-wide row loads (reading past C into the next rows, which exist: at least a
               tile of rows follows) and a transpose in registers: a sixth of the scalar
               loads and inserts that the column-by-column gather below compiles to */
            const char *x0 = pb->x + (size_t)r * pb->row_stride * esz;
            for (Py_ssize_t h = 0; h < C; h += VL) {
                /* the number of columns wanted as a constant: the shuffles that only feed
                   the columns past C (6 of 16 at C = 10) are then never computed */
#define TILE_IN(NC)                                                                      \
    case NC: {                                                                           \
        VT a[VL];                                                                        \
        for (int b = 0; b < VL; b++) a[b] = VLOADX(x0 + (size_t)b * pb->row_stride * esz, h); \
        transpose16_f32(a);                                                              \
        for (int c = 0; c < NC; c++) memcpy(zbuf + (h + c) * TILE, &a[c], sizeof(VT));  \
        break;                                                                           \
    }
                switch (C - h < VL ? (int)(C - h) : VL) {
                    TILE_IN(1) TILE_IN(2) TILE_IN(3) TILE_IN(4) TILE_IN(5) TILE_IN(6)
                    TILE_IN(7) TILE_IN(8) TILE_IN(9) TILE_IN(10) TILE_IN(11) TILE_IN(12)
                    TILE_IN(13) TILE_IN(14) TILE_IN(15) default: TILE_IN(16)
                }
#undef TILE_IN
            }
        } else
#endif
        if (nb == TILE) {
            const char *x0 = pb->x + (size_t)r * pb->row_stride * esz;
            const Py_ssize_t stride = pb->row_stride;
            for (Py_ssize_t c = 0; c < C; c++) {
#pragma omp simd
                for (int b = 0; b < TILE; b++)
                    zbuf[c * TILE + b] = LOAD(x0 + (size_t)b * stride * esz, c);
            }
        } else for (int b = 0; b < TILE; b++) {
            if (b < nb) {
                const char *xrow = pb->x + (size_t)(r + b) * pb->row_stride * esz;
                for (Py_ssize_t c = 0; c < C; c++) zbuf[c * TILE + b] = LOAD(xrow, c);
            } else {
                for (Py_ssize_t c = 0; c < C; c++) zbuf[c * TILE + b] = 0;
            }
        }
        if (cap > 0) SOFTCAP(zbuf, (const char *)zbuf, 1, C * TILE, cap);
        T m[TILE], rest[TILE], top[TILE], sw[TILE], swz[TILE];
        T coef[TILE], lse_s[TILE], gr[TILE];
        T z_y[TILE], w_y[TILE];
        int64_t yi[TILE];
        int ign[TILE];
        T loss_t[TILE], lse_t[TILE];
#if VL == TILE
        {
            /* a row per lane, every statistic a vector: the per-lane arrays and scalar loops
               (labels, the target logit, the fast-exp test) stalled on stores that vector
               loads read back, and were a third of the forward at C = 10 */
            const VT zero = {0}, one = (VT){0} + 1, ninf = zero - (T)INFINITY,
                     pinf = zero + (T)INFINITY;
            VI vy = (VI){0} - 1; /* the label per lane; -1: ignored, soft, or no row */
            if (!soft && nb == TILE) {
                /* labels are in [-1, C): int32 lanes hold them; one conversion of the
                   tile's labels (scalar stores read back as a vector stalled) */
                typedef int64_t vlabels __attribute__((vector_size(TILE * sizeof(int64_t))));
                vlabels y64;
                memcpy(&y64, pb->y + r, sizeof y64);
                vy = __builtin_convertvector(y64, VI);
            } else if (!soft) {
                int32_t y32[TILE];
                for (int b = 0; b < TILE; b++) y32[b] = b < nb ? (int32_t)pb->y[r + b] : 0;
                memcpy(&vy, y32, sizeof vy);
            }
            VT vm = ninf, vlo = pinf, vzy = zero;
            VI vnan = {0};
            for (Py_ssize_t c = 0; c < C; c++) {
                VT z;
                memcpy(&z, zbuf + c * TILE, sizeof z);
                vm = MAXK(z, vm);
                if (!EXPNEG_EXACT) vlo = MINK(SEL(z > ninf, z, pinf), vlo);
                vnan |= z != z;
                vzy = SEL(vy == (int32_t)c, z, vzy);
            }
            const VI finite = (vm - vm == zero) & ~vnan;
            /* the shift: the row maximum, or in backward the saved lse (idle lanes: their
               maximum, 0). The fast exp takes every s = z - shift <= 0 (exactly as the
               general exp, or where it is not exact everywhere, s >= FAST_EXP_MIN): in
               backward, a finite lse not below the maximum, as the forward's lse always
               is. (The general exp for every backward tile made the gradient from a saved
               lse slower than the fused loss + gradient: 4096 x 64, 156 vs 130 us.) */
            VT vs = vm;
            if (lse_in) {
                memcpy(m, &vm, sizeof vm);
                memcpy(m, lse_in + r, (size_t)nb * sizeof(T));
                memcpy(&vs, m, sizeof vs);
            }
            const int fast = !ANY(~(finite & (vs - vs == zero) & (vm <= vs) &
                                    (EXPNEG_EXACT ? finite : vlo - vs >= FAST_EXP_MIN)));
            vm = lse_in ? vs : SEL(finite, vm, zero);
            VT vr = zero, vt = zero;
            for (Py_ssize_t c = 0; c < C; c++) {
                VT z;
                memcpy(&z, zbuf + c * TILE, sizeof z);
                VT s = z - vm;
                VT e = fast ? VEXPNEG(s) : VEXP_ANY(s);
                if (want_grad) memcpy(ebuf + c * TILE, &e, sizeof e); /* (pass 3's) */
                SPLIT_ADD(s, e, &vr, &vt);
            }
            memcpy(m, &vm, sizeof vm);
            VT vsw = zero, vswz = zero;
            if (soft || eps > 0) {
                TILE_WSUM(pb, r, nb, zbuf, m, sw, swz);
                memcpy(&vsw, sw, sizeof vsw);
                memcpy(&vswz, swz, sizeof vswz);
            }
            if (lse_in) {
                for (int b = 0; b < TILE; b++) lse_s[b] = 0;
            } else {
                memcpy(rest, &vr, sizeof vr);
                memcpy(top, &vt, sizeof vt);
#pragma omp simd
                for (int b = 0; b < TILE; b++) lse_s[b] = LOG1P(rest[b] + (top[b] - 1));
            }
            VT vls, vwy = one, vloss, vlse;
            memcpy(&vls, lse_s, sizeof vls);
            if (!soft && w) {
                int32_t y32[TILE];
                memcpy(y32, &vy, sizeof y32);
                for (int b = 0; b < TILE; b++) w_y[b] = y32[b] < 0 ? 1 : w[y32[b]];
                memcpy(&vwy, w_y, sizeof vwy);
            }
            const VI vign = soft ? (VI){0} : vy < 0;
            VT vcoef = VFINISH(pb, vm, vls, vsw, vswz, vzy, vwy, vign, &vloss, &vlse);
            memcpy(coef, &vcoef, sizeof vcoef);
            memcpy(loss_t, &vloss, sizeof vloss);
            memcpy(lse_t, &vlse, sizeof vlse);
            if (want_grad) { /* the per-lane arrays TILE_GRAD takes */
                int32_t y32[TILE];
                memcpy(y32, &vy, sizeof y32);
                memcpy(z_y, &vzy, sizeof vzy);
                memcpy(w_y, &vwy, sizeof vwy);
                for (int b = 0; b < TILE; b++) {
                    yi[b] = (soft || b >= nb) ? 0 : pb->y[r + b];
                    ign[b] = !soft && b < nb && y32[b] < 0;
                }
            }
        }
#else
        T lo[TILE];
        int any_nan[TILE];
#pragma omp simd
        for (int b = 0; b < TILE; b++) {
            m[b] = -INFINITY;
            lo[b] = INFINITY;
            any_nan[b] = 0;
            rest[b] = top[b] = sw[b] = swz[b] = 0;
        }
        for (Py_ssize_t c = 0; c < C; c++) {
#pragma omp simd
            for (int b = 0; b < TILE; b++) {
                T v = zbuf[c * TILE + b];
                m[b] = v > m[b] ? v : m[b];
                T f = v > -INFINITY ? v : INFINITY; /* the least finite value */
                lo[b] = f < lo[b] ? f : lo[b];
                any_nan[b] |= (v != v);
            }
        }
        /* the shift and the fast-exp test as in the VL == TILE branch above */
        T sh[TILE];
        for (int b = 0; b < TILE; b++) sh[b] = lse_in && b < nb ? lse_in[r + b] : m[b];
        int fast = 1;
#pragma omp simd reduction(& : fast)
        for (int b = 0; b < TILE; b++)
            fast &= (m[b] - m[b] == 0) & !any_nan[b] & (sh[b] - sh[b] == 0) & (m[b] <= sh[b]) &
                    (lo[b] - sh[b] >= FAST_EXP_MIN);
#pragma omp simd
        for (int b = 0; b < TILE; b++)
            m[b] = lse_in ? sh[b] : (isfinite(m[b]) && !any_nan[b]) ? m[b] : 0;
        { /* fast: every s = z - m is 0, -inf or above FAST_EXP_MIN, where the fast exp is
             exact. TILE / VL vectors per column. */
            enum { NV = TILE / VL };
            VT vm[NV], vr[NV], vt[NV];
            const VT zero = {0};
            for (int k = 0; k < NV; k++) {
                memcpy(&vm[k], m + k * VL, sizeof(VT));
                vr[k] = vt[k] = zero;
            }
            for (Py_ssize_t c = 0; c < C; c++) {
                for (int k = 0; k < NV; k++) {
                    VT z;
                    memcpy(&z, zbuf + c * TILE + k * VL, sizeof z);
                    VT s = z - vm[k];
                    VT e = fast ? VEXPNEG(s) : VEXP_ANY(s);
                    if (want_grad) memcpy(ebuf + c * TILE + k * VL, &e, sizeof e);
                    SPLIT_ADD(s, e, &vr[k], &vt[k]);
                }
            }
            memcpy(rest, vr, sizeof vr);
            memcpy(top, vt, sizeof vt);
        }
        for (int b = 0; b < TILE; b++) yi[b] = (soft || b >= nb) ? 0 : pb->y[r + b];
        if (soft || eps > 0) TILE_WSUM(pb, r, nb, zbuf, m, sw, swz);
        if (lse_in) {
            for (int b = 0; b < TILE; b++) lse_s[b] = 0;
        } else {
#pragma omp simd
            for (int b = 0; b < TILE; b++) lse_s[b] = LOG1P(rest[b] + (top[b] - 1));
        }
        for (int b = 0; b < TILE; b++) {
            ign[b] = !soft && yi[b] < 0;
            z_y[b] = (soft || ign[b]) ? 0 : zbuf[yi[b] * TILE + b];
            w_y[b] = (soft || ign[b] || !w) ? 1 : w[yi[b]];
        }
        /* every lane, also the idle ones of a partial tile: a row's result must not depend on
           whether it was computed in a vector or a scalar loop (FMA contraction may differ) */
#pragma omp simd
        for (int b = 0; b < TILE; b++)
            coef[b] = FINISH(pb, m[b], lse_s[b], sw[b], swz[b], z_y[b], w_y[b], ign[b],
                             &loss_t[b], &lse_t[b]);
#endif
        if (pb->loss) memcpy((T *)pb->loss + r, loss_t, (size_t)nb * sizeof(T));
        if (pb->lse) memcpy((T *)pb->lse + r, lse_t, (size_t)nb * sizeof(T));
        if (!want_grad) continue;
        for (int b = 0; b < nb; b++)
            gr[b] = ign[b] ? 0 : ((const T *)pb->g)[(r + b) * pb->g_stride];
        for (int b = nb; b < TILE; b++) coef[b] = lse_s[b] = gr[b] = 0;
#if VL == TILE
        TILE_GRAD(pb, r, nb, C, zbuf, ebuf, m, lse_s, coef, gr, z_y, w_y, yi, ign);
#else
        const T qeps = eps / (T)C;
        T pc[TILE];
        for (int k = 0; k < TILE / VL; k++) { /* the vector exp: the scalar one's table lookup
                                                  does not vectorise */
            VT vl, vc, vg;
            memcpy(&vl, lse_s + k * VL, sizeof vl);
            memcpy(&vc, coef + k * VL, sizeof vc);
            memcpy(&vg, gr + k * VL, sizeof vg);
            vl = VEXP_ANY(-vl) * vc * vg;
            memcpy(pc + k * VL, &vl, sizeof vl);
        }
        for (Py_ssize_t c = 0; c < C; c++) {
            T sub[TILE];
            TILE_ACOL(pb, r, nb, c, qeps, sub);
#pragma omp simd
            for (int b = 0; b < TILE; b++) {
                T d = ebuf[c * TILE + b] * pc[b] - sub[b] * gr[b];
                if (cap > 0) {
                    T t = zbuf[c * TILE + b] / cap;
                    d *= (1 - t * t);
                }
                ebuf[c * TILE + b] = d;
            }
        }
        for (int b = 0; b < nb; b++) {
            char *grow = pb->grad + (size_t)(r + b) * pb->grad_stride * esz;
            const int ignored = !soft && yi[b] < 0;
            if (ignored) {
                if (!pb->inner) memset(grow, 0, (size_t)C * esz);
                continue;
            }
            if (!soft) {
                const Py_ssize_t y = yi[b];
                const T w_y = w ? w[y] : 1;
                T d = GRAD_TARGET(pb, zbuf[y * TILE + b] - m[b], lse_s[b], w_y, coef[b], gr[b]);
                if (cap > 0) {
                    T t = zbuf[y * TILE + b] / cap;
                    d *= (1 - t * t);
                }
                ebuf[y * TILE + b] = d;
            }
            if (!pb->inner)
                for (Py_ssize_t c = 0; c < C; c++) STORE(grow, c, ebuf[c * TILE + b]);
        }
        if (pb->inner) TILE_STORE_PLANAR(pb, r, nb, C, ebuf, ign);
#endif
    }
}

/* cross_entropy / nll_loss over whole rows (probability targets or label smoothing):
 * one pass per row that range-checks what it reads, takes the log (probabilities) and
 * accumulates sum_c a_c (-log p_c) with 0 * inf = 0. Rows with a value out of range are
 * reported through first_bad (the Python side then raises with the exact index). */
static void NLLROWS(const NllProblem *pb, Py_ssize_t r0, Py_ssize_t r1,
                                 Py_ssize_t *first_bad) {
    const Py_ssize_t C = pb->n_cols;
    const T eps = (T)pb->label_smoothing, lo = (T)pb->clip, hi = 1 - (T)pb->clip;
    const T *restrict w = (const T *)pb->w;
    const int soft = pb->q != NULL, probs = pb->probs, clip = pb->clip > 0;
    const T qeps = eps / (T)C, qkeep = 1 - eps;
    const size_t esz = elsize(pb->dtype);
    *first_bad = -1;
    for (Py_ssize_t r = r0; r < r1; r++) {
        const char *xrow = pb->x + (size_t)r * pb->row_stride * esz;
        const T *restrict qrow = soft ? (const T *)pb->q + (size_t)r * C : NULL;
        const int64_t yi = soft ? 0 : pb->y[r];
        if (!soft && yi < 0) { /* ignored: not read, loss 0 */
            ((T *)pb->loss)[r] = 0;
            continue;
        }
        Sum acc_sum = {0, 0};
        int bad = 0;
        /* one branch-free loop per case (see WSUM_LOOP): -log p and the class coefficient */
#define NLL_LOOP(BAD_EXPR, NEGLOG_EXPR, A_EXPR)                                          \
    _Pragma("omp simd reduction(+ : acc) reduction(| : bad)")                            \
    for (Py_ssize_t c = c0; c < c1; c++) {                                               \
        T v = LOAD(xrow, c);                                                             \
        bad |= (BAD_EXPR);                                                               \
        T d = (NEGLOG_EXPR);                                                             \
        T a = (A_EXPR);                                                                  \
        acc += (a == 0 && (d == INFINITY || d == -INFINITY)) ? 0 : a * d;                \
    }
#define NLL_BY_A(BAD_EXPR, NEGLOG_EXPR)                                                  \
    if (soft && w) { NLL_LOOP(BAD_EXPR, NEGLOG_EXPR, (qkeep * qrow[c] + qeps) * w[c]) }  \
    else if (soft) { NLL_LOOP(BAD_EXPR, NEGLOG_EXPR, qkeep * qrow[c] + qeps) }           \
    else if (w) { NLL_LOOP(BAD_EXPR, NEGLOG_EXPR, w[c]) }                                \
    else { NLL_LOOP(BAD_EXPR, NEGLOG_EXPR, (T)1) }
        for (Py_ssize_t c0 = 0; c0 < C; c0 += SUM_BLOCK) {
            const Py_ssize_t c1 = c0 + SUM_BLOCK < C ? c0 + SUM_BLOCK : C;
            T acc = 0;
            if (probs && clip) {
                NLL_BY_A((v < 0) | (v > 1), -LOG(v < lo ? lo : (v > hi ? hi : v)))
            } else if (probs) {
                NLL_BY_A((v < 0) | (v > 1), -LOG(v))
            } else {
                NLL_BY_A(v > 0, -v)
            }
            sum_add(&acc_sum, acc);
        }
#undef NLL_BY_A
#undef NLL_LOOP
        const T acc = (T)sum_value(&acc_sum);
        if (bad && *first_bad < 0) *first_bad = r;
        T loss;
        if (soft) {
            loss = acc;
        } else {
            loss = qeps * acc;
            if (eps < 1) {
                T v = LOAD(xrow, yi);
                if (probs) v = LOG(clip ? (v < lo ? lo : (v > hi ? hi : v)) : v);
                T w_y = w ? w[yi] : 1;
                T term = (w_y == 0 && v == -INFINITY) ? 0 : w_y * -v;
                loss += eps > 0 ? qkeep * term : term;
            }
        }
        ((T *)pb->loss)[r] = loss;
    }
}

#undef NLLROWS
#undef BLOCK_STATS
#undef BLOCK_EXPSUM
#undef BLOCK_PASS2
#undef ROW_SHIFT
#undef BLOCK_WSUM
#undef ROW_GRAD
#undef WIDE_PHASE
#undef WIDE_ROWS
#undef USE_ZBUF
#undef ROW_ZBUF
#undef ROW_FINISH
#undef ROW_EXPSUM
#undef VEXP_ANY
#undef VEXP_EXPM1_LIVE
#undef SOFTCAP
#undef VFINISH
#undef TILE_GRAD
#undef TILE_WSUM
#undef TILE_QCOL
#undef TILE_ACOL
#undef TILE_STORE_PLANAR
#undef ROW_GRAD_CHUNK
#undef PEND
#undef PEND_STEP
#undef GRAD_CHUNK_END
#undef ROWS
#undef TILES
#undef EPI
#undef EPI_N
#undef EPI_RUN
#undef EPI_FILL
#undef EPI_STORE
#undef EPI_GRAD
#undef FINISH
#undef GRAD_TARGET
#undef CAT
#undef CAT2
