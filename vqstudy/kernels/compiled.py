"""Fused nearest-code search for the CPU: a small C++ kernel compiled on first use and cached on disk.

Distances, running minimum and argmin stay in registers; the (N, K) matrix is never written. The codebook
is packed once per call into tiles of TC codes, [tile][d][TC] of -2c, with ||c||^2 per code (+inf for
padding codes). A micro-kernel computes a (TR rows x TC codes) tile of s = ||c||^2 - 2 x.c with FMAs
(AVX2: 6 x 16, AVX-512: 6 x 64, SSE: 4 x 8); per row and SIMD lane it keeps the smallest value so far and
the first tile reaching it, branch-free; after the sweep, the few codes of each row's winning lanes' tiles are
recomputed with the same operations (so the same values) and the first code reaching the row's minimum is taken.
Codes are visited in increasing order and a tie never replaces the best, so ties go to the lowest code index, as
in the reference. Loops: row blocks (pulled by worker threads from a shared counter, so a core taken by another
process does not stall the call) -> codebook chunks sized for L2 -> row tiles -> code tiles. For D <= 8 a second
micro-kernel (`sweep_lanes`) takes two rows at a time against groups of two tiles, with the codebook chunk in L1
(see its comment). The exact ||x - c||^2 of the chosen code is recomputed from the difference (accumulated in
double).

Threads: built with OpenMP (the default), the kernel runs in torch's own OpenMP pool (the same libgomp, which torch
loads first), so no threads start per call and no second pool competes with torch's spinning workers for the
cores; built without it, pthreads.

Also here: `vq_ema_step`, the quantizer's EMA codebook update in one fused pass (see `ema_step_compiled`).

Build: the source below is compiled with the system C++ compiler (`$CXX`, else `c++`/`g++`/`clang++`),
`-O3 -march=native -fopenmp` (dropping the flags a compiler refuses), into `$VQSTUDY_CACHE_DIR` (default
~/.cache/vqstudy) under a name hashed from the source, the compiler and the CPU, then loaded with ctypes (which
releases the GIL during the call). It takes about a second, once per machine. Without a working compiler
`compiled_available()` is False and `nearest_code` falls back to the pure-torch blocked path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch.autograd.graph import increment_version

log = logging.getLogger(__name__)

CACHE_ENV = "VQSTUDY_CACHE_DIR"
"""Folder for the compiled kernel (default ~/.cache/vqstudy)."""
ROW_BLOCK = 96
"""Rows per work item a thread pulls (a multiple of every TR); smaller for small N so every thread gets work."""
L2_BYTES = 256 * 1024
"""Codebook chunk (packed floats) kept hot in L2 while a row block streams over it."""
LANES_MAX_D = 8
"""Up to this D the lanes kernel runs (codes in SIMD lanes, D padded to 4 or 8); above it the tile kernel."""
L1_BYTES = 20 * 1024
"""Codebook chunk (packed floats) of the lanes kernel, kept in L1 while every row of a block passes over it."""
MIN_WORK_FOR_THREADS = 1 << 22
"""Below this N*K*D, one thread: starting threads costs more than the search."""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>
#if defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define VW 16
#define TR 6
#define TV 4
#elif defined(__AVX__)
#define VW 8
#define TR 6
#define TV 2
#else
#define VW 4
#define TR 4
#define TV 2
#endif
#define TC (VW * TV)

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf vload(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vi iload(const int32_t* p) { vi v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vf v) { memcpy(p, &v, sizeof v); }
static inline void istore(int32_t* p, vi v) { memcpy(p, &v, sizeof v); }

/* x in every lane (one vbroadcastss; `(vf){} + x` would add -0.0 first) */
static inline vf splat(float x) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(x);
#elif defined(__AVX__)
    return (vf)_mm256_set1_ps(x);
#elif defined(__SSE2__)
    return (vf)_mm_set1_ps(x);
#else
    vf v;
    for (int l = 0; l < VW; l++) v[l] = x;
    return v;
#endif
}

/* a < b ? a : b lane-wise (vminps: b where either is NaN); the lane-wise signed maximum */
static inline vf vmin(vf a, vf b) {
#if defined(__AVX512F__)
    return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
    return (vf)_mm256_min_ps((__m256)a, (__m256)b);
#elif defined(__SSE2__)
    return (vf)_mm_min_ps((__m128)a, (__m128)b);
#else
    return a < b ? a : b;
#endif
}
static inline vi imax(vi a, vi b) {
#if defined(__AVX512F__)
    return (vi)_mm512_max_epi32((__m512i)a, (__m512i)b);
#elif defined(__AVX2__)
    return (vi)_mm256_max_epi32((__m256i)a, (__m256i)b);
#else
    return a > b ? a : b;
#endif
}

/* Codegen fences for the lanes kernel (no instructions): OPAQUE hides a pointer's value from the optimizer so loads
   through it are not hoisted out of the loop; IN_REGISTER makes a loaded vector a register operand. */
#if defined(__AVX512F__)
#define OPAQUE(p) __asm__("" : "+r"(p))
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#elif defined(__x86_64__) || defined(__i386__)
#define OPAQUE(p) __asm__("" : "+r"(p))
#define IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define OPAQUE(p) ((void)0)
#define IN_REGISTER(v) ((void)0)
#endif

extern "C" int vq_tile_codes(void) { return TC; }
extern "C" int vq_tile_rows(void) { return TR; }

/* s = ||c||^2 - 2 x.c for TR rows x TC codes (tile t, codes t TC .. t TC + TC - 1). Per row and lane the smallest
   value so far and the first tile reaching it are kept in lb/lg (a strictly smaller tile minimum replaces them), with
   min/compare/and/max ops and no branch: a branch on "this tile improved the row" is taken a few times per row in an
   unpredictable place, and at small K those mispredictions and the horizontal search after them cost a quarter of
   the FMA time. `finish` then finds each row's first code reaching its minimum. */
static inline __attribute__((always_inline)) void tile(const float* __restrict xr, const float* __restrict cp,
        const float* __restrict cs, int64_t d, float* __restrict lb, int32_t* __restrict lg, int32_t t) {
    vf acc[TR][TV];
#pragma GCC unroll 8
    for (int v = 0; v < TV; v++) {
        vf c0 = vload(cs + v * VW);
#pragma GCC unroll 8
        for (int r = 0; r < TR; r++) acc[r][v] = c0;
    }
    for (int64_t j = 0; j < d; j++) {
        vf cv[TV];
#pragma GCC unroll 8
        for (int v = 0; v < TV; v++) cv[v] = vload(cp + j * TC + v * VW);
#pragma GCC unroll 8
        for (int r = 0; r < TR; r++) {
            float xs = xr[r * d + j];
#pragma GCC unroll 8
            for (int v = 0; v < TV; v++) acc[r][v] += xs * cv[v];
        }
    }
    const vi g = (vi){} + t;
#pragma GCC unroll 8
    for (int r = 0; r < TR; r++) {
        vf m = acc[r][0];
#pragma GCC unroll 8
        for (int v = 1; v < TV; v++) m = vmin(acc[r][v], m);
        vf bv = vload(lb + r * VW);
        istore(lg + r * VW, imax(iload(lg + r * VW), (m < bv) & g));  /* tiles only increase over a row's sweep */
        vstore(lb + r * VW, vmin(m, bv));
    }
}

struct Job {
    const float* x; int64_t n, d, sx;
    const float* c; int64_t k, sc;
    const float* pack; const float* csq; int64_t ntiles;
    int64_t row_block, chunk_tiles, dp;
    int64_t* idx; float* dist;
    int64_t next; int failed;
};

/* All codes against one block of `padded` rows: codebook chunks sized for L2 -> row tiles -> code tiles. */
static void sweep(const Job* job, const float* xb, int64_t padded, float* lbest, int32_t* lgroup) {
    const int64_t d = job->d;
    for (int64_t t0 = 0; t0 < job->ntiles; t0 += job->chunk_tiles) {
        int64_t t1 = t0 + job->chunk_tiles < job->ntiles ? t0 + job->chunk_tiles : job->ntiles;
        for (int64_t r = 0; r < padded; r += TR)
            for (int64_t t = t0; t < t1; t++)
                tile(xb + r * d, job->pack + t * d * TC, job->csq + t * TC, d, lbest + r * VW, lgroup + r * VW,
                     (int32_t)t);
    }
}

/* Small d (the lanes kernel, d padded with zeros to DP): codes in the SIMD lanes, two rows at a time, so each code
   vector is loaded once for two rows' FMAs (one row per code load left the kernel bound by loads, not FMAs). Codes go
   in groups of two tiles (2 TC codes, ntiles is even in this mode); per lane the kernel keeps the smallest value seen
   and the group that first reached it (a strictly smaller group minimum replaces it), with min/compare/and/max ops
   only (a blend would take an FMA port); at d <= 8 that per-row state costs as much as the FMAs unless it is shared
   by two tiles. `finish` then recomputes, with the same operations in the same order (so the same values), the few
   codes of the winning lanes' groups and takes the first code reaching the row minimum: ties go to the lowest code
   index. Codes are visited in L1-sized chunks, every row of the block per chunk; a row's lane state
   waits in lbest/lgroup between chunks. */
template <int DP>
static void sweep_lanes(const Job* job, const float* xb, int64_t rows, float* lbest, int32_t* lgroup) {
    for (int64_t t0 = 0; t0 < job->ntiles; t0 += job->chunk_tiles) {
        int64_t t1 = t0 + job->chunk_tiles < job->ntiles ? t0 + job->chunk_tiles : job->ntiles;
        for (int64_t r = 0; r < rows; r += 2) {  /* rows is even: two rows share each code load */
            const float* x0 = xb + r * DP;
            vf bv0 = vload(lbest + r * VW), bv1 = vload(lbest + (r + 1) * VW);
            vi bg0 = iload(lgroup + r * VW), bg1 = iload(lgroup + (r + 1) * VW);
            vi g = (vi){} + (int32_t)(t0 / 2);
            const float* cp = job->pack + t0 * DP * TC;
            const float* cs = job->csq + t0 * TC;
            for (int64_t t = t0; t < t1; t += 2, cp += 2 * DP * TC, cs += 2 * TC, g += 1) {
                vf a0[2 * TV], a1[2 * TV];  /* 4 TV independent FMA chains per group */
#pragma GCC unroll 8
                for (int v = 0; v < 2 * TV; v++) a1[v] = a0[v] = vload(cs + (v / TV) * TC + (v % TV) * VW);
                const float* xp = x0;
                OPAQUE(xp);  /* the broadcasts stay in the loop: hoisted, 2 DP of them would spill */
#pragma GCC unroll 16
                for (int j = 0; j < DP; j++) {
                    vf x0j = splat(xp[j]), x1j = splat(xp[DP + j]);
#pragma GCC unroll 8
                    for (int v = 0; v < 2 * TV; v++) {
                        vf cv = vload(cp + (v / TV) * DP * TC + j * TC + (v % TV) * VW);
                        IN_REGISTER(cv);  /* one load for both rows, not a memory operand in each FMA */
                        a0[v] += x0j * cv;
                        a1[v] += x1j * cv;
                    }
                }
                vf m0 = a0[0], m1 = a1[0];
#pragma GCC unroll 8
                for (int v = 1; v < 2 * TV; v++) {
                    m0 = vmin(a0[v], m0);
                    m1 = vmin(a1[v], m1);
                }
                /* blend-free (blends share the FMA ports; min, compare, and, max do not): groups only increase
                   over a row's sweep, so the newest group wins a max against the stored one */
                bg0 = imax(bg0, (m0 < bv0) & g);
                bg1 = imax(bg1, (m1 < bv1) & g);
                bv0 = vmin(m0, bv0);
                bv1 = vmin(m1, bv1);
            }
            vstore(lbest + r * VW, bv0);
            vstore(lbest + (r + 1) * VW, bv1);
            istore(lgroup + r * VW, bg0);
            istore(lgroup + (r + 1) * VW, bg1);
        }
    }
}

/* A row's lanes -> the lowest code reaching its minimum: the codes of each winning lane's group (gt tiles, packed dw
   wide) recomputed exactly as in the sweep (||c||^2, then the FMAs in order). */
static inline __attribute__((always_inline)) int32_t finish(const Job* job, const float* xr, int64_t dw, int64_t gt,
                                                            const float* lb, const int32_t* lg) {
    float m = INFINITY;
    for (int l = 0; l < VW; l++) m = lb[l] < m ? lb[l] : m;
    if (!(m < INFINITY)) return 0;  /* no finite distance: code 0 */
    int32_t found = INT32_MAX, closest = 0;
    float closest_s = INFINITY;
    for (int l = 0; l < VW; l++) {
        if (lb[l] != m) continue;
        for (int64_t v = 0; v < gt * TV; v++) {  /* this lane's codes of the group, in increasing order */
            int64_t t = gt * (int64_t)lg[l] + v / TV, lane = (v % TV) * VW + l;
            int32_t code = (int32_t)(t * TC + lane);
            float s = job->csq[t * TC + lane];
            for (int64_t j = 0; j < dw; j++) s += xr[j] * job->pack[(t * dw + j) * TC + lane];
            if (s < closest_s || (s == closest_s && code < closest)) { closest_s = s; closest = code; }
            if (s == m) {
                if (code < found) found = code;
                break;
            }
        }
    }
    /* the recompute reproduces the sweep's value; should a compiler ever contract the two differently, the
       closest recomputed candidate stands in */
    return found != INT32_MAX ? found : closest;
}

static void* worker(void* arg) {
    Job* job = (Job*)arg;
    const int64_t d = job->d, rb = job->row_block, dw = job->dp ? job->dp : d;  /* dw: row width in xb */
    float* xb = (float*)aligned_alloc(64, (size_t)(((rb * dw * 4) + 63) / 64 * 64));
    float* lbest = (float*)aligned_alloc(64, (size_t)((rb * VW * 4 + 63) / 64 * 64));
    int32_t* lgroup = (int32_t*)aligned_alloc(64, (size_t)((rb * VW * 4 + 63) / 64 * 64));
    if (!xb || !lbest || !lgroup) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        free(xb); free(lbest); free(lgroup);
        return 0;
    }
    for (;;) {
        int64_t r0 = __atomic_fetch_add(&job->next, rb, __ATOMIC_RELAXED);
        if (r0 >= job->n) break;
        int64_t rows = job->n - r0 < rb ? job->n - r0 : rb;
        int64_t padded = (rows + TR - 1) / TR * TR;
        memset(xb, 0, (size_t)(padded * dw * 4));
        for (int64_t r = 0; r < rows; r++) memcpy(xb + r * dw, job->x + (r0 + r) * job->sx, (size_t)d * 4);
        for (int64_t i = 0; i < padded * VW; i++) { lbest[i] = INFINITY; lgroup[i] = 0; }
        /* the lanes kernel takes rows in pairs: xb holds zero rows up to a multiple of TR (even) */
        if (job->dp == 4) sweep_lanes<4>(job, xb, rows + (rows & 1), lbest, lgroup);
        else if (job->dp) sweep_lanes<8>(job, xb, rows + (rows & 1), lbest, lgroup);
        else sweep(job, xb, padded, lbest, lgroup);
        for (int64_t r = 0; r < rows; r++) {
            const float* xp = xb + r * dw;  /* literal widths and group sizes: finish is specialized per kernel */
            const float* lb = lbest + r * VW;
            const int32_t* lg = lgroup + r * VW;
            int32_t bi = job->dp == 4 ? finish(job, xp, 4, 2, lb, lg)
                         : job->dp  ? finish(job, xp, 8, 2, lb, lg)
                                    : finish(job, xp, d, 1, lb, lg);
            if (bi >= job->k) bi = 0;  /* only when no real code has a finite distance */
            const float* xr = job->x + (r0 + r) * job->sx;
            const float* cr = job->c + (int64_t)bi * job->sc;
            double s = 0.0;
            for (int64_t j = 0; j < d; j++) { double t = (double)xr[j] - (double)cr[j]; s += t * t; }
            job->idx[r0 + r] = bi;
            job->dist[r0 + r] = (float)s;
        }
    }
    free(xb); free(lbest); free(lgroup);
    return 0;
}

/* x (n, d) with row stride sx, codebook (k, d) with row stride sc, unit column strides. Returns 0 on success. */
extern "C" int vq_nearest(const float* x, int64_t n, int64_t d, int64_t sx, const float* c, int64_t k, int64_t sc,
                          int64_t* idx, float* dist, int threads, int64_t row_block, int64_t chunk_tiles, int64_t dp) {
    if (n <= 0) return 0;
    if (k <= 0 || d <= 0 || k > INT32_MAX - TC || row_block < 1 || row_block % TR) return 2;
    if (dp && ((dp != 4 && dp != 8) || d > dp)) return 2;
    const int64_t dw = dp ? dp : d;  /* packed width: the lanes kernel pads d with zeros */
    int64_t ntiles = (k + TC - 1) / TC;
    if (dp) {  /* the lanes kernel takes tiles in pairs (the padding codes have ||c||^2 = +inf) */
        ntiles += ntiles % 2;
        chunk_tiles += chunk_tiles % 2;
    }
    float* pack = (float*)aligned_alloc(64, (size_t)((ntiles * dw * TC * 4 + 63) / 64 * 64));
    float* csq = (float*)aligned_alloc(64, (size_t)((ntiles * TC * 4 + 63) / 64 * 64));
    if (!pack || !csq) { free(pack); free(csq); return 1; }
    for (int64_t t = 0; t < ntiles; t++)
        for (int64_t l = 0; l < TC; l++) {
            int64_t code = t * TC + l;
            float sq = INFINITY;
            if (code < k) {
                const float* cr = c + code * sc;
                sq = 0.0f;
                for (int64_t j = 0; j < d; j++) sq += cr[j] * cr[j];
            }
            csq[t * TC + l] = sq;
            for (int64_t j = 0; j < dw; j++)
                pack[(t * dw + j) * TC + l] = code < k && j < d ? -2.0f * c[code * sc + j] : 0.0f;
        }
    Job job = {x, n, d, sx, c, k, sc, pack, csq, ntiles, row_block, chunk_tiles < 1 ? 1 : chunk_tiles, dp, idx, dist,
               0, 0};
#if defined(_OPENMP)
    /* torch's own OpenMP pool (the same libgomp, loaded by torch first): no threads started per call, and no
       second pool competing for the cores with torch's spinning workers */
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        worker(&job);
    } else {
        worker(&job);
    }
#else
    int extra = threads > 1 ? threads - 1 : 0;
    pthread_t* tids = (pthread_t*)calloc((size_t)(extra ? extra : 1), sizeof(pthread_t));
    int started = 0;
    for (; tids && started < extra; started++)
        if (pthread_create(&tids[started], 0, worker, &job) != 0) break;
    worker(&job);
    for (int i = 0; i < started; i++) pthread_join(tids[i], 0);
    free(tids);
#endif
    free(pack); free(csq);
    return job.failed ? 1 : 0;
}

/* One EMA codebook step (arXiv 1711.00937, app. A) from the ids idx (n,) in [0, k) of the rows x (n, d, row stride sx),
   in one pass over x and one over the codebook, no (n, k) one-hot:
     counts (k, float64, out)  per-code usage of this batch
     window_counts += counts; cluster_size = decay cluster_size + (1 - decay) counts
     embed_sum = decay embed_sum + (1 - decay) (per-code sums of the assigned rows)
     codebook = embed_sum / Laplace-smoothed cluster_size (rows normalized when cosine).
   State buffers are contiguous float32. Returns 0; 1 when the scratch allocation failed, 2 when an id is outside
   [0, k) (the state untouched in both cases). */
extern "C" int vq_ema_step(const float* x, int64_t n, int64_t d, int64_t sx, const int64_t* idx, int64_t k,
                           double* counts, float* window_counts, float* cluster_size, float* embed_sum, float* codebook,
                           double decay, double eps, int cosine) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= k) return 2;
    float* sums = (float*)calloc((size_t)(k * d), sizeof(float));
    if (!sums) return 1;
    memset(counts, 0, (size_t)k * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        int64_t c = idx[i];
        counts[c] += 1.0;
        float* __restrict s = sums + c * d;
        const float* __restrict xr = x + i * sx;
        for (int64_t j = 0; j < d; j++) s[j] += xr[j];
    }
    const double keep = 1.0 - decay;
    double total = 0.0;
    for (int64_t c = 0; c < k; c++) {
        window_counts[c] = (float)((double)window_counts[c] + counts[c]);
        cluster_size[c] = (float)((double)cluster_size[c] * decay + counts[c] * keep);
        total += cluster_size[c];
    }
    const float ftotal = (float)total;
    for (int64_t c = 0; c < k; c++) {
        float* __restrict e = embed_sum + c * d;
        const float* __restrict s = sums + c * d;
        float* __restrict q = codebook + c * d;
        const float smoothed = (cluster_size[c] + (float)eps) / (ftotal + (float)k * (float)eps) * ftotal;
        for (int64_t j = 0; j < d; j++) {  /* vectorized: the norm (an ordered double sum) is a separate loop */
            e[j] = e[j] * (float)decay + s[j] * (float)keep;
            q[j] = e[j] / smoothed;
        }
        if (cosine) {
            double norm = 0.0;
            for (int64_t j = 0; j < d; j++) norm += (double)q[j] * q[j];
            const float scale = 1.0f / fmaxf((float)sqrt(norm), 1e-12f);
            for (int64_t j = 0; j < d; j++) q[j] *= scale;
        }
    }
    free(sums);
    return 0;
}

/* The quantizer's per-step statistics in one pass over K (one process, CPU): out[0] perplexity exp(-sum p log p) of
   `counts` (0 when nothing was counted), out[1] utilization (share of counts > 0), *dead the codes whose usage share
   is below threshold / K: usage = window_counts, or cluster_size while the window is empty (Quantizer.dead_mask). */
extern "C" void vq_usage_stats(const double* counts, int64_t k, const float* window_counts, const float* cluster_size,
                               double threshold, float* out, int64_t* dead) {
    double total = 0.0, wtotal = 0.0, ctotal = 0.0;
    int64_t used = 0;
    for (int64_t c = 0; c < k; c++) {
        total += counts[c];
        used += counts[c] != 0.0;
        wtotal += window_counts[c];
        ctotal += cluster_size[c];
    }
    double plogp = 0.0;
    const double denom = total > 1.0 ? total : 1.0;
    for (int64_t c = 0; c < k; c++) {
        const double pc = counts[c] / denom;
        if (pc > 0.0) plogp += pc * log(pc);
    }
    out[0] = total > 0.0 ? (float)exp(-plogp) : 0.0f;
    out[1] = (float)((double)used / (double)k);
    const float* usage = wtotal > 0.0 ? window_counts : cluster_size;
    const float limit = fmaxf((float)(wtotal > 0.0 ? wtotal : ctotal), 1e-12f) * (float)(threshold / (double)k);
    int64_t n = 0;
    for (int64_t c = 0; c < k; c++) n += usage[c] < limit;
    *dead = n;
}
"""


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vqstudy")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> Path:
    """Compile SOURCE into the cache (once per source/compiler/CPU) and return the library path."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++/clang++)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE, cxx, version, _cpu_signature(), platform.machine()]).encode()).hexdigest()
    lib = _cache_dir() / f"nearest_{key[:16]}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    base = ["-O3", "-std=c++17", "-ffp-contract=fast", "-fno-math-errno", "-fPIC", "-shared", "-pthread"]
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src = Path(tmp) / "nearest.cpp"
        src.write_text(SOURCE)
        out = Path(tmp) / lib.name
        errors = []
        # -march=native is not known to every compiler/target; without OpenMP the kernel starts its own threads
        for arch in (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []):
            proc = subprocess.run([cxx, *base, *arch, str(src), "-o", str(out)], capture_output=True, text=True,
                                  timeout=300)  # fmt: skip
            if proc.returncode == 0:
                os.replace(out, lib)  # atomic: concurrent builders write the same bytes
                log.info("compiled the nearest-code kernel into %s", lib)
                return lib
            errors.append(proc.stderr.strip()[-2000:])
    raise RuntimeError(f"compiling the nearest-code kernel with {cxx} failed:\n" + "\n".join(errors))


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(_build()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        log.warning("compiled nearest-code kernel unavailable, using the torch blocked path: %s", err)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.vq_nearest.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, ptr, ptr, ctypes.c_int, i64, i64, i64]
    lib.vq_nearest.restype = ctypes.c_int
    lib.vq_ema_step.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ctypes.c_double,
                                ctypes.c_double, ctypes.c_int]
    lib.vq_ema_step.restype = ctypes.c_int
    lib.vq_usage_stats.argtypes = [ptr, i64, ptr, ptr, ctypes.c_double, ptr, ptr]
    lib.vq_usage_stats.restype = None
    return lib


def compiled_available() -> bool:
    """True when the C++ kernel is built (or builds now) and loads; the first call may take about a second."""
    return _library() is not None


def tile_shape() -> tuple[int, int]:
    """(TR rows, TC codes) of the compiled micro-kernel on this CPU."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled nearest-code kernel is unavailable (see the log for the compiler error)")
    return int(lib.vq_tile_rows()), int(lib.vq_tile_codes())


