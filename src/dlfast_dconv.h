/* Direct convolution at stride 1 (no im2col): _conv's forward, and dx of its backward (a
   transposed convolution is a convolution of dout with the kernel flipped and F, C swapped).

   One image:   out[f, i, j] = (sum_{c, kh, kw} W[f, c, kh, kw] xp[c, i + kh, j + kw]) + b[f]
   with xp = x zero-padded by (ph, pw). The padded image xp (C, Hp, Wp) sits in a scratch buffer;
   outputs are computed over the "extended" grid p = i*Wp + j, j in [0, Wp): then the taps of every
   output are the same offset kh*Wp + kw from p in xp, so a vector of consecutive p is one
   unaligned load per tap. Columns j >= OW are discarded. Register tile: DLF_DC_FB output channels
   x 2 vectors of p; the taps run in the order c, kh, kw for every output (fixed: results do not
   depend on the thread count, which only assigns whole images to threads).

   W is packed first (dlf_dconv_pack*): wp[fb][c][kh][kw][j] = W[fb*FB + j, c, kh, kw] (0 past F),
   or, for dx (the transposed convolution), from W (F, C, KH, KW) with the roles of F and C swapped
   and the kernel flipped: wp'[cb][f][kh][kw][j] = W[f, cb*FB + j, KH-1-kh, KW-1-kw].

   Multiply-adds may be fused (FMA) in the clones that have it: bits can differ between CPUs,
   never between runs or thread counts on one CPU. */
#ifndef DLFAST_DCONV_H
#define DLFAST_DCONV_H
#include <string.h>
#include "dlfast_clones.h"

#define DLF_DC_FB 6

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#endif

#define DLF_DCONV(SFX, T, VL)                                                                 \
typedef T dlf_dcv_##SFX __attribute__((vector_size((VL) * sizeof(T))));                       \
typedef T dlf_dcvu_##SFX __attribute__((vector_size((VL) * sizeof(T)), aligned(sizeof(T))));  \
                                                                                              \
/* T elements of the padded-image scratch: C planes of Hp*Wp and slack for the last tile */     \
static inline Py_ssize_t dlf_dconv_xp_size_##SFX(Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp,  \
                                                 Py_ssize_t KW) {                             \
    return C * Hp * Wp + KW + 2 * (VL) + 8;                                                   \
}                                                                                             \
                                                                                              \
static void dlf_dconv_pack_##SFX(const T* W, T* wp, Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH, \
                                 Py_ssize_t KW, int transposed) {                             \
    Py_ssize_t O = transposed ? C : F, I = transposed ? F : C, nb = (O + DLF_DC_FB - 1) / DLF_DC_FB; \
    Py_ssize_t ob, i, kh, kw, j;                                                              \
    for (ob = 0; ob < nb; ob++)                                                               \
        for (i = 0; i < I; i++)                                                               \
            for (kh = 0; kh < KH; kh++)                                                       \
                for (kw = 0; kw < KW; kw++)                                                   \
                    for (j = 0; j < DLF_DC_FB; j++) {                                         \
                        Py_ssize_t o = ob * DLF_DC_FB + j;                                    \
                        *wp++ = o >= O ? (T)0 : transposed                                    \
                            ? W[((i * C + o) * KH + (KH - 1 - kh)) * KW + (KW - 1 - kw)]      \
                            : W[((o * C + i) * KH + kh) * KW + kw];                           \
                    }                                                                         \
}                                                                                             \
                                                                                              \
