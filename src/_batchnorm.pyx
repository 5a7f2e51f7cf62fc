"""Batch normalisation over the batch axis of x (N, F), row-major, or per channel of x (N, C, *S).

Two work decompositions, chosen from the shape only (so results never depend on the thread count):
* wide (F > NARROW_MAX or N <= RCHUNK): work items are blocks of FBLOCK features; each walks all rows in
  order (inner loop over the block's contiguous features), so every per-feature sum is accumulated
  in double serially over n = 0..N-1, and the block's columns are reused while still in cache;
* narrow (F <= NARROW_MAX and N > RCHUNK): work items are fixed chunks of RCHUNK rows with per-chunk
  double partial sums, combined in chunk order.
Statistics are two-pass (mean, then sum (x - mean)^2 / N); no E[x^2] - E[x]^2.
* planar (x (N, C, *S), S = prod(*S) > 1, e.g. NCHW images): a channel's M = N*S values are N
  contiguous planes of S. Sums: work items are (channel, chunk of _pimgs(S) images); each adds
  its planes in image order (each plane: eight interleaved double partials, combined pairwise),
  and a channel's chunks are combined in chunk order. Elementwise passes: one item per plane.
  (N, C, *S) with S = 1 is (N, C) in memory and takes the paths above.
On one thread the same work items run in a plain loop (no OpenMP region). The loops over elements
are C (below): vectorised, cloned per instruction set, never contracted to FMA. Sums and the
normalisation are in double, each product and sum rounded as in the NumPy backend; float32 data's
dx in float32, from per-feature coefficients rounded once (the C block's dlf_bn_dxf: within a few
float32 ulps of the double form, at twice the lanes).
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt
from libc.stdlib cimport free
from libc.string cimport memset

from _op cimport dlf_op
from _act cimport (act_code, aligned_doubles, buf_get, buf_release, line_doubles, ACT_LEAKY,
                  DT_F32, DT_FLOAT)

include "_parallel.pxi"

cdef enum:
    FBLOCK = 64           # features per work item (wide shapes)
    RCHUNK = 256          # rows per work item (narrow shapes)
    NARROW_MAX = 256      # widest F that uses row chunks
    PCHUNK = 16384        # values per work item of the planar sums (at least one image)


cdef extern from *:
    """
    #include <float.h>
    #include <math.h>
    #include "dlfast_clones.h"   /* DLF_CLONES */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    /* The op's fused activation (dlfast.kernels OPS "batchnorm"): act 0 none, 1 ReLU, 2 leaky
       ReLU (alpha >= 0; _act's codes): y = act(z), z = gamma * xhat + beta (T), as the activation
       op's forward (src/_act.pxd); its backward dz = dout * (y > 0 ? 1 : lo), lo = 0 (ReLU) or
       alpha, where y > 0 exactly when z > 0 (alpha >= 0; NaN: neither): the same bits as the
       two ops. */
    #define DLF_BN_LO(T, act, alpha) ((act) == 1 ? (T)0 : (T)(alpha))
    #define DLF_BN_D(T, d, xh, g, b, lo) ((d) * (((T)((g) * (xh) + (b))) > 0 ? (T)1 : (lo)))
    /* The rows of dlf_bn_bsums (two at a time, the same order) over d = D(T, dout, xhat, j) */
    #define DLF_BN_BSUMS_ROWS(T, D)                                                            \\
        for (i = i0; i + 2 <= i1; i += 2) {                                                    \\
            const T *d0 = dout + i * f, *d1 = d0 + f, *h0 = xhat + i * f, *h1 = h0 + f;        \\
            for (j = j0; j < j1; j++) {                                                        \\
                double a = D(T, d0[j], h0[j], j), b = D(T, d1[j], h1[j], j);                   \\
                sb[j] = (sb[j] + a) + b;                                                       \\
                sg[j] = (sg[j] + a * h0[j]) + b * h1[j];                                       \\
            }                                                                                  \\
        }                                                                                      \\
        for (; i < i1; i++)                                                                    \\
            for (j = j0; j < j1; j++) {                                                        \\
                double d = D(T, dout[i * f + j], xhat[i * f + j], j);                          \\
                sb[j] = sb[j] + d;                                                             \\
                sg[j] = sg[j] + d * xhat[i * f + j];                                           \\
            }
    #define DLF_BN_DOUT(T, d, h, j) (d)
    #define DLF_BN_DACT(T, d, h, j) DLF_BN_D(T, d, h, gamma[j], beta[j], lo)
    /* The rows of dlf_bn_dx over d = D(T, dout, xhat, j) */
    #define DLF_BN_DX_ROWS(T, D)                                                               \\
        for (i = i0; i < i1; i++)                                                              \\
            if (batch)                                                                         \\
                for (j = j0; j < j1; j++)                                                      \\
                    dx[i * f + j] = (T)(c[j] * ((dn * D(T, dout[i * f + j], xhat[i * f + j], j) \\
                                                 - sb[j]) - xhat[i * f + j] * sg[j]));         \\
            else                                                                               \\
                for (j = j0; j < j1; j++)                                                      \\
                    dx[i * f + j] = (T)(c[j] * D(T, dout[i * f + j], xhat[i * f + j], j));
    /* The planar loops (one plane; scalars ga, be) over d = D(T, dout, xhat, i) */
    #define DLF_BNP_BSUMS_LANES(T, D)                                                          \\
        for (i = 0; i + 8 <= len; i += 8)                                                      \\
            for (l = 0; l < 8; l++) {                                                          \\
                double d = D(T, dout[i + l], xhat[i + l], i + l);                              \\
                b[l] += d;                                                                     \\
                g[l] += d * xhat[i + l];                                                       \\
            }                                                                                  \\
        for (; i < len; i++) {                                                                 \\
            double d = D(T, dout[i], xhat[i], i);                                              \\
            b[0] += d;                                                                         \\
            g[0] += d * xhat[i];                                                               \\
        }
    #define DLF_BNP_DX_LOOP(T, D)                                                              \\
        if (batch)                                                                             \\
            for (i = 0; i < len; i++)                                                          \\
                dx[i] = (T)(c * ((dm * D(T, dout[i], xhat[i], i) - sb) - xhat[i] * sg));       \\
        else                                                                                   \\
            for (i = 0; i < len; i++) dx[i] = (T)(c * D(T, dout[i], xhat[i], i));
    #define DLF_BNP_DACT(T, d, h, i) DLF_BN_D(T, d, h, ga, be, lo)
    /* The normalisation: xhat = T((x - mu) * inv) (double), z = out = gamma * xhat + beta (T),
       then Y stores y = act(z): the activation op's own formulas (src/_act.pxd DLF_CHEAP_ROW),
       written here so that y is stored while z is in a register (calling the activation's row
       loop on each normalised row instead measured 4-6% slower per BN + ReLU step). */
    #define DLF_BN_Y0(T, k, z)
    #define DLF_BN_YRELU(T, k, z) y[k] = (z) <= 0 ? (T)0 : (z);
    #define DLF_BN_YLEAKY(T, k, z) y[k] = (z) > 0 ? (z) : alpha * (z);
    #define DLF_BN_NORM_ROW(T, Y)                                                              \\
        for (j = j0; j < j1; j++) {                                                            \\
            T xh = (T)((x[i * f + j] - mu[j]) * inv[j]);                                       \\
            T z = gamma[j] * xh + beta[j];                                                     \\
            xhat[i * f + j] = xh;                                                              \\
            out[i * f + j] = z;                                                                \\
            Y(T, i * f + j, z)                                                                 \\
        }
    #define DLF_BNP_NORM_LOOP(T, Y)                                                            \\
        for (i = 0; i < len; i++) {                                                            \\
            T xh = (T)((x[i] - mu) * inv);                                                     \\
            T z = gamma * xh + beta;                                                           \\
            xhat[i] = xh;                                                                      \\
            out[i] = z;                                                                        \\
            Y(T, i, z)                                                                         \\
        }
    /* Rows [i0, i1), features [j0, j1) of row-major (., f) arrays; sums in double, row order
       (rows unrolled: one load and store of a sum per 4 or 2 rows, the same additions). */
    #define DLF_BN(S, T)                                                                       \\
    /* acc[j] = sum_i x[i, j] */                                                               \\
    DLF_CLONES static void dlf_bn_sum##S(const T* x, long i0, long i1, long f, long j0, long j1, \\
                                          double* __restrict acc) {                            \\
        long i, j;                                                                             \\
        for (j = j0; j < j1; j++) acc[j] = 0.0;                                                \\
        for (i = i0; i + 4 <= i1; i += 4) {                                                    \\
            const T *r0 = x + i * f, *r1 = r0 + f, *r2 = r1 + f, *r3 = r2 + f;                 \\
            for (j = j0; j < j1; j++) acc[j] = (((acc[j] + r0[j]) + r1[j]) + r2[j]) + r3[j];   \\
        }                                                                                      \\
        for (; i < i1; i++)                                                                    \\
            for (j = j0; j < j1; j++) acc[j] = acc[j] + x[i * f + j];                          \\
    }                                                                                          \\
    /* acc[j] = sum_i (x[i, j] - mu[j])^2 */                                                   \\
    DLF_CLONES static void dlf_bn_sqdev##S(const T* x, long i0, long i1, long f, long j0,     \\
                                            long j1, const double* mu, double* __restrict acc) { \\
        long i, j;                                                                             \\
        for (j = j0; j < j1; j++) acc[j] = 0.0;                                                \\
        for (i = i0; i + 4 <= i1; i += 4) {                                                    \\
            const T *r0 = x + i * f, *r1 = r0 + f, *r2 = r1 + f, *r3 = r2 + f;                 \\
            for (j = j0; j < j1; j++) {                                                        \\
                double m = mu[j], d0 = r0[j] - m, d1 = r1[j] - m, d2 = r2[j] - m, d3 = r3[j] - m; \\
                acc[j] = (((acc[j] + d0 * d0) + d1 * d1) + d2 * d2) + d3 * d3;                 \\
            }                                                                                  \\
        }                                                                                      \\
        for (; i < i1; i++)                                                                    \\
            for (j = j0; j < j1; j++) { double d = x[i * f + j] - mu[j]; acc[j] = acc[j] + d * d; } \\
    }                                                                                          \\
    /* xhat = T((x - mu) * inv) (double); out = gamma * xhat + beta (T); y = act(out) (act) */ \\
    DLF_CLONES static void dlf_bn_norm##S(const T* x, T* __restrict xhat, T* __restrict out,  \\
                                           const T* gamma, const T* beta, const double* mu,    \\
                                           const double* inv, long i0, long i1, long f, long j0, \\
                                           long j1, int act, T alpha, T* __restrict y) {       \\
        long i, j;                                                                             \\
        for (i = i0; i < i1; i++)                                                              \\
            if (act == 0)                                                                      \\
                DLF_BN_NORM_ROW(T, DLF_BN_Y0)                                                  \\
            else if (act == 1)                                                                 \\
                DLF_BN_NORM_ROW(T, DLF_BN_YRELU)                                               \\
            else                                                                               \\
                DLF_BN_NORM_ROW(T, DLF_BN_YLEAKY)                                              \\
    }                                                                                          \\
    /* sb[j] = sum_i d[i, j]; sg[j] = sum_i d[i, j] * xhat[i, j]; d = dout (act 0), else      \\
       dout * act'(y) (DLF_BN_D) */                                                            \\
    DLF_CLONES static void dlf_bn_bsums##S(const T* dout, const T* xhat, const T* gamma,      \\
                                            const T* beta, long i0, long i1, long f, long j0,  \\
                                            long j1, double* __restrict sb,                    \\
                                            double* __restrict sg, int act, T alpha) {         \\
        long i, j;                                                                             \\
        for (j = j0; j < j1; j++) { sb[j] = 0.0; sg[j] = 0.0; }                                \\
        if (act != 0) {                                                                        \\
            const T lo = DLF_BN_LO(T, act, alpha);                                             \\
            DLF_BN_BSUMS_ROWS(T, DLF_BN_DACT)                                                  \\
        } else {                                                                               \\
            DLF_BN_BSUMS_ROWS(T, DLF_BN_DOUT)                                                  \\
        }                                                                                      \\
    }                                                                                          \\
    /* dx = T(c * ((dn * d - sb) - xhat * sg)) (batch), T(c * d) (not); d as dlf_bn_bsums */   \\
    DLF_CLONES static void dlf_bn_dx_ex##S(T* __restrict dx, const T* dout, const T* xhat,     \\
                                         const T* gamma, const T* beta, const double* c,       \\
                                         const double* sb, const double* sg, long i0, long i1, \\
                                         long f, long j0, long j1, double dn, int batch,       \\
                                         int act, T alpha) {                                   \\
        long i, j;                                                                             \\
        if (act != 0) {                                                                        \\
            const T lo = DLF_BN_LO(T, act, alpha);                                             \\
            DLF_BN_DX_ROWS(T, DLF_BN_DACT)                                                     \\
        } else {                                                                               \\
            DLF_BN_DX_ROWS(T, DLF_BN_DOUT)                                                     \\
        }                                                                                      \\
    }                                                                                          \\
    /* Planar (N, C, S) data: one plane of len contiguous values per (n, c). */              \\
    /* sum_i x[i] in double: eight interleaved partials, combined pairwise */                  \\
    DLF_CLONES static double dlf_bnp_sum##S(const T* x, long len) {                            \\
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                \\
        long i, l;                                                                             \\
        for (i = 0; i + 8 <= len; i += 8)                                                      \\
            for (l = 0; l < 8; l++) a[l] += (double)x[i + l];                                  \\
        for (; i < len; i++) a[0] += (double)x[i];                                             \\
        return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));              \\
    }                                                                                          \\
    /* sum_i (x[i] - mu)^2, the same order */                                                  \\
    DLF_CLONES static double dlf_bnp_sqdev##S(const T* x, long len, double mu) {               \\
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                \\
        long i, l;                                                                             \\
        for (i = 0; i + 8 <= len; i += 8)                                                      \\
            for (l = 0; l < 8; l++) { double d = x[i + l] - mu; a[l] += d * d; }               \\
        for (; i < len; i++) { double d = x[i] - mu; a[0] += d * d; }                          \\
        return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));              \\
    }                                                                                          \\
    /* *sb = sum_i d[i], *sg = sum_i d[i] * xhat[i], the same order; d as dlf_bn_bsums */      \\
    DLF_CLONES static void dlf_bnp_bsums##S(const T* dout, const T* xhat, long len,            \\
                                             double* sb, double* sg, T ga, T be, int act,      \\
                                             T alpha) {                                        \\
        double b[8] = {0, 0, 0, 0, 0, 0, 0, 0}, g[8] = {0, 0, 0, 0, 0, 0, 0, 0};               \\
        long i, l;                                                                             \\
        if (act != 0) {                                                                        \\
            const T lo = DLF_BN_LO(T, act, alpha);                                             \\
            DLF_BNP_BSUMS_LANES(T, DLF_BNP_DACT)                                               \\
        } else {                                                                               \\
            DLF_BNP_BSUMS_LANES(T, DLF_BN_DOUT)                                                \\
        }                                                                                      \\
        *sb = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));               \\
        *sg = ((g[0] + g[1]) + (g[2] + g[3])) + ((g[4] + g[5]) + (g[6] + g[7]));               \\
    }                                                                                          \\
    /* xhat = T((x - mu) * inv) (double); out = gamma * xhat + beta (T) */                     \\
    DLF_CLONES static void dlf_bnp_norm##S(const T* x, T* __restrict xhat, T* __restrict out, \\
                                            T gamma, T beta, double mu, double inv, long len,  \\
                                            int act, T alpha, T* __restrict y) {               \\
        long i;                                                                                \\
        if (act == 0)                                                                          \\
            DLF_BNP_NORM_LOOP(T, DLF_BN_Y0)                                                    \\
        else if (act == 1)                                                                     \\
            DLF_BNP_NORM_LOOP(T, DLF_BN_YRELU)                                                 \\
        else                                                                                   \\
            DLF_BNP_NORM_LOOP(T, DLF_BN_YLEAKY)                                                \\
    }                                                                                          \\
    /* dx = T(c * ((dm * dout - sb) - xhat * sg)) (batch), T(c * dout) (not) */                \\
    DLF_CLONES static void dlf_bnp_dx_ex##S(T* __restrict dx, const T* dout, const T* xhat,    \\
                                          double c, double sb, double sg, long len, double dm, \\
                                          int batch, T ga, T be, int act, T alpha) {           \\
        long i;                                                                                \\
        if (act != 0) {                                                                        \\
            const T lo = DLF_BN_LO(T, act, alpha);                                             \\
            DLF_BNP_DX_LOOP(T, DLF_BNP_DACT)                                                   \\
        } else {                                                                               \\
            DLF_BNP_DX_LOOP(T, DLF_BN_DOUT)                                                    \\
        }                                                                                      \\
    }
    DLF_BN(f, float)
    DLF_BN(d, double)
    /* float64 data's dx: the loops above. */
    #define dlf_bn_dxd dlf_bn_dx_exd
    #define dlf_bnp_dxd dlf_bnp_dx_exd
    /* float32 data's dx in float32 arithmetic (eight lanes per AVX2 instruction, where the
       double form takes four and three conversions), from per-feature coefficients rounded once
       from the double sums:
         dx = (a * d + b * xhat) + e        a = fl(c N), b = fl(-c sg), e = fl(-c sb)  (batch)
         dx = a * d                         a = fl(c)                                  (not)
       each within a few float32 ulps of the double form. A coefficient that float32 does not
       hold to 2^-23 of its value (overflow, underflow, NaN) sends its tile of features to the
       double loop. (The normalisation in float32, xhat = ((x - fl(mu)) - fl(mu - fl(mu))) *
       fl(inv), ran 1.6x faster in cache but 1.3x slower than the double loop on arrays of 10^7
       values: not kept.) */
    #define DLF_BN_TILE 128
    static inline int dlf_bn_fl(double v, float* out) {
        float h = (float)v;
        *out = h;
        return fabs((double)h - v) <= FLT_EPSILON * fabs(v);
    }
    /* One feature's dx coefficients (e, b unset when not batch); 0 when one does not fit */
    static inline int dlf_bn_dx_coefs(double c, double n, double sb, double sg, int batch,
                                      float* a, float* b, float* e) {
        if (!batch)
            return dlf_bn_fl(c, a);
        return dlf_bn_fl(c * n, a) & dlf_bn_fl(-c * sg, b) & dlf_bn_fl(-c * sb, e);
    }
    #define DLF_BNF_DOUT(k) dr[k]
    #define DLF_BNF_DACT(k) DLF_BN_D(float, dr[k], hr[k], g[k], be[k], lo)
    #define DLF_BNF_DX_ROW(D)                                                                  \\
        if (batch)                                                                             \\
            for (k = 0; k < w; k++) xr[k] = (a[k] * D(k) + b[k] * hr[k]) + e[k];               \\
        else                                                                                   \\
            for (k = 0; k < w; k++) xr[k] = a[k] * D(k);
    DLF_CLONES static void dlf_bn_dxf(float* __restrict dx, const float* dout, const float* xhat,
                                      const float* gamma, const float* beta, const double* c,
                                      const double* sb, const double* sg, long i0, long i1,
                                      long f, long j0, long j1, double dn, int batch, int act,
                                      float alpha) {
        float a[DLF_BN_TILE], b[DLF_BN_TILE], e[DLF_BN_TILE];
        const float lo = DLF_BN_LO(float, act, alpha);
        long t0, i, k, w;
        for (t0 = j0; t0 < j1; t0 += DLF_BN_TILE) {
            int ok = 1;
            const float *g = gamma + t0, *be = act ? beta + t0 : NULL;
            w = j1 - t0 < DLF_BN_TILE ? j1 - t0 : DLF_BN_TILE;
            for (k = 0; k < w; k++)
                ok &= dlf_bn_dx_coefs(c[t0 + k], dn, sb[t0 + k], sg[t0 + k], batch, &a[k], &b[k],
                                      &e[k]);
            if (!ok) {
                dlf_bn_dx_exf(dx, dout, xhat, gamma, beta, c, sb, sg, i0, i1, f, t0, t0 + w, dn,
                              batch, act, alpha);
                continue;
            }
            for (i = i0; i < i1; i++) {
                const float *dr = dout + i * f + t0, *hr = xhat + i * f + t0;
                float* __restrict xr = dx + i * f + t0;
                if (act != 0)
                    DLF_BNF_DX_ROW(DLF_BNF_DACT)
                else
                    DLF_BNF_DX_ROW(DLF_BNF_DOUT)
            }
        }
    }
    /* The planar form: one plane, scalar coefficients */
    #define DLF_BNPF_DOUT(i) dout[i]
    #define DLF_BNPF_DACT(i) DLF_BN_D(float, dout[i], xhat[i], ga, be, lo)
    #define DLF_BNPF_DX_LOOP(D)                                                                \\
        if (batch)                                                                             \\
            for (i = 0; i < len; i++) dx[i] = (a * D(i) + b * xhat[i]) + e;                    \\
        else                                                                                   \\
            for (i = 0; i < len; i++) dx[i] = a * D(i);
    DLF_CLONES static void dlf_bnp_dxf(float* __restrict dx, const float* dout, const float* xhat,
                                       double c, double sb, double sg, long len, double dm,
                                       int batch, float ga, float be, int act, float alpha) {
        const float lo = DLF_BN_LO(float, act, alpha);
        float a, b = 0, e = 0;
        long i;
        if (!dlf_bn_dx_coefs(c, dm, sb, sg, batch, &a, &b, &e)) {
            dlf_bnp_dx_exf(dx, dout, xhat, c, sb, sg, len, dm, batch, ga, be, act, alpha);
            return;
        }
        if (act != 0)
            DLF_BNPF_DX_LOOP(DLF_BNPF_DACT)
        else
            DLF_BNPF_DX_LOOP(DLF_BNPF_DOUT)
    }
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void dlf_bn_sumf(const float*, long, long, long, long, long, double*) noexcept nogil
    void dlf_bn_sumd(const double*, long, long, long, long, long, double*) noexcept nogil
    void dlf_bn_sqdevf(const float*, long, long, long, long, long, const double*,
                       double*) noexcept nogil
    void dlf_bn_sqdevd(const double*, long, long, long, long, long, const double*,
                       double*) noexcept nogil
    void dlf_bn_normf(const float*, float*, float*, const float*, const float*, const double*,
                      const double*, long, long, long, long, long, int, float,
                      float*) noexcept nogil
    void dlf_bn_normd(const double*, double*, double*, const double*, const double*,
                      const double*, const double*, long, long, long, long, long, int, double,
                      double*) noexcept nogil
    void dlf_bn_bsumsf(const float*, const float*, const float*, const float*, long, long, long,
                       long, long, double*, double*, int, float) noexcept nogil
    void dlf_bn_bsumsd(const double*, const double*, const double*, const double*, long, long,
                       long, long, long, double*, double*, int, double) noexcept nogil
    void dlf_bn_dxf(float*, const float*, const float*, const float*, const float*,
                    const double*, const double*, const double*, long, long, long, long, long,
                    double, int, int, float) noexcept nogil
    void dlf_bn_dxd(double*, const double*, const double*, const double*, const double*,
                    const double*, const double*, const double*, long, long, long, long, long,
                    double, int, int, double) noexcept nogil
    double dlf_bnp_sumf(const float*, long) noexcept nogil
    double dlf_bnp_sumd(const double*, long) noexcept nogil
    double dlf_bnp_sqdevf(const float*, long, double) noexcept nogil
    double dlf_bnp_sqdevd(const double*, long, double) noexcept nogil
    void dlf_bnp_bsumsf(const float*, const float*, long, double*, double*, float, float, int,
                        float) noexcept nogil
    void dlf_bnp_bsumsd(const double*, const double*, long, double*, double*, double, double,
                        int, double) noexcept nogil
    void dlf_bnp_normf(const float*, float*, float*, float, float, double, double, long, int,
                       float, float*) noexcept nogil
    void dlf_bnp_normd(const double*, double*, double*, double, double, double, double, long,
                       int, double, double*) noexcept nogil
    void dlf_bnp_dxf(float*, const float*, const float*, double, double, double, long, double,
                     int, float, float, int, float) noexcept nogil
    void dlf_bnp_dxd(double*, const double*, const double*, double, double, double, long, double,
                     int, double, double, int, double) noexcept nogil