def compiled_plan(n: int, k: int, d: int, threads: int) -> tuple[int, int, int]:
    """(threads, row_block, chunk_tiles) the kernel uses for an (n, d) x (k, d) search."""
    tr, tc = tile_shape()
    threads = max(1, threads) if n * k * d >= MIN_WORK_FOR_THREADS else 1
    # enough row blocks for every thread to pull several (load balance), never below one row tile
    row_block = min(ROW_BLOCK, max(tr, -(-n // (4 * threads))))
    row_block = -(-row_block // tr) * tr
    dp = lanes_width(d)
    chunk_tiles = max(1, (L1_BYTES if dp else L2_BYTES) // (4 * (dp or d) * tc))
    return threads, row_block, chunk_tiles


def lanes_width(d: int) -> int:
    """The padded D of the lanes kernel for this D (4 or 8), or 0 where the tile kernel runs."""
    return 0 if d > LANES_MAX_D else (4 if d <= 4 else 8)


@torch.no_grad()
def nearest_code_compiled(x: torch.Tensor, codebook: torch.Tensor, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N,) int64 and squared distances (N,) float32 of the nearest code, fused in C++ (CPU, fp32)."""
    if x.device.type != "cpu" or codebook.device.type != "cpu":
        raise ValueError(f"backend='compiled' runs on CPU tensors, got x on {x.device} and codebook on {codebook.device}")
    lib = _library()
    if lib is None:
        raise RuntimeError("backend='compiled' needs a C++ compiler (set CXX or install g++); the build failed, see the log")
    x = x.float()
    codebook = codebook.float()
    if x.stride(1) != 1:
        x = x.contiguous()
    if codebook.stride(1) != 1:
        codebook = codebook.contiguous()
    n, d = x.shape
    k = codebook.shape[0]
    indices = torch.empty(n, dtype=torch.long)
    sqdist = torch.empty(n, dtype=torch.float32)
    if n == 0:
        return indices, sqdist
    workers, row_block, chunk_tiles = compiled_plan(n, k, d, torch.get_num_threads() if threads is None else threads)
    rc = lib.vq_nearest(x.data_ptr(), n, d, x.stride(0), codebook.data_ptr(), k, codebook.stride(0),
                        indices.data_ptr(), sqdist.data_ptr(), workers, row_block, chunk_tiles,
                        lanes_width(d))  # fmt: skip
    if rc != 0:
        raise MemoryError(f"compiled nearest-code kernel failed (code {rc}) at N={n}, K={k}, D={d}")
    return indices, sqdist


def ema_step_compiled(x: torch.Tensor, idx: torch.Tensor, window_counts: torch.Tensor, cluster_size: torch.Tensor,
                      embed_sum: torch.Tensor, codebook: torch.Tensor, decay: float, eps: float,
                      cosine: bool) -> torch.Tensor | None:
    """One EMA codebook step in place (see `vq_ema_step` in SOURCE); returns this batch's (K,) float64 usage counts.

    x (N, d) fp32 and idx (N,) int64 ids in [0, K) on the CPU; the state tensors contiguous fp32 CPU, codebook and
    embed_sum (K, d). Returns None, touching nothing, when the kernel is unavailable or an input does not fit
    (the caller then runs its torch path)."""
    lib = _library()
    state = (window_counts, cluster_size, embed_sum, codebook)
    if (lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 2 or x.stride(1) != 1
            or idx.dtype != torch.long or not idx.is_contiguous() or idx.shape != x.shape[:1]
            or any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() for t in state)):
        return None
    k, d = codebook.shape[0], x.shape[1]
    shapes = [tuple(t.shape) for t in state]
    if shapes != [(k,), (k,), (k, d), (k, d)]:
        raise ValueError(f"ema_step_compiled: state shapes (window_counts, cluster_size, embed_sum, codebook) must be "
                         f"[({k},), ({k},), ({k}, {d}), ({k}, {d})] for x of width {d}; got {shapes}")
    counts = torch.empty(k, dtype=torch.float64)
    rc = lib.vq_ema_step(x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), idx.data_ptr(), k, counts.data_ptr(),
                         *(t.data_ptr() for t in state), decay, eps, int(cosine))  # fmt: skip
    if rc == 2:
        raise ValueError(f"ema_step_compiled: code ids must be in [0, {k}), "
                         f"got min {int(idx.min())} max {int(idx.max())}")
    if rc != 0:
        raise MemoryError(f"compiled EMA step could not allocate its (K, d) = ({k}, {d}) scratch")
    increment_version(list(state))  # written outside torch: autograd must still see the in-place change
    return counts


def usage_stats_compiled(counts: torch.Tensor, window_counts: torch.Tensor, cluster_size: torch.Tensor,
                         threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(perplexity, utilization) float32 and the dead-code count int64 (0-d tensors) of a quantizer step, in one C
    pass (see `vq_usage_stats` in SOURCE): the values of `perplexity_and_utilization(counts)` and
    `Quantizer.dead_mask().sum()`. counts (K,) float64, window_counts and cluster_size (K,) float32, all contiguous on
    the CPU; otherwise, or without the kernel, None (the caller runs its torch path)."""
    lib = _library()
    k = counts.shape[0] if counts.ndim == 1 else -1
    if (lib is None or counts.dtype != torch.float64 or k < 1
            or any(t.device.type != "cpu" or not t.is_contiguous() for t in (counts, window_counts, cluster_size))
            or any(t.dtype != torch.float32 or t.shape != (k,) for t in (window_counts, cluster_size))):
        return None
    out = torch.empty(2, dtype=torch.float32)
    dead = torch.empty((), dtype=torch.int64)
    lib.vq_usage_stats(counts.data_ptr(), k, window_counts.data_ptr(), cluster_size.data_ptr(), threshold,
                       out.data_ptr(), dead.data_ptr())  # fmt: skip
    return out[0], out[1], dead


__all__ = ["compiled_available", "compiled_plan", "ema_step_compiled", "nearest_code_compiled", "tile_shape",
           "usage_stats_compiled"]
