/* Winograd F(2x2, 3x3): a stride-1 3x3 convolution of one image with 16 multiply-adds per
   2x2 outputs and input channel instead of 36 (Lavin and Gray, 2016). _conv's forward and dx
   (dx = a convolution of dout padded by 2 - p, the kernel flipped, F and C swapped).

   Per 4x4 input tile d (tiles at stride 2 over xp, x zero-padded by (ph, pw)) and 3x3 kernel g:
       U = G g G^T,  V = B^T d B,  Y = A^T (sum_c U_c (.) V_c) A  (2x2 outputs)
       G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]      (U in float64, then rounded to T)
       B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],    A^T = [1 1 1 0; 0 1 -1 -1]
   The sum over c runs in order c = 0..C-1 for every output (fixed: results do not depend on the
   thread count, which only assigns whole images to threads). Its rounding error is bounded by
   gamma_(C+8) |A^T| (sum_c |G||g||G^T| (.) |B^T||d||B|) |A| (tests/test_kernels_conv.py), not by
   the direct sum's bound: _conv chooses it by work (_wino_better) and redoes an image directly
   when its output is not finite (a transform can overflow where the sum does not, and 0 * inf
   or inf - inf appear where the direct sum gives inf). Multiply-adds may be fused (FMA) in the
   clones that have it: bits can differ between CPUs, never between runs or thread counts.

   Layout: xq[c][row][E | O], each padded row split into its even and odd columns (E[k] =
   xp[2k], O[k] = xp[2k + 1]) so that the tiles of a row are vectors over tiles; U[xi][c][f]
   (f < coP, co rounded up to 2 vectors, zeros past co); per block of tile rows,
   V[xi][c][t] and M[t][xi][f] = sum_c V[xi][c][t] U[xi][c][f]. */
#ifndef DLFAST_WINO_H
#define DLFAST_WINO_H
#include <string.h>
#include "dlfast_dconv.h"

#define DLF_WN_R 6          /* tiles per register block of the products */

/* n tiles rounded up to register blocks: of 6, then one of 6, 4 or 2 */
static inline Py_ssize_t dlf_wino_tiles(Py_ssize_t n) {
    Py_ssize_t r = n % DLF_WN_R;
    return r == 0 ? n : n - r + (r > 4 ? 6 : r > 2 ? 4 : 2);
}
#define DLF_WN_SKEW 16      /* elements added to strides of 2^k bytes (V's xi, M's tiles) */

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#endif

#define DLF_WINO(SFX, T, VL, LO, HI)                                                          \
static inline Py_ssize_t dlf_wino_coP_##SFX(Py_ssize_t co) {                                  \
    return (co + 2 * (VL) - 1) / (2 * (VL)) * 2 * (VL);                                       \
}                                                                                             \
/* T elements of U: 16 x ci x coP */                                                          \
static inline Py_ssize_t dlf_wino_u_size_##SFX(Py_ssize_t ci, Py_ssize_t co) {                \
    return 16 * ci * dlf_wino_coP_##SFX(co);                                                  \
}                                                                                             \
/* U from W (F, C, 3, 3): ci = C, co = F; dx: ci = F, co = C, g[kh][kw] = W[c, f, 2-kh, 2-kw] */ \
static void dlf_wino_pack_##SFX(const T* Wt, T* U, Py_ssize_t F, Py_ssize_t C, int dx) {      \
    Py_ssize_t ci = dx ? F : C, co = dx ? C : F, coP = dlf_wino_coP_##SFX(co), c, f;          \
    int i, j;                                                                                 \
    for (c = 0; c < ci; c++)                                                                  \
        for (f = 0; f < coP; f++) {                                                           \
            double g[3][3], t[4][3];                                                          \
            if (f >= co) {                                                                    \
                for (i = 0; i < 16; i++) U[(i * ci + c) * coP + f] = 0;                       \
                continue;                                                                     \
            }                                                                                 \
            for (i = 0; i < 3; i++)                                                           \
                for (j = 0; j < 3; j++)                                                       \
                    g[i][j] = dx ? (double)Wt[((c * C + f) * 3 + 2 - i) * 3 + 2 - j]          \
                                 : (double)Wt[((f * C + c) * 3 + i) * 3 + j];                 \
            for (j = 0; j < 3; j++) {                                                         \
                t[0][j] = g[0][j];                                                            \
                t[1][j] = 0.5 * (g[0][j] + g[1][j] + g[2][j]);                                \
                t[2][j] = 0.5 * (g[0][j] - g[1][j] + g[2][j]);                                \
                t[3][j] = g[2][j];                                                            \
            }                                                                                 \
            for (i = 0; i < 4; i++) {                                                         \
                double u[4] = {t[i][0], 0.5 * (t[i][0] + t[i][1] + t[i][2]),                  \
                               0.5 * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};                 \
                for (j = 0; j < 4; j++) U[((i * 4 + j) * ci + c) * coP + f] = (T)u[j];        \
            }                                                                                 \
        }                                                                                     \
}                                                                                             \
                                                                                              \