# ---------------------------------------------------------------------------- element loops
ctypedef struct _Act:
    # The op's fused activation (an _act code: ACT_IDENTITY none, ACT_RELU, ACT_LEAKY; the C
    # loops' act 0, 1, 2) and, for the backward's derivative, gamma and beta of the forward
    # (float or double, as the data).
    int code
    double alpha
    const void* gamma
    const void* beta
    void* y             # the forward's activation output (same layout as out)

cdef _Act _NO_ACT                   # code 0 (zero-initialised): the kernels' own calls


cdef inline void _sum(const floating* x, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t f,
                      Py_ssize_t j0, Py_ssize_t j1, double* acc) noexcept nogil:
    if floating is float:
        dlf_bn_sumf(x, i0, i1, f, j0, j1, acc)
    else:
        dlf_bn_sumd(x, i0, i1, f, j0, j1, acc)


cdef inline void _sqdev(const floating* x, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t f,
                        Py_ssize_t j0, Py_ssize_t j1, const double* mu,
                        double* acc) noexcept nogil:
    if floating is float:
        dlf_bn_sqdevf(x, i0, i1, f, j0, j1, mu, acc)
    else:
        dlf_bn_sqdevd(x, i0, i1, f, j0, j1, mu, acc)


cdef inline void _norm(const floating* x, floating* xhat, floating* out, const floating* gamma,
                       const floating* beta, const double* mu, const double* inv, Py_ssize_t i0,
                       Py_ssize_t i1, Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1,
                       const _Act* a) noexcept nogil:
    if floating is float:
        dlf_bn_normf(x, xhat, out, gamma, beta, mu, inv, i0, i1, f, j0, j1, a.code,
                     <float>a.alpha, <float*>a.y)
    else:
        dlf_bn_normd(x, xhat, out, gamma, beta, mu, inv, i0, i1, f, j0, j1, a.code, a.alpha,
                     <double*>a.y)


