"""Convolution and pooling over NCHW arrays (formulas: dlfast.kernels).

conv2d forward   per image n: col_n = im2col(x_n) (C*KH*KW, OH*OW); out_n = W2 @ col_n + b  (GEMM),
                 or at stride 1 (>= 9 taps, F >= 6, a batch of >= P images) directly (dlfast_dconv.h)
conv2d backward  dx_n = col2im(dcol_n), dcol_n = W2.T @ dout_n  (GEMM; overlapping windows summed),
                 or at stride 1 (enough taps, a batch of >= P images) the transposed convolution
                 of dout_n directly (dlfast_dconv.h; dcol unused)
                 dW = sum_n dout_n @ col_n.T, col_n = im2col(x_n) written first (fixed column
                 blocks of dW; images added in order), or where the forward is direct and there
                 are >= 32 taps, directly (dlf_dconv_dw: lanes over n, p in order); below 32
                 taps by dlf_dw_nt, each block writing its rows of col_n just before that
                 image's terms (no batch im2col) unless the forward left col filled
                 db[f] = sum_{n, p} dout[n, f, p]   (double, fixed order; below 32 taps in dW's
                 first block)
pools            one (n, c) plane per work item; each output row takes the window taps (kh, kw) in
                 row-major order over all its columns (branch-free max, double sums), vectorised;
                 the 2x2 stride-2 unpadded max window has its own branch-free loop

W2 = W viewed as (F, C*KH*KW); row r = (c*KH + kh)*KW + kw of col_n holds, at column
p = oh*OW + ow, x_n[c, oh*sh - ph + kh, ow*sw - pw + kw] (0 outside x).

Determinism: every GEMM is one single-threaded call (_dense's BLAS entry, _gemm.pxd) on a block
that depends on the shapes and on P (the processors at import, _dense.gemm_parts()) only, never on
the thread count; work items write disjoint outputs; sums run in a fixed order. So 1 and N
threads give the same bits.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t
from libc.string cimport memset, memcpy

from _act cimport (CHEAP, buf_get, buf_release, DT_F32, DT_FLOAT, DT_I64, ACT_IDENTITY,
                  ACT_LEAKY, ACT_RELU, act_code, act_row, act_grad_row, act_grad_all)
from _gemm cimport gemm_f32_t, gemm_f64_t, pin_t
from _op cimport dlf_op

include "_parallel.pxi"

import importlib

cdef extern from *:
    """
    #include "dlfast_clones.h"
    typedef Py_ssize_t dlf_ix;

    /* Every clone gives the same bits: no contraction to FMA (as src/_act.pxd) */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif

    /* sum_i x[i] in double: eight interleaved partial sums, combined pairwise (fixed order) */
    #define DLF_SUM8(NAME, T)                                                                 \\
    DLF_CLONES static double NAME(const T* x, dlf_ix n) {                                     \\
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                               \\
        dlf_ix i, l;                                                                          \\
        for (i = 0; i + 8 <= n; i += 8)                                                       \\
            for (l = 0; l < 8; l++) s[l] += (double)x[i + l];                                 \\
        for (; i < n; i++) s[0] += (double)x[i];                                              \\
        return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));             \\
    }
    DLF_SUM8(dlf_sum8f, float)
    DLF_SUM8(dlf_sum8d, double)

    /* The statements with S = 1 (a constant: vectorisable) when sw == 1, else with S = sw */
    #define DLF_BY_STRIDE(S, sw, ...) do { if ((sw) == 1) { const dlf_ix S = 1; __VA_ARGS__ } \\
                                           else { const dlf_ix S = (sw); __VA_ARGS__ } } while (0)

    /* [lo, hi): the output columns ow whose input column ow*sw - pw + kw lies in [0, W) */
    static inline void dlf_ow_range(dlf_ix W, dlf_ix OW, dlf_ix sw, dlf_ix pw, dlf_ix kw,
                                    dlf_ix* lo, dlf_ix* hi) {
        dlf_ix a = pw - kw, top = W - 1 + pw - kw;
        *lo = a <= 0 ? 0 : (a + sw - 1) / sw;
        *hi = top < 0 ? 0 : top / sw + 1;
        if (*hi > OW) *hi = OW;
    }

    /* Max pooling of one (H, W) plane into out, at (OH, OW), tap-major: each output row takes the
       window taps (kh, kw) in row-major order over all its columns at once. A candidate wins when
       its column has none yet (at < 0), is larger, or is the first NaN (a NaN best stays: NaN > .
       and NaN == NaN are false): each window's first maximum, without branches. */
    #define DLF_MAXPOOL(NAME, T)                                                              \\
    DLF_CLONES static void NAME(const T* x, T* out, int64_t* at, dlf_ix H, dlf_ix W, dlf_ix OH,\\
                                dlf_ix OW, dlf_ix KH, dlf_ix KW, dlf_ix sh, dlf_ix sw, dlf_ix ph,\\
                                dlf_ix pw) {                                                  \\
        dlf_ix oh, ow, kh, kw, lo, hi;                                                        \\
        for (oh = 0; oh < OH; oh++) {                                                         \\
            T* o = out + oh * OW;                                                             \\
            int64_t* a = at + oh * OW;                                                        \\
            for (ow = 0; ow < OW; ow++) a[ow] = -1;                                           \\
            for (kh = 0; kh < KH; kh++) {                                                     \\
                dlf_ix ih = oh * sh - ph + kh;                                                \\
                if (ih < 0 || ih >= H) continue;                                              \\
                for (kw = 0; kw < KW; kw++) {                                                 \\
                    dlf_ix c0 = ih * W + kw - pw;      /* column ow's plane index: c0 + ow*sw */\\
                    dlf_ow_range(W, OW, sw, pw, kw, &lo, &hi);                                \\
                    DLF_BY_STRIDE(S, sw, for (ow = lo; ow < hi; ow++) {                       \\
                        T v = x[c0 + ow * S], b = o[ow];                                      \\
                        int take = (a[ow] < 0) | (v > b) | ((v != v) & (b == b));             \\
                        o[ow] = take ? v : b;                                                 \\
                        a[ow] = take ? c0 + ow * S : a[ow];                                   \\
                    });                                                                       \\
                }                                                                             \\
            }                                                                                 \\
        }                                                                                     \\
    }
    DLF_MAXPOOL(dlf_maxpoolf, float)
    DLF_MAXPOOL(dlf_maxpoold, double)

    /* The same for the 2x2 window at stride 2 without padding (every window inside x), without
       branches (a data-dependent branch per tap mispredicts on most inputs: 3x slower): each row's
       pair gives its first maximum (t0, t1: the right one won), the second row's winner replaces
       the first's when larger or the first NaN; the same taps, order and rule as above. */
    #define DLF_MAXPOOL22(NAME, T, U)                                                         \\
    static inline T NAME##_sel(int t, T a, T b) {       /* t ? a : b, as bits */              \\
        U ua, ub, m = (U)0 - (U)t;                                                            \\
        memcpy(&ua, &a, sizeof a); memcpy(&ub, &b, sizeof b);                                 \\
        ua = (ua & m) | (ub & ~m); memcpy(&a, &ua, sizeof a);                                 \\
        return a;                                                                             \\
    }                                                                                         \\
    DLF_CLONES static void NAME(const T* x, T* out, int64_t* at, dlf_ix W, dlf_ix OH,         \\
                                dlf_ix OW) {                                                  \\
        dlf_ix oh, ow;                                                                        \\
        for (oh = 0; oh < OH; oh++) {                                                         \\
            const T* r0 = x + 2 * oh * W;                                                     \\
            const T* r1 = r0 + W;                                                             \\
            T* o = out + oh * OW;                                                             \\
            int64_t* a = at + oh * OW;                                                        \\
            int64_t i0 = 2 * oh * W;                                                          \\
            for (ow = 0; ow < OW; ow++) {                                                     \\
                T a0 = r0[2 * ow], a1 = r0[2 * ow + 1], c0 = r1[2 * ow], c1 = r1[2 * ow + 1]; \\
                int t0 = (a1 > a0) | ((a1 != a1) & (a0 == a0));                               \\
                int t1 = (c1 > c0) | ((c1 != c1) & (c0 == c0));                               \\
                T m0 = NAME##_sel(t0, a1, a0), m1 = NAME##_sel(t1, c1, c0);                   \\
                int t = (m1 > m0) | ((m1 != m1) & (m0 == m0));                                \\
                o[ow] = NAME##_sel(t, m1, m0);                                                \\
                a[ow] = i0 + 2 * ow + ((int64_t)t0 & ~(-(int64_t)t))                          \\
                        + (((int64_t)W + t1) & -(int64_t)t);                                  \\
            }                                                                                 \\
        }                                                                                     \\
    }
    DLF_MAXPOOL22(dlf_maxpool22f, float, uint32_t)
    DLF_MAXPOOL22(dlf_maxpool22d, double, uint64_t)

    /* Average pooling of one plane: per chunk of DLF_AVGCOLS output columns, the taps in row-major
       order add into double sums (cells outside x skipped), then out = sum / d, with d = KH*KW
       (incl) or the count of the window's cells inside x. */
    #define DLF_AVGCOLS 256
    #define DLF_AVGPOOL(NAME, T)                                                              \\
    DLF_CLONES static void NAME(const T* x, T* out, dlf_ix H, dlf_ix W, dlf_ix OH, dlf_ix OW, \\
                                dlf_ix KH, dlf_ix KW, dlf_ix sh, dlf_ix sw, dlf_ix ph, dlf_ix pw,\\
                                int incl) {                                                   \\
        double acc[DLF_AVGCOLS];                                                              \\
        dlf_ix oh, ow, kh, kw, lo, hi, c0, c1;                                                \\
        for (oh = 0; oh < OH; oh++) {                                                         \\
            dlf_ix hs = oh * sh - ph;                                                         \\
            dlf_ix rows = (hs + KH < H ? hs + KH : H) - (hs > 0 ? hs : 0);                    \\
            for (c0 = 0; c0 < OW; c0 = c1) {                                                  \\
                c1 = c0 + DLF_AVGCOLS < OW ? c0 + DLF_AVGCOLS : OW;                           \\
                for (ow = 0; ow < c1 - c0; ow++) acc[ow] = 0;                                 \\
                for (kh = 0; kh < KH; kh++) {                                                 \\
                    dlf_ix ih = hs + kh;                                                      \\
                    if (ih < 0 || ih >= H) continue;                                          \\
                    for (kw = 0; kw < KW; kw++) {                                             \\
                        const T* xr = x + ih * W + kw - pw;                                   \\
                        dlf_ow_range(W, OW, sw, pw, kw, &lo, &hi);                            \\
                        if (lo < c0) lo = c0;                                                 \\
                        if (hi > c1) hi = c1;                                                 \\
                        DLF_BY_STRIDE(S, sw, for (ow = lo; ow < hi; ow++)                     \\
                                                 acc[ow - c0] += (double)xr[ow * S];);        \\
                    }                                                                         \\
                }                                                                             \\
                for (ow = c0; ow < c1; ow++) {                                                \\
                    dlf_ix ws = ow * sw - pw;                                                 \\
                    dlf_ix cols = (ws + KW < W ? ws + KW : W) - (ws > 0 ? ws : 0);            \\
                    double d = incl ? (double)(KH * KW) : (double)(rows * cols);              \\
                    out[oh * OW + ow] = (T)(acc[ow - c0] / d);                                \\
                }                                                                             \\
            }                                                                                 \\
        }                                                                                     \\
    }
    DLF_AVGPOOL(dlf_avgpoolf, float)
    DLF_AVGPOOL(dlf_avgpoold, double)

    /* Its backward on one plane: dx = 0, then for the taps (kh, kw) in order, every window adds
       g / d (divided in T) to its cell inside x. */
    #define DLF_AVGPOOL_BWD(NAME, T)                                                          \\
    DLF_CLONES static void NAME(const T* g, T* dx, dlf_ix H, dlf_ix W, dlf_ix OH, dlf_ix OW,  \\
                                dlf_ix KH, dlf_ix KW, dlf_ix sh, dlf_ix sw, dlf_ix ph, dlf_ix pw,\\
                                int incl) {                                                   \\
        dlf_ix oh, ow, kh, kw, lo, hi, i;                                                     \\
        for (i = 0; i < H * W; i++) dx[i] = 0;                                                \\
        for (kh = 0; kh < KH; kh++)                                                           \\
            for (kw = 0; kw < KW; kw++) {                                                     \\
                dlf_ow_range(W, OW, sw, pw, kw, &lo, &hi);                                    \\
                for (oh = 0; oh < OH; oh++) {                                                 \\
                    dlf_ix hs = oh * sh - ph, ih = hs + kh;                                   \\
                    dlf_ix rows = (hs + KH < H ? hs + KH : H) - (hs > 0 ? hs : 0);            \\
                    const T* gr = g + oh * OW;                                                \\
                    T* dr = dx + ih * W + kw - pw;                                            \\
                    if (ih < 0 || ih >= H) continue;                                          \\
                    if (incl) {                                                               \\
                        T d = (T)(KH * KW);                                                   \\
                        DLF_BY_STRIDE(S, sw, for (ow = lo; ow < hi; ow++)                     \\
                                                 dr[ow * S] = dr[ow * S] + gr[ow] / d;);      \\
                    } else {                                                                  \\
                        for (ow = lo; ow < hi; ow++) {                                        \\
                            dlf_ix ws = ow * sw - pw;                                         \\
                            dlf_ix cols = (ws + KW < W ? ws + KW : W) - (ws > 0 ? ws : 0);    \\
                            dr[ow * sw] = dr[ow * sw] + gr[ow] / (T)(rows * cols);            \\
                        }                                                                     \\
                    }                                                                         \\
                }                                                                             \\
            }                                                                                 \\
    }
    DLF_AVGPOOL_BWD(dlf_avgpool_bwdf, float)
    DLF_AVGPOOL_BWD(dlf_avgpool_bwdd, double)

    /* col2im of channels [c0, c1) of one image: dx (C, H, W) zeroed there, then each row
       (c, kh, kw) of col (K, OH*OW) added into its cells, in the order (kh, kw), oh, ow. */
    #define DLF_COL2IM(NAME, T)                                                               \\
    DLF_CLONES static void NAME(const T* col, T* dx, dlf_ix c0, dlf_ix c1, dlf_ix H, dlf_ix W,\\
                                dlf_ix OH, dlf_ix OW, dlf_ix KH, dlf_ix KW, dlf_ix sh, dlf_ix sw,\\
                                dlf_ix ph, dlf_ix pw) {                                       \\
        dlf_ix c, kh, kw, oh, ow, lo, hi, i;                                                  \\
        for (i = c0 * H * W; i < c1 * H * W; i++) dx[i] = 0;                                  \\
        for (c = c0; c < c1; c++)                                                             \\
            for (kh = 0; kh < KH; kh++)                                                       \\
                for (kw = 0; kw < KW; kw++) {                                                 \\
                    const T* row = col + ((c * KH + kh) * KW + kw) * OH * OW;                 \\
                    dlf_ow_range(W, OW, sw, pw, kw, &lo, &hi);                                \\
                    for (oh = 0; oh < OH; oh++) {                                             \\
                        dlf_ix ih = oh * sh - ph + kh;                                        \\
                        const T* cr = row + oh * OW;                                          \\
                        T* dr = dx + (c * H + ih) * W + kw - pw;                              \\
                        if (ih < 0 || ih >= H) continue;                                      \\
                        DLF_BY_STRIDE(S, sw, for (ow = lo; ow < hi; ow++)                     \\
                                                 dr[ow * S] = dr[ow * S] + cr[ow];);          \\
                    }                                                                         \\
                }                                                                             \\
    }
    DLF_COL2IM(dlf_col2imf, float)
    DLF_COL2IM(dlf_col2imd, double)

    /* im2col of one image, rows [r0, r1) (all: 0, C*KH*KW): col (r1 - r0, OH*OW) from x
       (C, H, W); per row r = (c*KH + kh)*KW + kw and output row oh: zeros, the cells inside x,
       zeros (copies only: no arithmetic). */
    #define DLF_IM2COL(NAME, T)                                                               \\
    DLF_CLONES static void NAME(const T* restrict x, T* restrict col, dlf_ix C, dlf_ix H,     \\
                                dlf_ix W, dlf_ix OH, dlf_ix OW, dlf_ix KH, dlf_ix KW,         \\
                                dlf_ix sh, dlf_ix sw, dlf_ix ph, dlf_ix pw, dlf_ix r0,        \\
                                dlf_ix r1) {                                                  \\
        dlf_ix c, kh, kw, oh, ow, lo, hi, rr;                                                 \\
        (void)C;                                                                              \\
        for (rr = r0; rr < r1; rr++) {                                                        \\
            c = rr / (KH * KW); kh = rr / KW % KH; kw = rr % KW;                              \\
            T* restrict row = col + (rr - r0) * OH * OW;                                      \\
            const T* xc = x + c * H * W + kw - pw;                                            \\
            dlf_ow_range(W, OW, sw, pw, kw, &lo, &hi);                                        \\
            for (oh = 0; oh < OH; oh++) {                                                     \\
                T* restrict r = row + oh * OW;                                                \\
                dlf_ix ih = oh * sh - ph + kh;                                                \\
                const T* xr = xc + ih * W;                                                    \\
                if (ih < 0 || ih >= H || lo >= hi) {                                          \\
                    for (ow = 0; ow < OW; ow++) r[ow] = 0;                                    \\
                    continue;                                                                 \\
                }                                                                             \\
                for (ow = 0; ow < lo; ow++) r[ow] = 0;                                        \\
                DLF_BY_STRIDE(S, sw, for (ow = lo; ow < hi; ow++) r[ow] = xr[ow * S];);       \\
                for (ow = hi; ow < OW; ow++) r[ow] = 0;                                       \\
            }                                                                                 \\
        }                                                                                     \\
    }
    DLF_IM2COL(dlf_im2colf, float)
    DLF_IM2COL(dlf_im2cold, double)

    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void dlf_ow_range(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t*,
                      Py_ssize_t*) noexcept nogil
    double dlf_sum8f(const float*, Py_ssize_t) noexcept nogil
    double dlf_sum8d(const double*, Py_ssize_t) noexcept nogil
    void dlf_maxpoolf(const float*, float*, int64_t*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t) noexcept nogil
    void dlf_maxpoold(const double*, double*, int64_t*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t) noexcept nogil
    void dlf_maxpool22f(const float*, float*, int64_t*, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t) noexcept nogil
    void dlf_maxpool22d(const double*, double*, int64_t*, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t) noexcept nogil
    void dlf_avgpoolf(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      int) noexcept nogil
    void dlf_avgpoold(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      int) noexcept nogil
    void dlf_avgpool_bwdf(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                          Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                          Py_ssize_t, int) noexcept nogil
    void dlf_avgpool_bwdd(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                          Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                          Py_ssize_t, Py_ssize_t, int) noexcept nogil
    void dlf_im2colf(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept nogil
    void dlf_im2cold(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept nogil
    void dlf_col2imf(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t) noexcept nogil
    void dlf_col2imd(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                     Py_ssize_t, Py_ssize_t) noexcept nogil


cdef extern from "dlfast_dconv.h" nogil:
    enum: DLF_DC_FB
    Py_ssize_t dlf_dconv_stride(Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    Py_ssize_t dlf_dconv_xp_size_f(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    Py_ssize_t dlf_dconv_xp_size_d(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    Py_ssize_t dlf_dconv_rows_f(Py_ssize_t) noexcept
    Py_ssize_t dlf_dconv_rows_d(Py_ssize_t) noexcept
    void dlf_dconv_pack_f(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                          int, Py_ssize_t) noexcept
    void dlf_dconv_pack_d(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                          Py_ssize_t, int, Py_ssize_t) noexcept
    enum: DLF_DW_FB
    void dlf_dconv_pad_f(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t, Py_ssize_t) noexcept
    void dlf_dconv_pad_d(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t, Py_ssize_t) noexcept
    void dlf_dconv_ext_f(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t) noexcept
    void dlf_dconv_ext_d(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t, Py_ssize_t) noexcept
    void dlf_dconv_dw_f(const float*, Py_ssize_t, const float*, Py_ssize_t, float*, Py_ssize_t,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t, void*, int, int) noexcept
    void dlf_dconv_dw_d(const double*, Py_ssize_t, const double*, Py_ssize_t, double*,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, void*, int, int) noexcept
    Py_ssize_t dlf_dconv_dw_acc_f(Py_ssize_t, Py_ssize_t) noexcept
    long dlf_cache_bytes(int, long) noexcept
    Py_ssize_t dlf_dconv_dw_acc_d(Py_ssize_t, Py_ssize_t) noexcept
    int dlf_dw_nt_run_f(const float*, const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    size_t dlf_dw_nt_bytes_f(Py_ssize_t) noexcept
    size_t dlf_dw_nt_bytes_d(Py_ssize_t) noexcept
    void* dlf_dw_nt_align(void*) noexcept
    void dlf_dw_nt_zero_f(void*, Py_ssize_t) noexcept
    void dlf_dw_nt_zero_d(void*, Py_ssize_t) noexcept
    void dlf_dw_nt_add_f(const float*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         void*) noexcept
    void dlf_dw_nt_add_d(const double*, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         void*) noexcept
    void dlf_dw_nt_put_f(const void*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t) noexcept
    void dlf_dw_nt_put_d(const void*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t) noexcept
    int dlf_dw_nt_run_d(const double*, const double*, double*, Py_ssize_t, Py_ssize_t,
                        Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    void dlf_dconv_one_f(const float*, const float*, const float*, float*, float*, float*,
                         Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t, Py_ssize_t) noexcept
    void dlf_dconv_one_d(const double*, const double*, const double*, double*, double*,
                         double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    Py_ssize_t dlf_dcv_scratch_f(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                 Py_ssize_t) noexcept
    Py_ssize_t dlf_dcv_scratch_d(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                 Py_ssize_t) noexcept
    void dlf_dcv_dT_f(const float*, float*, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    void dlf_dcv_dT_d(const double*, double*, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    void dlf_dcv_dw_f(const float*, Py_ssize_t, const float*, Py_ssize_t, Py_ssize_t, float*,
                      Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      float*, int, int) noexcept
    void dlf_dcv_dw_d(const double*, Py_ssize_t, const double*, Py_ssize_t, Py_ssize_t,
                      double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t, Py_ssize_t, double*, int, int) noexcept
    Py_ssize_t dlf_dcv_dw_acc_f() noexcept
    Py_ssize_t dlf_dcv_dw_acc_d() noexcept
    enum: DLF_CV_PB
    enum: DLF_CV_TC
    void dlf_dcv_one_f(const float*, const float*, const float*, float*, float*, Py_ssize_t,
                       Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                       Py_ssize_t) noexcept
    void dlf_dcv_one_d(const double*, const double*, const double*, double*, double*,
                       Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                       Py_ssize_t, Py_ssize_t) noexcept

cdef extern from "dlfast_wino.h" nogil:
    enum: DLF_WN_R
    Py_ssize_t dlf_wino_tiles(Py_ssize_t) noexcept
    Py_ssize_t dlf_wino_u_size_f(Py_ssize_t, Py_ssize_t) noexcept
    Py_ssize_t dlf_wino_u_size_d(Py_ssize_t, Py_ssize_t) noexcept
    void dlf_wino_pack_f(const float*, float*, Py_ssize_t, Py_ssize_t, int) noexcept
    void dlf_wino_pack_d(const double*, double*, Py_ssize_t, Py_ssize_t, int) noexcept
    Py_ssize_t dlf_wino_scratch_f(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                  Py_ssize_t) noexcept
    Py_ssize_t dlf_wino_scratch_d(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                  Py_ssize_t) noexcept
    Py_ssize_t dlf_wino_xq_size_f(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                  Py_ssize_t) noexcept
    Py_ssize_t dlf_wino_xq_size_d(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                  Py_ssize_t) noexcept
    int dlf_wino_one_f(const float*, const float*, const float*, float*, float*, Py_ssize_t,
                       Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept
    int dlf_wino_one_d(const double*, const double*, const double*, double*, double*,
                       Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                       Py_ssize_t) noexcept

# ---------------------------------------------------------------------------- GEMM entry
cdef gemm_f32_t _sgemm = NULL
cdef gemm_f64_t _dgemm = NULL
cdef gemm_f32_t _sgemm_acc = NULL
cdef gemm_f64_t _dgemm_acc = NULL
cdef pin_t _pin = NULL
cdef Py_ssize_t _PARTS = 1


cdef _bind_gemm():
    global _sgemm, _dgemm, _sgemm_acc, _dgemm_acc, _pin, _PARTS
    dense = importlib.import_module("dlfast._backends._dense")
    cdef size_t a0, a1, a2, a3, a4
    a0, a1, a2, a3, a4 = dense._gemm_entries()
    _sgemm, _dgemm = <gemm_f32_t>a0, <gemm_f64_t>a1
    _sgemm_acc, _dgemm_acc = <gemm_f32_t>a2, <gemm_f64_t>a3
    _pin = <pin_t>a4
    _PARTS = dense.gemm_parts()


_bind_gemm()


def gemm_parts():
    """P, the block-count target of the GEMMs (as _dense.gemm_parts())."""
    return _PARTS


cdef inline void _gemm(char ta, char tb, int m, int n, int k, const floating* a, int lda,
                       const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """Row-major C(m, n) = op(A) @ op(B) (_gemm.pxd); k >= 1."""
    if floating is float:
        _sgemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)
    else:
        _dgemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)


cdef inline void _gemm_acc(char ta, char tb, int m, int n, int k, const floating* a, int lda,
                           const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """Row-major C(m, n) += op(A) @ op(B)."""
    if floating is float:
        _sgemm_acc(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)
    else:
        _dgemm_acc(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)


cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return dlf_sum8f(x, n)
    else:
        return dlf_sum8d(x, n)


# ---------------------------------------------------------------------------- geometry
ctypedef struct _Geo:
    Py_ssize_t N, C, H, W, F, KH, KW, sh, sw, ph, pw, OH, OW
    Py_ssize_t HW, OHW, K        # H*W, OH*OW, K = C*KH*KW (rows of col_n)


cdef Py_ssize_t _INT_MAX = 2147483647


cdef _Geo _geometry(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                    Py_ssize_t KH, Py_ssize_t KW, object kernel_name, object stride,
                    object pad) except *:
    """Validated geometry; OH, OW from the padded input (ValueError if the kernel is larger)."""
    cdef _Geo g
    cdef Py_ssize_t sh, sw, ph, pw
    sh, sw = stride
    ph, pw = pad
    if not (1 <= sh <= _INT_MAX and 1 <= sw <= _INT_MAX):
        raise ValueError(f"stride must be positive, got {tuple(stride)}")
    if not (0 <= ph <= _INT_MAX and 0 <= pw <= _INT_MAX):
        raise ValueError(f"pad must be non-negative, got {tuple(pad)}")
    if KH < 1 or KW < 1:
        raise ValueError(f"{kernel_name} must be at least 1x1, got ({KH}, {KW})")
    if KH > H + 2 * ph or KW > W + 2 * pw:
        raise ValueError(f"{kernel_name} ({KH}, {KW}) is larger than the padded input "
                         f"({H + 2 * ph}, {W + 2 * pw})")
    g.N, g.C, g.H, g.W, g.F, g.KH, g.KW = N, C, H, W, F, KH, KW
    g.sh, g.sw, g.ph, g.pw = sh, sw, ph, pw
    g.OH = (H + 2 * ph - KH) // sh + 1
    g.OW = (W + 2 * pw - KW) // sw + 1
    g.HW, g.OHW, g.K = H * W, g.OH * g.OW, C * KH * KW
    return g


cdef inline void _ow_range(const _Geo* g, Py_ssize_t kw, Py_ssize_t* lo,
                           Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the ow whose input column ow*sw - pw + kw lies in [0, W) (lo >= hi: none)."""
    dlf_ow_range(g.W, g.OW, g.sw, g.pw, kw, lo, hi)


cdef int _arr(object a, Py_buffer* v, int dt, str name, tuple shape, bint out,
              bint required=True) except -2:
    """Acquire a into v: C-contiguous, dtype dt (DT_FLOAT: either float), exactly ``shape``
    (entries -1: any size), writeable if out. Returns its dtype. None (v.buf = NULL) only when
    not required."""
    if a is None and required:
        raise TypeError(f"{name} must be an array, got None")
    try:
        dt = buf_get(a, v, dt, -1, out)
    except (TypeError, ValueError, BufferError) as e:    # dtype; not C-contiguous or writeable
        raise type(e)(f"{name}: {e}") from None
    if a is None:
        return dt
    got = tuple(v.shape[k] for k in range(v.ndim))
    if len(got) != len(shape) or any(s >= 0 and s != d for s, d in zip(shape, got)):
        raise ValueError(f"{name} must have shape "
                         f"{tuple(s if s >= 0 else 'any' for s in shape)}, got {got}")
    return dt


cdef int _gemm_dims_ok(const _Geo* g) except -1:
    if g.F > _INT_MAX or g.K > _INT_MAX or g.OHW > _INT_MAX:
        raise ValueError("a GEMM dimension (filters, C*KH*KW or OH*OW) exceeds the BLAS int "
                         "limit")
    return 0


cdef inline Py_ssize_t _img_cols(const _Geo* g) noexcept nogil:
    """Columns of out_n / dcol_n per GEMM block: all OH*OW when the batch has at least P
    images, else about OH*OW / ceil(P / N) rounded up to 16 (so a small batch still fills P
    cores; shape and P alone decide it)."""
    cdef Py_ssize_t per, c
    if g.N >= _PARTS or _PARTS <= 1 or g.N < 1 or g.OHW < 1:
        return g.OHW if g.OHW > 0 else 1
    per = (_PARTS + g.N - 1) // g.N
    c = (g.OHW + per - 1) // per
    c = (c + 15) // 16 * 16
    return c if c < g.OHW else g.OHW


cdef inline Py_ssize_t _w_cols(const _Geo* g) noexcept nogil:
    """Columns of dW (of K) per block: max(16, roundup4(ceil(K / P))) (as _dense's row blocks)."""
    cdef Py_ssize_t c = (g.K + _PARTS - 1) // _PARTS
    c = (c + 3) // 4 * 4
    return c if c > 16 else 16


cdef inline Py_ssize_t _nt_cols(const _Geo* g) noexcept nogil:
    """Columns of dW per block of dlf_dw_nt (K < DIRECT_TAPS): whole tiles of 3 taps, spread
    as evenly as they go over P blocks (K = 25 on 2: 15 + 10 taps, 5 + 4 tiles; K = 9: 6 + 3).
    A block's columns are computed the same way wherever it starts: the split orders the work
    only."""
    cdef Py_ssize_t tiles = (g.K + 2) // 3
    return 3 * ((tiles + _PARTS - 1) // _PARTS)


# ---------------------------------------------------------------------------- im2col / col2im
cdef void _im2col(const floating* x, floating* col, const _Geo* g, Py_ssize_t p0,
                  Py_ssize_t p1) noexcept nogil:
    """Columns [p0, p1) of col_n (K, OH*OW) from the image x_n (C, H, W) (all of them: one C
    loop nest, dlf_im2col)."""
    cdef Py_ssize_t c, kh, kw, p, oh, ow0, ow1, ih, lo, hi, a, b, ow, off
    cdef floating* row
    cdef const floating* xr
    if p0 == 0 and p1 == g.OHW:
        _im2col_rows(x, col, g, 0, g.K)
        return
    for c in range(g.C):
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = col + ((c * g.KH + kh) * g.KW + kw) * g.OHW
                _ow_range(g, kw, &lo, &hi)
                off = kw - g.pw
                p = p0
                while p < p1:
                    oh = p // g.OW
                    ow0 = p - oh * g.OW
                    ow1 = min(g.OW, ow0 + (p1 - p))
                    ih = oh * g.sh - g.ph + kh
                    if ih < 0 or ih >= g.H or lo >= hi:
                        memset(row + p, 0, (ow1 - ow0) * sizeof(floating))
                    else:
                        xr = x + (c * g.H + ih) * g.W
                        a = max(ow0, lo)
                        b = min(ow1, hi)
                        if a >= b:
                            memset(row + p, 0, (ow1 - ow0) * sizeof(floating))
                        else:
                            if a > ow0:
                                memset(row + p, 0, (a - ow0) * sizeof(floating))
                            if g.sw == 1:
                                memcpy(row + p + (a - ow0), xr + a + off,
                                       (b - a) * sizeof(floating))
                            else:
                                for ow in range(a, b):
                                    row[p + ow - ow0] = xr[ow * g.sw + off]
                            if b < ow1:
                                memset(row + p + (b - ow0), 0, (ow1 - b) * sizeof(floating))
                    p += ow1 - ow0


cdef inline void _col2im(const floating* col, floating* dx, const _Geo* g, Py_ssize_t c0,
                         Py_ssize_t c1) noexcept nogil:
    """Channels [c0, c1) of dx_n (C, H, W) = the sum over the windows of col_n (K, OH*OW):
    zeroed, then added in the order (kh, kw), oh, ow (dlf_col2im)."""
    if floating is float:
        dlf_col2imf(col, dx, c0, c1, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw)
    else:
        dlf_col2imd(col, dx, c0, c1, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw)


# ---------------------------------------------------------------------------- direct convolution
# At stride 1 and a batch of at least P images, out (from DIRECT_FWD_TAPS = C*KH*KW taps) and dx
# (from DIRECT_TAPS = F*KH*KW taps: the transposed convolution of dout) are direct convolutions
# (dlfast_dconv.h) instead of im2col/col2im around a GEMM. DeepConvNet's 3x3 layers, batch 100,
# one thread: 47-64 GFLOP/s against 35-44 (OpenBLAS packs the im2col matrix again, and uses each
# element only F times); the first layers' forward (9-25 taps, C = 1): 1.17-1.26x the GEMM path.
# dW likewise where the forward is direct and there are DIRECT_TAPS taps (else im2col into col,
# then GEMMs, or dlf_dw_nt below 32 taps). Each direct pass has two kernel families, vectors over
# positions and vectors over output channels, chosen by _dcv_better / _dcv_dw_better from the
# shape (never by timing): small maps (8x8, 7x7: 1.2x) and 14x14 with 32+ channels run on the
# second.
cdef enum:
    DW_CHUNK_MAP = 128          # maps of fewer positions: dW in one chunk (see _dw_direct)
    DIRECT_TAPS = 32
    DIRECT_FWD_TAPS = 9
    DCV_TAIL = 24
    WINO_IN = 64
    WINO_OUT = 20


cdef inline bint _fwd_direct(const _Geo* g) noexcept nogil:
    """out directly: F >= DLF_DC_FB fills the register tiles of output channels."""
    return (g.sh == 1 and g.sw == 1 and g.N >= _PARTS and g.K >= DIRECT_FWD_TAPS
            and g.F >= DLF_DC_FB)


cdef inline bint _dw_direct_ok(const _Geo* g) noexcept nogil:
    """dW directly (below DIRECT_TAPS taps, a first layer's, dlf_dw_nt from im2col is faster)."""
    return _fwd_direct(g) and g.K >= DIRECT_TAPS


cdef inline bint _dx_direct(const _Geo* g) noexcept nogil:
    """dx directly: its output channels are C (C = 1, a first layer's: 1/6 of a tile)."""
    return (g.sh == 1 and g.sw == 1 and g.ph < g.KH and g.pw < g.KW and g.N >= _PARTS
            and g.F * g.KH * g.KW >= DIRECT_TAPS and g.C >= DLF_DC_FB)


# Which direct kernel (dlf_dconv_one: vectors over positions; dlf_dcv_one: over output
# channels); both give the same bits. 0: by _dcv_better; 1, 2: always the first, the second (tests).
cdef int _DCV_MODE = 0


def _set_direct_kernel(int mode):
    """Tests: 0 chooses the direct kernel by its work, 1 forces vectors over positions, 2 over
    output channels. Returns the previous mode."""
    global _DCV_MODE
    if mode not in (0, 1, 2):
        raise ValueError(f"mode must be 0, 1 or 2, got {mode}")
    prev, _DCV_MODE = _DCV_MODE, mode
    return prev


# Winograd F(2x2, 3x3) for out and dx (dlfast_wino.h): 0 by _wino_better, 1 never, 2 wherever
# it applies (3x3, stride 1). Never while _DCV_MODE forces a direct family. Set by the tuning
# (DLFAST_WINOGRAD) and by tests.
cdef int _WINO_MODE = 0
# Winograd's time per counted multiply-add over the direct kernels', float32 and float64: measured
# once per machine (dlfast/_backends/_tuning.py, "winograd"); until then 2 (Winograd only where it
# counts half the direct work).
cdef double _WINO_EFF[2]
_WINO_EFF[0] = 2.0
_WINO_EFF[1] = 2.0


def _set_winograd(int mode):
    """0 chooses Winograd F(2x2, 3x3) by its work (_wino_better), 1 never, 2 on every 3x3
    stride-1 forward and dx. Returns the previous mode."""
    global _WINO_MODE
    if mode not in (0, 1, 2):
        raise ValueError(f"mode must be 0, 1 or 2, got {mode}")
    prev, _WINO_MODE = _WINO_MODE, mode
    return prev


def _set_winograd_efficiency(double f32, double f64):
    """Winograd's time per counted multiply-add over the direct kernels' (the tuning's
    measurement), float32 and float64: _wino_better picks it where wino * eff < direct."""
    if not (0 < f32 < 1e6 and 0 < f64 < 1e6):
        raise ValueError(f"the efficiencies must be positive and finite, got {f32}, {f64}")
    _WINO_EFF[0], _WINO_EFF[1] = f32, f64


def _wino_counted(Py_ssize_t co, Py_ssize_t ci, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pad=1,
                  bint double=True):
    """The direct kernels' counted work over Winograd's (_direct_work / _wino_work) for a 3x3
    stride-1 convolution of an image (ci, H, W) padded by pad into co channels."""
    cdef Py_ssize_t vl = 4 if double else 8, OH = H + 2 * pad - 2, OW = W + 2 * pad - 2
    if co < 1 or ci < 1 or OH < 1 or OW < 1:
        raise ValueError(f"no convolution: co={co}, ci={ci}, H={H}, W={W}, pad={pad}")
    return (_direct_work(co, ci, OH, OW, dlf_dconv_stride(W, pad, 3), 9, vl)
            / _wino_work(co, ci, OH, OW, vl))


def _wino_chosen(Py_ssize_t co, Py_ssize_t ci, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,
                 Py_ssize_t KW, Py_ssize_t pad=1, bint double=True):
    """Tests: whether a stride-1 convolution of an image (ci, H, W) padded by pad into co
    channels runs on Winograd (_wino_better) in float64 (double) or float32."""
    cdef Py_ssize_t vl = 4 if double else 8
    return _wino_better(co, ci, H + 2 * pad - KH + 1, W + 2 * pad - KW + 1,
                        dlf_dconv_stride(W, pad, KW), KH, KW, vl)


# Images per chunk of the direct dW (_dw_direct): 0 by the L2's size, n >= 1 n images (tests).
cdef Py_ssize_t _DW_CHUNK = 0


def _set_dw_chunk(Py_ssize_t n):
    """Tests: images per chunk of the direct dW (0: by the L2, _dw_direct). Returns the previous
    setting."""
    global _DW_CHUNK
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    prev, _DW_CHUNK = _DW_CHUNK, n
    return prev


cdef inline bint _dcv_better(Py_ssize_t co, Py_ssize_t ci, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t Wp, Py_ssize_t taps, Py_ssize_t vl) noexcept nogil:
    """Vectors over output channels when they cost less, counting multiply-adds per output
    position: co * ceil(OH*Wp / 2vl) * 2vl * k for vectors over positions (rows extended to Wp,
    tiles of 2 vectors; k = ci*taps) against ceil(co / 2vl) * 2vl * OH*OW * (k + DCV_TAIL), where
    a tile's partial sums and its outputs' transposition to (F, OH, OW) cost about DCV_TAIL taps."""
    if _DCV_MODE:
        return _DCV_MODE == 2
    cdef double pos, chan
    pos, chan = _direct_counts(co, ci, OH, OW, Wp, taps, vl)
    return chan < pos


cdef inline (double, double) _direct_counts(Py_ssize_t co, Py_ssize_t ci, Py_ssize_t OH,
                                            Py_ssize_t OW, Py_ssize_t Wp, Py_ssize_t taps,
                                            Py_ssize_t vl) noexcept nogil:
    """(positions family, channels family): the two direct families' counts of _dcv_better."""
    cdef Py_ssize_t k = ci * taps
    return (<double>co * ((OH * Wp + 2 * vl - 1) // (2 * vl)) * 2 * vl * k,
            <double>((co + 2 * vl - 1) // (2 * vl) * 2 * vl) * OH * OW * (k + DCV_TAIL))


cdef inline double _direct_work(Py_ssize_t co, Py_ssize_t ci, Py_ssize_t OH, Py_ssize_t OW,
                               Py_ssize_t Wp, Py_ssize_t taps, Py_ssize_t vl) noexcept nogil:
    """The cheaper direct family's multiply-adds per image, as counted by _dcv_better."""
    cdef double pos, chan
    pos, chan = _direct_counts(co, ci, OH, OW, Wp, taps, vl)
    return min(pos, chan)


cdef inline double _wino_work(Py_ssize_t co, Py_ssize_t ci, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t vl) noexcept nogil:
    """Winograd F(2x2, 3x3)'s counted work per image: 16 * Tp * ci * coP multiply-adds (Tp tiles
    rounded up to register blocks, dlf_wino_tiles, coP = co rounded up to 2vl), WINO_IN per
    tile and input channel (the input transform's vector loads, adds and stores for vl tiles at a
    time, in multiply-adds of one lane each) and WINO_OUT * vl per tile and output channel (the
    output transform and its stores)."""
    cdef Py_ssize_t tp = dlf_wino_tiles((OH + 1) // 2 * ((OW + 1) // 2))
    cdef Py_ssize_t cop = (co + 2 * vl - 1) // (2 * vl) * 2 * vl
    return <double>tp * (16.0 * ci * cop + WINO_IN * ci + WINO_OUT * vl * cop)


cdef inline bint _wino_better(Py_ssize_t co, Py_ssize_t ci, Py_ssize_t OH, Py_ssize_t OW,
                              Py_ssize_t Wp, Py_ssize_t KH, Py_ssize_t KW,
                              Py_ssize_t vl) noexcept nogil:
    """Winograd (3x3 kernels only) where its counted work (_wino_work) times the measured
    efficiency _WINO_EFF is below the cheaper direct family's (_direct_work)."""
    if KH != 3 or KW != 3 or _DCV_MODE or _WINO_MODE == 1:
        return False
    if _WINO_MODE == 2:
        return True
    return (_wino_work(co, ci, OH, OW, vl) * _WINO_EFF[vl == 4]
            < _direct_work(co, ci, OH, OW, Wp, KH * KW, vl))


cdef inline bint _dcv_dw_better(const _Geo* g, Py_ssize_t Wp, Py_ssize_t vl) noexcept nogil:
    """dW with vectors over output channels (dlf_dcv_dw) when it computes no more multiply-adds
    than dlf_dconv_dw: ceil(F / 2vl) * 2vl * ceil(K / DLF_CV_PB) * DLF_CV_PB * OH*OW against
    ceil(F / DLF_DW_FB) * DLF_DW_FB * K * ceil(OH*Wp / vl) * vl per image."""
    if _DCV_MODE:
        return _DCV_MODE == 2
    cdef double chan = (<double>((g.F + 2 * vl - 1) // (2 * vl) * 2 * vl)
                        * ((g.K + DLF_CV_PB - 1) // DLF_CV_PB * DLF_CV_PB) * g.OHW)
    cdef double pos = (<double>((g.F + DLF_DW_FB - 1) // DLF_DW_FB * DLF_DW_FB) * g.K
                       * ((g.OH * Wp + vl - 1) // vl * vl))
    return chan <= pos


cdef int _dconv(const floating* src, const floating* Wt, const floating* b, floating* dst,
                const _Geo* g, bint dx, int act, floating alpha) noexcept nogil:
    """dx False: out = act(conv(x, W) + b) (act: an activation code, ACT_IDENTITY for none,
    applied to each image's output while in cache); dx True (act ACT_IDENTITY): dx = the
    transposed convolution of dout (F, OH, OW) with W (a convolution of dout padded by KH-1-ph,
    KW-1-pw, the kernel flipped, F and C swapped). One image per work item, by Winograd F(2x2,
    3x3) where _wino_better (an image whose output is not finite is redone directly), else by
    the direct family _dcv_better chooses. Returns -1 when its scratch cannot be allocated
    (nothing written)."""
    cdef Py_ssize_t ci, H, W, co, ph, pw, Hp, Wp, xps, per, ws, wu = 0, xqs = 0, n, vl, OH, OW
    cdef floating* buf
    cdef floating* U = NULL
    cdef void* raw
    cdef int nt = _threads(g.N * g.F * g.OHW * g.K // 16)
    cdef bint cv, wino
    if dx:
        ci, H, W, co, ph, pw = g.F, g.OH, g.OW, g.C, g.KH - 1 - g.ph, g.KW - 1 - g.pw
    else:
        ci, H, W, co, ph, pw = g.C, g.H, g.W, g.F, g.ph, g.pw
    Hp = H + 2 * ph
    OH, OW = Hp - g.KH + 1, W + 2 * pw - g.KW + 1
    Wp = dlf_dconv_stride(W, pw, g.KW)          # the padded rows' stride
    vl = 8 if floating is float else 4
    cv = _dcv_better(co, ci, OH, OW, Wp, g.KH * g.KW, vl)
    wino = _wino_better(co, ci, OH, OW, Wp, g.KH, g.KW, vl)
    if floating is float:
        xps = dlf_dconv_xp_size_f(ci, Hp, Wp, g.KW)
    else:
        xps = dlf_dconv_xp_size_d(ci, Hp, Wp, g.KW)
    if cv:
        ws = (co + 2 * vl - 1) // (2 * vl) * 2 * vl * ci * g.KH * g.KW
        if floating is float:                   # padded input, partial sums; 64 bytes apart
            per = dlf_dcv_scratch_f(ci, Hp, Wp, g.KW, OH * OW)
        else:
            per = dlf_dcv_scratch_d(ci, Hp, Wp, g.KW, OH * OW)
        per = (per + 15) // 16 * 16
        ws = (ws + 15) // 16 * 16
    else:
        ws = (co + DLF_DC_FB - 1) // DLF_DC_FB * DLF_DC_FB * ci * g.KH * g.KW
        per = xps + co * OH * Wp + 16           # padded input, extended output
    if wino:                                    # its kernels after the direct ones, its scratch
        if floating is float:
            wu = (dlf_wino_u_size_f(ci, co) + 15) // 16 * 16
            xqs = dlf_wino_xq_size_f(ci, H, W, co, ph, pw)
            per = max(per, (dlf_wino_scratch_f(ci, H, W, co, ph, pw) + 15) // 16 * 16)
        else:
            wu = (dlf_wino_u_size_d(ci, co) + 15) // 16 * 16
            xqs = dlf_wino_xq_size_d(ci, H, W, co, ph, pw)
            per = max(per, (dlf_wino_scratch_d(ci, H, W, co, ph, pw) + 15) // 16 * 16)
    raw = malloc((ws + wu + nt * per) * sizeof(floating) + 64)
    if raw == NULL:
        return -1
    buf = <floating*>dlf_dw_nt_align(raw)       # 64-byte lines: every part starts on one
    if floating is float:                       # output channels in blocks of the tile
        dlf_dconv_pack_f(Wt, buf, g.F, g.C, g.KH, g.KW, dx, 2 * vl if cv else DLF_DC_FB)
    else:
        dlf_dconv_pack_d(Wt, buf, g.F, g.C, g.KH, g.KW, dx, 2 * vl if cv else DLF_DC_FB)
    if wino:
        U = buf + ws
        if floating is float:
            dlf_wino_pack_f(Wt, U, g.F, g.C, dx)
        else:
            dlf_wino_pack_d(Wt, U, g.F, g.C, dx)
        for n in range(nt):                     # the padded images' borders: zeros from here on
            memset(buf + ws + wu + n * per, 0, xqs * sizeof(floating))
    if nt == 1:
        for n in range(g.N):
            _dconv_image(src, buf, U, b, dst, buf + ws + wu, xps, xqs, ci, H, W, co, ph, pw,
                         g.KH, g.KW, n, cv, act, alpha)
    else:
        for n in prange(g.N, num_threads=nt, schedule="static"):
            _dconv_image(src, buf, U, b, dst, buf + ws + wu + threadid() * per, xps, xqs, ci, H,
                         W, co, ph, pw, g.KH, g.KW, n, cv, act, alpha)
    free(raw)
    return 0


cdef inline void _dconv_image(const floating* src, const floating* wp, const floating* U,
                              const floating* b, floating* dst, floating* t, Py_ssize_t xps,
                              Py_ssize_t xqs, Py_ssize_t ci, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t co, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t KH,
                              Py_ssize_t KW, Py_ssize_t n, bint cv, int act,
                              floating alpha) noexcept nogil:
    """Image n: src (ci, H, W) -> dst (co, H + 2ph - KH + 1, W + 2pw - KW + 1), then act; by
    Winograd when U (its transformed kernels) is given and the result is finite (t's first xqs
    elements: Winograd's padded image, whose borders stay zero; zeroed again after a redo)."""
    cdef Py_ssize_t outs = co * (H + 2 * ph - KH + 1) * (W + 2 * pw - KW + 1)
    cdef const floating* x = src + n * ci * H * W
    cdef floating* o = dst + n * outs
    cdef int redo = 1
    if U != NULL:
        if floating is float:
            redo = dlf_wino_one_f(x, U, b, o, t, ci, H, W, co, ph, pw)
        else:
            redo = dlf_wino_one_d(x, U, b, o, t, ci, H, W, co, ph, pw)
    if not redo:
        pass
    elif cv:
        if floating is float:
            dlf_dcv_one_f(x, wp, b, o, t, ci, H, W, co, KH, KW, ph, pw)
        else:
            dlf_dcv_one_d(x, wp, b, o, t, ci, H, W, co, KH, KW, ph, pw)
    elif floating is float:
        dlf_dconv_one_f(x, wp, b, o, t, t + xps, ci, H, W, co, KH, KW, ph, pw)
    else:
        dlf_dconv_one_d(x, wp, b, o, t, t + xps, ci, H, W, co, KH, KW, ph, pw)
    if U != NULL and redo:
        memset(t, 0, xqs * sizeof(floating))
    if act != ACT_IDENTITY:
        act_row(o, o, NULL, outs, act, alpha)


cdef int _dw_direct(const floating* dout, const floating* x, floating* dW,
                    const _Geo* g) noexcept nogil:
    """dW by direct convolution, a chunk of images at a time (as many as fit half the L2, at
    least one per thread; maps of fewer than DW_CHUNK_MAP positions in one chunk: an item's tile
    set-up, paid per chunk, outweighs what the cache saves there, 0.88-1.0x on 7x7 and 8x8 maps
    in float32 and float64 at 2 threads, against 1.15-1.25x gained on 14x14 and 28x28 at one
    thread): the chunk's images padded and their dout extended (dlf_dconv_dw) or
    transposed (dlf_dcv_dw, where _dcv_dw_better says so), one image per work item; then every
    item (a block of output channels and an input channel, or a block of taps) on the chunk,
    its sums waiting in its own accumulators between chunks. Returns -1 (the caller computes dW
    through im2col) when the scratch cannot be allocated or a dW is NaN (a non-finite x may add
    0 * inf from the extended grid)."""
    cdef Py_ssize_t Hp = g.H + 2 * g.ph, Wp = dlf_dconv_stride(g.W, g.pw, g.KW)
    cdef Py_ssize_t P = g.OH * Wp, Pr, vl = 8 if floating is float else 4
    cdef Py_ssize_t xs, es, nfb, nit, i, FP = (g.F + 2 * vl - 1) // (2 * vl) * 2 * vl
    cdef Py_ssize_t accs, gc
    cdef floating* buf
    cdef floating* acc
    cdef int nt = _threads(g.N * g.F * g.OHW * g.K // 16), bad = 0
    cdef bint cv = _dcv_dw_better(g, Wp, vl)
    if floating is float:
        xs = dlf_dconv_xp_size_f(g.C, Hp, Wp, g.KW)
        Pr = dlf_dconv_rows_f(P)
        accs = dlf_dcv_dw_acc_f() if cv else dlf_dconv_dw_acc_f(g.KH, g.KW) // sizeof(float)
    else:
        xs = dlf_dconv_xp_size_d(g.C, Hp, Wp, g.KW)
        Pr = dlf_dconv_rows_d(P)
        accs = dlf_dcv_dw_acc_d() if cv else dlf_dconv_dw_acc_d(g.KH, g.KW) // sizeof(double)
    xs = (xs + 15) // 16 * 16
    accs = (accs + 15) // 16 * 16              # 64-byte multiples (16 floats or doubles)
    if cv:
        es = g.OHW * FP
        nfb = FP // (2 * vl)
        nit = nfb * _dw_groups(g.K)[0]
    else:
        es = g.F * Pr
        nfb = (g.F + DLF_DW_FB - 1) // DLF_DW_FB
        nit = nfb * g.C
    es = (es + 15) // 16 * 16
    gc = dlf_cache_bytes(2, 256 * 1024) // 2 // ((xs + es) * sizeof(floating))
    gc = max(gc, nt) if g.OHW >= DW_CHUNK_MAP else g.N
    gc = min(_DW_CHUNK if _DW_CHUNK > 0 else gc, g.N)
    buf = <floating*>malloc((gc * (xs + es) + nit * accs + 16) * sizeof(floating))
    if buf == NULL:
        return -1
    acc = <floating*>(((<size_t>(buf + gc * (xs + es))) + 63) & ~(<size_t>63))
    if nt == 1:
        _dw_chunks(dout, x, dW, buf, acc, g, xs, es, gc, accs, Wp, Pr, FP, nit, nfb, cv, 0, 1)
    else:
        with parallel(num_threads=nt):
            _dw_chunks(dout, x, dW, buf, acc, g, xs, es, gc, accs, Wp, Pr, FP, nit, nfb, cv,
                       dlfast_omp_id(), dlfast_omp_team())
    free(buf)
    for i in range(g.F * g.K):
        if dW[i] != dW[i]:
            bad = 1
    return -1 if bad else 0


cdef inline (Py_ssize_t, Py_ssize_t) _dw_groups(Py_ssize_t K) noexcept nogil:
    """dlf_dcv_dw's tiles of DLF_CV_PB taps in groups of at most DLF_CV_TC, as even as can be
    (24 tiles: 12 + 12, not 16 + 8): (groups, tiles per group; the last may have fewer)."""
    cdef Py_ssize_t tiles = (K + DLF_CV_PB - 1) // DLF_CV_PB
    cdef Py_ssize_t ng = (tiles + DLF_CV_TC - 1) // DLF_CV_TC
    return ng, (tiles + ng - 1) // ng


cdef void _dw_chunks(const floating* dout, const floating* x, floating* dW, floating* buf,
                     floating* acc, const _Geo* g, Py_ssize_t xs, Py_ssize_t es, Py_ssize_t gc,
                     Py_ssize_t accs, Py_ssize_t Wp, Py_ssize_t Pr, Py_ssize_t FP,
                     Py_ssize_t nit, Py_ssize_t nfb, bint cv, int tid, int team) noexcept nogil:
    """Thread tid of a team of `team` (inside one parallel region): per chunk, the images
    n0 + tid, n0 + tid + team, ... prepared, a barrier, the items [tid*nit/team,
    (tid+1)*nit/team) (consecutive items share a block of channels), a barrier (the next chunk
    overwrites the buffer)."""
    cdef Py_ssize_t n0 = 0, n1, n, it, i0 = tid * nit // team, i1 = (tid + 1) * nit // team
    while n0 < g.N:
        n1 = min(n0 + gc, g.N)
        n = n0 + tid
        while n < n1:
            _dw_prep(dout, x, buf, g, xs, es, gc, Wp, Pr, FP, n, n0, cv)
            n += team
        dlfast_omp_barrier()
        for it in range(i0, i1):
            _dw_item(buf, dW, acc + it * accs, g, xs, es, gc, n1 - n0, n0 == 0, n1 == g.N, Wp,
                     Pr, FP, it, nfb, cv)
        dlfast_omp_barrier()
        n0 = n1


cdef inline void _dw_prep(const floating* dout, const floating* x, floating* buf, const _Geo* g,
                          Py_ssize_t xs, Py_ssize_t es, Py_ssize_t gc, Py_ssize_t Wp,
                          Py_ssize_t Pr, Py_ssize_t FP, Py_ssize_t n, Py_ssize_t n0,
                          bint cv) noexcept nogil:
    """Image n into its slot n - n0 of the chunk: xp at buf + slot*xs, e at buf + gc*xs +
    slot*es."""
    cdef floating* e = buf + gc * xs + (n - n0) * es
    cdef const floating* d = dout + n * g.F * g.OHW
    if floating is float:
        dlf_dconv_pad_f(x + n * g.C * g.HW, buf + (n - n0) * xs, g.C, g.H, g.W, g.ph, g.pw, g.KW)
        if cv:
            dlf_dcv_dT_f(d, e, g.F, g.OHW, FP)
        else:
            dlf_dconv_ext_f(d, e, g.F, g.OH, g.OW, Wp, Pr)
    else:
        dlf_dconv_pad_d(x + n * g.C * g.HW, buf + (n - n0) * xs, g.C, g.H, g.W, g.ph, g.pw, g.KW)
        if cv:
            dlf_dcv_dT_d(d, e, g.F, g.OHW, FP)
        else:
            dlf_dconv_ext_d(d, e, g.F, g.OH, g.OW, Wp, Pr)


cdef inline void _dw_item(floating* buf, floating* dW, floating* acc, const _Geo* g,
                          Py_ssize_t xs, Py_ssize_t es, Py_ssize_t gc, Py_ssize_t nc,
                          bint first, bint last, Py_ssize_t Wp, Py_ssize_t Pr, Py_ssize_t FP,
                          Py_ssize_t it, Py_ssize_t nfb, bint cv) noexcept nogil:
    """Item it on the chunk's nc images (acc: its accumulators)."""
    cdef Py_ssize_t Hp = g.H + 2 * g.ph, vl = 8 if floating is float else 4
    cdef Py_ssize_t ng, per
    ng, per = _dw_groups(g.K)
    if cv:                  # item: (block of channels, group of `per` tiles of taps)
        if floating is float:
            dlf_dcv_dw_f(buf, xs, buf + gc * xs, es, FP, dW, nc, g.F, g.K, g.KH, g.KW, g.OH,
                         g.OW, Hp * Wp, Wp, (it // ng) * 2 * vl, (it % ng) * per, per, acc,
                         first, last)
        else:
            dlf_dcv_dw_d(buf, xs, buf + gc * xs, es, FP, dW, nc, g.F, g.K, g.KH, g.KW, g.OH,
                         g.OW, Hp * Wp, Wp, (it // ng) * 2 * vl, (it % ng) * per, per, acc,
                         first, last)
    elif floating is float:
        dlf_dconv_dw_f(buf, xs, buf + gc * xs, es, dW, nc, g.C, it % g.C, Hp * Wp, Wp, g.F,
                       (it // g.C) * DLF_DW_FB, g.KH, g.KW, Pr, acc, first, last)
    else:
        dlf_dconv_dw_d(buf, xs, buf + gc * xs, es, dW, nc, g.C, it % g.C, Hp * Wp, Wp, g.F,
                       (it // g.C) * DLF_DW_FB, g.KH, g.KW, Pr, acc, first, last)


# ---------------------------------------------------------------------------- conv2d forward
cdef bint _conv_fwd(const floating* x, const floating* Wt, const floating* b, floating* out,
                    floating* col, const _Geo* g, int act, floating alpha) noexcept nogil:
    """out = act(conv(x, W) + b) (act ACT_IDENTITY: none; else applied per work item while its
    output is in cache: the same bits as the activation op after it). Returns whether col now
    holds im2col(x) (the GEMM path) for a backward of the same x."""
    cdef Py_ssize_t cols = _img_cols(g), nb = (g.OHW + cols - 1) // cols, it
    cdef int nt = _threads(g.N * g.F * g.OHW * g.K // 16 + g.N * g.K * g.OHW // CHEAP)
    if g.N == 0:
        return True
    if _fwd_direct(g) and _dconv(x, Wt, b, out, g, False, act, alpha) == 0:
        return False                            # col untouched
    _pin()
    if nt == 1:
        for it in range(g.N * nb):
            _fwd_item(x, Wt, b, out, col, g, it // nb, (it % nb) * cols, cols, act, alpha)
    else:
        for it in prange(g.N * nb, num_threads=nt, schedule="static"):
            _fwd_item(x, Wt, b, out, col, g, it // nb, (it % nb) * cols, cols, act, alpha)
    return True


cdef void _fwd_item(const floating* x, const floating* Wt, const floating* b, floating* out,
                    floating* col, const _Geo* g, Py_ssize_t n, Py_ssize_t p0,
                    Py_ssize_t cols, int act, floating alpha) noexcept nogil:
    """Columns [p0, p0 + cols) of image n: im2col, GEMM, bias, act."""
    cdef Py_ssize_t p1 = min(p0 + cols, g.OHW), f, p
    cdef floating* o = out + n * g.F * g.OHW
    cdef floating* cn = col + n * g.K * g.OHW
    cdef floating bf
    if g.K == 0:
        for f in range(g.F):
            memset(o + f * g.OHW + p0, 0, (p1 - p0) * sizeof(floating))
    else:
        _im2col(x + n * g.C * g.HW, cn, g, p0, p1)
        _gemm(c'N', c'N', <int>g.F, <int>(p1 - p0), <int>g.K, Wt, <int>g.K, cn + p0,
              <int>g.OHW, o + p0, <int>g.OHW)
    if b != NULL:
        for f in range(g.F):
            bf = b[f]
            for p in range(p0, p1):
                o[f * g.OHW + p] = o[f * g.OHW + p] + bf
    if act != ACT_IDENTITY:
        for f in range(g.F):
            act_row(o + f * g.OHW + p0, o + f * g.OHW + p0, NULL, p1 - p0, act, alpha)


def conv2d_forward(x, W, b, out, col, stride, pad):
    """out = conv(x, W) + b and col = im2col(x); x (N, C, H, W), W (F, C, KH, KW), b (F,) or
    None, out (N, F, OH, OW), col (N, C*KH*KW, OH*OW); stride, pad: (h, w) pairs."""
    cdef Py_buffer v[5]
    cdef int dt
    cdef _Geo g
    memset(v, 0, sizeof(v))
    try:
        dt = _arr(x, &v[0], DT_FLOAT, "x", (-1, -1, -1, -1), False)
        _arr(W, &v[1], dt, "W", (-1, v[0].shape[1], -1, -1), False)
        g = _geometry(v[0].shape[0], v[0].shape[1], v[0].shape[2], v[0].shape[3],
                      v[1].shape[0], v[1].shape[2], v[1].shape[3], "the kernel", stride, pad)
        _gemm_dims_ok(&g)
        _arr(b, &v[2], dt, "b", (g.F,), False, False)
        _arr(out, &v[3], dt, "out", (g.N, g.F, g.OH, g.OW), True)
        _arr(col, &v[4], dt, "col", (g.N, g.K, g.OHW), True)
        with nogil:
            if dt == DT_F32:
                _conv_fwd(<const float*>v[0].buf, <const float*>v[1].buf,
                          <const float*>v[2].buf, <float*>v[3].buf, <float*>v[4].buf, &g,
                          ACT_IDENTITY, 0)
            else:
                _conv_fwd(<const double*>v[0].buf, <const double*>v[1].buf,
                          <const double*>v[2].buf, <double*>v[3].buf, <double*>v[4].buf, &g,
                          ACT_IDENTITY, 0)
    finally:
        buf_release(v, 5)


# ---------------------------------------------------------------------------- conv2d backward
cdef void _conv_bwd(const floating* dout, const floating* x, const floating* Wt, floating* col,
                    floating* dcol, floating* dx, floating* dW, floating* db, const _Geo* g,
                    bint col_ready) noexcept nogil:
    """col_ready: col already holds im2col(x) (the forward of this x took the GEMM path)."""
    cdef Py_ssize_t cols, nb, it
    cdef int nt
    # few taps, im2col per image: db's sums ride along with dW's first column block
    cdef bint db_in_dw = (db != NULL and dW != NULL and g.F > 0 and g.K > 0
                          and _dw_per_image(g, col_ready))
    _pin()
    if dx != NULL and g.N and g.C and g.HW:
        if g.F == 0:
            memset(dx, 0, g.N * g.C * g.HW * sizeof(floating))
        elif _dx_direct(g) and _dconv(dout, Wt, NULL, dx, g, True, ACT_IDENTITY, 0) == 0:
            pass
        else:
            cols = _img_cols(g)
            nb = (g.OHW + cols - 1) // cols
            nt = _threads(g.N * g.F * g.OHW * g.K // 16 + g.N * g.K * g.OHW // CHEAP)
            if nb == 1:
                # one item per image: dcol_n while in cache goes straight to col2im
                if nt == 1:
                    for it in range(g.N):
                        _dx_image(dout, Wt, dcol, dx, g, it)
                else:
                    for it in prange(g.N, num_threads=nt, schedule="static"):
                        _dx_image(dout, Wt, dcol, dx, g, it)
            else:
                # a batch below P: column blocks of the GEMMs, then col2im by channel
                if nt == 1:
                    for it in range(g.N * nb):
                        _dcol_block(dout, Wt, dcol, g, it // nb, (it % nb) * cols, cols)
                    for it in range(g.N * g.C):
                        _col2im(dcol + (it // g.C) * g.K * g.OHW, dx + (it // g.C) * g.C * g.HW,
                                g, it % g.C, it % g.C + 1)
                else:
                    for it in prange(g.N * nb, num_threads=nt, schedule="static"):
                        _dcol_block(dout, Wt, dcol, g, it // nb, (it % nb) * cols, cols)
                    for it in prange(g.N * g.C, num_threads=nt, schedule="static"):
                        _col2im(dcol + (it // g.C) * g.K * g.OHW, dx + (it // g.C) * g.C * g.HW,
                                g, it % g.C, it % g.C + 1)
    if dW != NULL and g.F and g.K:
        if not (_dw_direct_ok(g) and _dw_direct(dout, x, dW, g) == 0):
            _dw_gemm(dout, x, col, dW, db if db_in_dw else NULL, g, col_ready)
    if db != NULL and g.F and not db_in_dw:
        nt = _threads(g.N * g.F * g.OHW // CHEAP)
        if nt == 1:
            for it in range(g.F):
                _db_one(dout, db, g, it)
        else:
            for it in prange(g.F, num_threads=nt, schedule="static"):
                _db_one(dout, db, g, it)


cdef inline bint _dw_per_image(const _Geo* g, bint col_ready) noexcept nogil:
    """dW writes each image's im2col rows as it goes (dlf_dw_nt below DIRECT_TAPS taps, col not
    filled by the forward); its first block then sums db too."""
    return g.K < DIRECT_TAPS and not col_ready


cdef void _dw_gemm(const floating* dout, const floating* x, floating* col, floating* dW,
                   floating* db, const _Geo* g, bint col_ready) noexcept nogil:
    """dW through col = im2col(x) (written here unless col_ready) and fixed column blocks of
    GEMMs (images added in order). Below DIRECT_TAPS taps each block writes its own rows of
    each image's im2col while it goes (_dw_block), and db (non-NULL only then) is summed by the
    first block."""
    cdef Py_ssize_t it, wc, nbw
    cdef int nt = _threads(g.N * g.K * g.OHW // CHEAP)
    cdef bint lazy = _dw_per_image(g, col_ready)
    if not col_ready and not lazy:
        if nt == 1:
            for it in range(g.N):
                _im2col(x + it * g.C * g.HW, col + it * g.K * g.OHW, g, 0, g.OHW)
        else:
            for it in prange(g.N, num_threads=nt, schedule="static"):
                _im2col(x + it * g.C * g.HW, col + it * g.K * g.OHW, g, 0, g.OHW)
    wc = _nt_cols(g) if g.K < DIRECT_TAPS else _w_cols(g)
    nbw = (g.K + wc - 1) // wc
    nt = _threads(g.N * g.F * g.OHW * g.K // 16)
    if nt == 1:
        for it in range(nbw):
            _dw_block(dout, x, col, dW, db if it == 0 else NULL, g, it * wc, wc, not lazy)
    else:
        for it in prange(nbw, num_threads=nt, schedule="static"):
            _dw_block(dout, x, col, dW, db if it == 0 else NULL, g, it * wc, wc, not lazy)


cdef void _dx_image(const floating* dout, const floating* Wt, floating* dcol, floating* dx,
                    const _Geo* g, Py_ssize_t n) noexcept nogil:
    cdef floating* dc = dcol + n * g.K * g.OHW
    _gemm(c'T', c'N', <int>g.K, <int>g.OHW, <int>g.F, Wt, <int>g.K, dout + n * g.F * g.OHW,
          <int>g.OHW, dc, <int>g.OHW)
    _col2im(dc, dx + n * g.C * g.HW, g, 0, g.C)


cdef void _dcol_block(const floating* dout, const floating* Wt, floating* dcol, const _Geo* g,
                      Py_ssize_t n, Py_ssize_t p0, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t p1 = min(p0 + cols, g.OHW)
    _gemm(c'T', c'N', <int>g.K, <int>(p1 - p0), <int>g.F, Wt, <int>g.K,
          dout + n * g.F * g.OHW + p0, <int>g.OHW, dcol + n * g.K * g.OHW + p0, <int>g.OHW)


cdef void _dw_block(const floating* dout, const floating* x, floating* col, floating* dW,
                    floating* db, const _Geo* g, Py_ssize_t c0, Py_ssize_t wc,
                    bint filled) noexcept nogil:
    """Columns [c0, c0 + wc) of dW (F, K) = sum_n dout_n (F, OHW) @ col_n[c0:c1].T, n in order:
    below DIRECT_TAPS taps by dlf_dw_nt (register tiles, accumulators in L1 across the images;
    unless ``filled`` (col holds im2col(x)), each image's rows [c0, c1) of im2col written into
    a scratch just before they are used: _dw_nt_images), else (or when its scratch cannot be
    allocated) one GEMM per image (col's rows [c0, c1) written first unless filled). db: NULL,
    or db = sum over n, p of dout (as _db_one) to write too (only when not filled)."""
    cdef Py_ssize_t c1 = min(c0 + wc, g.K), f, n
    if g.K < DIRECT_TAPS and not filled:
        if _dw_nt_images(dout, x, dW, db, g, c0, c1) == 0:
            return
        if db != NULL:
            for f in range(g.F):
                _db_one(dout, db, g, f)
        for n in range(g.N):                    # no scratch: the rows into col
            _im2col_rows(x + n * g.C * g.HW, col + (n * g.K + c0) * g.OHW, g, c0, c1)
    if g.K < DIRECT_TAPS:
        if floating is float:
            if dlf_dw_nt_run_f(dout, col, dW, g.N, g.F, g.K, g.OHW, c0, c1) == 0:
                return
        else:
            if dlf_dw_nt_run_d(dout, col, dW, g.N, g.F, g.K, g.OHW, c0, c1) == 0:
                return
    for f in range(g.F):
        memset(dW + f * g.K + c0, 0, (c1 - c0) * sizeof(floating))
    for n in range(g.N):
        _gemm_acc(c'N', c'T', <int>g.F, <int>(c1 - c0), <int>g.OHW, dout + n * g.F * g.OHW,
                  <int>g.OHW, col + (n * g.K + c0) * g.OHW, <int>g.OHW, dW + c0, <int>g.K)


cdef inline void _im2col_rows(const floating* x, floating* out, const _Geo* g, Py_ssize_t r0,
                              Py_ssize_t r1) noexcept nogil:
    """Rows [r0, r1) of im2col of the image x (C, H, W) into out ((r1 - r0), OH*OW)."""
    if floating is float:
        dlf_im2colf(x, out, g.C, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, r0, r1)
    else:
        dlf_im2cold(x, out, g.C, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, r0, r1)


cdef int _dw_nt_images(const floating* dout, const floating* x, floating* dW, floating* db,
                       const _Geo* g, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """dW columns [c0, c1) as dlf_dw_nt (the same terms in the same order: the same bits), each
    image's im2col rows [c0, c1) written into a scratch of (c1 - c0) * OH*OW elements that
    stays in cache (the batch's im2col is never stored); with db, also db[f] = sum_n
    _sum(dout_n[f]) in double, n in order (_db_one's sums), each image's rows while in cache.
    -1 when the scratch cannot be allocated (nothing written)."""
    cdef Py_ssize_t nt = c1 - c0, m = g.F * (c1 - c0), n, f
    cdef size_t accb = dlf_dw_nt_bytes_f(m) if floating is float else dlf_dw_nt_bytes_d(m)
    cdef char* raw
    cdef void* acc
    cdef double* sums
    cdef floating* rows
    accb = (accb + 63) // 64 * 64
    raw = <char*>malloc(accb + g.F * sizeof(double) + (nt * g.OHW + 8) * sizeof(floating))
    if raw == NULL:
        return -1
    acc = dlf_dw_nt_align(raw)
    sums = <double*>(raw + accb)                # accb: a multiple of 64 bytes
    rows = <floating*>(raw + accb + g.F * sizeof(double))
    for f in range(g.F):
        sums[f] = 0
    if floating is float:
        dlf_dw_nt_zero_f(acc, m)
    else:
        dlf_dw_nt_zero_d(acc, m)
    for n in range(g.N):
        _im2col_rows(x + n * g.C * g.HW, rows, g, c0, c1)
        if floating is float:
            dlf_dw_nt_add_f(dout + n * g.F * g.OHW, rows, g.F, nt, g.OHW, acc)
        else:
            dlf_dw_nt_add_d(dout + n * g.F * g.OHW, rows, g.F, nt, g.OHW, acc)
        if db != NULL:
            for f in range(g.F):
                sums[f] = sums[f] + _sum(dout + (n * g.F + f) * g.OHW, g.OHW)
    if floating is float:
        dlf_dw_nt_put_f(acc, dW, g.F, g.K, c0, nt)
    else:
        dlf_dw_nt_put_d(acc, dW, g.F, g.K, c0, nt)
    if db != NULL:
        for f in range(g.F):
            db[f] = <floating>sums[f]
    free(raw)
    return 0


cdef void _db_one(const floating* dout, floating* db, const _Geo* g,
                  Py_ssize_t f) noexcept nogil:
    cdef double s = 0
    cdef Py_ssize_t n
    for n in range(g.N):
        s = s + _sum(dout + (n * g.F + f) * g.OHW, g.OHW)
    db[f] = <floating>s


def conv2d_backward(dout, x, W, col, dcol, dx, dW, db, stride, pad):
    """dx = col2im(W2.T @ dout_n) (via dcol), dW = sum_n dout_n @ col_n.T with col = im2col(x)
    written here, db = sum dout over n, oh, ow; dx, dW, db None to skip (dcol may be None when
    dx is, col when dW is)."""
    cdef Py_buffer v[8]
    cdef int dt
    cdef _Geo g
    memset(v, 0, sizeof(v))
    try:
        dt = _arr(x, &v[1], DT_FLOAT, "x", (-1, -1, -1, -1), False)
        _arr(W, &v[2], dt, "W", (-1, v[1].shape[1], -1, -1), False)
        g = _geometry(v[1].shape[0], v[1].shape[1], v[1].shape[2], v[1].shape[3],
                      v[2].shape[0], v[2].shape[2], v[2].shape[3], "the kernel", stride, pad)
        _gemm_dims_ok(&g)
        _arr(dout, &v[0], dt, "dout", (g.N, g.F, g.OH, g.OW), False)
        if dx is not None and dcol is None:
            raise ValueError("dcol (the workspace of dx) is required when dx is wanted")
        if dW is not None and col is None:
            raise ValueError("col (the workspace of dW) is required when dW is wanted")
        _arr(col, &v[3], dt, "col", (g.N, g.K, g.OHW), True, False)
        _arr(dcol, &v[4], dt, "dcol", (g.N, g.K, g.OHW), True, False)
        _arr(dx, &v[5], dt, "dx", (g.N, g.C, g.H, g.W), True, False)
        _arr(dW, &v[6], dt, "dW", (g.F, g.C, g.KH, g.KW), True, False)
        _arr(db, &v[7], dt, "db", (g.F,), True, False)
        with nogil:
            if dt == DT_F32:
                _conv_bwd(<const float*>v[0].buf, <const float*>v[1].buf,
                          <const float*>v[2].buf, <float*>v[3].buf, <float*>v[4].buf,
                          <float*>v[5].buf, <float*>v[6].buf, <float*>v[7].buf, &g, False)
            else:
                _conv_bwd(<const double*>v[0].buf, <const double*>v[1].buf,
                          <const double*>v[2].buf, <double*>v[3].buf, <double*>v[4].buf,
                          <double*>v[5].buf, <double*>v[6].buf, <double*>v[7].buf, &g,
                          False)
    finally:
        buf_release(v, 8)


# ---------------------------------------------------------------------------- pooling
cdef _Geo _pool_geometry(Py_buffer* vx, object kernel, object stride, object pad) except *:
    return _pool_geo(vx.shape[0], vx.shape[1], vx.shape[2], vx.shape[3], kernel, stride, pad)


cdef _Geo _pool_geo(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, object kernel,
                    object stride, object pad) except *:
    """Validated geometry of pooling x (N, C, H, W)."""
    cdef Py_ssize_t kh, kw, ph, pw
    kh, kw = kernel
    ph, pw = pad
    if kh < 1 or kw < 1:
        raise ValueError(f"the window must be at least 1x1, got {tuple(kernel)}")
    if H < 1 or W < 1:
        raise ValueError(f"x must have H, W >= 1 for pooling, got {(N, C, H, W)}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"pad must be at most half the window, got pad {tuple(pad)} for window "
                         f"{tuple(kernel)}")
    return _geometry(N, C, H, W, C, kh, kw, "the window", stride, pad)


cdef inline void _maxpool_plane(const floating* x, floating* out, int64_t* arg,
                                const _Geo* g) noexcept nogil:
    if g.KH == 2 and g.KW == 2 and g.sh == 2 and g.sw == 2 and g.ph == 0 and g.pw == 0:
        if floating is float:
            dlf_maxpool22f(x, out, arg, g.W, g.OH, g.OW)
        else:
            dlf_maxpool22d(x, out, arg, g.W, g.OH, g.OW)
        return
    if floating is float:
        dlf_maxpoolf(x, out, arg, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw)
    else:
        dlf_maxpoold(x, out, arg, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw)


cdef void _maxpool_fwd(const floating* x, floating* out, int64_t* arg,
                       const _Geo* g) noexcept nogil:
    cdef Py_ssize_t it
    cdef int nt = _threads(g.N * g.C * g.OHW * g.KH * g.KW // CHEAP)
    if nt == 1:
        for it in range(g.N * g.C):
            _maxpool_plane(x + it * g.HW, out + it * g.OHW, arg + it * g.OHW, g)
    else:
        for it in prange(g.N * g.C, num_threads=nt, schedule="static"):
            _maxpool_plane(x + it * g.HW, out + it * g.OHW, arg + it * g.OHW, g)


def maxpool2d_forward(x, out, argmax, kernel, stride, pad):
    """out = max over each window of x (padding never wins); argmax (int64) = h*W + w of the
    first maximum in row-major window order (a NaN wins). kernel, stride, pad: (h, w) pairs."""
    cdef Py_buffer v[3]
    cdef int dt
    cdef _Geo g
    memset(v, 0, sizeof(v))
    try:
        dt = _arr(x, &v[0], DT_FLOAT, "x", (-1, -1, -1, -1), False)
        g = _pool_geometry(&v[0], kernel, stride, pad)
        _arr(out, &v[1], dt, "out", (g.N, g.C, g.OH, g.OW), True)
        _arr(argmax, &v[2], DT_I64, "argmax", (g.N, g.C, g.OH, g.OW), True)
        with nogil:
            if dt == DT_F32:
                _maxpool_fwd(<const float*>v[0].buf, <float*>v[1].buf, <int64_t*>v[2].buf, &g)
            else:
                _maxpool_fwd(<const double*>v[0].buf, <double*>v[1].buf, <int64_t*>v[2].buf, &g)
    finally:
        buf_release(v, 3)


cdef Py_ssize_t _maxpool_bwd_plane(const floating* dout, const int64_t* arg, floating* dx,
                                   const _Geo* g, const floating* out=NULL,
                                   floating lo=0) noexcept nogil:
    """dx plane = 0, then dx[argmax[o]] += dout[o] in output order; returns the count of
    indices outside [0, H*W) (skipped). With the pool's output ``out`` (windows apart only),
    each sum then times act'(y) = (y > 0 ? 1 : lo) from out: a cell is the argmax of at most
    one window o and y there is out[o] (value and sign of the test y > 0; a NaN wins its
    window), and every other cell is 0 * act'(y) = 0: the bits of the plane pass (act_grad_row)
    without reading y."""
    cdef Py_ssize_t o, bad = 0
    cdef int64_t a
    memset(dx, 0, g.HW * sizeof(floating))
    for o in range(g.OHW):
        a = arg[o]
        if a < 0 or a >= g.HW:
            bad += 1
        elif out == NULL:
            dx[a] = dx[a] + dout[o]
        else:
            dx[a] = (dx[a] + dout[o]) * (<floating>1 if out[o] > 0 else lo)
    return bad


cdef Py_ssize_t _maxpool_bwd(const floating* dout, const int64_t* arg, floating* dx,
                             const _Geo* g, const floating* y=NULL, int code=ACT_IDENTITY,
                             floating alpha=0, const floating* out=NULL) noexcept nogil:
    """Every plane of dx; with y (the pool's input, an activation's output) and that
    activation's code, each plane then times act'(y) in place while in cache (act_grad_row: the
    same bits as the activation op's backward after this one), or, where windows do not overlap
    and the pool's output ``out`` is given, as it is scattered (_maxpool_bwd_plane)."""
    cdef Py_ssize_t it, bad = 0
    cdef int nt = _threads(g.N * g.C * (g.HW + g.OHW) // CHEAP)
    if nt == 1:
        for it in range(g.N * g.C):
            bad += _maxpool_bwd_act(dout, arg, dx, y, code, alpha, out, g, it)
    else:
        for it in prange(g.N * g.C, num_threads=nt, schedule="static"):
            bad += _maxpool_bwd_act(dout, arg, dx, y, code, alpha, out, g, it)
    return bad


cdef inline Py_ssize_t _maxpool_bwd_act(const floating* dout, const int64_t* arg, floating* dx,
                                        const floating* y, int code, floating alpha,
                                        const floating* out, const _Geo* g,
                                        Py_ssize_t it) noexcept nogil:
    cdef Py_ssize_t bad
    if code != ACT_IDENTITY and out != NULL and g.sh >= g.KH and g.sw >= g.KW:
        return _maxpool_bwd_plane(dout + it * g.OHW, arg + it * g.OHW, dx + it * g.HW, g,
                                  out + it * g.OHW, 0 if code == ACT_RELU else alpha)
    bad = _maxpool_bwd_plane(dout + it * g.OHW, arg + it * g.OHW, dx + it * g.HW, g)
    if code != ACT_IDENTITY:             # in place: the activation op's derivative row
        act_grad_row(dx + it * g.HW, dx + it * g.HW, y + it * g.HW, g.HW, code, alpha)
    return bad


def maxpool2d_backward(dout, argmax, dx, kernel, stride, pad):
    """dx = 0, then dx[n, c].flat[argmax[n, c, oh, ow]] += dout[n, c, oh, ow]."""
    cdef Py_buffer v[3]
    cdef int dt
    cdef _Geo g
    cdef Py_ssize_t bad = 0
    memset(v, 0, sizeof(v))
    try:
        dt = _arr(dx, &v[2], DT_FLOAT, "dx", (-1, -1, -1, -1), True)
        g = _pool_geometry(&v[2], kernel, stride, pad)
        _arr(dout, &v[0], dt, "dout", (g.N, g.C, g.OH, g.OW), False)
        _arr(argmax, &v[1], DT_I64, "argmax", (g.N, g.C, g.OH, g.OW), False)
        with nogil:
            if dt == DT_F32:
                bad = _maxpool_bwd(<const float*>v[0].buf, <const int64_t*>v[1].buf,
                                   <float*>v[2].buf, &g)
            else:
                bad = _maxpool_bwd(<const double*>v[0].buf, <const int64_t*>v[1].buf,
                                   <double*>v[2].buf, &g)
    finally:
        buf_release(v, 3)
    if bad:
        raise ValueError(f"argmax values must lie in [0, {g.HW}) (H*W); {bad} did not "
                         f"(their gradient was dropped)")


cdef inline void _avgpool_plane(const floating* x, floating* out, const _Geo* g,
                                bint include_pad) noexcept nogil:
    if floating is float:
        dlf_avgpoolf(x, out, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw,
                     include_pad)
    else:
        dlf_avgpoold(x, out, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw,
                     include_pad)


cdef void _avgpool_fwd(const floating* x, floating* out, const _Geo* g,
                       bint include_pad) noexcept nogil:
    cdef Py_ssize_t it
    cdef int nt = _threads(g.N * g.C * g.OHW * g.KH * g.KW // CHEAP)
    if nt == 1:
        for it in range(g.N * g.C):
            _avgpool_plane(x + it * g.HW, out + it * g.OHW, g, include_pad)
    else:
        for it in prange(g.N * g.C, num_threads=nt, schedule="static"):
            _avgpool_plane(x + it * g.HW, out + it * g.OHW, g, include_pad)


def avgpool2d_forward(x, out, kernel, stride, pad, count_include_pad):
    """out = (sum of the window's cells, in double) / (KH*KW, or the count of cells inside x
    when count_include_pad is false)."""
    cdef Py_buffer v[2]
    cdef int dt
    cdef _Geo g
    cdef bint inc = count_include_pad
    memset(v, 0, sizeof(v))
    try:
        dt = _arr(x, &v[0], DT_FLOAT, "x", (-1, -1, -1, -1), False)
        g = _pool_geometry(&v[0], kernel, stride, pad)
        _arr(out, &v[1], dt, "out", (g.N, g.C, g.OH, g.OW), True)
        with nogil:
            if dt == DT_F32:
                _avgpool_fwd(<const float*>v[0].buf, <float*>v[1].buf, &g, inc)
            else:
                _avgpool_fwd(<const double*>v[0].buf, <double*>v[1].buf, &g, inc)
    finally:
        buf_release(v, 2)


cdef inline void _avgpool_bwd_plane(const floating* dout, floating* dx, const _Geo* g,
                                    bint include_pad) noexcept nogil:
    if floating is float:
        dlf_avgpool_bwdf(dout, dx, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw,
                         include_pad)
    else:
        dlf_avgpool_bwdd(dout, dx, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw,
                         include_pad)


cdef void _avgpool_bwd(const floating* dout, floating* dx, const _Geo* g,
                       bint include_pad) noexcept nogil:
    cdef Py_ssize_t it
    cdef int nt = _threads(g.N * g.C * (g.HW + g.OHW * g.KH * g.KW) // CHEAP)
    if nt == 1:
        for it in range(g.N * g.C):
            _avgpool_bwd_plane(dout + it * g.OHW, dx + it * g.HW, g, include_pad)
    else:
        for it in prange(g.N * g.C, num_threads=nt, schedule="static"):
            _avgpool_bwd_plane(dout + it * g.OHW, dx + it * g.HW, g, include_pad)


def avgpool2d_backward(dout, dx, kernel, stride, pad, count_include_pad):
    """dx = 0, then each window's cells inside x get dout / divisor (as the forward's)."""
    cdef Py_buffer v[2]
    cdef int dt
    cdef _Geo g
    cdef bint inc = count_include_pad
    memset(v, 0, sizeof(v))
    try:
        dt = _arr(dx, &v[1], DT_FLOAT, "dx", (-1, -1, -1, -1), True)
        g = _pool_geometry(&v[1], kernel, stride, pad)
        _arr(dout, &v[0], dt, "dout", (g.N, g.C, g.OH, g.OW), False)
        with nogil:
            if dt == DT_F32:
                _avgpool_bwd(<const float*>v[0].buf, <float*>v[1].buf, &g, inc)
            else:
                _avgpool_bwd(<const double*>v[0].buf, <double*>v[1].buf, &g, inc)
    finally:
        buf_release(v, 2)


# ---------------------------------------------------------------------------- ops (dlfast.kernels.OPS)
# The kernels above bound to fixed arrays for inputs of x_shape (src/dlfast_op.h): the same
# checks as the kernels, once; ``address()`` is the ``dlf_op*`` the program runs.
ctypedef struct _ConvC:
    dlf_op op           # first: the program sees a dlf_op*
    _Geo g
    const void* W
    const void* b
    void* col
    void* dcol
    void* dW
    void* db
    int dt
    bint col_ready      # the last forward left im2col(x) in col (a program runs an op's
                        # backward right after its forward of the same x, in one call)
    int act             # the activation the forward applies to out (ACT_IDENTITY: none)
    double alpha
    void* dz            # NULL, or the backward's dz = dout * act'(out), taken as its dout


cdef int _conv_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _ConvC* s = <_ConvC*>p
    if s.dt == DT_F32:
        s.col_ready = _conv_fwd(<const float*>x, <const float*>s.W, <const float*>s.b,
                                <float*>s.op.out, <float*>s.col, &s.g, s.act, <float>s.alpha)
    else:
        s.col_ready = _conv_fwd(<const double*>x, <const double*>s.W, <const double*>s.b,
                                <double*>s.op.out, <double*>s.col, &s.g, s.act, s.alpha)
    return 0


cdef int _conv_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _ConvC* s = <_ConvC*>p
    cdef Py_ssize_t n = s.g.N * s.g.F * s.g.OHW
    if s.dz != NULL:
        if s.dt == DT_F32:
            act_grad_all(<float*>s.dz, <const float*>dout, <const float*>s.op.out, n, s.act,
                         <float>s.alpha, _threads(n // CHEAP))
        else:
            act_grad_all(<double*>s.dz, <const double*>dout, <const double*>s.op.out, n, s.act,
                         s.alpha, _threads(n // CHEAP))
        dout = s.dz
    if s.dt == DT_F32:
        _conv_bwd(<const float*>dout, <const float*>x, <const float*>s.W, <float*>s.col,
                  <float*>s.dcol, <float*>s.op.dx, <float*>s.dW, <float*>s.db, &s.g,
                  s.col_ready)
    else:
        _conv_bwd(<const double*>dout, <const double*>x, <const double*>s.W, <double*>s.col,
                  <double*>s.dcol, <double*>s.op.dx, <double*>s.dW, <double*>s.db, &s.g,
                  s.col_ready)
    return 0


cdef class Conv2DOp:
    """The ``conv2d`` op: ``conv2d_forward(x, W, b, out, col, stride, pad)``, then out =
    act(out) with ``activation`` ("identity": none); ``conv2d_backward(dout, x, W, col, dcol, dx,
    dW, db, stride, pad)`` of fixed arrays, x of ``x_shape`` (b, dx, dW, db: None to skip; dcol
    None only when dx is), after dz = dout * act'(out) taken as dout when dz is given."""
    cdef _ConvC c
    cdef Py_buffer v[9]

    def __cinit__(self, W, b, out, col, dcol, dx, dW, db, dz, x_shape, stride, pad,
                  activation, double alpha):
        cdef int dt
        cdef Py_ssize_t n, ch, h, w
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        n, ch, h, w = x_shape
        dt = _arr(W, &self.v[0], DT_FLOAT, "W", (-1, ch, -1, -1), False)
        self.c.g = _geometry(n, ch, h, w, self.v[0].shape[0], self.v[0].shape[2],
                             self.v[0].shape[3], "the kernel", stride, pad)
        _gemm_dims_ok(&self.c.g)
        g = (self.c.g.N, self.c.g.F, self.c.g.OH, self.c.g.OW, self.c.g.K, self.c.g.OHW)
        _arr(b, &self.v[1], dt, "b", (g[1],), False, False)
        _arr(out, &self.v[2], dt, "out", g[:4], True)
        _arr(col, &self.v[3], dt, "col", (g[0], g[4], g[5]), True)
        if dx is not None and dcol is None:
            raise ValueError("dcol (the workspace of dx) is required when dx is wanted")
        _arr(dcol, &self.v[4], dt, "dcol", (g[0], g[4], g[5]), True, False)
        _arr(dx, &self.v[5], dt, "dx", (n, ch, h, w), True, False)
        _arr(dW, &self.v[6], dt, "dW", tuple(W.shape), True, False)
        _arr(db, &self.v[7], dt, "db", (g[1],), True, False)
        _arr(dz, &self.v[8], dt, "dz", g[:4], True, False)
        self.c.act = act_code(activation)
        if self.c.act > ACT_LEAKY:
            raise ValueError(f"a conv2d op applies identity, relu or leaky_relu, got "
                             f"{activation!r}")
        if dz is not None and self.c.act == ACT_IDENTITY:
            raise ValueError("dz is given only with an activation")
        self.c.alpha = alpha
        self.c.dz = self.v[8].buf
        self.c.dt = dt
        self.c.W, self.c.b, self.c.op.out, self.c.col = (self.v[0].buf, self.v[1].buf,
                                                         self.v[2].buf, self.v[3].buf)
        self.c.dcol, self.c.op.dx, self.c.dW, self.c.db = (self.v[4].buf, self.v[5].buf,
                                                           self.v[6].buf, self.v[7].buf)
        self.c.op.fwd = _conv_op_fwd
        self.c.op.bwd = _conv_op_bwd

    def __dealloc__(self):
        buf_release(self.v, 9)

    def slot(self, name):
        """Address of the pointer field of the gradient output ``name`` (a program points it at
        another array for one step: dlfast.kernels.PROGRAM_DOC)."""
        if name == "dW":
            return <size_t>&self.c.dW
        if name == "db":
            return <size_t>&self.c.db
        raise KeyError(name)

    def address(self):
        return <size_t>&self.c.op


ctypedef struct _PoolC:
    dlf_op op           # first: the program sees a dlf_op*
    _Geo g
    int64_t* argmax     # max pooling
    int act             # max pooling: the code of the activation before it (its derivative
    double alpha        #   is applied in the backward), ACT_IDENTITY for none
    int dt
    bint include_pad    # average pooling


cdef int _maxpool_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _PoolC* s = <_PoolC*>p
    if s.dt == DT_F32:
        _maxpool_fwd(<const float*>x, <float*>s.op.out, s.argmax, &s.g)
    else:
        _maxpool_fwd(<const double*>x, <double*>s.op.out, s.argmax, &s.g)
    return 0


cdef int _maxpool_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    # argmax is the forward's: every index lies in [0, H*W)
    cdef _PoolC* s = <_PoolC*>p
    if s.op.dx == NULL:
        return 0
    if s.dt == DT_F32:
        _maxpool_bwd(<const float*>dout, s.argmax, <float*>s.op.dx, &s.g, <const float*>x,
                     s.act, <float>s.alpha, <const float*>s.op.out)
    else:
        _maxpool_bwd(<const double*>dout, s.argmax, <double*>s.op.dx, &s.g, <const double*>x,
                     s.act, s.alpha, <const double*>s.op.out)
    return 0


cdef int _avgpool_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _PoolC* s = <_PoolC*>p
    if s.dt == DT_F32:
        _avgpool_fwd(<const float*>x, <float*>s.op.out, &s.g, s.include_pad)
    else:
        _avgpool_fwd(<const double*>x, <double*>s.op.out, &s.g, s.include_pad)
    return 0


cdef int _avgpool_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _PoolC* s = <_PoolC*>p
    if s.op.dx == NULL:
        return 0
    if s.dt == DT_F32:
        _avgpool_bwd(<const float*>dout, <float*>s.op.dx, &s.g, s.include_pad)
    else:
        _avgpool_bwd(<const double*>dout, <double*>s.op.dx, &s.g, s.include_pad)
    return 0


cdef int _pool_fill(_PoolC* c, Py_buffer* v, out, dx, x_shape, kernel, stride, pad) except -1:
    """Acquire out (v[0]) and dx (v[1]) of a pool op for inputs of x_shape; fill c.g, c.dt."""
    cdef Py_ssize_t n, ch, h, w
    n, ch, h, w = x_shape
    c.g = _pool_geo(n, ch, h, w, kernel, stride, pad)
    c.dt = _arr(out, &v[0], DT_FLOAT, "out", (n, ch, c.g.OH, c.g.OW), True)
    _arr(dx, &v[1], c.dt, "dx", (n, ch, h, w), True, False)
    c.op.out, c.op.dx = v[0].buf, v[1].buf
    return 0


cdef class MaxPool2DOp:
    """The ``maxpool2d`` op: ``maxpool2d_forward(x, out, argmax, kernel, stride, pad)`` and
    ``maxpool2d_backward(dout, argmax, dx, kernel, stride, pad)`` of fixed arrays, x of
    ``x_shape`` (dx None: no backward); ``activation`` "relu" or "leaky_relu" (slope ``alpha``):
    the activation before the pool, x its output, whose derivative the backward applies."""
    cdef _PoolC c
    cdef Py_buffer v[3]

    def __cinit__(self, out, argmax, dx, x_shape, kernel, stride, pad, activation, double alpha):
        cdef int code = act_code(activation)
        if code > ACT_LEAKY:
            raise ValueError(f"a maxpool2d op applies the derivative of identity, relu or "
                             f"leaky_relu, got {activation!r}")
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        self.c.act, self.c.alpha = code, alpha
        _pool_fill(&self.c, self.v, out, dx, x_shape, kernel, stride, pad)
        _arr(argmax, &self.v[2], DT_I64, "argmax", tuple(out.shape), True)
        self.c.argmax = <int64_t*>self.v[2].buf
        self.c.op.fwd = _maxpool_op_fwd
        self.c.op.bwd = _maxpool_op_bwd

    def __dealloc__(self):
        buf_release(self.v, 3)

    def address(self):
        return <size_t>&self.c.op


cdef class AvgPool2DOp:
    """The ``avgpool2d`` op: ``avgpool2d_forward(x, out, kernel, stride, pad,
    count_include_pad)`` and ``avgpool2d_backward(dout, dx, ...)`` of fixed arrays, x of
    ``x_shape`` (dx None: no backward)."""
    cdef _PoolC c
    cdef Py_buffer v[2]

    def __cinit__(self, out, dx, x_shape, kernel, stride, pad, count_include_pad):
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        _pool_fill(&self.c, self.v, out, dx, x_shape, kernel, stride, pad)
        self.c.include_pad = bool(count_include_pad)
        self.c.op.fwd = _avgpool_op_fwd
        self.c.op.bwd = _avgpool_op_bwd

    def __dealloc__(self):
        buf_release(self.v, 2)

    def address(self):
        return <size_t>&self.c.op


ctypedef struct _FlattenC:
    dlf_op op           # first: the program sees a dlf_op*
    size_t nbytes


cdef int _flatten_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _FlattenC* s = <_FlattenC*>p
    memcpy(s.op.out, x, s.nbytes)
    return 0


cdef int _flatten_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _FlattenC* s = <_FlattenC*>p
    if s.op.dx != NULL:
        memcpy(s.op.dx, dout, s.nbytes)
    return 0


cdef class FlattenOp:
    """The ``flatten`` op: ``out = x.reshape(N, -1)`` and ``dx = dout.reshape(x.shape)``, copied
    into fixed arrays (dx None: no backward)."""
    cdef _FlattenC c
    cdef Py_buffer v[2]

    def __cinit__(self, out, dx):
        cdef int dt
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        dt = buf_get(out, &self.v[0], DT_FLOAT, -1, True)
        buf_get(dx, &self.v[1], dt, self.v[0].len // self.v[0].itemsize, True)
        self.c.nbytes = self.v[0].len
        self.c.op.out, self.c.op.dx = self.v[0].buf, self.v[1].buf
        self.c.op.fwd = _flatten_op_fwd
        self.c.op.bwd = _flatten_op_bwd

    def __dealloc__(self):
        buf_release(self.v, 2)

    def address(self):
        return <size_t>&self.c.op
