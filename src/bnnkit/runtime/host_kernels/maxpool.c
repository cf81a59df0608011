/* The 2x2, stride 2 max-pool of training: float32 maps N x H x W x C (channels last, H and W
 * even, C a multiple of 4), for bnnkit.nn.MaxPool2x2. ATen's kernel stores each output's
 * argmax as an int64 index and its backward zero-fills, then scatters; here one byte says
 * which tap won and the backward writes every input gradient once. Values and gradients
 * are ATen's bit for bit: the taps are read in row order and a later one wins only if
 * greater or NaN. Four-lane vectors (GCC/Clang vector extensions) compile to SSE or NEON. */
#include <stdint.h>
#include <string.h>

#include "bconv.h"

typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));
typedef uint8_t u4 __attribute__((vector_size(4)));

static inline f4 load4(const float *p)
{
    f4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* u ? a : b, lane by lane (u all ones or zero) */
static inline f4 pick(i4 u, f4 a, f4 b) { return (f4)(((i4)a & u) | ((i4)b & ~u)); }

void bnn_maxpool2_forward(const float *x, float *out, uint8_t *tap, int64_t n, int64_t h, int64_t w, int64_t c,
                          int threads)
{
    int64_t ho = h / 2, wo = w / 2, rows = n * ho, r;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (r = 0; r < rows; r++) {
        const float *top = x + 2 * r * w * c, *bottom = top + w * c;
        float *o = out + r * wo * c;
        uint8_t *t = tap + r * wo * c;
        for (int64_t j = 0; j < wo; j++)
            for (int64_t k = 0; k < c; k += 4) {
                int64_t at = 2 * j * c + k;
                f4 m = load4(top + at), v;
                i4 s = {0, 0, 0, 0}, u;
                v = load4(top + at + c);
                u = (v > m) | (v != v);
                m = pick(u, v, m), s = (s & ~u) | (1 & u);
                v = load4(bottom + at);
                u = (v > m) | (v != v);
                m = pick(u, v, m), s = (s & ~u) | (2 & u);
                v = load4(bottom + at + c);
                u = (v > m) | (v != v);
                m = pick(u, v, m), s = (s & ~u) | (3 & u);
                u4 s8 = __builtin_convertvector(s, u4);
                memcpy(o + j * c + k, &m, sizeof m);
                memcpy(t + j * c + k, &s8, sizeof s8);
            }
    }
}

/* grad_x of the taps that won is grad_out, of the others 0 */
void bnn_maxpool2_backward(const float *grad_out, const uint8_t *tap, float *grad_x, int64_t n, int64_t h,
                           int64_t w, int64_t c, int threads)
{
    int64_t ho = h / 2, wo = w / 2, rows = n * ho, r;
    const f4 zero = {0, 0, 0, 0};
#pragma omp parallel for num_threads(threads) schedule(static)
    for (r = 0; r < rows; r++) {
        float *top = grad_x + 2 * r * w * c, *bottom = top + w * c;
        const float *g = grad_out + r * wo * c;
        const uint8_t *t = tap + r * wo * c;
        for (int64_t j = 0; j < wo; j++)
            for (int64_t k = 0; k < c; k += 4) {
                int64_t at = 2 * j * c + k;
                f4 v = load4(g + j * c + k), out;
                u4 s8;
                memcpy(&s8, t + j * c + k, sizeof s8);
                i4 s = __builtin_convertvector(s8, i4);
                out = pick(s == 0, v, zero);
                memcpy(top + at, &out, sizeof out);
                out = pick(s == 1, v, zero);
                memcpy(top + at + c, &out, sizeof out);
                out = pick(s == 2, v, zero);
                memcpy(bottom + at, &out, sizeof out);
                out = pick(s == 3, v, zero);
                memcpy(bottom + at + c, &out, sizeof out);
            }
    }
}