cdef inline void _bsums(const floating* dout, const floating* xhat, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1, double* sb, double* sg,
                        const _Act* a) noexcept nogil:
    if floating is float:
        dlf_bn_bsumsf(dout, xhat, <const float*>a.gamma, <const float*>a.beta, i0, i1, f, j0,
                      j1, sb, sg, a.code, <float>a.alpha)
    else:
        dlf_bn_bsumsd(dout, xhat, <const double*>a.gamma, <const double*>a.beta, i0, i1, f, j0,
                      j1, sb, sg, a.code, a.alpha)


cdef inline void _bdx(floating* dx, const floating* dout, const floating* xhat, const double* c,
                      const double* sb, const double* sg, Py_ssize_t i0, Py_ssize_t i1,
                      Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1, double dn, bint batch,
                      const _Act* a) noexcept nogil:
    if floating is float:
        dlf_bn_dxf(dx, dout, xhat, <const float*>a.gamma, <const float*>a.beta, c, sb, sg, i0,
                   i1, f, j0, j1, dn, batch, a.code, <float>a.alpha)
    else:
        dlf_bn_dxd(dx, dout, xhat, <const double*>a.gamma, <const double*>a.beta, c, sb, sg, i0,
                   i1, f, j0, j1, dn, batch, a.code, a.alpha)


