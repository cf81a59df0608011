/* The clipped straight-through sign of training, fused with the bfloat16 conversions around a
 * binary convolution whose operands are bfloat16 (bnnkit.nn.bf16). PyTorch needs four passes
 * over the float32 map forward (sign, +0.5, sign, then the cast to bfloat16) and two backward
 * (widen the bfloat16 input gradient, then hardtanh's backward); these are one pass each, with
 * the same bits: sign(x) is +1 for x >= 0, -0.0 and NaN, -1 below 0 (bnnkit.quant.sign); the
 * gradient passes unchanged where low < x < high, and is +0.0 elsewhere, NaN included (ATen's
 * hardtanh_backward). Plain loops: gcc -O3 vectorises both. */
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

void bnn_clipped_grad_bf16(const uint16_t *grad, const float *x, float *out, float low, float high, int64_t n,
                           int threads)
{
    int64_t i;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)grad[i] << 16; /* bfloat16 is float32's upper half: exact */
        float g;
        memcpy(&g, &bits, sizeof g);
        out[i] = (x[i] > low && x[i] < high) ? g : 0.0f;
    }
}
