/* Token-space attention on the CPU, in C (gperceiver.nn.token_space.TokenAttention).

   Compiled on the user's machine on first use by gperceiver.nn.native, with
   -DQUERIES=Q -DWIDTH=D for the layer's query rows (heads x latents) and width,
   both multiples of 8. One pass over each batch row's M normed tokens, R rows
   at a time, does every product that reads them: forward the scores, an online
   softmax and the mixed tokens; backward the scores again (or reads those the
   forward kept), the scores' gradient, the queries' gradient and the tokens'
   (key and value uses summed).
   The torch path of token_space.py makes five or six separate passes of thin
   matrix products over the same tokens instead. Shapes, per batch row b:

     q, grad, mixed, grad_q   (Q, D)  queries (times W_k and the scale), output
                                      gradient, output, queries' gradient
     normed, grad_normed      (M, D)  normed tokens and their gradient
     valid                    (M,)    1 for a token to attend to (NULL: all)
     top, den                 (Q,)    softmax shift and denominator:
                                      a = exp(score - top) / den

   Every array is C-contiguous float32 (valid uint8). Each function handles
   batch rows [b0, b1), so that callers can split work over threads. The code
   is written with GCC's vector extensions (LANES floats a vector): the
   compiler maps them to AVX, AVX-512 or NEON registers, and each block's
   tiles stay in registers. */

#include <stdint.h>
#include <string.h>

#if !defined(QUERIES) || !defined(WIDTH)
#error "compile with -DQUERIES=<heads x latents> -DWIDTH=<width>"
#endif
/* floats a vector and token rows a block: 16 and 8 where AVX-512's 32 wide
   registers hold the tiles (10% faster than 8 and 4 on an AVX-512 Zen 4,
   BENCHMARKS.md, Scale, session 16), else 8 and 2 (AVX2's 16 registers) */
#ifndef LANES
#if defined(__AVX512F__) && QUERIES % 16 == 0 && WIDTH % 16 == 0
#define LANES 16
#define ROWS 8
#else
#define LANES 8
#define ROWS 2
#endif
#endif
#if QUERIES % LANES || WIDTH % LANES
#error "QUERIES and WIDTH must be multiples of LANES"
#endif
#define Q QUERIES
#define D WIDTH
#define QV (Q / LANES) /* vectors per row of Q values */
#define DV (D / LANES)
#define DK (DV % 4 == 0 ? 4 : DV % 2 == 0 ? 2 : 1) /* vectors of D a pass */
#define R ROWS

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef float vfu __attribute__((vector_size(4 * LANES), aligned(4))); /* unaligned */

#define INLINE static inline __attribute__((always_inline))
#define LOAD(p) (*(const vfu *)(p))
#define STORE(p, v) (*(vfu *)(p) = (v))

INLINE vf splat(float x) { return x - (vf){0}; }
INLINE vf select(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }
INLINE vf vmax(vf a, vf b) { return select(a > b, a, b); }
INLINE int any(vi mask) {
    int32_t lanes[LANES];
    memcpy(lanes, &mask, sizeof lanes);
    int on = 0;
    for (int i = 0; i < LANES; i++) on |= lanes[i];
    return on != 0;
}

/* exp(x) to a few ulp for x in [-87, 88], exactly 0 where x is -inf (a masked
   token): exp(x) = 2^k exp(f), f = x - k ln 2, exp(f) by a degree-7 Taylor
   polynomial (|f| < ln 2: relative error < 1e-7) */
INLINE vf vexp(vf x) {
    const vf c = vmax(splat(-87.0f), select(x > splat(88.0f), splat(88.0f), x));
    const vi k = __builtin_convertvector(c * 1.44269504088896341f - 0.5f, vi);
    const vf f = c - __builtin_convertvector(k, vf) * 0.693147180559945f;
    vf y = splat(1.0f / 5040);
    y = y * f + 1.0f / 720;
    y = y * f + 1.0f / 120;
    y = y * f + 1.0f / 24;
    y = y * f + 1.0f / 6;
    y = y * f + 0.5f;
    y = y * f + 1.0f;
    y = y * f + 1.0f;
    const vf scale = (vf)((k + 127) << 23);
    return select(x == splat(-__builtin_inff()), splat(0.0f), y * scale);
}

/* s[r] = n[r] . q[j] over j for a block of R token rows, from the queries
   transposed: qt[d][jv] holds q[j][d] for the 8 j of vector jv */
INLINE void block_scores(const vf qt[D][QV], const float *restrict n, vf s[R][QV]) {
    for (int r = 0; r < R; r++)
        for (int v = 0; v < QV; v++) s[r][v] = splat(0.0f);
    for (int d = 0; d < D; d++)
        for (int r = 0; r < R; r++) {
            const vf x = splat(n[r * D + d]);
            for (int v = 0; v < QV; v++) s[r][v] += x * qt[d][v];
        }
}