# ---------------------------------------------------------------------------- work decomposition
cdef inline Py_ssize_t _nfb(Py_ssize_t f) noexcept nogil:
    return (f + FBLOCK - 1) // FBLOCK


cdef inline Py_ssize_t _nrc(Py_ssize_t n) noexcept nogil:
    return (n + RCHUNK - 1) // RCHUNK


cdef inline bint _narrow(Py_ssize_t n, Py_ssize_t f) noexcept nogil:
    return f <= NARROW_MAX and n > RCHUNK


cdef int _get_x(object x, Py_buffer* v, bint out, Py_ssize_t* n, Py_ssize_t* f,
                Py_ssize_t* s) except -2:
    """buf_get of a float array (N, F) or (N, C, *S): n = N, f = F (C), s = prod(S) (1 for 2-D)."""
    cdef int dt = buf_get(x, v, DT_FLOAT, -1, out)
    cdef int k
    if v.ndim < 2:
        raise ValueError(f"expected an array (N, F) or (N, C, *S), got {v.ndim}-D")
    n[0], f[0], s[0] = v.shape[0], v.shape[1], 1
    for k in range(2, v.ndim):
        s[0] *= v.shape[k]
    return dt


cdef inline Py_ssize_t _fwd_doubles(Py_ssize_t n, Py_ssize_t f, Py_ssize_t s) noexcept nogil:
    """Work buffer of a training forward (and of batchnorm_stats), in doubles."""
    if s == 1:
        return (2 + (3 * _nrc(n) if _narrow(n, f) else 0)) * line_doubles(f)
    return 2 * line_doubles(f) + f * _pnk(n, s)


cdef inline Py_ssize_t _bwd_doubles(Py_ssize_t n, Py_ssize_t f, Py_ssize_t s) noexcept nogil:
    """Work buffer of a backward (at least a training forward's), in doubles."""
    if s == 1:
        return (3 + (3 * _nrc(n) if _narrow(n, f) else 0)) * line_doubles(f)
    return 2 * line_doubles(f) + 2 * f * _pnk(n, s)


# ---------------------------------------------------------------------------- planar (N, C, S)
cdef inline Py_ssize_t _pimgs(Py_ssize_t s) noexcept nogil:
    """Images per work item of the planar sums: max(1, PCHUNK // S)."""
    return PCHUNK // s if s < PCHUNK else 1


cdef inline Py_ssize_t _pnk(Py_ssize_t n, Py_ssize_t s) noexcept nogil:
    """Work items (chunks of images) per channel of the planar sums."""
    cdef Py_ssize_t r = _pimgs(s)
    return (n + r - 1) // r


cdef inline double _psum(const floating* x, Py_ssize_t s, const double* mu,
                         Py_ssize_t c) noexcept nogil:
    """sum x (mu NULL) or sum (x - mu[c])^2 over one plane of s values."""
    if floating is float:
        return dlf_bnp_sumf(x, s) if mu == NULL else dlf_bnp_sqdevf(x, s, mu[c])
    else:
        return dlf_bnp_sumd(x, s) if mu == NULL else dlf_bnp_sqdevd(x, s, mu[c])


cdef void _pitem(const floating* x, const floating* xhat, Py_ssize_t n, Py_ssize_t f,
                 Py_ssize_t s, Py_ssize_t it, Py_ssize_t nk, const double* mu, double* part,
                 double* part2, const _Act* ac) noexcept nogil:
    """Work item it (channel it // nk, images of chunk it % nk), planes in image order:
    part[it] = the sum of _psum over its planes; with xhat (backward): part[it] = sum dout,
    part2[it] = sum dout * xhat (x is dout)."""
    cdef Py_ssize_t c = it // nk, r = _pimgs(s), i, i1, p
    cdef double a = 0.0, g = 0.0, pa, pg
    i1 = min((it % nk + 1) * r, n)
    for i in range((it % nk) * r, i1):
        p = (i * f + c) * s
        if xhat == NULL:
            a = a + _psum(x + p, s, mu, c)
        else:
            if floating is float:
                dlf_bnp_bsumsf(x + p, xhat + p, s, &pa, &pg,
                               (<const float*>ac.gamma)[c] if ac.code else 0,
                               (<const float*>ac.beta)[c] if ac.code else 0, ac.code,
                               <float>ac.alpha)
            else:
                dlf_bnp_bsumsd(x + p, xhat + p, s, &pa, &pg,
                               (<const double*>ac.gamma)[c] if ac.code else 0,
                               (<const double*>ac.beta)[c] if ac.code else 0, ac.code,
                               ac.alpha)
            a = a + pa
            g = g + pg
    part[it] = a
    if xhat != NULL:
        part2[it] = g


cdef void _pcombine(const double* part, Py_ssize_t f, Py_ssize_t nk, double* out,
                    double m) noexcept nogil:
    """out[c] = (sum over k in order of part[c * nk + k]) / m."""
    cdef Py_ssize_t c, k
    cdef double a
    for c in range(f):
        a = 0.0
        for k in range(nk):
            a = a + part[c * nk + k]
        out[c] = a / m


cdef void _psums(const floating* x, const floating* xhat, Py_ssize_t n, Py_ssize_t f,
                 Py_ssize_t s, const double* mu, double* part, double* part2, int nt,
                 const _Act* ac) noexcept nogil:
    """Every work item of the planar sums (_pitem) into part (and part2)."""
    cdef Py_ssize_t nk = _pnk(n, s), it
    if nt == 1:
        for it in range(f * nk):
            _pitem(x, xhat, n, f, s, it, nk, mu, part, part2, ac)
    else:
        for it in prange(f * nk, schedule="static", num_threads=nt):
            _pitem(x, xhat, n, f, s, it, nk, mu, part, part2, ac)


