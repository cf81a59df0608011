/* Host kernels for binary layers: XNOR-popcount GEMM over channel-packed 64-bit words.
 *
 * Binary activations are HWC: per pixel ceil(C/64) words, channel c at bit c%64 of word
 * c/64 (bit 1 = +1), unused high bits zero. A layer's weights are, per output, the taps'
 * bits packed densely in (kh, kw, C) order into `words` words; outputs are zero-padded
 * to a multiple of BNN_OUTPUT_BLOCK and stored in groups of 8 with word k of the 8
 * outputs side by side: uint64 [O/8][words][8]. bnnkit/runtime/fast.py prepares both;
 * the semantics are those of bnnkit/runtime/numpy_ref.py. */
#ifndef BNNKIT_BCONV_H
#define BNNKIT_BCONV_H

#include <stdint.h>

enum bnn_isa { BNN_PORTABLE = 0, BNN_AVX2 = 1, BNN_AVX512 = 2 };

#define BNN_OUTPUT_BLOCK 16

struct bnn_layer {
    int32_t C, H, W;            /* input map (a dense layer is a 1x1 map) */
    int32_t O, Ho, Wo;          /* output map */
    int32_t kh, kw, sh, sw, ph, pw;
    int32_t pad_factor;         /* binary: padded taps count as -1 (0), 0 (1) or +1 (2) times their weights */
    int32_t words;              /* binary: words of a patch, ceil(kh*kw*C/64) */
    const void *weight;         /* binary: uint64 as above; input: int32 sign masks (see bconv.c) */
    const int32_t *tap_sum;     /* binary, (O, kh*kw): sum of a tap's +-1 weights */
    const int32_t *thresh;      /* NULL: write int32 sums (N, Ho, Wo, O); else packed bits, */
    const uint8_t *flip;        /* bit o = (sum >= thresh[o]) XOR flip[o] (0 or 1) */
};

int bnn_isa_supported(int isa);
int bnn_output_block(void);
/* 0 on success, -1 for an unsupported isa, -2 when out of memory. */
int bnn_binary_conv(const struct bnn_layer *L, const uint64_t *x, int64_t n, void *out, int isa, int threads);
int bnn_input_conv(const struct bnn_layer *L, const uint8_t *x, int64_t n, void *out, int isa, int threads);
/* The roofline micro-benchmark: `reps` calls of the micro-kernel on L1-resident patches
 * (x, 8 of `words` words) and weights (w, 16 outputs as above); returns the bit
 * products computed (0 for an unsupported isa). */
int64_t bnn_popcount_peak(int isa, const uint64_t *x, const uint64_t *w, int32_t words, int64_t reps, int64_t *sink);

/* sign.c: the clipped straight-through sign fused with bfloat16's conversions, over n elements of
 * the same memory layout: x -> sign(x) as bfloat16 bits; a bfloat16 gradient -> float32, 0 where
 * x is not strictly between low and high (NaN included), plus the float32 map `plus` where it is
 * not NULL; two bfloat16 maps -> their float32 sum. */
void bnn_sign_bf16(const float *x, uint16_t *out, int64_t n, int threads);
void bnn_sum_bf16(const uint16_t *a, const uint16_t *b, float *out, int64_t n, int threads);
void bnn_clipped_grad_bf16(const uint16_t *grad, const float *x, const float *plus, float *out, float low,
                           float high, int64_t n, int threads);

/* maxpool.c: the 2x2 max-pool of float32 (bf16: bfloat16) training maps, N x H x W x C (H, W even,
 * C % 4 == 0); tap (N x H/2 x W/2 x C) is the winning tap of each output, 0..3 in row order. */
void bnn_maxpool2_forward(const void *x, void *out, uint8_t *tap, int64_t n, int64_t h, int64_t w, int64_t c,
                          int bf16, int threads);
void bnn_maxpool2_backward(const void *grad_out, const uint8_t *tap, void *grad_x, int64_t n, int64_t h, int64_t w,
                           int64_t c, int bf16, int threads);

/* batchnorm.c: BatchNorm's training pass on rows x C maps (C % 8 == 0), float32 or (x_bf16)
 * bfloat16 in and the input gradient in the same type, ATen's results bit for bit; `chunks` is
 * ATen's thread count (its split of the rows), `partial` chunks x C floats of scratch.
 * y / signs: the float32 output and its sign in bfloat16 (either may be NULL); dy_signs: the
 * gradient of that sign, clipped, as the backward's output gradient: 1 by the output recomputed,
 * 2 by the saved output y, plus `plus` (or NULL), that sum written to `combined`;
 * residual: a float32 map added to the output (a residual block's shortcut).
 * bnn_bn_supported: 0 where the kernels cannot match ATen (no AVX2 and FMA). */
int bnn_bn_supported(void);
void bnn_bn_forward(const void *x, int x_bf16, int64_t rows, int64_t c, int chunks, int threads, float *partial,
                    const float *weight, const float *bias, float *running_mean, float *running_var, double momentum,
                    double eps, float *mean, float *invstd, float *alpha, float *beta, float *y, uint16_t *signs,
                    const float *residual);
void bnn_bn_backward(const void *x, int x_bf16, const void *dy, const float *mean, const float *invstd,
                     const float *weight, int64_t rows, int64_t c, int chunks, int threads, float *partial, float *sum,
                     float *dotp, float *scale, float *grad_mean, void *dx, int dy_signs, const float *bias, float low,
                     float high, float *alpha, float *beta, const float *y, const float *plus, float *combined);

#endif