/* acc[d][jv] += sum_r n[r][d] w[r][jv]: a (D x Q) transposed accumulator */
INLINE void block_accumulate(vf acc[D][QV], const float *restrict n, const vf w[R][QV]) {
    for (int d = 0; d < D; d++) {
        vf sum[QV];
        for (int v = 0; v < QV; v++) sum[v] = acc[d][v];
        for (int r = 0; r < R; r++) {
            const vf x = splat(n[r * D + d]);
            for (int v = 0; v < QV; v++) sum[v] += x * w[r][v];
        }
        for (int v = 0; v < QV; v++) acc[d][v] = sum[v];
    }
}

/* rows of a block kept: -1 where token r0 + r exists and is valid */
INLINE void block_keep(const uint8_t *restrict valid, int64_t r0, int64_t m, vi keep[R]) {
    for (int r = 0; r < R; r++) {
        const int on = r0 + r < m && (!valid || valid[r0 + r]);
        keep[r] = (vi){0} - on;
    }
}

INLINE void transpose_in(const float *restrict x, vf xt[D][QV]) {
    float *flat = (float *)xt;
    for (int j = 0; j < Q; j++)
        for (int d = 0; d < D; d++) flat[d * Q + j] = x[j * D + d];
}

/* a block's R token rows at n[r0:], zero rows past m (the last block) */
INLINE const float *block_rows(const float *restrict n, int64_t r0, int64_t m,
                               float pad[R * D]) {
    if (r0 + R <= m) return n + r0 * D;
    memset(pad, 0, sizeof(float) * R * D);
    memcpy(pad, n + r0 * D, sizeof(float) * (size_t)(m - r0) * D);
    return pad;
}

/* rows [r0, r0 + R) of a (M, Q) score table, those past m left alone */
INLINE void block_store(float *restrict table, int64_t r0, int64_t m, const vf s[R][QV]) {
    for (int r = 0; r < R && r0 + r < m; r++) memcpy(table + (r0 + r) * Q, s[r], sizeof s[r]);
}

INLINE void block_load(const float *restrict table, int64_t r0, int64_t m, vf s[R][QV]) {
    for (int r = 0; r < R; r++)
        if (r0 + r < m) memcpy(s[r], table + (r0 + r) * Q, sizeof s[r]);
        else memset(s[r], 0, sizeof s[r]);
}

/* mixed[b] = softmax(q[b] n[b]^T) n[b], with its shift `top` (0 for a query
   without valid tokens) and denominator `den` (1 there); the raw scores
   written into `kept` (B, M, Q) unless it is NULL, for the backward pass */
void gp_token_forward(const float *restrict q, const float *restrict normed,
                      const uint8_t *restrict valid, float *restrict mixed,
                      float *restrict top, float *restrict den, float *restrict kept,
                      int64_t b0, int64_t b1,
                      int64_t m) {
    const vf minus_inf = splat(-__builtin_inff());
    for (int64_t b = b0; b < b1; b++) {
        const float *restrict nb = normed + b * m * D;
        const uint8_t *restrict vb = valid ? valid + b * m : NULL;
        vf qt[D][QV], num[D][QV], shift[QV], total[QV];
        float pad[R * D];
        transpose_in(q + b * Q * D, qt);
        memset(num, 0, sizeof num);
        for (int v = 0; v < QV; v++) shift[v] = minus_inf, total[v] = splat(0.0f);
        for (int64_t r0 = 0; r0 < m; r0 += R) {
            const float *restrict n = block_rows(nb, r0, m, pad);
            vf s[R][QV];
            vi keep[R];
            block_scores(qt, n, s);
            if (kept) block_store(kept + b * m * Q, r0, m, s);
            block_keep(vb, r0, m, keep);
            vi grew = {0};
            vf grow[QV];
            for (int v = 0; v < QV; v++) {
                vf most = minus_inf;
                for (int r = 0; r < R; r++) {
                    s[r][v] = select(keep[r], s[r][v], minus_inf);
                    most = vmax(most, s[r][v]);
                }
                const vi up = most > shift[v];
                grew |= up;
                /* what was summed under the old shift is rescaled (0 from -inf) */
                grow[v] = vexp(select(up, shift[v] - most, splat(0.0f)));
                shift[v] = vmax(shift[v], most);
            }
            if (any(grew))
                for (int v = 0; v < QV; v++) {
                    total[v] *= grow[v];
                    for (int d = 0; d < D; d++) num[d][v] *= grow[v];
                }
            for (int v = 0; v < QV; v++) {
                const vf base = select(shift[v] == minus_inf, splat(0.0f), shift[v]);
                for (int r = 0; r < R; r++) {
                    s[r][v] = vexp(s[r][v] - base);
                    total[v] += s[r][v];
                }
            }
            block_accumulate(num, n, s);
        }
        const float *flat = (const float *)num, *sums = (const float *)total;
        const float *shifts = (const float *)shift;
        for (int j = 0; j < Q; j++) {
            const float t = sums[j] > 0.0f ? sums[j] : 1.0f;
            top[b * Q + j] = shifts[j] == -__builtin_inff() ? 0.0f : shifts[j];
            den[b * Q + j] = t;
            for (int d = 0; d < D; d++) mixed[(b * Q + j) * D + d] = flat[d * Q + j] / t;
        }
    }
}

