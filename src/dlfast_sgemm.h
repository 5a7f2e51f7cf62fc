/* dlf_sgemm: dlfast's own single-threaded float32 GEMM for CPUs with AVX-512F or AVX2 + FMA
   (x86-64, GCC or Clang), used by _dense.pyx in place of the BLAS sgemm where the per-machine
   calibration chose it (dlfast/_backends/_tuning.py). Two kernels of one layout: AVX-512F
   (8 x 32 tiles) and AVX2 + FMA (6 x 16 tiles, op(B) always packed); their sums are the same
   (below), so they give the same bits.

     C(m, n) = op(A)(m, k) @ op(B)(k, n)     row-major; op(X) = X ('N') or X^T ('T');
                                               lda, ldb, ldc = stored row lengths

   Layout (GotoBLAS/BLIS, kept small): k is cut into blocks of DLF_KC; per block, op(B)'s rows
   are packed into NR-column panels (zero-padded) unless B can be read in place (see
   dlf_sgemm); A's rows are taken in blocks that fit half the L2 (dlf_row_block), and per block
   and panel every MR x NR tile of C is one register-blocked micro-kernel call that reads A
   (broadcasts: in place, or from tile panels packed per row block when op(A) = A^T) and B's NR
   columns (two vectors, masked at the edge).

   Sums: C[i][j] = fl(... fl(fl(S_0) + S_1) ... + S_last), S_b = the fused multiply-add chain
   over block b's k in order, from 0. No term depends on the tile, the row block or the thread
   running it: results are the same for any split of the rows into calls. */
#ifndef DLFAST_SGEMM_H
#define DLFAST_SGEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    ((!defined(__clang__) && __GNUC__ >= 9) || (defined(__clang__) && __clang_major__ >= 10))
#define DLF_SGEMM512 1
#include <immintrin.h>
#include <pthread.h>
#include "dlfast_cache.h"

#define DLF_MR 8           /* rows per micro-tile: 2 * DLF_MR accumulators of 16 floats */
#define DLF_NR 32          /* columns per micro-tile and per packed panel: two zmm vectors */
#define DLF_KC 256         /* k per block: one panel (DLF_KC * DLF_NR floats, 32 KB) fits L1 */

#define DLF_T512 __attribute__((target("avx512f")))
#define DLF_INLINE512 __attribute__((target("avx512f"), always_inline)) static inline

/* Packing buffer, one per thread, grown on demand and kept (no allocation in steady state);
   freed when its thread exits (pthread key destructor). */
static pthread_key_t dlf_pack_key;
static pthread_once_t dlf_pack_once = PTHREAD_ONCE_INIT;
static int dlf_pack_key_ok = 0;

typedef struct { size_t cap; float* buf; } dlf_pack_t;

static void dlf_pack_free(void* p) {
    if (p != NULL) {
        free(((dlf_pack_t*)p)->buf);
        free(p);
    }
}

static void dlf_pack_key_init(void) {
    dlf_pack_key_ok = pthread_key_create(&dlf_pack_key, dlf_pack_free) == 0;
}

static float* dlf_pack_space(size_t nfloat) {
    dlf_pack_t* t;
    size_t bytes = (nfloat * sizeof(float) + 63) / 64 * 64;
    pthread_once(&dlf_pack_once, dlf_pack_key_init);
    if (!dlf_pack_key_ok)
        return NULL;
    t = (dlf_pack_t*)pthread_getspecific(dlf_pack_key);
    if (t == NULL) {
        t = (dlf_pack_t*)calloc(1, sizeof(dlf_pack_t));
        if (t == NULL)
            return NULL;
        if (pthread_setspecific(dlf_pack_key, t) != 0) {
            free(t);
            return NULL;
        }
    }
    if (bytes > t->cap) {
        float* p = (float*)aligned_alloc(64, bytes);
        if (p == NULL)
            return NULL;
        free(t->buf);
        t->buf = p;
        t->cap = bytes;
    }
    return t->buf;
}

