/* The fixed-point kernels of the generated C (bnnkit.runtime.c): the real-valued stream in q32
   for cores without an FPU. Sections and markers as in kernels.c, whose sections these follow.

   A q32 tensor is CHW int32, raw values of raw * 2**-F (F is the graph's: no kernel needs it).
   Integers throughout, no float: products of two int32 in int64 (one SMULL or SMLAL on a
   Cortex-M3), a right shift that rounds half up, and saturation to +-(2**31 - 1). The graph's
   shape rules bound every product and sum by 2**62 (bnnkit.graph.ops), so no int64 overflows,
   and a right shift of a negative value is arithmetic, as on every compiler bnnkit builds with
   (int8.c relies on the same). */
#include <stddef.h>
#include <stdint.h>

/* bnnkit:kernel q_arith */
/* rnd(v, s) = (v + (2**s >> 1)) >> s for |v| <= 2**62, 0 <= s <= 62: computed as
   ((v >> (s-1)) + 1) >> 1, the same value (floor of a floor), and above s = 32 from v's high
   word alone (|v >> 32| <= 2**30: the + 1 cannot overflow), so that no 64-bit shift by a
   variable amount runs where a 32-bit one does. */
static inline int64_t q_rnd(int64_t v, int32_t s)
{
    if (s > 32)
        return (((int32_t)(v >> 32) >> (s - 33)) + 1) >> 1;
    if (s > 0)
        return ((v >> (s - 1)) + 1) >> 1;
    return v;
}

/* v clamped to +-(2**31 - 1): never INT32_MIN, the threshold kernel's constant-channel marker. */
static inline int32_t q_sat(int64_t v)
{
    return (int32_t)(v > 2147483647 ? 2147483647 : v < -2147483647 ? -2147483647 : v);
}

/* bnnkit:kernel affine_q needs q_arith */
/* sat(rnd(x * mult[c], shift[c]) + bias[c]), x an image's pixels (u8) or int32 (i32 sums or q32). */
#define AFFINE_Q_KERNEL(name, xtype)                                                                                   \
    static void name(const xtype *x, int C, int HW, const int32_t *mult, const int32_t *shift, const int32_t *bias,    \
                     int32_t *out)                                                                                     \
    {                                                                                                                  \
        int c, p;                                                                                                      \
        for (c = 0; c < C; c++)                                                                                        \
            for (p = 0; p < HW; p++)                                                                                   \
                *out++ = q_sat(q_rnd((int64_t)x[c * HW + p] * mult[c], shift[c]) + bias[c]);                           \
    }

/* bnnkit:kernel affine_q_u8 needs affine_q */
AFFINE_Q_KERNEL(affine_q_u8, uint8_t)

/* bnnkit:kernel affine_q_i32 needs affine_q */
AFFINE_Q_KERNEL(affine_q_i32, int32_t)

/* bnnkit:kernel add_q needs q_arith */
static void add_q(const int32_t *a, const int32_t *b, int n, int32_t *out)
{
    int i;
    for (i = 0; i < n; i++)
        out[i] = q_sat((int64_t)a[i] + b[i]);
}

/* bnnkit:kernel prelu_q needs q_arith */
/* x where x >= 0, else sat(rnd(x * mult[c], shift[c])). */
static void prelu_q(const int32_t *x, int C, int HW, const int32_t *mult, const int32_t *shift, int32_t *out)
{
    int c, p;
    for (c = 0; c < C; c++)
        for (p = 0; p < HW; p++, x++)
            *out++ = *x >= 0 ? *x : q_sat(q_rnd((int64_t)*x * mult[c], shift[c]));
}

/* bnnkit:kernel meanpool_q */
/* The window's exact sum s over its n = KH * KW taps, then floor((2s + n) / (2n)): the mean
   rounded half up (C's division truncates, so a negative remainder moves the quotient down).
   No padding (floor). */
static void meanpool_q(const int32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, int32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;
    int64_t n2 = 2 * (int64_t)KH * KW;
    for (c = 0; c < C; c++, x += H * W)
        for (y = 0; y < Ho; y++)
            for (xo = 0; xo < Wo; xo++) {
                int64_t s = 0, q;
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++)
                        s += x[(y * SH + i) * W + xo * SW + j];
                s = 2 * s + n2 / 2;
                q = s / n2;
                *out++ = (int32_t)(s % n2 < 0 ? q - 1 : q);
            }
}

/* bnnkit:kernel qconv needs q_arith conv_window */
/* A fixed-point convolution (a dense layer: C = F inputs, a 1x1 map and kernel). */
struct qconv {
    int C, H, W; /* input layout */
    int O, KH, KW, SH, SW, PH, PW;
    int Ho, Wo;       /* output */
    const int32_t *w; /* (O, C, KH, KW) */
    const int32_t *bias, *shift;
};

/* -> q32 CHW: per output, the int64 sum of x * w over the taps inside the map, then
   sat(rnd(sum, shift[o]) + bias[o]). */
#define QCONV_KERNEL(name, xtype)                                                                                      \
    static void name(const struct qconv *L, const xtype *x, int32_t *out)                                              \
    {                                                                                                                  \
        int o, y, xo, c, i, j;                                                                                         \
        for (o = 0; o < L->O; o++)                                                                                     \
            for (y = 0; y < L->Ho; y++)                                                                                \
                for (xo = 0; xo < L->Wo; xo++) {                                                                       \
                    CONV_WINDOW(L, y, xo);                                                                             \
                    int64_t s = 0;                                                                                     \
                    for (c = 0; c < L->C; c++)                                                                         \
                        for (i = i0; i < i1; i++) {                                                                    \
                            const xtype *row = x + (c * L->H + y0 + i) * L->W;                                         \
                            const int32_t *wr = L->w + ((o * L->C + c) * L->KH + i) * L->KW;                           \
                            for (j = j0; j < j1; j++)                                                                  \
                                s += (int64_t)row[x0 + j] * wr[j];                                                     \
                        }                                                                                              \
                    *out++ = q_sat(q_rnd(s, L->shift[o]) + L->bias[o]);                                                \
                }                                                                                                      \
    }

/* bnnkit:kernel qconv_u8 needs qconv */
QCONV_KERNEL(qconv_u8, uint8_t)

/* bnnkit:kernel qconv_q32 needs qconv */
QCONV_KERNEL(qconv_q32, int32_t)
