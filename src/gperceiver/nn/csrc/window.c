/* The decoder's window attention on the CPU, in C (gperceiver.nn.window_kernels).

   Compiled on the user's machine on first use by gperceiver.nn.native, with
   -DHEADS=H -DWIDTH=D for the model's heads and width, so every per-target tile
   has a size known to the compiler and stays in registers or L1. The same
   arithmetic as the numba kernels of window_kernels.py, which remain the
   fallback; shapes and letters as there:

     q, grad, grad_q   (H, N, D)  per-target queries, output gradient
     bias, weights     (H, N, W)  score offsets, softmax weights
     inside            (N, W)     1 where the neighbour is in the sequence
     index             (N, W)     row of each neighbour in normed
     normed, grad_norm (R, D)     the normed tokens and their gradient

   Every array is C-contiguous float32 (index int64, inside uint8). Each
   function handles targets [n0, n1) so that callers can split work over
   threads; the backward's split must follow batch rows, whose targets read
   disjoint token rows [r0, r1). */

#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(HEADS) || !defined(WIDTH)
#error "compile with -DHEADS=<heads> -DWIDTH=<width>"
#endif
#define H HEADS
#define D WIDTH

/* scores[h, n, w] = q[h, n] . normed[index[n, w]] + bias[h, n, w]; -inf outside */
void gp_window_scores(const float *restrict q, const float *restrict bias,
                      const uint8_t *restrict inside, const float *restrict normed,
                      const int64_t *restrict index, float *restrict out, int64_t n0,
                      int64_t n1, int64_t n_targets, int64_t near) {
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t w = 0; w < near; w++) {
            if (!inside[n * near + w]) {
                for (int h = 0; h < H; h++) out[(h * n_targets + n) * near + w] = -INFINITY;
                continue;
            }
            const float *restrict row = normed + index[n * near + w] * D;
            for (int h = 0; h < H; h++) {
                const float *restrict qh = q + (h * n_targets + n) * D;
                float acc = 0.0f;
                for (int d = 0; d < D; d++) acc += qh[d] * row[d];
                out[(h * n_targets + n) * near + w] = acc + bias[(h * n_targets + n) * near + w];
            }
        }
    }
}

/* out[h, n] = sum_w weights[h, n, w] normed[index[n, w]] */
void gp_window_mix(const float *restrict weights, const float *restrict normed,
                   const int64_t *restrict index, float *restrict out, int64_t n0,
                   int64_t n1, int64_t n_targets, int64_t near) {
    for (int64_t n = n0; n < n1; n++) {
        float acc[H][D];
        memset(acc, 0, sizeof acc);
        for (int64_t w = 0; w < near; w++) {
            const float *restrict row = normed + index[n * near + w] * D;
            for (int h = 0; h < H; h++) {
                const float a = weights[(h * n_targets + n) * near + w];
                for (int d = 0; d < D; d++) acc[h][d] += a * row[d];
            }
        }
        for (int h = 0; h < H; h++) memcpy(out + (h * n_targets + n) * D, acc[h], sizeof acc[h]);
    }
}

/* Gradients of mix(softmax(scores)) for targets [n0, n1): grad_q, grad_bias
   (the scores' gradient), and the tokens' added into grad_normed rows
   [r0, r1), which are zeroed first when zero is set. */
void gp_window_backward(const float *restrict q, const float *restrict normed,
                        const int64_t *restrict index, const float *restrict weights,
                        const float *restrict grad, float *restrict grad_q,
                        float *restrict grad_bias, float *restrict grad_normed, int64_t n0,
                        int64_t n1, int64_t n_targets, int64_t near, int64_t r0, int64_t r1,
                        int zero) {
    if (zero) memset(grad_normed + r0 * D, 0, (size_t)(r1 - r0) * D * sizeof(float));
    float s[H][near];
    for (int64_t n = n0; n < n1; n++) {
        float qn[H][D], gn[H][D], gq[H][D];
        for (int h = 0; h < H; h++) {
            memcpy(qn[h], q + (h * n_targets + n) * D, sizeof qn[h]);
            memcpy(gn[h], grad + (h * n_targets + n) * D, sizeof gn[h]);
        }
        memset(gq, 0, sizeof gq);
        for (int64_t w = 0; w < near; w++) { /* the weights' gradient */
            const float *restrict row = normed + index[n * near + w] * D;
            for (int h = 0; h < H; h++) {
                float acc = 0.0f;
                for (int d = 0; d < D; d++) acc += gn[h][d] * row[d];
                s[h][w] = acc;
            }
        }
        for (int h = 0; h < H; h++) { /* through the softmax */
            const float *restrict a = weights + (h * n_targets + n) * near;
            float total = 0.0f;
            for (int64_t w = 0; w < near; w++) total += s[h][w] * a[w];
            for (int64_t w = 0; w < near; w++) {
                s[h][w] = a[w] * (s[h][w] - total);
                grad_bias[(h * n_targets + n) * near + w] = s[h][w];
            }
        }
        for (int64_t w = 0; w < near; w++) { /* queries' and tokens' gradients */
            const int64_t r = index[n * near + w];
            const float *restrict row = normed + r * D;
            float spread[D];
            memset(spread, 0, sizeof spread);
            for (int h = 0; h < H; h++) {
                const float sv = s[h][w], av = weights[(h * n_targets + n) * near + w];
                for (int d = 0; d < D; d++) {
                    gq[h][d] += sv * row[d];
                    spread[d] += sv * qn[h][d] + av * gn[h][d];
                }
            }
            float *restrict out = grad_normed + r * D;
            for (int d = 0; d < D; d++) out[d] += spread[d];
        }
        for (int h = 0; h < H; h++) memcpy(grad_q + (h * n_targets + n) * D, gq[h], sizeof gq[h]);
    }
}