/* The first k of 16 lanes (k clamped to [0, 16]): the mask of a partial vector. */
static inline __mmask16 dlf_lanes(int k) {
    return (__mmask16)(k >= 16 ? 0xFFFFu : k > 0 ? (1u << k) - 1u : 0u);
}

/* 16 x 16 transpose in registers: o[j][i] = r[i][j] (three rounds of lane shuffles). */
DLF_INLINE512 void dlf_transpose16(const __m512 r[16], __m512 o[16]) {
    __m512 t[16], u[16], a, bb, c, d;
    int q;
#pragma GCC unroll 8
    for (q = 0; q < 8; q++) {                  /* t[2q], t[2q+1]: rows 2q, 2q+1 interleaved */
        t[2 * q] = _mm512_unpacklo_ps(r[2 * q], r[2 * q + 1]);
        t[2 * q + 1] = _mm512_unpackhi_ps(r[2 * q], r[2 * q + 1]);
    }
#pragma GCC unroll 4
    for (q = 0; q < 4; q++) {                  /* u[4q + e], lane L: column 4L + e, rows 4q.. */
        __m512d x0 = _mm512_castps_pd(t[4 * q]), x1 = _mm512_castps_pd(t[4 * q + 1]);
        __m512d x2 = _mm512_castps_pd(t[4 * q + 2]), x3 = _mm512_castps_pd(t[4 * q + 3]);
        u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
    }
#pragma GCC unroll 4
    for (q = 0; q < 4; q++) {                  /* gather column 4L + q's four lanes */
        a = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88);
        bb = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xdd);
        c = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88);
        d = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xdd);
        o[q] = _mm512_shuffle_f32x4(a, c, 0x88);
        o[8 + q] = _mm512_shuffle_f32x4(a, c, 0xdd);
        o[4 + q] = _mm512_shuffle_f32x4(bb, d, 0x88);
        o[12 + q] = _mm512_shuffle_f32x4(bb, d, 0xdd);
    }
}

/* Rows [p0, p0 + kc) of op(B) into ceil(n / DLF_NR) panels of kc rows by DLF_NR floats:
   dst[(jp * kc + p) * DLF_NR + c] = op(B)(p0 + p, jp * DLF_NR + c), 0 past column n.
   op(B) = B^T: column c is row c of b, moved 16 x 16 at a time through dlf_transpose16. */
static DLF_T512 void dlf_pack_b(char tb, int n, int kc, int p0, const float* b, int ldb,
                                float* dst) {
    int jp, p, c, nc, h, rows, pn, i;
    __m512 r[16], o[16];
    for (jp = 0; jp * DLF_NR < n; jp++) {
        float* d = dst + (size_t)jp * kc * DLF_NR;
        nc = n - jp * DLF_NR < DLF_NR ? n - jp * DLF_NR : DLF_NR;
        if (tb == 'N') {
            __mmask16 m0 = dlf_lanes(nc), m1 = dlf_lanes(nc - 16);
            for (p = 0; p < kc; p++) {
                const float* s = b + (size_t)(p0 + p) * ldb + jp * DLF_NR;
                _mm512_store_ps(d + p * DLF_NR, _mm512_maskz_loadu_ps(m0, s));
                _mm512_store_ps(d + p * DLF_NR + 16, _mm512_maskz_loadu_ps(m1, s + 16));
            }
            continue;
        }
        for (h = 0; h < DLF_NR; h += 16) {     /* columns h..h+15 of the panel */
            rows = nc - h < 0 ? 0 : nc - h < 16 ? nc - h : 16;
            for (p = 0; p < kc; p += 16) {
                pn = kc - p < 16 ? kc - p : 16;
                __mmask16 lm = dlf_lanes(pn);
                for (i = 0; i < 16; i++)
                    r[i] = i < rows ? _mm512_maskz_loadu_ps(
                                          lm, b + (size_t)(jp * DLF_NR + h + i) * ldb + p0 + p)
                                    : _mm512_setzero_ps();
                dlf_transpose16(r, o);
                for (c = 0; c < pn; c++)
                    _mm512_store_ps(d + (size_t)(p + c) * DLF_NR + h, o[c]);
            }
        }
    }
}