/* The geometry of one image: TH x TW tiles, rows of 2*Wh (E, O) in xq, RB tile rows per block, \
   Vs: V's row stride (tiles) */                                                              \
typedef struct { Py_ssize_t OH, OW, TH, TW, Hq, Wh, RB, Vs, Vx, Mx, coP; } dlf_wgeo_##SFX;   \
static inline dlf_wgeo_##SFX dlf_wino_geo_##SFX(Py_ssize_t ci, Py_ssize_t H, Py_ssize_t W,    \
                                                Py_ssize_t co, Py_ssize_t ph, Py_ssize_t pw) { \
    dlf_wgeo_##SFX q;                                                                         \
    Py_ssize_t per, budget;                                                                   \
    q.OH = H + 2 * ph - 2; q.OW = W + 2 * pw - 2;                                             \
    q.TH = (q.OH + 1) / 2; q.TW = (q.OW + 1) / 2;                                             \
    q.Hq = 2 * q.TH + 2; q.Wh = q.TW + 1 + (VL);                                              \
    q.coP = dlf_wino_coP_##SFX(co);                                                           \
    /* V and M of a block of tile rows in half the L2 (512 KB if unknown), blocks even */      \
    per = 16 * (ci + q.coP) * q.TW * (Py_ssize_t)sizeof(T);                                   \
    budget = (Py_ssize_t)(dlf_cache_bytes(2, 512 * 1024) / 2);                                \
    q.RB = budget / (per > 0 ? per : 1);                                                      \
    if (q.RB < 1) q.RB = 1;                                                                   \
    if (q.RB > q.TH) q.RB = q.TH;                                                             \
    q.RB = (q.TH + (q.TH + q.RB - 1) / q.RB - 1) / ((q.TH + q.RB - 1) / q.RB);  /* even blocks */ \
    q.Vs = (q.RB * q.TW + DLF_WN_R - 1) / DLF_WN_R * DLF_WN_R + (VL);                         \
    q.Vx = ci * q.Vs + DLF_WN_SKEW;     /* the 16 xi not 4 KB apart (L1 sets) */              \
    q.Mx = 16 * q.coP + DLF_WN_SKEW;    /* M[t][xi][f]: a tile's 16 xi together */            \
    return q;                                                                                 \
}                                                                                             \
/* T elements of xq, the scratch's first part (rounded to 16): zeroed once by the caller       \
   (dlf_wino_one writes only the image into it, never its borders) */                         \
static inline Py_ssize_t dlf_wino_xq_elems_##SFX(Py_ssize_t ci, const dlf_wgeo_##SFX* q) {    \
    return (ci * q->Hq * 2 * q->Wh + 15) / 16 * 16;                                           \
}                                                                                             \
static inline Py_ssize_t dlf_wino_xq_size_##SFX(Py_ssize_t ci, Py_ssize_t H, Py_ssize_t W,    \
                                                Py_ssize_t co, Py_ssize_t ph, Py_ssize_t pw) { \
    dlf_wgeo_##SFX q = dlf_wino_geo_##SFX(ci, H, W, co, ph, pw);                              \
    return dlf_wino_xq_elems_##SFX(ci, &q);                                                   \
}                                                                                             \
/* T elements of one image's scratch: xq, V, M */                                            \
static inline Py_ssize_t dlf_wino_scratch_##SFX(Py_ssize_t ci, Py_ssize_t H, Py_ssize_t W,    \
                                                Py_ssize_t co, Py_ssize_t ph, Py_ssize_t pw) { \
    dlf_wgeo_##SFX q = dlf_wino_geo_##SFX(ci, H, W, co, ph, pw);                              \
    return dlf_wino_xq_elems_##SFX(ci, &q) + 16 * q.Vx + q.Vs * q.Mx + 16;                    \
}                                                                                             \
                                                                                              \