cdef void _pstats(const floating* x, Py_ssize_t n, Py_ssize_t f, Py_ssize_t s, double* mu,
                  double* var, double* part, int nt) noexcept nogil:
    """mu, var (length f) of planar x over its M = n*s values per channel (part: f * nk)."""
    cdef Py_ssize_t nk = _pnk(n, s)
    _psums(x, <const floating*>NULL, n, f, s, <const double*>NULL, part, NULL, nt, &_NO_ACT)
    _pcombine(part, f, nk, mu, <double>(n * s))
    _psums(x, <const floating*>NULL, n, f, s, mu, part, NULL, nt, &_NO_ACT)
    _pcombine(part, f, nk, var, <double>(n * s))


cdef inline void _pnorm_plane(const floating* x, floating* xhat, floating* out,
                              const floating* gamma, const floating* beta, const double* mu,
                              const double* inv, Py_ssize_t f, Py_ssize_t s, Py_ssize_t p,
                              const _Act* a) noexcept nogil:
    """Plane p = n*f + c: xhat = (x - mu[c]) * inv[c], out = gamma[c] * xhat + beta[c]
    (y = act(out) with a fused activation)."""
    cdef Py_ssize_t c = p % f
    if floating is float:
        dlf_bnp_normf(x + p * s, xhat + p * s, out + p * s, gamma[c], beta[c], mu[c], inv[c], s,
                      a.code, <float>a.alpha, (<float*>a.y) + p * s if a.code else NULL)
    else:
        dlf_bnp_normd(x + p * s, xhat + p * s, out + p * s, gamma[c], beta[c], mu[c], inv[c], s,
                      a.code, a.alpha, (<double*>a.y) + p * s if a.code else NULL)


cdef void _pnorm(const floating* x, floating* xhat, floating* out, const floating* gamma,
                 const floating* beta, const double* mu, const double* inv, Py_ssize_t n,
                 Py_ssize_t f, Py_ssize_t s, int nt, const _Act* a) noexcept nogil:
    cdef Py_ssize_t p
    if nt == 1:
        for p in range(n * f):
            _pnorm_plane(x, xhat, out, gamma, beta, mu, inv, f, s, p, a)
    else:
        for p in prange(n * f, schedule="static", num_threads=nt):
            _pnorm_plane(x, xhat, out, gamma, beta, mu, inv, f, s, p, a)


cdef inline void _pdx_plane(floating* dx, const floating* dout, const floating* xhat,
                            const floating* gamma, const floating* invstd, const double* sb,
                            const double* sg, Py_ssize_t f, Py_ssize_t s, Py_ssize_t p,
                            double dm, bint batch, const _Act* ac) noexcept nogil:
    """Plane p = n*f + c of dx, coefficient k / M (batch) or k, k = gamma[c] * invstd[c]."""
    cdef Py_ssize_t c = p % f
    cdef double k = <double>gamma[c] * <double>invstd[c]
    if batch:
        k = k / dm
    if floating is float:
        dlf_bnp_dxf(dx + p * s, dout + p * s, xhat + p * s, k, sb[c], sg[c], s, dm, batch,
                    gamma[c], (<const float*>ac.beta)[c] if ac.code else 0, ac.code,
                    <float>ac.alpha)
    else:
        dlf_bnp_dxd(dx + p * s, dout + p * s, xhat + p * s, k, sb[c], sg[c], s, dm, batch,
                    gamma[c], (<const double*>ac.beta)[c] if ac.code else 0, ac.code,
                    ac.alpha)


cdef void _pfwd_train(const floating* x, const floating* gamma, const floating* beta,
                      floating* out, floating* xhat, floating* mean, floating* invstd,
                      floating* rm, floating* rv, Py_ssize_t n, Py_ssize_t f, Py_ssize_t s,
                      double momentum, double eps, bint unbiased, double* buf,
                      const _Act* ac) noexcept nogil:
    """The training forward of planar x; buf: mu, var -> invstd (line_doubles(f) each), part."""
    cdef int nt = _threads(n * f * s)
    cdef Py_ssize_t fp = line_doubles(f), m = n * s
    cdef double vfac = (<double>m / <double>(m - 1)) if (unbiased and m > 1) else 1.0
    _pstats(x, n, f, s, buf, buf + fp, buf + 2 * fp, nt)
    _fwd_feat(mean, invstd, rm, rv, buf, f, 0, f, momentum, eps, unbiased, vfac)
    _pnorm(x, xhat, out, gamma, beta, buf, buf + fp, n, f, s, nt, ac)


cdef void _pbwd(const floating* dout, const floating* xhat, const floating* gamma,
                const floating* invstd, floating* dx, floating* dgamma, floating* dbeta,
                Py_ssize_t n, Py_ssize_t f, Py_ssize_t s, bint batch, double* buf,
                const _Act* ac) noexcept nogil:
    """The backward of planar data; buf: sb, sg (line_doubles(f) each), 2 * f * nk partials."""
    cdef int nt = _threads(n * f * s)
    cdef Py_ssize_t fp = line_doubles(f), nk = _pnk(n, s), j, p
    cdef bint sums = dgamma != NULL or dbeta != NULL or (dx != NULL and batch)
    cdef double* sb = buf
    cdef double* sg = buf + fp
    cdef double dm = <double>(n * s)
    if sums:
        _psums(dout, xhat, n, f, s, <const double*>NULL, buf + 2 * fp, buf + 2 * fp + f * nk,
               nt, ac)
        _pcombine(buf + 2 * fp, f, nk, sb, 1.0)
        _pcombine(buf + 2 * fp + f * nk, f, nk, sg, 1.0)
    else:
        for j in range(f):
            sb[j] = 0.0
            sg[j] = 0.0
    if dx != NULL:
        if nt == 1:
            for p in range(n * f):
                _pdx_plane(dx, dout, xhat, gamma, invstd, sb, sg, f, s, p, dm, batch, ac)
        else:
            for p in prange(n * f, schedule="static", num_threads=nt):
                _pdx_plane(dx, dout, xhat, gamma, invstd, sb, sg, f, s, p, dm, batch, ac)
    for j in range(f):
        if dbeta != NULL:
            dbeta[j] = <floating>sb[j]
        if dgamma != NULL:
            dgamma[j] = <floating>sg[j]


cdef inline void _fwd_train_nd(const floating* x, const floating* gamma, const floating* beta,
                               floating* out, floating* xhat, floating* mean, floating* invstd,
                               floating* rm, floating* rv, Py_ssize_t n, Py_ssize_t f,
                               Py_ssize_t s, double momentum, double eps, bint unbiased,
                               double* buf, const _Act* ac) noexcept nogil:
    if s == 1:
        _fwd_train(x, gamma, beta, out, xhat, mean, invstd, rm, rv, n, f, momentum, eps,
                   unbiased, buf, ac)
    else:
        _pfwd_train(x, gamma, beta, out, xhat, mean, invstd, rm, rv, n, f, s, momentum, eps,
                    unbiased, buf, ac)


cdef inline void _bwd_nd(const floating* dout, const floating* xhat, const floating* gamma,
                         const floating* invstd, floating* dx, floating* dgamma, floating* dbeta,
                         Py_ssize_t n, Py_ssize_t f, Py_ssize_t s, bint batch, double* buf,
                         const _Act* ac) noexcept nogil:
    if s == 1:
        _bwd(dout, xhat, gamma, invstd, dx, dgamma, dbeta, n, f, batch, buf, ac)
    else:
        _pbwd(dout, xhat, gamma, invstd, dx, dgamma, dbeta, n, f, s, batch, buf, ac)


cdef void _colstats(const floating* x, Py_ssize_t n, Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1,
                    double* mu, double* var) noexcept nogil:
    """mu[j] = sum_n x[n, j] / N; var[j] = sum_n (x[n, j] - mu[j])^2 / N for j in [j0, j1)."""
    cdef Py_ssize_t j
    _sum(x, 0, n, f, j0, j1, mu)
    for j in range(j0, j1):
        mu[j] = mu[j] / n
    _sqdev(x, 0, n, f, j0, j1, mu, var)
    for j in range(j0, j1):
        var[j] = var[j] / n


cdef void _combine(const double* part, Py_ssize_t nrc, Py_ssize_t f, double* out,
                   double n, Py_ssize_t stride) noexcept nogil:
    """out[j] = (sum over chunks c in order of part[c * stride + j]) / n."""
    cdef Py_ssize_t c, j
    for j in range(f):
        out[j] = 0.0
    for c in range(nrc):
        for j in range(f):
            out[j] = out[j] + part[c * stride + j]
    for j in range(f):
        out[j] = out[j] / n