/* One tile: C[0:MR, 0:16*NV] (= or +=, add != 0) the chain over p < kc of
   A(r, p) * bp[p * brs + 0:16*NV]; A(r, p) = a[r * ars + p * acs]. Columns past the masks are not
   stored. MR and NV are compile-time constants at every call (dlf_tile's switch). */
DLF_INLINE512 void dlf_kernel(const int MR, const int NV, int kc, const float* a,
                               ptrdiff_t ars, ptrdiff_t acs, const float* bp, ptrdiff_t brs,
                               float* c, ptrdiff_t ldc, __mmask16 m0, __mmask16 m1, int add) {
    __m512 s0[DLF_MR], s1[DLF_MR], b0, b1, av;
    const float* ar[DLF_MR];
    int r, p;
#pragma GCC unroll 8
    for (r = 0; r < MR; r++) {
        s0[r] = _mm512_setzero_ps();
        s1[r] = _mm512_setzero_ps();
        ar[r] = a + r * ars;
    }
    for (p = 0; p < kc; p++) {
        b0 = _mm512_maskz_loadu_ps(m0, bp + p * brs);
        if (NV > 1)
            b1 = _mm512_maskz_loadu_ps(m1, bp + p * brs + 16);
#pragma GCC unroll 8
        for (r = 0; r < MR; r++) {
            av = _mm512_set1_ps(ar[r][p * acs]);
            s0[r] = _mm512_fmadd_ps(av, b0, s0[r]);
            if (NV > 1)
                s1[r] = _mm512_fmadd_ps(av, b1, s1[r]);
        }
    }
#pragma GCC unroll 8
    for (r = 0; r < MR; r++) {
        float* cr = c + r * ldc;
        if (add)
            s0[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), s0[r]);
        _mm512_mask_storeu_ps(cr, m0, s0[r]);
        if (NV > 1) {
            if (add)
                s1[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), s1[r]);
            _mm512_mask_storeu_ps(cr + 16, m1, s1[r]);
        }
    }
}

#define DLF_TILE_CASE(R)                                                                    \
    case R:                                                                                 \
        if (nc > 16)                                                                        \
            dlf_kernel(R, 2, kc, a, ars, acs, bp, brs, c, ldc, m0, m1, add);                  \
        else                                                                                \
            dlf_kernel(R, 1, kc, a, ars, acs, bp, brs, c, ldc, m0, m1, add);                  \
        break;

/* A tile of mr <= DLF_MR rows and nc <= DLF_NR columns. */
static DLF_T512 void dlf_tile(int mr, int nc, int kc, const float* a, ptrdiff_t ars,
                              ptrdiff_t acs, const float* bp, ptrdiff_t brs, float* c,
                              ptrdiff_t ldc, int add) {
    __mmask16 m0 = dlf_lanes(nc), m1 = dlf_lanes(nc - 16);
    switch (mr) {
        DLF_TILE_CASE(8)
        DLF_TILE_CASE(7)
        DLF_TILE_CASE(6)
        DLF_TILE_CASE(5)
        DLF_TILE_CASE(4)
        DLF_TILE_CASE(3)
        DLF_TILE_CASE(2)
        DLF_TILE_CASE(1)
        default:
            break;
    }
}
#undef DLF_TILE_CASE

/* The kernels this CPU and OS run (checked once; GCC/Clang read cpuid and XCR0): 2 AVX-512F
   (and AVX2 + FMA), 1 AVX2 + FMA only, 0 neither. */
static int dlf_sgemm_cpu(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") ? 2
              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    }
    return known;
}