/* the block's token gradients out[r] (+)= sum_j gs[r][j] q[j] + a[r][j] g[j] */
INLINE void block_token_grad(const float *restrict q, const float *restrict g,
                             const vf a[R][QV], const vf gs[R][QV], float out[R * D],
                             const float *prior) {
    const float *af = (const float *)a, *gf = (const float *)gs;
    for (int h = 0; h < DV; h += DK) { /* DK vectors of D at a time */
        vf acc[R][DK];
        for (int r = 0; r < R; r++)
            for (int k = 0; k < DK; k++)
                acc[r][k] = prior ? LOAD(prior + r * D + (h + k) * LANES) : splat(0.0f);
        for (int j = 0; j < Q; j++) {
            vf qj[DK], gj[DK];
            for (int k = 0; k < DK; k++) {
                qj[k] = LOAD(q + j * D + (h + k) * LANES);
                gj[k] = LOAD(g + j * D + (h + k) * LANES);
            }
            for (int r = 0; r < R; r++) {
                const vf sv = splat(gf[r * Q + j]), av = splat(af[r * Q + j]);
                for (int k = 0; k < DK; k++) acc[r][k] += sv * qj[k] + av * gj[k];
            }
        }
        for (int r = 0; r < R; r++)
            for (int k = 0; k < DK; k++) STORE(out + r * D + (h + k) * LANES, acc[r][k]);
    }
}

/* Gradients of gp_token_forward for `grad` of its output: grad_q, and the
   tokens' written into grad_normed (added to what it holds when add is set);
   the scores read from `kept` (the forward's) unless it is NULL */
void gp_token_backward(const float *restrict q, const float *restrict normed,
                       const uint8_t *restrict valid, const float *restrict top,
                       const float *restrict den, const float *restrict grad,
                       const float *restrict mixed, const float *restrict kept,
                       float *restrict grad_q,
                       float *restrict grad_normed, int64_t b0, int64_t b1, int64_t m,
                       int add) {
    for (int64_t b = b0; b < b1; b++) {
        const float *restrict qb = q + b * Q * D, *restrict gb = grad + b * Q * D;
        const float *restrict nb = normed + b * m * D;
        const uint8_t *restrict vb = valid ? valid + b * m : NULL;
        float *restrict ob = grad_normed + b * m * D;
        vf qt[D][QV], gt[D][QV], gqt[D][QV], shift[QV], delta[QV];
        float pad[R * D], out[R * D];
        transpose_in(qb, qt);
        transpose_in(gb, gt);
        memset(gqt, 0, sizeof gqt);
        float *shifts = (float *)shift, *deltas = (float *)delta;
        for (int j = 0; j < Q; j++) {
            float t = 0.0f;
            for (int d = 0; d < D; d++) t += gb[j * D + d] * mixed[(b * Q + j) * D + d];
            deltas[j] = t;
            shifts[j] = top[b * Q + j] + __builtin_logf(den[b * Q + j]);
        }
        for (int64_t r0 = 0; r0 < m; r0 += R) {
            const float *restrict n = block_rows(nb, r0, m, pad);
            vf a[R][QV], gs[R][QV];
            vi keep[R];
            if (kept) /* the forward's scores, else computed again */
                block_load(kept + b * m * Q, r0, m, a);
            else
                block_scores(qt, n, a);
            block_scores(gt, n, gs);
            block_keep(vb, r0, m, keep);
            for (int r = 0; r < R; r++)
                for (int v = 0; v < QV; v++) {
                    a[r][v] = select(keep[r], vexp(a[r][v] - shift[v]), splat(0.0f));
                    gs[r][v] = a[r][v] * (gs[r][v] - delta[v]);
                }
            block_accumulate(gqt, n, gs);
            const int rows = r0 + R <= m ? R : (int)(m - r0);
            if (rows == R) {
                block_token_grad(qb, gb, a, gs, ob + r0 * D, add ? ob + r0 * D : NULL);
            } else {
                block_token_grad(qb, gb, a, gs, out, NULL);
                for (int i = 0; i < rows * D; i++)
                    ob[r0 * D + i] = (add ? ob[r0 * D + i] : 0.0f) + out[i];
            }
        }
        const float *flat = (const float *)gqt;
        for (int j = 0; j < Q; j++)
            for (int d = 0; d < D; d++) grad_q[(b * Q + j) * D + d] = flat[d * Q + j];
    }
}