cdef inline void _chunkstats(const floating* x, Py_ssize_t c, Py_ssize_t n, Py_ssize_t f,
                             double* part) noexcept nogil:
    """Chunk c (rows [c RCHUNK, ...)): part = S_c = sum x, then m_c = S_c / n_c, then
    Q_c = sum (x - m_c)^2 (three lines of line_doubles(f)): the chunk read twice in cache."""
    cdef Py_ssize_t i0 = c * RCHUNK, i1 = min((c + 1) * RCHUNK, n), j, fp = line_doubles(f)
    _sum(x, i0, i1, f, 0, f, part)
    for j in range(f):
        part[fp + j] = part[j] / <double>(i1 - i0)
    _sqdev(x, i0, i1, f, 0, f, part + fp, part + 2 * fp)


cdef void _rowstats(const floating* x, Py_ssize_t n, Py_ssize_t f, double* mu, double* var,
                    double* part, int nt) noexcept nogil:
    """Narrow shapes: mu, var (length f) from RCHUNK-row chunks (part: nrc x 3 lines of
    line_doubles(f), _chunkstats), combined in chunk order (Chan et al.):
        mu = sum_c S_c / N,   var = sum_c (Q_c + n_c (m_c - mu)^2) / N
    one parallel pass over x (each chunk's second read is from cache), as stable as two-pass."""
    cdef Py_ssize_t nrc = _nrc(n), c, j, fp = line_doubles(f), nc
    cdef double d
    if nt == 1:
        for c in range(nrc):
            _chunkstats(x, c, n, f, part + 3 * c * fp)
    else:
        for c in prange(nrc, schedule="static", num_threads=nt):
            _chunkstats(x, c, n, f, part + 3 * c * fp)
    _combine(part, nrc, f, mu, <double>n, 3 * fp)
    for j in range(f):
        var[j] = 0.0
    for c in range(nrc):
        nc = min((c + 1) * RCHUNK, n) - c * RCHUNK
        for j in range(f):
            d = part[(3 * c + 1) * fp + j] - mu[j]
            var[j] = var[j] + (part[(3 * c + 2) * fp + j] + <double>nc * (d * d))
    for j in range(f):
        var[j] = var[j] / <double>n


# ---------------------------------------------------------------------------- statistics
def batchnorm_stats(x, mean, var):
    """mean = sum x / M, var = sum (x - mean)^2 / M per feature (channel) over its M values
    (M >= 1; double, two-pass)."""
    cdef Py_buffer v[3]
    cdef double* buf = NULL
    cdef Py_ssize_t n, f, s
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _get_x(x, &v[0], False, &n, &f, &s)
        buf_get(mean, &v[1], dt, f, True)
        buf_get(var, &v[2], dt, f, True)
        if n * s == 0 or f == 0:
            return
        buf = aligned_doubles(_fwd_doubles(n, f, s))
        with nogil:
            if dt == DT_F32:
                _stats(<const float*>v[0].buf, <float*>v[1].buf, <float*>v[2].buf, n, f, s, buf)
            else:
                _stats(<const double*>v[0].buf, <double*>v[1].buf, <double*>v[2].buf, n, f, s,
                       buf)
    finally:
        free(buf)
        buf_release(v, 3)


cdef void _stats(const floating* x, floating* mean, floating* var, Py_ssize_t n, Py_ssize_t f,
                 Py_ssize_t s, double* buf) noexcept nogil:
    cdef int nt = _threads(n * f * s)
    cdef Py_ssize_t b, fp = line_doubles(f)
    if s > 1:
        _pstats(x, n, f, s, buf, buf + fp, buf + 2 * fp, nt)
        _stats_out(mean, var, buf, f, 0, f)
    elif _narrow(n, f):
        _rowstats(x, n, f, buf, buf + fp, buf + 2 * fp, nt)
        _stats_out(mean, var, buf, f, 0, f)
    elif nt == 1:
        for b in range(_nfb(f)):
            _stats_block(x, mean, var, n, f, b, buf)
    else:
        for b in prange(_nfb(f), schedule="static", num_threads=nt):
            _stats_block(x, mean, var, n, f, b, buf)


cdef inline void _stats_block(const floating* x, floating* mean, floating* var, Py_ssize_t n,
                              Py_ssize_t f, Py_ssize_t b, double* buf) noexcept nogil:
    cdef Py_ssize_t j0 = b * FBLOCK, j1 = min(j0 + FBLOCK, f)
    _colstats(x, n, f, j0, j1, buf, buf + line_doubles(f))
    _stats_out(mean, var, buf, f, j0, j1)


cdef inline void _stats_out(floating* mean, floating* var, const double* buf, Py_ssize_t f,
                            Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(j0, j1):
        mean[j] = <floating>buf[j]
        var[j] = <floating>buf[line_doubles(f) + j]


# ---------------------------------------------------------------------------- forward
cdef inline floating _running(floating r, double momentum, double stat) noexcept nogil:
    """(1 - momentum) * r + momentum * stat, rounded like the NumPy backend
    (the first product in the array's dtype, the sum in double)."""
    return <floating>(<double>(<floating>(1.0 - momentum) * r) + momentum * stat)


def batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, running_mean, running_var,
                            double momentum, double eps, bint unbiased):
    """Training batch norm (M >= 2 values per feature): mean, var = batch stats;
    invstd = 1/sqrt(var + eps); xhat = (x - mean) * invstd; out = gamma * xhat + beta; running_*
    (if given) updated in place with momentum (running var unbiased by M/(M-1) when
    ``unbiased``)."""
    cdef Py_buffer v[9]
    cdef double* buf = NULL
    cdef Py_ssize_t n, f, s
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _get_x(x, &v[0], False, &n, &f, &s)
        buf_get(gamma, &v[1], dt, f, False)
        buf_get(beta, &v[2], dt, f, False)
        buf_get(out, &v[3], dt, n * f * s, True)
        buf_get(xhat, &v[4], dt, n * f * s, True)
        buf_get(mean, &v[5], dt, f, True)
        buf_get(invstd, &v[6], dt, f, True)
        buf_get(running_mean, &v[7], dt, f, True)
        buf_get(running_var, &v[8], dt, f, True)
        if n * s == 0 or f == 0:
            return
        buf = aligned_doubles(_fwd_doubles(n, f, s))
        with nogil:
            if dt == DT_F32:
                _fwd_train_nd(<const float*>v[0].buf, <const float*>v[1].buf,
                              <const float*>v[2].buf, <float*>v[3].buf, <float*>v[4].buf,
                              <float*>v[5].buf, <float*>v[6].buf, <float*>v[7].buf,
                              <float*>v[8].buf, n, f, s, momentum, eps, unbiased, buf, &_NO_ACT)
            else:
                _fwd_train_nd(<const double*>v[0].buf, <const double*>v[1].buf,
                              <const double*>v[2].buf, <double*>v[3].buf, <double*>v[4].buf,
                              <double*>v[5].buf, <double*>v[6].buf, <double*>v[7].buf,
                              <double*>v[8].buf, n, f, s, momentum, eps, unbiased, buf,
                              &_NO_ACT)
    finally:
        free(buf)
        buf_release(v, 9)


cdef void _fwd_train(const floating* x, const floating* gamma, const floating* beta,
                     floating* out, floating* xhat, floating* mean, floating* invstd,
                     floating* rm, floating* rv, Py_ssize_t n, Py_ssize_t f, double momentum,
                     double eps, bint unbiased, double* buf, const _Act* ac) noexcept nogil:
    """buf (regions of line_doubles(f) doubles): mu, var -> invstd, narrow: chunk partial sums
    (nrc)."""
    cdef int nt = _threads(n * f)
    cdef double vfac = (<double>n / <double>(n - 1)) if (unbiased and n > 1) else 1.0
    cdef Py_ssize_t b, c, j0, j1, fp = line_doubles(f)
    if _narrow(n, f):
        _rowstats(x, n, f, buf, buf + fp, buf + 2 * fp, nt)
        _fwd_feat(mean, invstd, rm, rv, buf, f, 0, f, momentum, eps, unbiased, vfac)
        if nt == 1:
            _norm(x, xhat, out, gamma, beta, buf, buf + fp, 0, n, f, 0, f, ac)
        else:
            for c in prange(_nrc(n), schedule="static", num_threads=nt):
                _norm(x, xhat, out, gamma, beta, buf, buf + fp, c * RCHUNK,
                      min((c + 1) * RCHUNK, n), f, 0, f, ac)
    elif nt == 1:
        for b in range(_nfb(f)):
            j0 = b * FBLOCK
            j1 = min(j0 + FBLOCK, f)
            _colstats(x, n, f, j0, j1, buf, buf + fp)
            _fwd_feat(mean, invstd, rm, rv, buf, f, j0, j1, momentum, eps, unbiased, vfac)
            _norm(x, xhat, out, gamma, beta, buf, buf + fp, 0, n, f, j0, j1, ac)
    else:
        for b in prange(_nfb(f), schedule="static", num_threads=nt):
            j0 = b * FBLOCK
            j1 = min(j0 + FBLOCK, f)
            _colstats(x, n, f, j0, j1, buf, buf + fp)
            _fwd_feat(mean, invstd, rm, rv, buf, f, j0, j1, momentum, eps, unbiased, vfac)
            _norm(x, xhat, out, gamma, beta, buf, buf + fp, 0, n, f, j0, j1, ac)