/* The highest kernel dlf_sgemm may use (tests lower it to run the AVX2 kernel on an AVX-512F
   CPU); the kernel it runs: min(dlf_sgemm_cpu(), dlf_sgemm_cap). */
static int dlf_sgemm_cap = 2;

static int dlf_sgemm_available(void) {
    int cpu = dlf_sgemm_cpu();
    return cpu < dlf_sgemm_cap ? cpu : dlf_sgemm_cap;
}

/* ---- the AVX2 + FMA kernel: the same layout, sums and results with 8-float vectors:
   DLF_MR2 x DLF_NR2 tiles (12 accumulators), panels of DLF_NR2 columns, the same DLF_KC. */
#define DLF_MR2 6
#define DLF_NR2 16
#define DLF_T256 __attribute__((target("avx2,fma")))
#define DLF_INLINE256 __attribute__((target("avx2,fma"), always_inline)) static inline

static const int dlf_lane_src[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* The first k of 8 lanes (k clamped to [0, 8]): the mask of a partial vector. */
DLF_INLINE256 __m256i dlf_lanes8(int k) {
    k = k < 0 ? 0 : k > 8 ? 8 : k;
    return _mm256_loadu_si256((const __m256i*)(dlf_lane_src + 8 - k));
}

/* 8 x 8 transpose in registers: o[j][i] = r[i][j]. */
DLF_INLINE256 void dlf_transpose8(const __m256 r[8], __m256 o[8]) {
    __m256 t[8], u[8];
    int q;
    for (q = 0; q < 4; q++) {          /* t[2q], t[2q+1]: rows 2q, 2q+1 interleaved */
        t[2 * q] = _mm256_unpacklo_ps(r[2 * q], r[2 * q + 1]);
        t[2 * q + 1] = _mm256_unpackhi_ps(r[2 * q], r[2 * q + 1]);
    }
    for (q = 0; q < 2; q++) {          /* u[4q + e], 128-bit half L: column e + 4L, rows 4q.. */
        u[4 * q] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
        u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
        u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
        u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
    }
    for (q = 0; q < 4; q++) {
        o[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
        o[4 + q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
    }
}

/* dlf_pack_b with DLF_NR2-column panels (op(B) = B^T moved 8 x 8 at a time). */
static DLF_T256 void dlf_pack_b2(char tb, int n, int kc, int p0, const float* b, int ldb,
                                 float* dst) {
    int jp, p, c, nc, h, rows, pn, i;
    __m256 r[8], o[8];
    for (jp = 0; jp * DLF_NR2 < n; jp++) {
        float* d = dst + (size_t)jp * kc * DLF_NR2;
        nc = n - jp * DLF_NR2 < DLF_NR2 ? n - jp * DLF_NR2 : DLF_NR2;
        if (tb == 'N') {
            __m256i m0 = dlf_lanes8(nc), m1 = dlf_lanes8(nc - 8);
            for (p = 0; p < kc; p++) {
                const float* s = b + (size_t)(p0 + p) * ldb + jp * DLF_NR2;
                _mm256_store_ps(d + p * DLF_NR2, _mm256_maskload_ps(s, m0));
                _mm256_store_ps(d + p * DLF_NR2 + 8, _mm256_maskload_ps(s + 8, m1));
            }
            continue;
        }
        for (h = 0; h < DLF_NR2; h += 8) {     /* columns h..h+7 of the panel */
            rows = nc - h < 0 ? 0 : nc - h < 8 ? nc - h : 8;
            for (p = 0; p < kc; p += 8) {
                pn = kc - p < 8 ? kc - p : 8;
                __m256i lm = dlf_lanes8(pn);
                for (i = 0; i < 8; i++)
                    r[i] = i < rows ? _mm256_maskload_ps(
                                          b + (size_t)(jp * DLF_NR2 + h + i) * ldb + p0 + p, lm)
                                    : _mm256_setzero_ps();
                dlf_transpose8(r, o);
                for (c = 0; c < pn; c++)
                    _mm256_store_ps(d + (size_t)(p + c) * DLF_NR2 + h, o[c]);
            }
        }
    }
}

/* dlf_kernel with 8-float vectors on a zero-padded panel: C[0:MR, 0:8*NV] (= or +=) the chain
   over p < kc of A(r, p) * bp[p * DLF_NR2 + 0:8*NV]. FULL: all 16 columns stored; else the masks
   m0, m1 bound the stores. */
DLF_INLINE256 void dlf_kernel2(const int MR, const int NV, const int FULL, int kc,
                               const float* a, ptrdiff_t ars, ptrdiff_t acs, const float* bp,
                               float* c, ptrdiff_t ldc, __m256i m0, __m256i m1, int add) {
    __m256 s0[DLF_MR2], s1[DLF_MR2], b0, b1 = _mm256_setzero_ps(), av;
    const float* ar[DLF_MR2];
    int r, p;
#pragma GCC unroll 6
    for (r = 0; r < MR; r++) {
        s0[r] = _mm256_setzero_ps();
        s1[r] = _mm256_setzero_ps();
        ar[r] = a + r * ars;
    }
#pragma GCC unroll 2
    for (p = 0; p < kc; p++) {
        b0 = _mm256_load_ps(bp + p * DLF_NR2);
        if (NV > 1)
            b1 = _mm256_load_ps(bp + p * DLF_NR2 + 8);
#pragma GCC unroll 6
        for (r = 0; r < MR; r++) {
            av = _mm256_broadcast_ss(ar[r] + p * acs);
            s0[r] = _mm256_fmadd_ps(av, b0, s0[r]);
            if (NV > 1)
                s1[r] = _mm256_fmadd_ps(av, b1, s1[r]);
        }
    }
#pragma GCC unroll 6
    for (r = 0; r < MR; r++) {
        float* cr = c + r * ldc;
        if (FULL) {
            if (add) {
                s0[r] = _mm256_add_ps(_mm256_loadu_ps(cr), s0[r]);
                s1[r] = _mm256_add_ps(_mm256_loadu_ps(cr + 8), s1[r]);
            }
            _mm256_storeu_ps(cr, s0[r]);
            _mm256_storeu_ps(cr + 8, s1[r]);
            continue;
        }
        if (add)
            s0[r] = _mm256_add_ps(_mm256_maskload_ps(cr, m0), s0[r]);
        _mm256_maskstore_ps(cr, m0, s0[r]);
        if (NV > 1) {
            if (add)
                s1[r] = _mm256_add_ps(_mm256_maskload_ps(cr + 8, m1), s1[r]);
            _mm256_maskstore_ps(cr + 8, m1, s1[r]);
        }
    }
}

#define DLF_TILE2_CASE(R)                                                                     \
    case R:                                                                                   \
        if (nc == DLF_NR2)                                                                    \
            dlf_kernel2(R, 2, 1, kc, a, ars, acs, bp, c, ldc, m0, m1, add);                   \
        else if (nc > 8)                                                                      \
            dlf_kernel2(R, 2, 0, kc, a, ars, acs, bp, c, ldc, m0, m1, add);                   \
        else                                                                                  \
            dlf_kernel2(R, 1, 0, kc, a, ars, acs, bp, c, ldc, m0, m1, add);                   \
        break;

/* A tile of mr <= DLF_MR2 rows and nc <= DLF_NR2 columns from a packed panel (brs: unused). */
static DLF_T256 void dlf_tile2(int mr, int nc, int kc, const float* a, ptrdiff_t ars,
                               ptrdiff_t acs, const float* bp, ptrdiff_t brs, float* c,
                               ptrdiff_t ldc, int add) {
    __m256i m0 = dlf_lanes8(nc), m1 = dlf_lanes8(nc - 8);
    (void)brs;
    switch (mr) {
        DLF_TILE2_CASE(6)
        DLF_TILE2_CASE(5)
        DLF_TILE2_CASE(4)
        DLF_TILE2_CASE(3)
        DLF_TILE2_CASE(2)
        DLF_TILE2_CASE(1)
        default:
            break;
    }
}
#undef DLF_TILE2_CASE

/* Rows of A per L2 block: half the L2 (256 KB if unknown) over a row's kc floats, a
   multiple of mr, at least mr. It orders the tiles only: no sum depends on it. */
static int dlf_row_block(int mr, int kc) {
    long r = dlf_cache_bytes(2, 256 * 1024) / 2 / ((long)kc * (long)sizeof(float)) / mr * mr;
    return r < mr ? mr : r > (1 << 20) ? (1 << 20) : (int)r;
}

/* Rows of the tile at row i0 of a block ending at iend: MR, but the last two tiles share their
   rows evenly (32 rows, MR 6: 6 6 6 6 4 4, not 6 6 6 6 6 2): a tile of few rows has too few
   independent sums to keep the FMA units busy. */
static inline int dlf_tile_rows(int i0, int iend, int MR) {
    return iend - i0 > 2 * MR ? MR : iend - i0 > MR ? (iend - i0 + 1) / 2 : iend - i0;
}

/* op(A) = A^T: rows [ib, iend) and k [p0, p0 + kc) of op(A) (m x k, stored k x m with row
   stride lda) packed as the tile loop takes them, tile (i0, mr) at pa + (i0 - ib) * kc with
   element (r, p) at p * mr + r: a tile then reads mr * kc contiguous floats, where in place it
   read one cache line per k (256 per tile, again for each panel). op(A)'s column p is A's row
   p0 + p: each k moves 8 floats (mr <= 8; the floats past mr land where the next k, or the next
   tile, writes: pa needs 8 floats of slack) while the 8 read end inside A's storage, at or
   before its last element ((k - 1) * lda + m - 1); else mr floats one by one. */
static void dlf_pack_at(int ib, int iend, int MR, int kc, int p0, int m, int k, const float* a,
                        int lda, float* pa) {
    int p, i0, mr, r;
    for (i0 = ib; i0 < iend; i0 += mr) {
        float* t = pa + (size_t)(i0 - ib) * kc;
        const float* src = a + (size_t)p0 * lda + i0;
        /* rows p0 + p with (p0 + p) * lda + i0 + 8 <= (k - 1) * lda + m move 8 floats */
        long lim = (long)(k - 1) * lda + m - 8 - i0;
        long q = lim < 0 ? -1 : lim / lda - p0;
        int pv = q < 0 ? 0 : q + 1 < kc ? (int)(q + 1) : kc;
        mr = dlf_tile_rows(i0, iend, MR);
        for (p = 0; p < pv; p++)
            memcpy(t + (size_t)p * mr, src + (size_t)p * lda, 8 * sizeof(float));
        for (; p < kc; p++)
            for (r = 0; r < mr; r++)
                t[(size_t)p * mr + r] = src[(size_t)p * lda + r];
    }
}

typedef void (*dlf_pack_fn)(char, int, int, int, const float*, int, float*);
typedef void (*dlf_tile_fn)(int, int, int, const float*, ptrdiff_t, ptrdiff_t, const float*,
                            ptrdiff_t, float*, ptrdiff_t, int);

/* C = op(A) op(B) (see the top) on the kernel of dlf_sgemm_available(): tiles of MR x NR from
   `tile`, op(B) panels from `pack`. Returns 0, or -1 when the CPU has neither kernel or the
   packing buffer cannot be allocated (C untouched: the caller falls back to BLAS). Needs m, n,
   k >= 1. */
static int dlf_sgemm(char ta, char tb, int m, int n, int k, const float* a, int lda,
                     const float* b, int ldb, float* c, int ldc) {
    ptrdiff_t ars = ta == 'N' ? lda : 1, acs = ta == 'N' ? 1 : lda, brs;
    int isa = dlf_sgemm_available();
    int MR = isa == 2 ? DLF_MR : DLF_MR2, NR = isa == 2 ? DLF_NR : DLF_NR2;
    dlf_pack_fn pack = isa == 2 ? dlf_pack_b : dlf_pack_b2;
    dlf_tile_fn tile = isa == 2 ? dlf_tile : dlf_tile2;
    int npan = (n + NR - 1) / NR, kb = k < DLF_KC ? k : DLF_KC;
    int p0, kc, jp, i0, nc, mr, ib, iend, mc;
    /* B read in place (row stride ldb) unless transposed, or its rows are a multiple of 128 bytes
       apart (they would crowd a few L1 sets): then packed, once per k block */
    int direct = isa == 2 && tb == 'N' && ldb % 32 != 0;
    /* op(A) = A^T is packed per row block (dlf_pack_at) when several panels read it */
    int pack_a = ta != 'N' && npan > 1;
    size_t bfloats = direct ? 0 : (size_t)npan * kb * NR, afloats = 0;
    float* buf = NULL;
    const float *bp, *ap;
    if (!isa)
        return -1;
    if (pack_a) {                   /* the largest row block of any k block, times its kc */
        int last = k - (k - 1) / DLF_KC * DLF_KC, r0 = dlf_row_block(MR, kb);
        int r1 = dlf_row_block(MR, last);
        afloats = (size_t)(r0 < m ? r0 : m) * kb;
        if ((size_t)(r1 < m ? r1 : m) * last > afloats)
            afloats = (size_t)(r1 < m ? r1 : m) * last;
    }
    if (bfloats + afloats > 0) {
        buf = dlf_pack_space(bfloats + afloats + (pack_a ? 8 : 0));
        if (buf == NULL)
            return -1;
    }
    for (p0 = 0; p0 < k; p0 += DLF_KC) {
        kc = k - p0 < DLF_KC ? k - p0 : DLF_KC;
        mc = dlf_row_block(MR, kc);
        if (!direct)
            pack(tb, n, kc, p0, b, ldb, buf);
        for (ib = 0; ib < m; ib += mc) {        /* A's rows [ib, ib + mc) stay in L2 */
            iend = m - ib < mc ? m : ib + mc;
            if (pack_a)
                dlf_pack_at(ib, iend, MR, kc, p0, m, k, a, lda, buf + bfloats);
            for (jp = 0; jp < npan; jp++) {      /* a panel stays in L1 over those rows */
                nc = n - jp * NR < NR ? n - jp * NR : NR;
                bp = direct ? b + (size_t)p0 * ldb + jp * NR : buf + (size_t)jp * kc * NR;
                brs = direct ? ldb : NR;
                for (i0 = ib; i0 < iend; i0 += mr) {
                    mr = dlf_tile_rows(i0, iend, MR);
                    ap = pack_a ? buf + bfloats + (size_t)(i0 - ib) * kc
                                : a + i0 * ars + p0 * acs;
                    tile(mr, nc, kc, ap, pack_a ? 1 : ars, pack_a ? mr : acs, bp, brs,
                         c + (size_t)i0 * ldc + jp * NR, ldc, p0 > 0);
                }
            }
        }
    }
    return 0;
}

#else  /* no x86-64 GCC/Clang build: never available */
static int dlf_sgemm_cap = 0;
static int dlf_sgemm_cpu(void) { return 0; }
static int dlf_sgemm_available(void) { return 0; }
static int dlf_sgemm(char ta, char tb, int m, int n, int k, const float* a, int lda,
                     const float* b, int ldb, float* c, int ldc) {
    (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)a; (void)lda; (void)b; (void)ldb;
    (void)c; (void)ldc;
    return -1;
}
#endif
#endif
