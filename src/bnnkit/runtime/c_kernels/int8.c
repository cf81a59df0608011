/* The int8 kernels of the generated C (bnnkit.runtime.c): the baseline that a binary network
   is measured against. Sections and markers as in kernels.c, whose sections these follow.

   Layouts: i8 tensors CHW, one byte per value, in the uint32_t arena. int8 weights packed four
   to a uint32_t word, byte j of a word in bits 8j..8j+7, each output channel's row padded with
   zero bytes to whole words (its taps in (c, ky, kx) order; int8_conv's words hold theirs in
   the order its section says). Little-endian targets only (the Cortex-M cores, x86, AArch64):
   two int16 taps are read as one word.

   Products go four taps at a time. With the DSP extension (__ARM_FEATURE_DSP: Cortex-M4, M7)
   SXTB16 sign-extends bytes 0 and 2 (and, rotated by 8, bytes 1 and 3) of a word into two
   int16 halves and SMLAD adds both halves' products to the accumulator in one instruction;
   elsewhere plain C does the same sums. The graph bounds every sum below 2**31 (the int8 shape
   rules in bnnkit.graph.ops), so both give the same int32, and requantization is in int64
   (its right shift of a negative value is arithmetic, as on every compiler bnnkit builds with). */
#include <stddef.h>
#include <stdint.h>

/* bnnkit:kernel int8_mac */
#include <string.h> /* memcpy: two int16 taps read as one word, without breaking aliasing rules */
#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

static inline int32_t int8_sext8(uint32_t v)
{
    return (int32_t)(v & 0xffu) - (int32_t)((v & 0x80u) << 1);
}

static inline int32_t int8_sext16(uint32_t v)
{
    return (int32_t)(v & 0xffffu) - (int32_t)((v & 0x8000u) << 1);
}

static inline uint32_t int8_pack2(int32_t lo, int32_t hi)
{
    return ((uint32_t)lo & 0xffffu) | ((uint32_t)hi << 16);
}

/* The four int8 values of word v as two int16 pairs: *a = (v0, v2), *b = (v1, v3). */
static inline void int8_pairs(uint32_t v, uint32_t *a, uint32_t *b)
{
#if defined(__ARM_FEATURE_DSP)
    *a = (uint32_t)__sxtb16((int8x4_t)v);
    *b = (uint32_t)__sxtb16((int8x4_t)((v >> 8) | (v << 24)));
#else
    *a = int8_pack2(int8_sext8(v), int8_sext8(v >> 16));
    *b = int8_pack2(int8_sext8(v >> 8), int8_sext8(v >> 24));
#endif
}

/* acc + the products of the int16 pairs a and b with the pairs int8_pairs makes of weight
   word w: a with bytes (0, 2), b with bytes (1, 3). */
static inline int32_t int8_mac4(uint32_t a, uint32_t b, uint32_t w, int32_t acc)
{
    uint32_t wa, wb;
    int8_pairs(w, &wa, &wb);
#if defined(__ARM_FEATURE_DSP)
    acc = __smlad((int16x2_t)a, (int16x2_t)wa, acc);
    return __smlad((int16x2_t)b, (int16x2_t)wb, acc);
#else
    return acc + int8_sext16(a) * int8_sext16(wa) + int8_sext16(a >> 16) * int8_sext16(wa >> 16) +
           int8_sext16(b) * int8_sext16(wb) + int8_sext16(b >> 16) * int8_sext16(wb >> 16);
#endif
}

/* bnnkit:kernel int8_requant */
/* (acc * mult + 2**(shift-1)) >> shift, clamped to [lo, 127]: round half up. Computed as
   ((p >> (shift-1)) + 1) >> 1 with p = acc * mult, the same value (floor of a floor), and for
   shift > 32 (every calibrated layer's) from p's high word alone: no 64-bit shift by a variable
   amount, which costs a Cortex-M some 20 instructions. */
static inline int8_t int8_requant(int32_t acc, int32_t mult, int32_t shift, int32_t lo)
{
    int64_t p = (int64_t)acc * mult;
    if (shift > 32) {
        int32_t t = ((int32_t)(p >> 32) >> (shift - 33)) + 1; /* |p| < 2**62: no overflow */
        t >>= 1;
        return (int8_t)(t < lo ? lo : t > 127 ? 127 : t);
    } else {
        int64_t y = ((p >> (shift - 1)) + 1) >> 1;
        return (int8_t)(y < lo ? lo : y > 127 ? 127 : y);
    }
}

/* bnnkit:kernel int8_conv needs int8_mac int8_requant */
/* An int8 convolution with its requantization. Its weight words hold their four taps in the
   order (t0, t2, t1, t3), so that int8_pairs gives the pairs (t0, t1) and (t2, t3): those of
   the patch, which is a plain int16 array in tap order. */
