/* The TV-L1 inner iterations of extract/flow/tvl1_inner.py, one fused pass per iteration.
 *
 * Why by hand: inductor turns an iteration into about five loop nests that each read the
 * arrays again (docs/benchmarks.md, "End to end"); here an iteration reads u, p, the warped
 * gradient, |grad|^2 and rho_c once and writes u and p once. The dual update of row y - 1
 * needs the new flow of rows y - 1 and y, so it runs one row behind the primal update, in
 * place: when row y's primal update reads p of rows y and y - 1, neither has been updated yet.
 *
 * The arithmetic is the Python loop's, operation for operation in float32 (built with
 * -ffp-contract=off, no fast-math), so each iteration gives the eager loop's values; only the
 * stopping rule's mean is summed in another order. A pair that meets the rule stops at once,
 * as the masked eager loop leaves it unchanged from then on; inactive pairs are skipped.
 *
 * Layout: u, px, py, grad (B, 2, H, W) and grad_sq, rho_c (B, 1, H, W), contiguous float32;
 * active (B) bytes. u, px, py and active are updated in place.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Thresholding step and primal update at pixel i; returns the squared change of the flow. */
static inline float primal(float *u0, float *u1, const float *px0, const float *px1,
                           const float *py0, const float *py1, const float *g0,
                           const float *g1, const float *gs, const float *rc, int64_t i,
                           float left0, float left1, float top0, float top1, float l_t,
                           float theta) {
    float rho = rc[i] + (g0[i] * u0[i] + g1[i] * u1[i]);
    float gsq = gs[i];
    float bound = l_t * gsq;
    float middle = gsq > FLT_EPSILON ? -rho / gsq : 0.0f;
    float step = rho < -bound ? l_t : (rho > bound ? -l_t : middle);
    float v0 = u0[i] + step * g0[i];
    float v1 = u1[i] + step * g1[i];
    float n0 = v0 + theta * (px0[i] - left0 + py0[i] - top0);
    float n1 = v1 + theta * (px1[i] - left1 + py1[i] - top1);
    float d0 = n0 - u0[i], d1 = n1 - u1[i];
    u0[i] = n0;
    u1[i] = n1;
    return d0 * d0 + d1 * d1;
}

/* Dual update of one component at pixel i from the forward differences ux, uy. */
static inline void dual(float *px, float *py, int64_t i, float ux, float uy, float taut) {
    float norm = 1.0f + taut * sqrtf(ux * ux + uy * uy);
    px[i] = (px[i] + taut * ux) / norm;
    py[i] = (py[i] + taut * uy) / norm;
}

/* Dual update of row `off` (its first index); `below` is 0 on the last row (uy = 0). */
static void dual_row(const float *u0, const float *u1, float *px0, float *px1, float *py0,
                     float *py1, int64_t off, int64_t w, int64_t below, float taut) {
#pragma omp simd
    for (int64_t x = 0; x < w - 1; x++) {
        int64_t i = off + x;
        float uy0 = below ? u0[i + w] - u0[i] : 0.0f;
        float uy1 = below ? u1[i + w] - u1[i] : 0.0f;
        dual(px0, py0, i, u0[i + 1] - u0[i], uy0, taut);
        dual(px1, py1, i, u1[i + 1] - u1[i], uy1, taut);
    }
    int64_t i = off + w - 1; /* last column: ux = 0 */
    dual(px0, py0, i, 0.0f, below ? u0[i + w] - u0[i] : 0.0f, taut);
    dual(px1, py1, i, 0.0f, below ? u1[i + w] - u1[i] : 0.0f, taut);
}

/* One iteration on one pair; returns the sum of squared changes of the flow. */
static double iterate(float *u0, float *u1, float *px0, float *px1, float *py0, float *py1,
                      const float *g0, const float *g1, const float *gs, const float *rc,
                      const float *zeros, int64_t h, int64_t w, float l_t, float theta,
                      float taut) {
    double change = 0.0;
    for (int64_t y = 0; y < h; y++) {
        int64_t off = y * w;
        const float *top0 = y ? py0 + off - w : zeros, *top1 = y ? py1 + off - w : zeros;
        float acc = primal(u0, u1, px0, px1, py0, py1, g0, g1, gs, rc, off, 0.0f, 0.0f,
                           top0[0], top1[0], l_t, theta);
#pragma omp simd reduction(+ : acc)
        for (int64_t x = 1; x < w; x++) {
            int64_t i = off + x;
            acc += primal(u0, u1, px0, px1, py0, py1, g0, g1, gs, rc, i, px0[i - 1],
                          px1[i - 1], top0[x], top1[x], l_t, theta);
        }
        change += acc;
        if (y > 0) dual_row(u0, u1, px0, px1, py0, py1, off - w, w, 1, taut);
    }
    dual_row(u0, u1, px0, px1, py0, py1, (h - 1) * w, w, 0, taut);
    return change;
}

/* Up to `count` iterations on every active pair; returns 0, or -1 when out of memory. */
int tvl1_inner(float *u, float *px, float *py, uint8_t *active, const float *grad,
               const float *grad_sq, const float *rho_c, int64_t batch, int64_t h, int64_t w,
               float l_t, float theta, float taut, float threshold, int64_t count) {
    float *zeros = calloc((size_t)w, sizeof(float));
    if (!zeros) return -1;
    int64_t plane = h * w;
    for (int64_t b = 0; b < batch; b++) {
        float *u0 = u + 2 * b * plane, *px0 = px + 2 * b * plane, *py0 = py + 2 * b * plane;
        const float *g0 = grad + 2 * b * plane;
        for (int64_t k = 0; k < count && active[b]; k++) {
            double change = iterate(u0, u0 + plane, px0, px0 + plane, py0, py0 + plane, g0,
                                    g0 + plane, grad_sq + b * plane, rho_c + b * plane, zeros,
                                    h, w, l_t, theta, taut);
            if (!((float)(change / (double)(2 * plane)) > threshold)) active[b] = 0;
        }
    }
    free(zeros);
    return 0;
}
