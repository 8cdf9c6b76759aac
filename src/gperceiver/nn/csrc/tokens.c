/* The marker tokens' allele part on the CPU, in C
   (gperceiver.nn.embedding_kernels.AlleleTokens; numba remains the fallback).

   Compiled on the user's machine on first use by gperceiver.nn.native with
   -DWIDTH=D (a multiple of 8). Token (b, m) is

     position[m] + (1 / P) sum over copies p of (table[a] + per_marker[index[m], a]),
     a = alleles[b, m, p],

   standardized (mean 0, variance 1 over its D values) when rstd is given.
   Shapes: alleles (B, M', P) int64, table (K, D), per_marker (M, K, D) or NULL,
   index (M',) int64 strictly increasing, position (M', D), out and normed
   (B, M', D), rstd (B, M') or NULL. Every array C-contiguous. Each function
   handles markers [m0, m1), so that callers can split work over threads
   without two threads writing one row. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef WIDTH
#error "compile with -DWIDTH=<width>"
#endif
#if WIDTH % 8
#error "WIDTH must be a multiple of 8"
#endif
#define D WIDTH
#if defined(__AVX512F__) && WIDTH % 16 == 0
#define LANES 16
#else
#define LANES 8
#endif
#define DV (D / LANES)
#define MAX_IDS 16 /* allele ids K: real alleles + missing + mask */

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef float vfu __attribute__((vector_size(4 * LANES), aligned(4)));
#define INLINE static inline __attribute__((always_inline))
#define LOAD(p) (*(const vfu *)(p))
#define STORE(p, v) (*(vfu *)(p) = (v))

INLINE float lane_sum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* the tokens of markers [m0, m1) of every batch row; 1 on success, 0 when
   there are more allele ids than MAX_IDS or an allele id is outside 0..K-1
   (then `out` is partly written) */
int gp_tokens_forward(const int64_t *restrict alleles, const float *restrict table,
                      const float *restrict per_marker, const int64_t *restrict index,
                      const float *restrict position, float eps, float *restrict out,
                      float *restrict rstd, int64_t m0, int64_t m1, int64_t batch,
                      int64_t markers, int64_t ploidy, int64_t ids) {
    if (ids > MAX_IDS) return 0;
    const float share = 1.0f / (float)ploidy;
    for (int64_t m = m0; m < m1; m++) {
        vf base[MAX_IDS][DV], pos[DV]; /* (table + own row) / P per id */
        const float *restrict own = per_marker ? per_marker + index[m] * ids * D : NULL;
        for (int64_t a = 0; a < ids; a++)
            for (int v = 0; v < DV; v++) {
                vf t = LOAD(table + a * D + v * LANES);
                if (own) t += LOAD(own + a * D + v * LANES);
                base[a][v] = t * share;
            }
        for (int v = 0; v < DV; v++) pos[v] = LOAD(position + m * D + v * LANES);
        for (int64_t b = 0; b < batch; b++) {
            const int64_t *restrict ab = alleles + (b * markers + m) * ploidy;
            vf row[DV];
            for (int v = 0; v < DV; v++) row[v] = pos[v];
            for (int64_t p = 0; p < ploidy; p++) {
                if ((uint64_t)ab[p] >= (uint64_t)ids) return 0;
                for (int v = 0; v < DV; v++) row[v] += base[ab[p]][v];
            }
            float *restrict o = out + (b * markers + m) * D;
            if (rstd) { /* on the row in registers */
                vf sum = row[0];
                for (int v = 1; v < DV; v++) sum += row[v];
                const float mean = lane_sum(sum) / D;
                vf sq = (row[0] - mean) * (row[0] - mean);
                for (int v = 1; v < DV; v++) sq += (row[v] - mean) * (row[v] - mean);
                const float scale = 1.0f / sqrtf(lane_sum(sq) / D + eps);
                for (int v = 0; v < DV; v++) row[v] = (row[v] - mean) * scale;
                rstd[b * markers + m] = scale;
            }
            for (int v = 0; v < DV; v++) STORE(o + v * LANES, row[v]);
        }
    }
    return 1;
}

/* Gradients from `grad` of the tokens (of the standardized ones, `normed`,
   when rstd is given) for the markers of parts [p0, p1), part c holding
   markers [c step, (c + 1) step): grad_position's rows and grad_per_marker's
   rows index[m] written (or NULL), and part c's sum of the shared table's
   gradient written into parts[c] (K, D). A fixed split into parts, whatever
   the threads, makes the table's gradient the same on any number of them.
   1 on success, 0 as gp_tokens_forward. */
int gp_tokens_backward(const int64_t *restrict alleles, const int64_t *restrict index,
                       const float *restrict grad, const float *restrict normed,
                       const float *restrict rstd, float *restrict parts,
                       float *restrict grad_per_marker, float *restrict grad_position,
                       int64_t p0, int64_t p1, int64_t step, int64_t batch, int64_t markers,
                       int64_t ploidy, int64_t ids) {
    if (ids > MAX_IDS) return 0;
    const float share = 1.0f / (float)ploidy;
    for (int64_t c = p0; c < p1; c++) {
        vf shared[MAX_IDS][DV];
        memset(shared, 0, sizeof shared);
        const int64_t m1 = (c + 1) * step < markers ? (c + 1) * step : markers;
        for (int64_t m = c * step; m < m1; m++) {
            vf own[MAX_IDS][DV], pos[DV];
            memset(own, 0, sizeof own);
            memset(pos, 0, sizeof pos);
            for (int64_t b = 0; b < batch; b++) {
                const int64_t at = b * markers + m;
                vf row[DV];
                for (int v = 0; v < DV; v++) row[v] = LOAD(grad + at * D + v * LANES);
                if (rstd) { /* through the standardization: r (g - mean g - y mean gy) */
                    vf y[DV], sg = row[0], sgy;
                    for (int v = 0; v < DV; v++) y[v] = LOAD(normed + at * D + v * LANES);
                    sgy = row[0] * y[0];
                    for (int v = 1; v < DV; v++) sg += row[v], sgy += row[v] * y[v];
                    const float mean_g = lane_sum(sg) / D, mean_gy = lane_sum(sgy) / D;
                    const float r = rstd[at];
                    for (int v = 0; v < DV; v++)
                        row[v] = r * (row[v] - mean_g - y[v] * mean_gy);
                }
                for (int v = 0; v < DV; v++) pos[v] += row[v];
                const int64_t *restrict ab = alleles + at * ploidy;
                for (int64_t p = 0; p < ploidy; p++) {
                    if ((uint64_t)ab[p] >= (uint64_t)ids) return 0;
                    for (int v = 0; v < DV; v++) own[ab[p]][v] += row[v];
                }
            }
            for (int v = 0; v < DV; v++) STORE(grad_position + m * D + v * LANES, pos[v]);
            float *restrict target =
                grad_per_marker ? grad_per_marker + index[m] * ids * D : NULL;
            for (int64_t a = 0; a < ids; a++)
                for (int v = 0; v < DV; v++) {
                    const vf g = own[a][v] * share;
                    shared[a][v] += g;
                    if (target) STORE(target + a * D + v * LANES, g);
                }
        }
        for (int64_t a = 0; a < ids; a++)
            for (int v = 0; v < DV; v++) STORE(parts + (c * ids + a) * D + v * LANES, shared[a][v]);
    }
    return 1;
}