struct conv8 {
    int C, H, W; /* input layout */
    int O, KH, KW, SH, SW, PH, PW;
    int Ho, Wo;        /* output */
    int wpo;           /* weight words per output channel: ceil(C * KH * KW / 4) */
    const uint32_t *w; /* O rows of wpo words */
    const int32_t *bias, *mult, *shift;
    const int8_t *lo; /* per output channel: 0 with a fused ReLU, else -128 */
    int16_t *patch;   /* 4 * wpo values of scratch */
};

/* One output pixel's taps, (c, ky, kx) in order, extended to int16 once for every output
   channel; padded taps and those that round the row up to whole words are 0. */
static void int8_patch(const struct conv8 *p, const int8_t *x, int oy, int ox)
{
    int c, i, j, k = 0, y0 = oy * p->SH - p->PH, x0 = ox * p->SW - p->PW;
    int16_t *out = p->patch;
    for (c = 0; c < p->C; c++)
        for (i = 0; i < p->KH; i++) {
            int iy = y0 + i;
            const int8_t *row = x + (c * p->H + iy) * p->W;
            if (iy < 0 || iy >= p->H) {
                for (j = 0; j < p->KW; j++)
                    out[k++] = 0;
                continue;
            }
            for (j = 0; j < p->KW; j++) {
                int ix = x0 + j;
                out[k++] = (int16_t)(ix >= 0 && ix < p->W ? row[ix] : 0);
            }
        }
    while (k & 3)
        out[k++] = 0;
}

static void int8_conv(const struct conv8 *p, const int8_t *x, int8_t *y)
{
    int oy, ox, o, q, plane = p->Ho * p->Wo;
    for (oy = 0; oy < p->Ho; oy++)
        for (ox = 0; ox < p->Wo; ox++) {
            int8_t *at = y + oy * p->Wo + ox;
            int8_patch(p, x, oy, ox);
            /* two output channels per pass: each pair of patch words is loaded once for both */
            for (o = 0; o + 1 < p->O; o += 2) {
                const uint32_t *w0 = p->w + o * p->wpo, *w1 = w0 + p->wpo;
                const int16_t *patch = p->patch;
                int32_t acc0 = p->bias[o], acc1 = p->bias[o + 1];
                for (q = 0; q < p->wpo; q++, patch += 4) {
                    uint32_t a, b;
                    memcpy(&a, patch, 4);
                    memcpy(&b, patch + 2, 4);
                    acc0 = int8_mac4(a, b, w0[q], acc0);
                    acc1 = int8_mac4(a, b, w1[q], acc1);
                }
                at[o * plane] = int8_requant(acc0, p->mult[o], p->shift[o], p->lo[o]);
                at[(o + 1) * plane] = int8_requant(acc1, p->mult[o + 1], p->shift[o + 1], p->lo[o + 1]);
            }
            if (o < p->O) {
                const uint32_t *w0 = p->w + o * p->wpo;
                const int16_t *patch = p->patch;
                int32_t acc0 = p->bias[o];
                for (q = 0; q < p->wpo; q++, patch += 4) {
                    uint32_t a, b;
                    memcpy(&a, patch, 4);
                    memcpy(&b, patch + 2, 4);
                    acc0 = int8_mac4(a, b, w0[q], acc0);
                }
                at[o * plane] = int8_requant(acc0, p->mult[o], p->shift[o], p->lo[o]);
            }
        }
}

/* bnnkit:kernel int8_dense needs int8_mac */
/* x: the i8 input as whole words (the bytes past F are multiplied by the zero padding of the
   weight rows), w: O rows of wpo words; out: bias + x . w per output. */
static void int8_dense(const uint32_t *x, int wpo, int O, const uint32_t *w, const int32_t *bias, int32_t *out)
{
    int o, q;
    for (o = 0; o < O; o++, w += wpo) {
        int32_t acc = bias[o];
        for (q = 0; q < wpo; q++) {
            uint32_t a, b;
            int8_pairs(x[q], &a, &b);
            acc = int8_mac4(a, b, w[q], acc);
        }
        out[o] = acc;
    }
}

/* bnnkit:kernel requantize needs int8_requant */
static void requantize(const int32_t *x, int C, int HW, const int32_t *mult, const int32_t *shift, const int8_t *lo,
                       int8_t *out)
{
    int c, i;
    for (c = 0; c < C; c++)
        for (i = 0; i < HW; i++, x++)
            *out++ = int8_requant(*x, mult[c], shift[c], lo[c]);
}

/* bnnkit:kernel quantize_input */
/* u8 pixels -> i8: x >> 1. */
static void quantize_input(const uint8_t *x, int n, int8_t *out)
{
    int i;
    for (i = 0; i < n; i++)
        out[i] = (int8_t)(x[i] >> 1);
}

/* bnnkit:kernel maxpool_i8 needs maxpool */
MAXPOOL_KERNEL(maxpool_i8, int8_t, GREATER_INT)
