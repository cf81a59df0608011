/* The clipped straight-through sign of training, fused with the bfloat16 conversions around a
 * binary convolution whose operands are bfloat16 (bnnkit.nn.bf16). PyTorch needs four passes
 * over the float32 map forward (sign, +0.5, sign, then the cast to bfloat16) and two backward
 * (widen the bfloat16 input gradient, then hardtanh's backward); these are one pass each, with
 * the same bits: sign(x) is +1 for x >= 0, -0.0 and NaN, -1 below 0 (bnnkit.quant.sign); the
 * gradient passes unchanged where low < x < high, and is +0.0 elsewhere, NaN included (ATen's
 * hardtanh_backward). Plain loops: gcc -O3 vectorises both.
 *
 * bnn_sum_bf16 adds the two bfloat16 halves of a binary convolution whose whole sum a bfloat16
 * output would round (bnnkit.nn.bf16.forward_parts): each half is an integer, so widening both
 * and adding them in float32 is exact.
 *
 * bnn_clipped_grad_bf16 may add the clipped gradient to a float32 map `plus` (the gradient the
 * map's other reader sends back), as autograd would add the two: one pass instead of two. */
#include <stdint.h>
#include <string.h>

#include "bconv.h"

#define BF16_PLUS_ONE 0x3F80u
#define BF16_MINUS_ONE 0xBF80u

void bnn_sign_bf16(const float *x, uint16_t *out, int64_t n, int threads)
{
    int64_t i;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i = 0; i < n; i++)
        out[i] = x[i] < 0.0f ? BF16_MINUS_ONE : BF16_PLUS_ONE;
}

static inline float widen(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16; /* bfloat16 is float32's upper half: exact */
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void bnn_sum_bf16(const uint16_t *a, const uint16_t *b, float *out, int64_t n, int threads)
{
    int64_t i;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i = 0; i < n; i++)
        out[i] = widen(a[i]) + widen(b[i]);
}

void bnn_clipped_grad_bf16(const uint16_t *grad, const float *x, const float *plus, float *out, float low,
                           float high, int64_t n, int threads)
{
    int64_t i;
    /* grad is loaded whatever x holds: a load under the condition does not vectorise. plus has a
     * loop of its own: 0 + (-0.0) is +0.0, so adding a zero map instead would change the sign of zeros. */
    if (plus) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (i = 0; i < n; i++) {
            float g = widen(grad[i]);
            out[i] = plus[i] + ((x[i] > low && x[i] < high) ? g : 0.0f);
        }
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i = 0; i < n; i++) {
        float g = widen(grad[i]);
        out[i] = (x[i] > low && x[i] < high) ? g : 0.0f;
    }
}
