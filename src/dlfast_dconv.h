/* Direct convolution at stride 1 (no im2col): _conv's forward, dx of its backward (a transposed
   convolution is a convolution of dout with the kernel flipped and F, C swapped), and dW.

   One image:   out[f, i, j] = (sum_{c, kh, kw} W[f, c, kh, kw] xp[c, i + kh, j + kw]) + b[f]
   with xp = x zero-padded by (ph, pw). The padded image xp (C, Hp rows of stride Wp) sits in a
   scratch buffer; Wp = dlf_dconv_stride(W, pw, KW): W + pw where a row's right padding can serve as
   the next row's left padding, so only pw junk columns per row. Outputs are computed over the
   "extended" grid p = i*Wp + j, j in [0, Wp): then the taps of every
   output are the same offset kh*Wp + kw from p in xp, so a vector of consecutive p is one
   unaligned load per tap. Columns j >= OW are discarded. Register tile: DLF_DC_FB output channels
   (the last block: its F mod DLF_DC_FB channels only) x 2 vectors of p; the taps run in the
   order c, kh, kw for every output (fixed: results do not depend on the thread count, which only
   assigns whole images to threads).

   W is packed first (dlf_dconv_pack*, blocks of FB = DLF_DC_FB): wp[fb][c][kh][kw][j] =
   W[fb*FB + j, c, kh, kw] (0 past F), or, for dx (the transposed convolution), from W
   (F, C, KH, KW) with the roles of F and C swapped and the kernel flipped:
   wp'[cb][f][kh][kw][j] = W[f, cb*FB + j, KH-1-kh, KW-1-kw].

   Multiply-adds may be fused (FMA) in the clones that have it: bits can differ between CPUs,
   never between runs or thread counts on one CPU. */
#ifndef DLFAST_DCONV_H
#define DLFAST_DCONV_H
#include <string.h>
#include "dlfast_clones.h"
#include "dlfast_cache.h"

#define DLF_DC_FB 6

/* CALL(k, ...) with k = n as a compile-time constant, for n = 1..5, else k = MAX (a tile of MAX
   = 6 rows): each tile size gets its own unrolled loops. */
#define DLF_BY_COUNT6(n, MAX, CALL, ...) do {                                                 \
    switch (n) {                                                                              \
        case 1: CALL(1, __VA_ARGS__); break;                                                  \
        case 2: CALL(2, __VA_ARGS__); break;                                                  \
        case 3: CALL(3, __VA_ARGS__); break;                                                  \
        case 4: CALL(4, __VA_ARGS__); break;                                                  \
        case 5: CALL(5, __VA_ARGS__); break;                                                  \
        default: CALL(MAX, __VA_ARGS__);                                                      \
    }                                                                                         \
} while (0)

/* Row stride of a padded image: W + pw when pw <= KW - 1 (then OW = W + 2pw - KW + 1 <= W + pw,
   and the taps past a row's end read the next row's left padding: zeros), else W + 2pw. */
static inline Py_ssize_t dlf_dconv_stride(Py_ssize_t W, Py_ssize_t pw, Py_ssize_t KW) {
    return pw <= KW - 1 ? W + pw : W + 2 * pw;
}

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
/* P rounded up to the vector width: the row length of dlf_dconv_dw's extended dout */       \
static inline Py_ssize_t dlf_dconv_rows_##SFX(Py_ssize_t P) {                                 \
    return (P + (VL) - 1) / (VL) * (VL);                                                      \
}                                                                                             \
                                                                                              \
/* wp[ob][i][kh][kw][j], j < B: W[ob*B + j, i, kh, kw] (0 past F); transposed (dx): F and C   \
   swapped and the kernel flipped. B = DLF_DC_FB for dlf_dconv_one, 2*VL for dlf_dcv_one. */  \
static void dlf_dconv_pack_##SFX(const T* W, T* wp, Py_ssize_t F, Py_ssize_t C, Py_ssize_t KH, \
                                 Py_ssize_t KW, int transposed, Py_ssize_t B) {               \
    Py_ssize_t O = transposed ? C : F, I = transposed ? F : C, nb = (O + B - 1) / B;          \
    Py_ssize_t ob, i, kh, kw, j;                                                              \
    for (ob = 0; ob < nb; ob++)                                                               \
        for (i = 0; i < I; i++)                                                               \
            for (kh = 0; kh < KH; kh++)                                                       \
                for (kw = 0; kw < KW; kw++)                                                   \
                    for (j = 0; j < B; j++) {                                                 \
                        Py_ssize_t o = ob * B + j;                                            \
                        *wp++ = o >= O ? (T)0 : transposed                                    \
                            ? W[((i * C + o) * KH + (KH - 1 - kh)) * KW + (KW - 1 - kw)]      \
                            : W[((o * C + i) * KH + kh) * KW + kw];                           \
                    }                                                                         \
}                                                                                             \
                                                                                              \
/* Channels [f0, f0 + FBN) (FBN <= DLF_DC_FB, a compile-time constant at every call) from the  \
   packed block wb: FBN x 2 vectors of p per register tile. */                                 \