/* V of tile rows [ty0, ty1) of channel c: V[xi][c][(ty - ty0)*TW + tx] */                    \
static inline __attribute__((always_inline)) void dlf_wino_in_##SFX(                         \
        const T* xc, T* V, Py_ssize_t c, Py_ssize_t ci, const dlf_wgeo_##SFX* q,              \
        Py_ssize_t ty0, Py_ssize_t ty1) {                                                     \
    Py_ssize_t ty, tx, rs = 2 * q->Wh, xs = q->Vx;                                            \
    int j;                                                                                    \
    for (ty = ty0; ty < ty1; ty++) {                                                          \
        const T* r0 = xc + 2 * ty * rs;                                                       \
        T* vt = V + c * q->Vs + (ty - ty0) * q->TW;                                           \
        for (tx = 0; tx < q->TW; tx += (VL)) {                                                \
            dlf_dcv_##SFX e[4][4];                                                            \
            int k;                                                                            \
            for (k = 0; k < 4; k++) {   /* d B along the row: columns 2tx + (0, 1, 2, 3) */   \
                const T* E = r0 + k * rs + tx;                                                \
                const T* O = E + q->Wh;                                                       \
                dlf_dcv_##SFX d0 = *(const dlf_dcvu_##SFX*)E;                                 \
                dlf_dcv_##SFX d1 = *(const dlf_dcvu_##SFX*)O;                                 \
                dlf_dcv_##SFX d2 = *(const dlf_dcvu_##SFX*)(E + 1);                           \
                dlf_dcv_##SFX d3 = *(const dlf_dcvu_##SFX*)(O + 1);                           \
                e[k][0] = d0 - d2; e[k][1] = d1 + d2; e[k][2] = d2 - d1; e[k][3] = d1 - d3;   \
            }                                                                                 \
            for (j = 0; j < 4; j++) {   /* B^T (d B) down the columns */                      \
                T* v = vt + tx;                                                               \
                *(dlf_dcvu_##SFX*)(v + (0 * 4 + j) * xs) = e[0][j] - e[2][j];                 \
                *(dlf_dcvu_##SFX*)(v + (1 * 4 + j) * xs) = e[1][j] + e[2][j];                 \
                *(dlf_dcvu_##SFX*)(v + (2 * 4 + j) * xs) = e[2][j] - e[1][j];                 \
                *(dlf_dcvu_##SFX*)(v + (3 * 4 + j) * xs) = e[1][j] - e[3][j];                 \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* M[t][xi][f0 .. f0 + 2VL) (Mx = M + xi*coP, tiles Mt apart) for the NR tiles t0.. (NR <=     \
   DLF_WN_R, a compile-time constant at every call) */                                        \
static inline __attribute__((always_inline)) void dlf_wino_mm_##SFX(                         \
        const T* Vx, const T* Ux, T* Mx, Py_ssize_t ci, Py_ssize_t Vs, Py_ssize_t coP,        \
        Py_ssize_t Mt, Py_ssize_t t0, Py_ssize_t f0, int NR) {                                \
    dlf_dcv_##SFX a[DLF_WN_R][2];                                                             \
    Py_ssize_t c;                                                                             \
    int r;                                                                                    \
    for (r = 0; r < NR; r++) a[r][0] = a[r][1] = (dlf_dcv_##SFX){0};                          \
    for (c = 0; c < ci; c++) {                                                                \
        const T* u = Ux + c * coP + f0;                                                       \
        const T* v = Vx + c * Vs + t0;                                                        \
        dlf_dcv_##SFX u0 = *(const dlf_dcvu_##SFX*)u;                                         \
        dlf_dcv_##SFX u1 = *(const dlf_dcvu_##SFX*)(u + (VL));                                \
        for (r = 0; r < NR; r++) {                                                            \
            const T* vr = v + r;                                                              \
            __asm__("" : "+r"(vr));     /* a broadcast load per tile, not shuffles of one load */ \
            T b = *vr;                                                                        \
            a[r][0] += u0 * b;                                                                \
            a[r][1] += u1 * b;                                                                \
        }                                                                                     \
    }                                                                                         \
    for (r = 0; r < NR; r++) {                                                                \
        *(dlf_dcvu_##SFX*)(Mx + (t0 + r) * Mt + f0) = a[r][0];                                \
        *(dlf_dcvu_##SFX*)(Mx + (t0 + r) * Mt + f0 + (VL)) = a[r][1];                         \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* out of tile rows [ty0, ty1) from M: Y = A^T m A (+ b[f]), the tiles' 2x2 inside the map */   \
static inline __attribute__((always_inline)) dlf_dcv_##SFX dlf_wino_out_##SFX(               \
        const T* M, const T* b, T* out, Py_ssize_t co, const dlf_wgeo_##SFX* q,               \
        Py_ssize_t ty0, Py_ssize_t ty1, dlf_dcv_##SFX chk) {                                  \
    Py_ssize_t ty, tx, f0, ms = q->coP, P = q->OH * q->OW;                                    \
    int i, l;                                                                                 \
    for (ty = ty0; ty < ty1; ty++)                                                            \
        for (tx = 0; tx < q->TW; tx++) {                                                      \
            const T* m = M + ((ty - ty0) * q->TW + tx) * q->Mx;                               \
            int ni = 2 * ty + 1 < q->OH ? 2 : 1, nj = 2 * tx + 1 < q->OW ? 2 : 1;             \
            T* o = out + 2 * ty * q->OW + 2 * tx;                                             \
            for (f0 = 0; f0 < co; f0 += (VL)) {                                               \
                dlf_dcv_##SFX s[2][4], y[4];                                                  \
                int nl = co - f0 < (VL) ? (int)(co - f0) : (VL), j;                           \
                for (j = 0; j < 4; j++) {                                                     \
                    dlf_dcv_##SFX m0 = *(const dlf_dcvu_##SFX*)(m + (0 * 4 + j) * ms + f0);   \
                    dlf_dcv_##SFX m1 = *(const dlf_dcvu_##SFX*)(m + (1 * 4 + j) * ms + f0);   \
                    dlf_dcv_##SFX m2 = *(const dlf_dcvu_##SFX*)(m + (2 * 4 + j) * ms + f0);   \
                    dlf_dcv_##SFX m3 = *(const dlf_dcvu_##SFX*)(m + (3 * 4 + j) * ms + f0);   \
                    s[0][j] = (m0 + m1) + m2;                                                 \
                    s[1][j] = (m1 - m2) - m3;                                                 \
                }                                                                             \
                for (i = 0; i < 2; i++) {                                                     \
                    y[2 * i] = (s[i][0] + s[i][1]) + s[i][2];                                 \
                    y[2 * i + 1] = (s[i][1] - s[i][2]) - s[i][3];                             \
                }                                                                             \
                chk += ((y[0] + y[1]) + (y[2] + y[3])) * (T)0;  /* NaN once one is not finite */ \
                if (b) {                                                                      \
                    dlf_dcv_##SFX bv;                                                         \
                    if (nl == (VL))                                                           \
                        bv = *(const dlf_dcvu_##SFX*)(b + f0);                                \
                    else {                                                                    \
                        bv = (dlf_dcv_##SFX){0};                                              \
                        for (l = 0; l < nl; l++) bv[l] = b[f0 + l];                           \
                    }                                                                         \
                    for (j = 0; j < 4; j++) y[j] += bv;                                       \
                }                                                                             \
                if (nl == (VL) && ni == 2 && nj == 2) {  /* a whole tile: 2 outputs per store */ \
                    dlf_dcv_##SFX z[4];                                                       \
                    z[0] = __builtin_shuffle(y[0], y[1], LO);                                 \
                    z[1] = __builtin_shuffle(y[0], y[1], HI);                                 \
                    z[2] = __builtin_shuffle(y[2], y[3], LO);                                 \
                    z[3] = __builtin_shuffle(y[2], y[3], HI);                                 \
                    _Pragma("GCC unroll 8")                                                   \
                    for (l = 0; l < (VL); l++) {    /* lane l: (y0, y1)[l], (y2, y3)[l] */   \
                        T* of = o + (f0 + l) * P;                                             \
                        const int E = 16 / (int)sizeof(T), hf = E / 2;  /* per 128 bits */   \
                        int zi = (l % E) / hf, zo = 2 * ((l % hf) + hf * (l / E));            \
                        memcpy(of, (const T*)&z[zi] + zo, 2 * sizeof(T));                     \
                        memcpy(of + q->OW, (const T*)&z[2 + zi] + zo, 2 * sizeof(T));         \
                    }                                                                         \
                } else {                                                                      \
                    T yl[4][VL];                                                              \
                    memcpy(yl, y, sizeof(yl));                                                \
                    for (l = 0; l < nl; l++) {                                                \
                        T* of = o + (f0 + l) * P;                                             \
                        for (i = 0; i < ni; i++) {                                            \
                            of[i * q->OW] = yl[2 * i][l];                                     \
                            if (nj == 2) of[i * q->OW + 1] = yl[2 * i + 1][l];                \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    return chk;                                                                               \
}                                                                                             \
                                                                                              \
/* out (co, OH, OW) = conv(x (ci, H, W) padded by (ph, pw), the 3x3 kernels in U) + b (b may   \
   be NULL); s: dlf_wino_scratch elements. Returns 1 when out is not all finite (the caller     \
   redoes the image directly), else 0. */                                                     \
DLF_CLONES static int dlf_wino_one_##SFX(const T* x, const T* U, const T* b, T* out, T* s,    \
                                         Py_ssize_t ci, Py_ssize_t H, Py_ssize_t W,           \
                                         Py_ssize_t co, Py_ssize_t ph, Py_ssize_t pw) {       \
    dlf_wgeo_##SFX q = dlf_wino_geo_##SFX(ci, H, W, co, ph, pw);                              \
    Py_ssize_t plane = q.Hq * 2 * q.Wh, c, h, ty0, ty1, xi, t, f0, nT, nTp;                   \
    T* xq = s;                                                                                \
    T* V = xq + dlf_wino_xq_elems_##SFX(ci, &q);                                              \
    T* M = V + 16 * q.Vx;                                                                     \
    dlf_dcv_##SFX chk = {0};                                                                  \
    T ck[VL];                                                                                 \
    int l;                                                                                    \
    for (c = 0; c < ci; c++)          /* xp row h + ph: E[k] = xp[2k], O[k] = xp[2k + 1] */   \
        for (h = 0; h < H; h++) {                                                             \
            T* r = xq + c * plane + (h + ph) * 2 * q.Wh;                                      \
            const T* xr = x + (c * H + h) * W;                                                \
            int par;                                                                          \
            for (par = 0; par < 2; par++) {                                                   \
                T* e = r + par * q.Wh;                                                        \
                Py_ssize_t k0 = (pw - par + 1) / 2, k1 = (pw + W - par + 1) / 2, k;           \
                for (k = k0; k < k1; k++) e[k] = xr[2 * k + par - pw];                        \
            }                                                                                 \
        }                                                                                     \
    for (ty0 = 0; ty0 < q.TH; ty0 += q.RB) {                                                  \
        ty1 = ty0 + q.RB < q.TH ? ty0 + q.RB : q.TH;                                          \
        nT = (ty1 - ty0) * q.TW;                                                              \
        nTp = dlf_wino_tiles(nT);                                                             \
        for (c = 0; c < ci; c++)                                                              \
            dlf_wino_in_##SFX(xq + c * plane, V, c, ci, &q, ty0, ty1);                        \
        for (xi = 0; xi < 16; xi++)         /* the last register block's tiles past nT: 0 */  \
            for (c = 0; c < ci; c++)                                                          \
                for (t = nT; t < nTp; t++) V[xi * q.Vx + c * q.Vs + t] = 0;                   \
        for (xi = 0; xi < 16; xi++) {                                                         \
            const T* Vx = V + xi * q.Vx;                                                      \
            const T* Ux = U + xi * ci * q.coP;                                                \
            T* Mx = M + xi * q.coP;                                                           \
            for (f0 = 0; f0 < q.coP; f0 += 2 * (VL)) {                                        \
                for (t = 0; t + DLF_WN_R <= nTp; t += DLF_WN_R)                               \
                    dlf_wino_mm_##SFX(Vx, Ux, Mx, ci, q.Vs, q.coP, q.Mx, t, f0, DLF_WN_R);   \
                if (nTp - t == 4)           /* a last block of 4 or 2 tiles */                \
                    dlf_wino_mm_##SFX(Vx, Ux, Mx, ci, q.Vs, q.coP, q.Mx, t, f0, 4);           \
                else if (nTp - t == 2)                                                        \
                    dlf_wino_mm_##SFX(Vx, Ux, Mx, ci, q.Vs, q.coP, q.Mx, t, f0, 2);           \
            }                                                                                 \
        }                                                                                     \
        chk = dlf_wino_out_##SFX(M, b, out, co, &q, ty0, ty1, chk);                           \
    }                                                                                         \
    memcpy(ck, &chk, sizeof(ck));                                                             \
    for (l = 0; l < (VL); l++)                                                                \
        if (ck[l] != ck[l])                                                                   \
            return 1;                                                                         \
    return 0;                                                                                 \
}

typedef int dlf_wn_if __attribute__((vector_size(32)));
typedef long long dlf_wn_id __attribute__((vector_size(32)));
/* LO, HI: interleave two vectors within each 128 bits (unpacklo, unpackhi) */
DLF_WINO(f, float, 8, ((dlf_wn_if){0, 8, 1, 9, 4, 12, 5, 13}),
         ((dlf_wn_if){2, 10, 3, 11, 6, 14, 7, 15}))
DLF_WINO(d, double, 4, ((dlf_wn_id){0, 4, 2, 6}), ((dlf_wn_id){1, 5, 3, 7}))

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#endif