cdef inline void _fwd_feat(floating* mean, floating* invstd, floating* rm, floating* rv,
                           double* buf, Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1,
                           double momentum, double eps, bint unbiased,
                           double vfac) noexcept nogil:
    """Features [j0, j1): mean, running_* (if not NULL); buf[fp + j]: var -> invstd."""
    cdef Py_ssize_t j, fp = line_doubles(f)
    for j in range(j0, j1):
        mean[j] = <floating>buf[j]
        if rm != NULL:
            rm[j] = _running(rm[j], momentum, buf[j])
        if rv != NULL:
            rv[j] = _running(rv[j], momentum, buf[fp + j] * vfac if unbiased else buf[fp + j])
        buf[fp + j] = 1.0 / sqrt(buf[fp + j] + eps)
        invstd[j] = <floating>buf[fp + j]


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, double eps, out, xhat,
                           invstd):
    """invstd = 1/sqrt(running_var + eps); xhat = (x - running_mean) * invstd; out = gamma*xhat + beta."""
    cdef Py_buffer v[8]
    cdef double* buf = NULL
    cdef Py_ssize_t n, f, s
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _get_x(x, &v[0], False, &n, &f, &s)
        buf_get(gamma, &v[1], dt, f, False)
        buf_get(beta, &v[2], dt, f, False)
        buf_get(running_mean, &v[3], dt, f, False)
        buf_get(running_var, &v[4], dt, f, False)
        buf_get(out, &v[5], dt, n * f * s, True)
        buf_get(xhat, &v[6], dt, n * f * s, True)
        buf_get(invstd, &v[7], dt, f, True)
        if f == 0:
            return
        buf = aligned_doubles(2 * line_doubles(f))
        with nogil:
            if dt == DT_F32:
                _fwd_eval(<const float*>v[0].buf, <const float*>v[1].buf,
                          <const float*>v[2].buf, <const float*>v[3].buf,
                          <const float*>v[4].buf, <float*>v[5].buf, <float*>v[6].buf,
                          <float*>v[7].buf, n, f, s, eps, buf)
            else:
                _fwd_eval(<const double*>v[0].buf, <const double*>v[1].buf,
                          <const double*>v[2].buf, <const double*>v[3].buf,
                          <const double*>v[4].buf, <double*>v[5].buf, <double*>v[6].buf,
                          <double*>v[7].buf, n, f, s, eps, buf)
    finally:
        free(buf)
        buf_release(v, 8)


cdef void _fwd_eval(const floating* x, const floating* gamma, const floating* beta,
                    const floating* rmean, const floating* rvar, floating* out, floating* xhat,
                    floating* invstd, Py_ssize_t n, Py_ssize_t f, Py_ssize_t s, double eps,
                    double* buf) noexcept nogil:
    """buf (regions of line_doubles(f) doubles): running_mean in double, invstd in double."""
    cdef int nt = _threads(n * f * s)
    cdef Py_ssize_t i, j, fp = line_doubles(f)
    for j in range(f):
        buf[j] = <double>rmean[j]
        buf[fp + j] = 1.0 / sqrt(<double>rvar[j] + eps)
        invstd[j] = <floating>buf[fp + j]
    if n * s == 0:                              # no values (N = 0, or an empty plane H*W = 0)
        return
    if s > 1:
        _pnorm(x, xhat, out, gamma, beta, buf, buf + fp, n, f, s, nt, &_NO_ACT)
    elif nt == 1:
        _norm(x, xhat, out, gamma, beta, buf, buf + fp, 0, n, f, 0, f, &_NO_ACT)
    else:
        for i in prange(n, schedule="static", num_threads=nt):
            _norm(x, xhat, out, gamma, beta, buf, buf + fp, i, i + 1, f, 0, f, &_NO_ACT)


# ---------------------------------------------------------------------------- backward
def batchnorm_backward(dout, xhat, gamma, invstd, dx, dgamma, dbeta, bint batch_stats):
    """Over the M values of each feature (channel): dbeta = sum dout; dgamma = sum dout * xhat
    (double); dx = gamma*invstd/M * (M*dout - dbeta - xhat*dgamma) with batch statistics, else
    dx = gamma*invstd*dout."""
    cdef Py_buffer v[7]
    cdef double* buf = NULL
    cdef Py_ssize_t n, f, s, j
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _get_x(dout, &v[0], False, &n, &f, &s)
        buf_get(xhat, &v[1], dt, n * f * s, False)
        buf_get(gamma, &v[2], dt, f, False)
        buf_get(invstd, &v[3], dt, f, False)
        buf_get(dx, &v[4], dt, n * f * s, True)
        buf_get(dgamma, &v[5], dt, f, True)
        buf_get(dbeta, &v[6], dt, f, True)
        if f == 0:
            return
        if n * s == 0:                           # no values: zero sums, no dx
            for j in range(f):
                if dt == DT_F32:
                    if v[6].buf != NULL:
                        (<float*>v[6].buf)[j] = 0
                    if v[5].buf != NULL:
                        (<float*>v[5].buf)[j] = 0
                else:
                    if v[6].buf != NULL:
                        (<double*>v[6].buf)[j] = 0
                    if v[5].buf != NULL:
                        (<double*>v[5].buf)[j] = 0
            return
        buf = aligned_doubles(_bwd_doubles(n, f, s))
        with nogil:
            if dt == DT_F32:
                _bwd_nd(<const float*>v[0].buf, <const float*>v[1].buf, <const float*>v[2].buf,
                        <const float*>v[3].buf, <float*>v[4].buf, <float*>v[5].buf,
                        <float*>v[6].buf, n, f, s, batch_stats, buf, &_NO_ACT)
            else:
                _bwd_nd(<const double*>v[0].buf, <const double*>v[1].buf,
                        <const double*>v[2].buf, <const double*>v[3].buf, <double*>v[4].buf,
                        <double*>v[5].buf, <double*>v[6].buf, n, f, s, batch_stats, buf,
                        &_NO_ACT)
    finally:
        free(buf)
        buf_release(v, 7)


cdef inline void _bwd_coef(const floating* gamma, const floating* invstd, double* c,
                           Py_ssize_t j0, Py_ssize_t j1, double dn, bint batch) noexcept nogil:
    """c[j] = k / N (batch stats) or k, k = gamma[j] * invstd[j] (double)."""
    cdef Py_ssize_t j
    cdef double k
    for j in range(j0, j1):
        k = <double>gamma[j] * <double>invstd[j]
        c[j] = k / dn if batch else k