static inline __attribute__((always_inline)) void dlf_dconv_tiles_##SFX(                      \
        const T* xp, const T* wp, T* e, Py_ssize_t C, Py_ssize_t HWp, Py_ssize_t Wp,          \
        Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t P) {                            \
    Py_ssize_t nfb = (F + DLF_DC_FB - 1) / DLF_DC_FB, fb, p, c, kh, kw;                       \
    int j;                                                                                    \
    for (fb = 0; fb < nfb; fb++) {                                                            \
        const T* wb = wp + fb * C * KH * KW * DLF_DC_FB;                                      \
        for (p = 0; p < P; p += 2 * (VL)) {                                                   \
            dlf_dcv_##SFX a0[DLF_DC_FB], a1[DLF_DC_FB];                                       \
            const T* wk = wb;                                                                 \
            for (j = 0; j < DLF_DC_FB; j++) { a0[j] = (dlf_dcv_##SFX){0}; a1[j] = a0[j]; }    \
            for (c = 0; c < C; c++)                                                           \
                for (kh = 0; kh < KH; kh++) {                                                 \
                    const T* xr = xp + c * HWp + kh * Wp + p;                                 \
                    _Pragma("GCC unroll 4")                                                   \
                    for (kw = 0; kw < KW; kw++, wk += DLF_DC_FB) {                            \
                        dlf_dcv_##SFX x0 = *(const dlf_dcvu_##SFX*)(xr + kw);                 \
                        dlf_dcv_##SFX x1 = *(const dlf_dcvu_##SFX*)(xr + kw + (VL));          \
                        for (j = 0; j < DLF_DC_FB; j++) {   /* wk[j]: broadcast */         \
                            a0[j] += x0 * wk[j];                                              \
                            a1[j] += x1 * wk[j];                                              \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
            for (j = 0; j < DLF_DC_FB && fb * DLF_DC_FB + j < F; j++) {                       \
                T tmp[2 * (VL)];                                                              \
                Py_ssize_t n = P - p < 2 * (VL) ? P - p : 2 * (VL);                           \
                memcpy(tmp, &a0[j], sizeof(a0[j]));                                           \
                memcpy(tmp + (VL), &a1[j], sizeof(a1[j]));                                    \
                memcpy(e + (fb * DLF_DC_FB + j) * P + p, tmp, n * sizeof(T));                 \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
                                                                                              \
DLF_CLONES static void dlf_dconv_run_##SFX(const T* xp, const T* wp, T* e, Py_ssize_t C,      \
                                           Py_ssize_t HWp, Py_ssize_t Wp, Py_ssize_t F,       \
                                           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t P) {      \
    if (KW == 3)        /* the common 3x3: the tap loop unrolled */                           \
        dlf_dconv_tiles_##SFX(xp, wp, e, C, HWp, Wp, F, KH, 3, P);                            \
    else                                                                                      \
        dlf_dconv_tiles_##SFX(xp, wp, e, C, HWp, Wp, F, KH, KW, P);                           \
}                                                                                             \
                                                                                              \
/* out (F, OH, OW) of one image x (C, H, W), stride 1; xp, e: scratch of                      \
   dlf_dconv_xp_size and F*OH*Wp elements; b (F,) or NULL */                                  \
static void dlf_dconv_one_##SFX(const T* x, const T* wp, const T* b, T* out, T* xp, T* e,     \
                                Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,       \
                                Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t ph, Py_ssize_t pw) { \
    Py_ssize_t Hp = H + 2 * ph, Wp = W + 2 * pw, OH = Hp - KH + 1, OW = Wp - KW + 1;          \
    Py_ssize_t c, i, j, f, P = OH * Wp;                                                       \
    memset(xp, 0, dlf_dconv_xp_size_##SFX(C, Hp, Wp, KW) * sizeof(T));                       \
    for (c = 0; c < C; c++)                                                                   \
        for (i = 0; i < H; i++)                                                               \
            memcpy(xp + (c * Hp + i + ph) * Wp + pw, x + (c * H + i) * W, W * sizeof(T));     \
    dlf_dconv_run_##SFX(xp, wp, e, C, Hp * Wp, Wp, F, KH, KW, P);                             \
    for (f = 0; f < F; f++)                                                                   \
        for (i = 0; i < OH; i++) {                                                            \
            const T* er = e + f * P + i * Wp;                                                 \
            T* o = out + (f * OH + i) * OW;                                                   \
            if (b)                                                                            \
                for (j = 0; j < OW; j++) o[j] = er[j] + b[f];                                 \
            else                                                                              \
                memcpy(o, er, OW * sizeof(T));                                                \
        }                                                                                     \
}

DLF_DCONV(f, float, 8)
DLF_DCONV(d, double, 4)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#endif
