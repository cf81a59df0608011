/* The 2x2, stride 2 max-pool of training: float32 maps N x H x W x C (channels last, H and W
 * even, C a multiple of 4), for bnnkit.nn.MaxPool2x2. ATen's kernel stores each output's
 * argmax as an int64 index and its backward zero-fills, then scatters; here one byte says
 * which tap won and the backward writes every input gradient once. Values and gradients
 * are ATen's bit for bit: the taps are read in row order and a later one wins only if
 * greater or NaN. Four-lane vectors (GCC/Clang vector extensions) compile to SSE or NEON.
 *
 * With `bf16` the maps (and gradients) are bfloat16 instead, the output of a bfloat16
 * convolution on its way to a BatchNorm that takes it so: each value is widened exactly to
 * compare, and the winner's own bits are stored. */
#include <stdint.h>
#include <string.h>

#include "bconv.h"

typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));
typedef uint8_t u4 __attribute__((vector_size(4)));
typedef uint16_t h4 __attribute__((vector_size(8)));

/* four values at element `at` of a float32 or (bf16) bfloat16 map, as float32 (exact) */
static inline f4 load4(const void *p, int64_t at, int bf16)
{
    if (bf16) {
        h4 h;
        memcpy(&h, (const uint16_t *)p + at, sizeof h);
        return (f4)(__builtin_convertvector(h, i4) << 16);
    }
    f4 v;
    memcpy(&v, (const float *)p + at, sizeof v);
    return v;
}

/* the inverse of load4 for values that a bfloat16 holds exactly: the top half of their bits */
static inline void store4(void *p, int64_t at, f4 v, int bf16)
{
    if (bf16) {
        h4 h = __builtin_convertvector((i4)v >> 16, h4);
        memcpy((uint16_t *)p + at, &h, sizeof h);
    } else {
        memcpy((float *)p + at, &v, sizeof v);
    }
}

/* u ? a : b, lane by lane (u all ones or zero) */
static inline f4 pick(i4 u, f4 a, f4 b) { return (f4)(((i4)a & u) | ((i4)b & ~u)); }

void bnn_maxpool2_forward(const void *x, void *out, uint8_t *tap, int64_t n, int64_t h, int64_t w, int64_t c,
                          int bf16, int threads)
{
    int64_t ho = h / 2, wo = w / 2, rows = n * ho, r;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (r = 0; r < rows; r++) {
        int64_t top = 2 * r * w * c, bottom = top + w * c, o = r * wo * c;
        uint8_t *t = tap + o;
        for (int64_t j = 0; j < wo; j++)
            for (int64_t k = 0; k < c; k += 4) {
                int64_t at = 2 * j * c + k;
                f4 m = load4(x, top + at, bf16), v;
                i4 s = {0, 0, 0, 0}, u;
                v = load4(x, top + at + c, bf16);
                u = (v > m) | (v != v);
                m = pick(u, v, m), s = (s & ~u) | (1 & u);
                v = load4(x, bottom + at, bf16);
                u = (v > m) | (v != v);
                m = pick(u, v, m), s = (s & ~u) | (2 & u);
                v = load4(x, bottom + at + c, bf16);
                u = (v > m) | (v != v);
                m = pick(u, v, m), s = (s & ~u) | (3 & u);
                u4 s8 = __builtin_convertvector(s, u4);
                store4(out, o + j * c + k, m, bf16);
                memcpy(t + j * c + k, &s8, sizeof s8);
            }
    }
}

/* grad_x of the taps that won is grad_out, of the others 0 */
void bnn_maxpool2_backward(const void *grad_out, const uint8_t *tap, void *grad_x, int64_t n, int64_t h, int64_t w,
                           int64_t c, int bf16, int threads)
{
    int64_t ho = h / 2, wo = w / 2, rows = n * ho, r;
    const f4 zero = {0, 0, 0, 0};
#pragma omp parallel for num_threads(threads) schedule(static)
    for (r = 0; r < rows; r++) {
        int64_t top = 2 * r * w * c, bottom = top + w * c, g = r * wo * c;
        const uint8_t *t = tap + g;
        for (int64_t j = 0; j < wo; j++)
            for (int64_t k = 0; k < c; k += 4) {
                int64_t at = 2 * j * c + k;
                f4 v = load4(grad_out, g + j * c + k, bf16);
                u4 s8;
                memcpy(&s8, t + j * c + k, sizeof s8);
                i4 s = __builtin_convertvector(s8, i4);
                store4(grad_x, top + at, pick(s == 0, v, zero), bf16);
                store4(grad_x, top + at + c, pick(s == 1, v, zero), bf16);
                store4(grad_x, bottom + at, pick(s == 2, v, zero), bf16);
                store4(grad_x, bottom + at + c, pick(s == 3, v, zero), bf16);
            }
    }
}