static inline __attribute__((always_inline)) void dlf_dconv_block_##SFX(                      \
        const int FBN, const T* xp, const T* wb, T* e, Py_ssize_t C, Py_ssize_t HWp,          \
        Py_ssize_t Wp, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t P, Py_ssize_t f0) {            \
    Py_ssize_t p, c, kh, kw;                                                                  \
    int j;                                                                                    \
    for (p = 0; p < P; p += 2 * (VL)) {                                                       \
        dlf_dcv_##SFX a0[DLF_DC_FB], a1[DLF_DC_FB];                                           \
        const T* wk = wb;                                                                     \
        for (j = 0; j < FBN; j++) { a0[j] = (dlf_dcv_##SFX){0}; a1[j] = a0[j]; }              \
        for (c = 0; c < C; c++)                                                               \
            for (kh = 0; kh < KH; kh++) {                                                     \
                const T* xr = xp + c * HWp + kh * Wp + p;                                     \
                _Pragma("GCC unroll 4")                                                       \
                for (kw = 0; kw < KW; kw++, wk += DLF_DC_FB) {                                \
                    dlf_dcv_##SFX x0 = *(const dlf_dcvu_##SFX*)(xr + kw);                     \
                    dlf_dcv_##SFX x1 = *(const dlf_dcvu_##SFX*)(xr + kw + (VL));              \
                    for (j = 0; j < FBN; j++) {   /* wk[j]: broadcast */                     \
                        a0[j] += x0 * wk[j];                                                  \
                        a1[j] += x1 * wk[j];                                                  \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        if (P - p >= 2 * (VL))              /* whole vectors: stored as they are */           \
            for (j = 0; j < FBN; j++) {                                                       \
                *(dlf_dcvu_##SFX*)(e + (f0 + j) * P + p) = a0[j];                             \
                *(dlf_dcvu_##SFX*)(e + (f0 + j) * P + p + (VL)) = a1[j];                      \
            }                                                                                 \
        else                                /* the last, partial pair of vectors */           \
            for (j = 0; j < FBN; j++) {                                                       \
                T tmp[2 * (VL)];                                                              \
                memcpy(tmp, &a0[j], sizeof(a0[j]));                                           \
                memcpy(tmp + (VL), &a1[j], sizeof(a1[j]));                                    \
                memcpy(e + (f0 + j) * P + p, tmp, (P - p) * sizeof(T));                       \
            }                                                                                 \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* Every channel block; the last, partial one with a tile of just its channels */            \
static inline __attribute__((always_inline)) void dlf_dconv_tiles_##SFX(                      \
        const T* xp, const T* wp, T* e, Py_ssize_t C, Py_ssize_t HWp, Py_ssize_t Wp,          \
        Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t P) {                            \
    Py_ssize_t fb, f0;                                                                        \
    for (fb = 0; fb * DLF_DC_FB < F; fb++) {                                                  \
        const T* wb = wp + fb * C * KH * KW * DLF_DC_FB;                                      \
        f0 = fb * DLF_DC_FB;                                                                  \
        DLF_BY_COUNT6(F - f0 < DLF_DC_FB ? (int)(F - f0) : DLF_DC_FB, DLF_DC_FB,                \
                      dlf_dconv_block_##SFX, xp, wb, e, C, HWp, Wp, KH, KW, P, f0);           \
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
/* xp = x (C, H, W) zero-padded by (ph, pw) in rows of dlf_dconv_stride, the slack zeroed */  \
static void dlf_dconv_pad_##SFX(const T* x, T* xp, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,  \
                                Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t KW) {                \
    Py_ssize_t Hp = H + 2 * ph, Wp = dlf_dconv_stride(W, pw, KW), c, i;                       \
    memset(xp, 0, dlf_dconv_xp_size_##SFX(C, Hp, Wp, KW) * sizeof(T));                       \
    for (c = 0; c < C; c++)                                                                   \
        for (i = 0; i < H; i++)                                                               \
            memcpy(xp + (c * Hp + i + ph) * Wp + pw, x + (c * H + i) * W, W * sizeof(T));     \
}                                                                                             \
                                                                                              \
/* e (F, Pr) = dout (F, OH, OW) on the extended grid (rows of Wp), zeros elsewhere */         \
static void dlf_dconv_ext_##SFX(const T* d, T* e, Py_ssize_t F, Py_ssize_t OH, Py_ssize_t OW, \
                                Py_ssize_t Wp, Py_ssize_t Pr) {                               \
    Py_ssize_t f, i;                                                                          \
    memset(e, 0, F * Pr * sizeof(T));                                                         \
    for (f = 0; f < F; f++)                                                                   \
        for (i = 0; i < OH; i++)                                                              \
            memcpy(e + f * Pr + i * Wp, d + (f * OH + i) * OW, OW * sizeof(T));               \
}                                                                                             \
                                                                                              \
/* out (F, OH, OW) of one image x (C, H, W), stride 1; xp, e: scratch of                      \
   dlf_dconv_xp_size and F*OH*Wp elements; b (F,) or NULL */                                  \
DLF_CLONES static void dlf_dconv_one_##SFX(const T* x, const T* wp, const T* b, T* out,       \
                                           T* xp, T* e, Py_ssize_t C, Py_ssize_t H,           \
                                           Py_ssize_t W, Py_ssize_t F, Py_ssize_t KH,         \
                                           Py_ssize_t KW, Py_ssize_t ph, Py_ssize_t pw) {     \
    Py_ssize_t Hp = H + 2 * ph, Wp = dlf_dconv_stride(W, pw, KW), OH = Hp - KH + 1;           \
    Py_ssize_t OW = W + 2 * pw - KW + 1;                                                      \
    Py_ssize_t i, j, f, P = OH * Wp;                                                          \
    dlf_dconv_pad_##SFX(x, xp, C, H, W, ph, pw, KW);                                          \
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

/* The same convolution with the vectors over output channels instead of positions, for maps
   whose rows fill the position vectors badly (a 7x7 map: 64 extended positions computed for 49
   kept). Register tile: 2 vectors of output channels (2*VL of them) x DLF_CV_PB kept positions.
   The input channels run in chunks whose packed weights fit half of the L1 data cache
   (dlf_dcv_chunk); a tile's sums wait in `part` (OHW x 2VL) between chunks, so every output's
   taps still run in the order c, kh, kw, one multiply-add after the other, as in
   dlf_dconv_block: the same bits. W is packed by dlf_dconv_pack in blocks of 2*VL:
   wq[ob][c][kh][kw][j] = W[ob*2VL + j, c, kh, kw] (0 past F), or flipped and transposed for dx. */
#define DLF_CV_PB 6
_Static_assert(DLF_DC_FB == 6 && DLF_CV_PB == 6, "DLF_BY_COUNT6 covers tiles of 1 to 6");

/* Input channels per chunk: packed weights of `per` bytes each in half of L1, at least 1 */
static inline Py_ssize_t dlf_dcv_chunk(Py_ssize_t per) {
    Py_ssize_t c = (Py_ssize_t)(dlf_cache_bytes(1, 32 * 1024) / 2) / (per > 0 ? per : 1);
    return c < 1 ? 1 : c;
}

#define DLF_DCONV_CV(SFX, T, VL)                                                              \
/* PN (<= DLF_CV_PB, a compile-time constant at every call) positions at xp + off[i] over the  \
   input channels [0, C) of xp and the packed block wb: part[i][j] (2*VL per position) = the   \
   sum of output j at position i, continued from part[i][j] unless `first` */                 \
static inline __attribute__((always_inline)) void dlf_dcv_tile_##SFX(                         \
        const int PN, const T* xp, const Py_ssize_t* off, const T* wb, T* part, int first,    \
        Py_ssize_t C, Py_ssize_t HWp, Py_ssize_t Wp, Py_ssize_t KH, Py_ssize_t KW) {          \
    dlf_dcv_##SFX a0[DLF_CV_PB], a1[DLF_CV_PB];                                               \
    const T* xr[DLF_CV_PB];                                                                   \
    const T* wk = wb;                                                                         \
    Py_ssize_t c, kh, kw;                                                                     \
    int i;                                                                                    \
    for (i = 0; i < PN; i++) {                                                                \
        a0[i] = first ? (dlf_dcv_##SFX){0} : *(const dlf_dcvu_##SFX*)(part + i * 2 * (VL));  \
        a1[i] = first ? (dlf_dcv_##SFX){0}                                                    \
                      : *(const dlf_dcvu_##SFX*)(part + i * 2 * (VL) + (VL));                 \
        xr[i] = xp + off[i];                                                                  \
    }                                                                                         \
    for (c = 0; c < C; c++)                                                                   \
        for (kh = 0; kh < KH; kh++) {                                                         \
            Py_ssize_t o = c * HWp + kh * Wp;                                                 \
            _Pragma("GCC unroll 4")                                                           \
            for (kw = 0; kw < KW; kw++, wk += 2 * (VL)) {                                     \
                dlf_dcv_##SFX w0 = *(const dlf_dcvu_##SFX*)wk;                                \
                dlf_dcv_##SFX w1 = *(const dlf_dcvu_##SFX*)(wk + (VL));                       \
                for (i = 0; i < PN; i++) {     /* xr[i][o + kw]: broadcast */                \
                    T xv = xr[i][o + kw];                                                     \
                    a0[i] += w0 * xv;                                                         \
                    a1[i] += w1 * xv;                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    for (i = 0; i < PN; i++) {                                                                \
        *(dlf_dcvu_##SFX*)(part + i * 2 * (VL)) = a0[i];                                      \
        *(dlf_dcvu_##SFX*)(part + i * 2 * (VL) + (VL)) = a1[i];                               \
    }                                                                                         \
}                                                                                             \
                                                                                              \
static inline __attribute__((always_inline)) void dlf_dcv_tiles_##SFX(                        \
        const T* xp, const T* wq, const T* b, T* out, T* part, Py_ssize_t C, Py_ssize_t HWp,  \
        Py_ssize_t Wp, Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH,             \
        Py_ssize_t OW) {                                                                      \
    Py_ssize_t ob, p0, c0, nc, f, p, OHW = OH * OW, off[DLF_CV_PB];                           \
    Py_ssize_t cb = dlf_dcv_chunk(KH * KW * 2 * (VL) * (Py_ssize_t)sizeof(T));                \
    cb = (C + (C + cb - 1) / cb - 1) / ((C + cb - 1) / cb);   /* chunks of equal size */      \
    for (ob = 0; ob * 2 * (VL) < F; ob++) {                                                   \
        Py_ssize_t f0 = ob * 2 * (VL), nf = F - f0 < 2 * (VL) ? F - f0 : 2 * (VL);           \
        for (c0 = 0; c0 < C; c0 += cb) {                                                      \
            const T* wb = wq + (ob * C + c0) * KH * KW * 2 * (VL);                            \
            const T* xc = xp + c0 * HWp;                                                      \
            Py_ssize_t r = 0, q = 0;        /* row and column of position p0 */               \
            nc = C - c0 < cb ? C - c0 : cb;                                                   \
            for (p0 = 0; p0 < OHW; p0 += DLF_CV_PB) {                                         \
                int pn = OHW - p0 < DLF_CV_PB ? (int)(OHW - p0) : DLF_CV_PB, i;               \
                T* pt = part + p0 * 2 * (VL);                                                 \
                for (i = 0; i < pn; i++) {                                                    \
                    off[i] = r * Wp + q;                                                      \
                    if (++q == OW) { q = 0; r++; }                                            \
                }                                                                             \
                DLF_BY_COUNT6(pn, DLF_CV_PB, dlf_dcv_tile_##SFX, xc, off, wb, pt, c0 == 0, nc, \
                              HWp, Wp, KH, KW);                                               \
            }                                                                                 \
        }                                                                                     \
        for (f = 0; f < nf; f++) {          /* part (OHW, 2VL) -> out (F, OHW) */            \
            T* o = out + (f0 + f) * OHW;                                                      \
            if (b)                                                                            \
                for (p = 0; p < OHW; p++) o[p] = part[p * 2 * (VL) + f] + b[f0 + f];          \
            else                                                                              \
                for (p = 0; p < OHW; p++) o[p] = part[p * 2 * (VL) + f];                      \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* T elements of dlf_dcv_one's scratch: the padded image (dlf_dconv_xp_size) and `part` */    \
static inline Py_ssize_t dlf_dcv_scratch_##SFX(Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp,    \
                                               Py_ssize_t KW, Py_ssize_t OHW) {               \
    return (dlf_dconv_xp_size_##SFX(C, Hp, Wp, KW) + 15) / 16 * 16 + OHW * 2 * (VL);         \
}                                                                                             \
                                                                                              \
/* out (F, OH, OW) of one image x (C, H, W), stride 1, as dlf_dconv_one; t: scratch of         \
   dlf_dcv_scratch elements; b (F,) or NULL */                                                \
DLF_CLONES static void dlf_dcv_one_##SFX(const T* x, const T* wq, const T* b, T* out, T* t,   \
                                         Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,            \
                                         Py_ssize_t F, Py_ssize_t KH, Py_ssize_t KW,          \
                                         Py_ssize_t ph, Py_ssize_t pw) {                      \
    Py_ssize_t Hp = H + 2 * ph, Wp = dlf_dconv_stride(W, pw, KW), OH = Hp - KH + 1;           \
    Py_ssize_t OW = W + 2 * pw - KW + 1;                                                      \
    T* part = t + (dlf_dconv_xp_size_##SFX(C, Hp, Wp, KW) + 15) / 16 * 16;                    \
    dlf_dconv_pad_##SFX(x, t, C, H, W, ph, pw, KW);                                           \
    if (KW == 3)        /* the common 3x3: the tap loop unrolled */                           \
        dlf_dcv_tiles_##SFX(t, wq, b, out, part, C, Hp * Wp, Wp, F, KH, 3, OH, OW);           \
    else                                                                                      \
        dlf_dcv_tiles_##SFX(t, wq, b, out, part, C, Hp * Wp, Wp, F, KH, KW, OH, OW);          \
}

DLF_DCONV_CV(f, float, 8)
DLF_DCONV_CV(d, double, 4)

/* dW of a stride-1 convolution, directly, over a chunk of the batch's images at a time (the
   caller pads and transposes one chunk, runs every item on it, then the next chunk: the chunk
   stays in L2). Per image n of the chunk: xp_n, the padded image (as above, at xp + n*xs), and
   e_n, dout_n on the extended grid with zero columns j >= OW, rows of Pr (P rounded up to the
   vector width, zero-filled) at e + n*es. One call: the chunk's N images, for the channels
   [f0, f0 + DLF_DW_FB) of F at input channel c:
       dW[f, c, kh, kw] = sum_n sum_p e_n[f, p] xp_n[c, p + kh*Wp + kw]
   in vector lanes (n, then p, in order), each lane sum added pairwise ((0+1)+(2+3))+((4+5)+(6+7)).
   The lanes wait in acc (dlf_dconv_dw_acc vectors, 32-byte aligned) between chunks: `first`
   starts them at 0, `last` writes dW. A chunk's size changes no sum.
   A non-finite x can make a junk term 0 * inf: the caller checks dW and redoes it otherwise. */
/* The multiply-add tile of both dW loops: a[i][j] += A_i[p] * B_j[p] for i < 4, j < 3, over
   p in [0, n) by vectors (n a multiple of VL); rows may repeat (a partial tile). */
#define DLF_TILE43(SFX, T, VL)                                                                \
static inline __attribute__((always_inline)) void dlf_tile43_##SFX(                          \
        dlf_dcv_##SFX a[4][3], const T* const ar[4], const T* const br[3], Py_ssize_t n) {    \
    Py_ssize_t p;                                                                             \
    int i;                                                                                    \
    for (p = 0; p < n; p += (VL)) {                                                           \
        dlf_dcv_##SFX b0 = *(const dlf_dcvu_##SFX*)(br[0] + p);                               \
        dlf_dcv_##SFX b1 = *(const dlf_dcvu_##SFX*)(br[1] + p);                               \
        dlf_dcv_##SFX b2 = *(const dlf_dcvu_##SFX*)(br[2] + p);                               \
        for (i = 0; i < 4; i++) {                                                             \
            dlf_dcv_##SFX av = *(const dlf_dcvu_##SFX*)(ar[i] + p);                           \
            a[i][0] += av * b0;                                                               \
            a[i][1] += av * b1;                                                               \
            a[i][2] += av * b2;                                                               \
        }                                                                                     \
    }                                                                                         \
}
DLF_TILE43(f, float, 8)
DLF_TILE43(d, double, 4)

/* Images per group of dlf_dconv_dw: as many as fit half the L1 data cache (32 KB if
   unknown) at `bytes` each (an input plane and the dout rows of one item), at least 1. It
   orders the loops only: every sum keeps its order (images, then positions). */
static Py_ssize_t dlf_dw_group(Py_ssize_t bytes) {
    Py_ssize_t g = (Py_ssize_t)(dlf_cache_bytes(1, 32 * 1024) / 2) / (bytes > 0 ? bytes : 1);
    return g < 1 ? 1 : g;
}

#define DLF_DW_FB 4        /* the 4 rows of dlf_tile43 */
#define DLF_DW_PAIRS 8     /* (kernel row, 3 columns) pairs per pass over a group of images */
#define DLF_DCONV_DW(SFX, T, VL)                                                              \
static inline T dlf_dw_hsum_##SFX(dlf_dcv_##SFX v) {                                          \
    T l[VL]; int h;                                                                           \
    memcpy(l, &v, sizeof(v));                                                                 \
    for (h = VL / 2; h >= 1; h /= 2) {        /* pairs of lanes, then pairs of pairs */      \
        int i;                                                                                \
        for (i = 0; i < h; i++) l[i] = l[2 * i] + l[2 * i + 1];                               \
    }                                                                                         \
    return l[0];                                                                              \
}                                                                                             \
DLF_CLONES static void dlf_dconv_dw_##SFX(const T* xp, Py_ssize_t xs, const T* e,             \
                                          Py_ssize_t es, T* dW, Py_ssize_t N, Py_ssize_t C,   \
                                          Py_ssize_t c, Py_ssize_t HWp, Py_ssize_t Wp,        \
                                          Py_ssize_t F, Py_ssize_t f0, Py_ssize_t KH,         \
                                          Py_ssize_t KW, Py_ssize_t Pr, void* accv, int first, \
                                          int last) {                                         \
    /* per group of images that fits L1 (dlf_dw_group) and up to DLF_DW_PAIRS (kernel row,     \
       block of 3 columns) pairs, each pair's accumulators stay in registers over the group */ \
    dlf_dcv_##SFX* acc = (dlf_dcv_##SFX*)accv;                                                \
    Py_ssize_t nkb = (KW + 2) / 3, t0, t1, t, n, q;                                           \
    Py_ssize_t nf = F - f0 < DLF_DW_FB ? F - f0 : DLF_DW_FB;                                  \
    int j, k;                                                                                 \
    Py_ssize_t G = dlf_dw_group((HWp + DLF_DW_FB * Pr) * (Py_ssize_t)sizeof(T)), n0, n1;     \
    if (first)                                                                                \
        for (q = 0; q < KH * nkb * DLF_DW_FB * 3; q++) acc[q] = (dlf_dcv_##SFX){0};           \
    for (t0 = 0; t0 < KH * nkb; t0 += DLF_DW_PAIRS) {                                         \
        t1 = t0 + DLF_DW_PAIRS < KH * nkb ? t0 + DLF_DW_PAIRS : KH * nkb;                     \
        for (n0 = 0; n0 < N; n0 += G) {     /* G images' rows stay in L1 over the pairs */    \
            n1 = n0 + G < N ? n0 + G : N;                                                     \
            for (t = t0; t < t1; t++) {                                                       \
                dlf_dcv_##SFX* A = acc + t * DLF_DW_FB * 3;                                   \
                const T* xt = xp + c * HWp + (t / nkb) * Wp + (t % nkb) * 3;  /* image 0 */   \
                dlf_dcv_##SFX a[DLF_DW_FB][3];                                                \
                for (j = 0; j < DLF_DW_FB; j++)                                               \
                    for (k = 0; k < 3; k++) a[j][k] = A[j * 3 + k];                           \
                for (n = n0; n < n1; n++) {                                                   \
                    const T* er = e + n * es + f0 * Pr;                                       \
                    const T* xr = xt + n * xs;                                                \
                    const T* br[3] = {xr, xr + 1, xr + 2};                                    \
                    const T* ar[DLF_DW_FB];                                                   \
                    for (j = 0; j < DLF_DW_FB; j++) ar[j] = er + (j < nf ? j : 0) * Pr;       \
                    dlf_tile43_##SFX(a, ar, br, Pr);                                          \
                }                                                                             \
                for (j = 0; j < DLF_DW_FB; j++)                                               \
                    for (k = 0; k < 3; k++) A[j * 3 + k] = a[j][k];                           \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    if (!last)                                                                                \
        return;                                                                               \
    for (t = 0; t < KH * nkb; t++) {                                                          \
        Py_ssize_t kh = t / nkb, kw0 = (t % nkb) * 3;                                         \
        int nk = KW - kw0 < 3 ? (int)(KW - kw0) : 3;                                          \
        dlf_dcv_##SFX* A = acc + t * DLF_DW_FB * 3;                                           \
        for (j = 0; j < nf; j++)                                                              \
            for (k = 0; k < nk; k++)                                                          \
                dW[(((f0 + j) * C + c) * KH + kh) * KW + kw0 + k] =                           \
                    dlf_dw_hsum_##SFX(A[j * 3 + k]);                                          \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* Bytes of one dlf_dconv_dw item's accumulators */                                          \
static inline Py_ssize_t dlf_dconv_dw_acc_##SFX(Py_ssize_t KH, Py_ssize_t KW) {               \
    return KH * ((KW + 2) / 3) * DLF_DW_FB * 3 * (Py_ssize_t)sizeof(dlf_dcv_##SFX);           \
}

DLF_DCONV_DW(f, float, 8)
DLF_DCONV_DW(d, double, 4)

/* dW with the vectors over output channels (for the maps where dlf_dconv_dw's extended rows
   waste lanes), over the kept positions only. Per image n: xp_n as above (at xp + n*xs) and
   dT_n = dout_n transposed, (OHW, FP) with FP = F rounded up to 2*VL, zeros past F (at
   dT + n*ds; dlf_dcv_dT). One call: a chunk's N images (as dlf_dconv_dw), output channels
   [f0, f0 + 2VL) x the taps [t0, t0 + TN) (TN <= DLF_CV_PB) of K = C*KH*KW, tap t = (c, kh, kw)
   at offset toff = c*HWp + kh*Wp + kw:
       dW[f, t] = sum_n sum_{p < OHW} dT_n[p, f] xp_n[toff + (p / OW)*Wp + p % OW]
   one multiply-add after the other (n, then p, in order): no result depends on the threads or
   the chunks. The sums wait in acc (dlf_dcv_dw_acc elements) between chunks: `first` starts
   them at 0, `last` writes dW. */
#define DLF_CV_TC 16       /* tiles of taps per dlf_dcv_dw item */
#define DLF_DCV_DW(SFX, T, VL)                                                                \
static void dlf_dcv_dT_##SFX(const T* d, T* dT, Py_ssize_t F, Py_ssize_t OHW, Py_ssize_t FP) {  \
    Py_ssize_t f, p0, i;                                                                      \
    for (p0 = 0; p0 < OHW; p0 += 8) {       /* 8 rows of dT at a time: reads along d's rows */ \
        Py_ssize_t pn = OHW - p0 < 8 ? OHW - p0 : 8;                                          \
        T* o = dT + p0 * FP;                                                                  \
        if (pn == 8)                                                                          \
            for (f = 0; f < F; f++)                                                           \
                for (i = 0; i < 8; i++) o[i * FP + f] = d[f * OHW + p0 + i];                  \
        else                                                                                  \
            for (f = 0; f < F; f++)                                                           \
                for (i = 0; i < pn; i++) o[i * FP + f] = d[f * OHW + p0 + i];                 \
        for (i = 0; i < pn; i++)                                                              \
            for (f = F; f < FP; f++) o[i * FP + f] = 0;                                       \
    }                                                                                         \
}                                                                                             \
                                                                                              \
static inline __attribute__((always_inline)) void dlf_dcv_dw_tile_##SFX(                      \
        const int TN, const T* xp, Py_ssize_t xs, const T* dT, Py_ssize_t ds, Py_ssize_t FP,  \
        const Py_ssize_t* toff, T* acc, int first, Py_ssize_t n0, Py_ssize_t n1,              \
        Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Wp) {                                        \
    dlf_dcv_##SFX a0[DLF_CV_PB], a1[DLF_CV_PB];                                               \
    Py_ssize_t n, r, q;                                                                       \
    int j;                                                                                    \
    for (j = 0; j < TN; j++) {                                                                \
        a0[j] = first ? (dlf_dcv_##SFX){0} : *(const dlf_dcvu_##SFX*)(acc + j * 2 * (VL));   \
        a1[j] = first ? (dlf_dcv_##SFX){0}                                                    \
                      : *(const dlf_dcvu_##SFX*)(acc + j * 2 * (VL) + (VL));                  \
    }                                                                                         \
    for (n = n0; n < n1; n++) {                                                               \
        const T* d = dT + n * ds;                                                             \
        for (r = 0; r < OH; r++) {                                                            \
            const T* xr[DLF_CV_PB];                                                           \
            for (j = 0; j < TN; j++) xr[j] = xp + n * xs + toff[j] + r * Wp;                  \
            for (q = 0; q < OW; q++, d += FP) {                                               \
                dlf_dcv_##SFX w0 = *(const dlf_dcvu_##SFX*)d;                                 \
                dlf_dcv_##SFX w1 = *(const dlf_dcvu_##SFX*)(d + (VL));                        \
                for (j = 0; j < TN; j++) {     /* xr[j][q]: broadcast */                     \
                    T xv = xr[j][q];                                                          \
                    a0[j] += w0 * xv;                                                         \
                    a1[j] += w1 * xv;                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    for (j = 0; j < TN; j++) {                                                                \
        *(dlf_dcvu_##SFX*)(acc + j * 2 * (VL)) = a0[j];                                       \
        *(dlf_dcvu_##SFX*)(acc + j * 2 * (VL) + (VL)) = a1[j];                                \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* One work item: channels [f0, f0 + 2VL) x the tiles [tb, tb + ntl) (ntl <= DLF_CV_TC) of     \
   DLF_CV_PB taps;                                                                            \
   the chunk's images in groups whose rows fit L1 (dlf_dw_group), each tile's sums waiting in  \
   acc between groups and chunks (the order of every sum unchanged) */                        \
DLF_CLONES static void dlf_dcv_dw_##SFX(const T* xp, Py_ssize_t xs, const T* dT, Py_ssize_t ds, \
                                        Py_ssize_t FP, T* dW, Py_ssize_t N, Py_ssize_t F,     \
                                        Py_ssize_t K, Py_ssize_t KH, Py_ssize_t KW,           \
                                        Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t HWp,         \
                                        Py_ssize_t Wp, Py_ssize_t f0, Py_ssize_t tb,          \
                                        Py_ssize_t ntl, T* acc, int first, int last) {        \
    Py_ssize_t toffs[DLF_CV_TC * DLF_CV_PB], nf = F - f0 < 2 * (VL) ? F - f0 : 2 * (VL), f, t, n0, n1; \
    Py_ssize_t nt = (K + DLF_CV_PB - 1) / DLF_CV_PB - tb, G;                                  \
    int j;                                                                                    \
    if (nt > ntl) nt = ntl;                                                                   \
    if (nt > DLF_CV_TC) nt = DLF_CV_TC;                                                       \
    /* per image: its dT rows and the input planes the taps reach */                          \
    G = dlf_dw_group((OH * OW * 2 * (VL) + ((nt * DLF_CV_PB + KH * KW - 1) / (KH * KW) + 1) * HWp) \
                     * (Py_ssize_t)sizeof(T));                                                \
    dT += f0;                                                                                 \
    for (t = 0; t < nt * DLF_CV_PB && tb * DLF_CV_PB + t < K; t++) {                          \
        Py_ssize_t u = tb * DLF_CV_PB + t;                                                    \
        toffs[t] = u / (KH * KW) * HWp + u / KW % KH * Wp + u % KW;                           \
    }                                                                                         \
    for (n0 = 0; n0 < N; n0 += G) {                                                           \
        n1 = n0 + G < N ? n0 + G : N;                                                         \
        for (t = 0; t < nt; t++) {                                                            \
            Py_ssize_t t0 = (tb + t) * DLF_CV_PB;                                             \
            int tn = K - t0 < DLF_CV_PB ? (int)(K - t0) : DLF_CV_PB;                          \
            T* a = acc + t * DLF_CV_PB * 2 * (VL);                                            \
            const Py_ssize_t* toff = toffs + t * DLF_CV_PB;                                   \
            DLF_BY_COUNT6(tn, DLF_CV_PB, dlf_dcv_dw_tile_##SFX, xp, xs, dT, ds, FP, toff, a,   \
                          first && n0 == 0, n0, n1, OH, OW, Wp);                              \
        }                                                                                     \
    }                                                                                         \
    if (!last)                                                                                \
        return;                                                                               \
    for (t = 0; t < nt; t++) {                                                                \
        Py_ssize_t t0 = (tb + t) * DLF_CV_PB;                                                 \
        int tn = K - t0 < DLF_CV_PB ? (int)(K - t0) : DLF_CV_PB;                              \
        for (f = 0; f < nf; f++)                                                              \
            for (j = 0; j < tn; j++)                                                          \
                dW[(f0 + f) * K + t0 + j] = acc[(t * DLF_CV_PB + j) * 2 * (VL) + f];          \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* Elements of one dlf_dcv_dw item's accumulators */                                         \
static inline Py_ssize_t dlf_dcv_dw_acc_##SFX(void) {                                         \
    return DLF_CV_TC * DLF_CV_PB * 2 * (VL);                                                  \
}

DLF_DCV_DW(f, float, 8)
DLF_DCV_DW(d, double, 4)

/* dW columns [t0, t1) of few taps (a first layer's K = C*KH*KW), from im2col: per image n,
       dW[f, t] += sum_p dout_n[f, p] col_n[t, p]      (p < L = OH*OW, contiguous in both)
   in vector lanes (n, then p, in order; the L % VL tail in a scalar per element, added last).
   Tiles of 4 channels x 3 taps; the accumulators of the whole block (acc: F*(t1-t0) vectors and
   as many scalars, caller-provided) stay in L1 across the images, so each image's rows are
   read from cache for every tile. OpenBLAS runs these as one small GEMM per image (F x (t1-t0)
   x L) at 20-45 GFLOP/s. */
#define DLF_DW_NT(SFX, T, VL)                                                                 \
/* one image's terms: A = dout_n (F, L), B = its col rows t0..t1 (nt rows of L); acc: F*nt    \
   vectors, then F*nt tail scalars */                                                         \
DLF_CLONES static void dlf_dw_nt_add_##SFX(const T* A, const T* B, Py_ssize_t F,              \
                                           Py_ssize_t nt, Py_ssize_t L,                       \
                                           dlf_dcv_##SFX* acc) {                              \
    Py_ssize_t Lv = L - L % (VL), f0, ta, p;                                                  \
    T* tail = (T*)(acc + F * nt);                                                             \
    int i, j;                                                                                 \
    for (f0 = 0; f0 < F; f0 += 4)                                                             \
        for (ta = 0; ta < nt; ta += 3) {                                                      \
            int nf = F - f0 < 4 ? (int)(F - f0) : 4, nb = nt - ta < 3 ? (int)(nt - ta) : 3;   \
            dlf_dcv_##SFX a[4][3];                                                            \
            const T* ar[4];                                                                   \
            const T* br[3];                                                                   \
            for (i = 0; i < 4; i++) ar[i] = A + (f0 + (i < nf ? i : 0)) * L;                  \
            for (j = 0; j < 3; j++) br[j] = B + (ta + (j < nb ? j : 0)) * L;                  \
            for (i = 0; i < 4; i++)                                                           \
                for (j = 0; j < 3; j++)                                                       \
                    a[i][j] = (i < nf && j < nb) ? acc[(f0 + i) * nt + ta + j]                \
                                                 : (dlf_dcv_##SFX){0};                        \
            dlf_tile43_##SFX(a, ar, br, Lv);                                                  \
            for (i = 0; i < nf; i++)                                                          \
                for (j = 0; j < nb; j++) {                                                    \
                    T s = tail[(f0 + i) * nt + ta + j];                                       \
                    for (p = Lv; p < L; p++) s += ar[i][p] * br[j][p];                        \
                    tail[(f0 + i) * nt + ta + j] = s;                                         \
                    acc[(f0 + i) * nt + ta + j] = a[i][j];                                    \
                }                                                                             \
        }                                                                                     \
}                                                                                             \
static void dlf_dw_nt_zero_##SFX(dlf_dcv_##SFX* acc, Py_ssize_t m) {                          \
    T* tail = (T*)(acc + m);                                                                  \
    Py_ssize_t q;                                                                             \
    for (q = 0; q < m; q++) { acc[q] = (dlf_dcv_##SFX){0}; tail[q] = 0; }                     \
}                                                                                             \
/* dW[f, t0 + t] = the lanes' sum (pairs, then pairs of pairs) + the tail */                  \
static void dlf_dw_nt_put_##SFX(const dlf_dcv_##SFX* acc, T* dW, Py_ssize_t F, Py_ssize_t K,  \
                                Py_ssize_t t0, Py_ssize_t nt) {                               \
    const T* tail = (const T*)(acc + F * nt);                                                 \
    Py_ssize_t f, t;                                                                          \
    for (f = 0; f < F; f++)                                                                   \
        for (t = 0; t < nt; t++)                                                              \
            dW[f * K + t0 + t] = dlf_dw_hsum_##SFX(acc[f * nt + t]) + tail[f * nt + t];       \
}                                                                                             \
static void dlf_dw_nt_##SFX(const T* dout, const T* col, T* dW, Py_ssize_t N, Py_ssize_t F,   \
                            Py_ssize_t K, Py_ssize_t L, Py_ssize_t t0, Py_ssize_t t1,         \
                            dlf_dcv_##SFX* acc) {                                             \
    Py_ssize_t n;                                                                             \
    dlf_dw_nt_zero_##SFX(acc, F * (t1 - t0));                                                 \
    for (n = 0; n < N; n++)                                                                   \
        dlf_dw_nt_add_##SFX(dout + n * F * L, col + (n * K + t0) * L, F, t1 - t0, L, acc);    \
    dlf_dw_nt_put_##SFX(acc, dW, F, K, t0, t1 - t0);                                          \
}

DLF_DW_NT(f, float, 8)
DLF_DW_NT(d, double, 4)

/* dlf_dw_nt with its accumulators on the heap (aligned); -1 when they cannot be allocated */
#include <stdlib.h>
#define DLF_DW_NT_RUN(SFX, T, VL)                                                             \
static int dlf_dw_nt_run_##SFX(const T* dout, const T* col, T* dW, Py_ssize_t N,             \
                               Py_ssize_t F, Py_ssize_t K, Py_ssize_t L, Py_ssize_t t0,       \
                               Py_ssize_t t1) {                                               \
    size_t m = (size_t)F * (size_t)(t1 - t0);                                                 \
    void* raw = malloc(m * sizeof(dlf_dcv_##SFX) + m * sizeof(T) + 64);                       \
    dlf_dcv_##SFX* acc;                                                                       \
    if (raw == NULL) return -1;                                                               \
    acc = (dlf_dcv_##SFX*)(((size_t)raw + 63) & ~(size_t)63);                                 \
    dlf_dw_nt_##SFX(dout, col, dW, N, F, K, L, t0, t1, acc);                                  \
    free(raw);                                                                                \
    return 0;                                                                                 \
}
DLF_DW_NT_RUN(f, float, 8)
DLF_DW_NT_RUN(d, double, 4)

/* Bytes of dlf_dw_nt's accumulators for m = F*(t1 - t0) (vectors, then scalars) and 64 bytes
   of slack for dlf_dw_nt_align, which gives the first 64-byte boundary in raw. */
static size_t dlf_dw_nt_bytes_f(Py_ssize_t m) {
    return (size_t)m * (sizeof(dlf_dcv_f) + sizeof(float)) + 64;
}
static size_t dlf_dw_nt_bytes_d(Py_ssize_t m) {
    return (size_t)m * (sizeof(dlf_dcv_d) + sizeof(double)) + 64;
}
static void* dlf_dw_nt_align(void* raw) { return (void*)(((size_t)raw + 63) & ~(size_t)63); }

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
#endif