cdef void _bwd(const floating* dout, const floating* xhat, const floating* gamma,
               const floating* invstd, floating* dx, floating* dgamma, floating* dbeta,
               Py_ssize_t n, Py_ssize_t f, bint batch, double* buf,
               const _Act* ac) noexcept nogil:
    """buf (regions of line_doubles(f) doubles): sb, sg, c, narrow: chunk partial sums (2 * nrc)."""
    cdef int nt = _threads(n * f)
    cdef bint sums = dgamma != NULL or dbeta != NULL or (dx != NULL and batch)
    cdef Py_ssize_t nrc = _nrc(n), b, k, j, fp = line_doubles(f)
    cdef double* sb = buf
    cdef double* sg = buf + fp
    cdef double* c = buf + 2 * fp
    cdef double dn = <double>n
    if _narrow(n, f):
        if sums:
            if nt == 1:
                for k in range(nrc):
                    _bwd_chunk_sums(dout, xhat, n, f, k, nrc, buf + 3 * fp, ac)
            else:
                for k in prange(nrc, schedule="static", num_threads=nt):
                    _bwd_chunk_sums(dout, xhat, n, f, k, nrc, buf + 3 * fp, ac)
            _combine(buf + 3 * fp, nrc, f, sb, 1.0, fp)
            _combine(buf + (3 + nrc) * fp, nrc, f, sg, 1.0, fp)
        else:
            for j in range(f):
                sb[j] = 0.0
                sg[j] = 0.0
        if dx != NULL:
            _bwd_coef(gamma, invstd, c, 0, f, dn, batch)
            if nt == 1:
                _bdx(dx, dout, xhat, c, sb, sg, 0, n, f, 0, f, dn, batch, ac)
            else:
                for k in prange(nrc, schedule="static", num_threads=nt):
                    _bdx(dx, dout, xhat, c, sb, sg, k * RCHUNK, min((k + 1) * RCHUNK, n), f,
                         0, f, dn, batch, ac)
    elif nt == 1:
        for b in range(_nfb(f)):
            _bwd_block(dout, xhat, gamma, invstd, dx, n, f, b, sums, batch, sb, sg, c, ac)
    else:
        for b in prange(_nfb(f), schedule="static", num_threads=nt):
            _bwd_block(dout, xhat, gamma, invstd, dx, n, f, b, sums, batch, sb, sg, c, ac)
    for j in range(f):
        if dbeta != NULL:
            dbeta[j] = <floating>sb[j]
        if dgamma != NULL:
            dgamma[j] = <floating>sg[j]


cdef inline void _bwd_chunk_sums(const floating* dout, const floating* xhat, Py_ssize_t n,
                                 Py_ssize_t f, Py_ssize_t k, Py_ssize_t nrc, double* part,
                                 const _Act* ac) noexcept nogil:
    cdef Py_ssize_t fp = line_doubles(f)
    _bsums(dout, xhat, k * RCHUNK, min((k + 1) * RCHUNK, n), f, 0, f, part + k * fp,
           part + (nrc + k) * fp, ac)


cdef inline void _bwd_block(const floating* dout, const floating* xhat, const floating* gamma,
                            const floating* invstd, floating* dx, Py_ssize_t n, Py_ssize_t f,
                            Py_ssize_t b, bint sums, bint batch, double* sb, double* sg,
                            double* c, const _Act* ac) noexcept nogil:
    cdef Py_ssize_t j0 = b * FBLOCK, j1 = min(j0 + FBLOCK, f)
    if sums:
        _bsums(dout, xhat, 0, n, f, j0, j1, sb, sg, ac)
    if dx != NULL:
        _bwd_coef(gamma, invstd, c, j0, j1, <double>n, batch)
        _bdx(dx, dout, xhat, c, sb, sg, 0, n, f, j0, j1, <double>n, batch, ac)


# ---------------------------------------------------------------------------- op (dlfast.kernels.OPS)
ctypedef struct _BatchNormC:
    dlf_op op           # first: the program sees a dlf_op*
    const void* gamma
    const void* beta
    void* xhat
    void* mean
    void* invstd
    void* rm
    void* rv
    void* dgamma
    void* dbeta
    double* buf         # work buffer, sized for the forward and the backward
    Py_ssize_t n, f, s  # out (N, F), or (N, C, *S) with s = prod(S)
    int dt
    bint unbiased
    double momentum, eps
    _Act act            # the fused activation (code 0: none)


cdef int _bn_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _BatchNormC* s = <_BatchNormC*>p
    if s.dt == DT_F32:
        _fwd_train_nd(<const float*>x, <const float*>s.gamma, <const float*>s.beta,
                      <float*>s.op.out, <float*>s.xhat, <float*>s.mean, <float*>s.invstd,
                      <float*>s.rm, <float*>s.rv, s.n, s.f, s.s, s.momentum, s.eps, s.unbiased,
                      s.buf, &s.act)
    else:
        _fwd_train_nd(<const double*>x, <const double*>s.gamma, <const double*>s.beta,
                      <double*>s.op.out, <double*>s.xhat, <double*>s.mean, <double*>s.invstd,
                      <double*>s.rm, <double*>s.rv, s.n, s.f, s.s, s.momentum, s.eps,
                      s.unbiased, s.buf, &s.act)
    return 0


cdef int _bn_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _BatchNormC* s = <_BatchNormC*>p
    if s.dt == DT_F32:
        _bwd_nd(<const float*>dout, <const float*>s.xhat, <const float*>s.gamma,
                <const float*>s.invstd, <float*>s.op.dx, <float*>s.dgamma, <float*>s.dbeta, s.n,
                s.f, s.s, True, s.buf, &s.act)
    else:
        _bwd_nd(<const double*>dout, <const double*>s.xhat, <const double*>s.gamma,
                <const double*>s.invstd, <double*>s.op.dx, <double*>s.dgamma,
                <double*>s.dbeta, s.n, s.f, s.s, True, s.buf, &s.act)
    return 0


cdef class BatchNormOp:
    """``batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, running_mean,
    running_var, momentum, eps, unbiased)`` and ``batchnorm_backward(dout, xhat, gamma, invstd,
    dx, dgamma, dbeta, True)`` of fixed arrays (out: (N, F), or (N, C, *S) per channel; M >= 2
    values per feature): an op of a training step (dlfast_op.h). The same checks as the two
    kernels, once; ``address()`` is the ``dlf_op*``. ``activation`` "relu" or "leaky_relu"
    (slope ``alpha``) fuses that activation: y = act(out), and the backward takes dL/dy, its
    derivative recomputed from z = gamma * xhat + beta (the same bits as the activation op
    after this one)."""
    cdef _BatchNormC c
    cdef Py_buffer v[12]

    def __cinit__(self, gamma, beta, out, xhat, mean, invstd, running_mean, running_var, dx,
                  dgamma, dbeta, y, double momentum, double eps, bint unbiased, activation,
                  double alpha):
        cdef int code = act_code(activation)
        if code > ACT_LEAKY:
            raise ValueError(f"a batchnorm op fuses identity, relu or leaky_relu, got "
                             f"{activation!r}")
        cdef Py_ssize_t n, f, s
        cdef int dt
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        dt = _get_x(out, &self.v[0], True, &n, &f, &s)
        if n * s < 2 or f < 1:
            raise ValueError(f"out must have at least 2 values per feature and 1 feature, got "
                             f"shape {tuple(out.shape)}")
        for k, a, ln, w in ((1, gamma, f, False), (2, beta, f, False),
                            (3, xhat, n * f * s, True), (4, mean, f, True), (5, invstd, f, True),
                            (6, running_mean, f, True), (7, running_var, f, True),
                            (8, dx, n * f * s, True), (9, dgamma, f, True), (10, dbeta, f, True),
                            (11, y, n * f * s, True)):
            buf_get(a, &self.v[k], dt, ln, w)
        if (code != 0) != (self.v[11].buf != NULL):
            raise ValueError("y (the activation's output) is required exactly when an "
                             "activation is fused")
        self.c.buf = aligned_doubles(_bwd_doubles(n, f, s))
        self.c.n, self.c.f, self.c.s, self.c.dt = n, f, s, dt
        self.c.momentum, self.c.eps, self.c.unbiased = momentum, eps, unbiased
        self.c.op.out = self.v[0].buf
        self.c.gamma, self.c.beta, self.c.xhat = self.v[1].buf, self.v[2].buf, self.v[3].buf
        self.c.mean, self.c.invstd = self.v[4].buf, self.v[5].buf
        self.c.rm, self.c.rv, self.c.op.dx = self.v[6].buf, self.v[7].buf, self.v[8].buf
        self.c.dgamma, self.c.dbeta = self.v[9].buf, self.v[10].buf
        self.c.act.code, self.c.act.alpha = code, alpha
        self.c.act.gamma, self.c.act.beta, self.c.act.y = self.c.gamma, self.c.beta, self.v[11].buf
        self.c.op.fwd = _bn_op_fwd
        self.c.op.bwd = _bn_op_bwd

    def __dealloc__(self):
        free(self.c.buf)
        buf_release(self.v, 12)

    def slot(self, name):
        """Address of the pointer field of the gradient output ``name`` (a program points it at
        another array for one step: dlfast.kernels.PROGRAM_DOC)."""
        if name == "dgamma":
            return <size_t>&self.c.dgamma
        if name == "dbeta":
            return <size_t>&self.c.dbeta
        raise KeyError(name)

    def address(self):
        return <size_t>&self.c.op
