/* The kernels of the generated C (bnnkit.runtime.c). A model's .c holds only the sections its
   ops call, each after the sections it needs, copied from here without the marker lines. A
   section runs from its marker to the next one:

       / * bnnkit:kernel NAME [needs OTHER ...] * /

   and may need only sections above it. Everything above the first marker is for compiling
   this file on its own (tests/test_c_kernels.py does, section by section): a generated .c
   includes <stddef.h> and its header, which includes <stdint.h>.

   Layouts (bnnkit.runtime.plan): bits HWC, each pixel's channels packed into ceil(C/32)
   32-bit words, channel c in bit c % 32 of word c / 32, unused bits 0; integers and floats
   CHW; floats stored in the uint32_t arena as their bit patterns. */
#include <stddef.h>
#include <stdint.h>

/* bnnkit:kernel structs */
/* A convolution; a dense layer is one whose kernel covers its whole input. */
struct conv {
    int C, H, W; /* input layout */
    int O, KH, KW, SH, SW, PH, PW;
    int Ho, Wo; /* output */
    int wpo;    /* weight words per output channel */
    const uint32_t *w;
    const uint32_t *pad; /* binary input: the padded pixel, NULL to count valid taps only */
};

/* A threshold fused after a conv, then a max-pool (1x1, stride 1 when none). */
struct sign {
    const int32_t *thresh;
    const uint32_t *flip;
    int KH, KW, SH, SW;
    const uint32_t *min; /* pooled channels taking the minimum (AND), or NULL */
    int Ho, Wo;          /* output */
};

/* bnnkit:kernel bit_at */
static int bit_at(const uint32_t *v, int i)
{
    return (int)((v[i >> 5] >> (i & 31)) & 1u);
}

/* bnnkit:kernel popcount */
/* Variants, chosen at compile time (benchmarks/mcu_popcount.py measures them):
   BNNKIT_POPCOUNT_SWAR     bit-parallel sums, one multiply (the default without an instruction)
   BNNKIT_POPCOUNT_SHIFTS   bit-parallel sums, shifts and adds only (for cores with slow multiply)
   BNNKIT_POPCOUNT_TABLE    four lookups in a 256-byte table
   BNNKIT_POPCOUNT_BUILTIN  the compiler's builtin (an instruction on x86/Arm-A, libgcc's table on M)
   No Cortex-M has a popcount instruction: there the builtin is a libgcc table lookup. */
#if !defined(BNNKIT_POPCOUNT_SWAR) && !defined(BNNKIT_POPCOUNT_SHIFTS) && !defined(BNNKIT_POPCOUNT_TABLE) &&           \
    !defined(BNNKIT_POPCOUNT_BUILTIN)
#if (defined(__GNUC__) || defined(__clang__)) && !(defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M')
#define BNNKIT_POPCOUNT_BUILTIN
#else
#define BNNKIT_POPCOUNT_SWAR
#endif
#endif
#if defined(BNNKIT_POPCOUNT_BUILTIN)
#define POPCOUNT(v) __builtin_popcountl((unsigned long)(v))
#elif defined(BNNKIT_POPCOUNT_TABLE)
/* clang-format off */
static const uint8_t popcount_table[256] = {
    0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5,
    1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5, 2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6,
    1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5, 2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6,
    2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6, 3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7,
    1, 2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3, 4, 4, 5, 2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6,
    2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6, 3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7,
    2, 3, 3, 4, 3, 4, 4, 5, 3, 4, 4, 5, 4, 5, 5, 6, 3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7,
    3, 4, 4, 5, 4, 5, 5, 6, 4, 5, 5, 6, 5, 6, 6, 7, 4, 5, 5, 6, 5, 6, 6, 7, 5, 6, 6, 7, 6, 7, 7, 8,
};
/* clang-format on */
#define POPCOUNT(v)                                                                                                    \
    (popcount_table[(v)&0xffu] + popcount_table[((v) >> 8) & 0xffu] + popcount_table[((v) >> 16) & 0xffu] +            \
     popcount_table[(v) >> 24])
#else
static int popcount32(uint32_t v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0f0f0f0fu;
#if defined(BNNKIT_POPCOUNT_SHIFTS)
    v = v + (v >> 8);
    v = v + (v >> 16);
    return (int)(v & 0x3fu);
#else
    return (int)((v * 0x01010101u) >> 24);
#endif
}
#define POPCOUNT(v) popcount32(v)
#endif

/* bnnkit:kernel f32_bits */
/* f32 activations live in the uint32_t arena as their bit patterns; a union is the C99 way to
   reinterpret them without breaking strict aliasing. */
static uint32_t f32_bits(float f)
{
    union {
        float f;
        uint32_t u;
    } v;
    v.f = f;
    return v.u;
}

/* bnnkit:kernel f32_of */
static float f32_of(uint32_t u)
{
    union {
        float f;
        uint32_t u;
    } v;
    v.u = u;
    return v.f;
}

/* bnnkit:kernel input_acc needs structs bit_at */
/* One accumulator of a u8 convolution: padded pixels are 0 and add nothing, so only the
   taps inside the image are summed. Weight bit k = (c * KH + i) * KW + j. */
static int32_t input_acc(const struct conv *L, const uint8_t *x, const uint32_t *w, int y, int xo)
{
    int y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW;
    int i0 = y0 < 0 ? -y0 : 0, i1 = L->H - y0 < L->KH ? L->H - y0 : L->KH;
    int j0 = x0 < 0 ? -x0 : 0, j1 = L->W - x0 < L->KW ? L->W - x0 : L->KW;
    int32_t acc = 0;
    int c, i, j;
    for (c = 0; c < L->C; c++)
        for (i = i0; i < i1; i++) {
            const uint8_t *row = x + (c * L->H + y0 + i) * L->W + x0;
            int k = (c * L->KH + i) * L->KW;
            for (j = j0; j < j1; j++) {
                int32_t v = row[j], neg = bit_at(w, k + j) - 1; /* 0 for +1, -1 for -1 */
                acc += (v ^ neg) - neg;
            }
        }
    return acc;
}

/* bnnkit:kernel binary_acc needs structs popcount */
/* One accumulator of a binary convolution: n - 2 * popcount(x ^ w) over the taps that
   count. A kernel row's taps inside the map are one run of words (HWC). A tap outside
   reads L->pad (the constant padded pixel) or, when that is NULL (pad 'zero'), is
   skipped. Weights: per tap (i, j), the input's words per pixel. */
static int32_t binary_acc(const struct conv *L, const uint32_t *x, const uint32_t *w, int y, int xo)
{
    int cw = (L->C + 31) / 32, y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW;
    int j0 = x0 < 0 ? -x0 : 0, j1 = L->W - x0 < L->KW ? L->W - x0 : L->KW;
    int32_t n = 0, ones = 0;
    int i, j, k;
    for (i = 0; i < L->KH; i++, w += L->KW * cw) {
        int iy = y0 + i, lo = L->KW, hi = L->KW;
        if (iy >= 0 && iy < L->H && j0 < j1) {
            const uint32_t *p = x + (iy * L->W + x0 + j0) * cw, *q = w + j0 * cw;
            lo = j0;
            hi = j1;
            for (k = 0; k < (hi - lo) * cw; k++)
                ones += POPCOUNT(p[k] ^ q[k]);
            n += (hi - lo) * L->C;
        }
        if (L->pad != NULL)
            for (j = 0; j < L->KW; j++)
                if (j < lo || j >= hi) {
                    for (k = 0; k < cw; k++)
                        ones += POPCOUNT(L->pad[k] ^ w[j * cw + k]);
                    n += L->C;
                }
    }
    return n - 2 * ones;
}

/* bnnkit:kernel threshold needs bit_at */
/* i32 CHW -> bits HWC. thresh INT32_MIN needs no case of its own: no sum reaches it. */
static void threshold(const int32_t *x, int C, int HW, const int32_t *thresh, const uint32_t *flip, uint32_t *out)
{
    int cw = (C + 31) / 32, p, c;
    for (p = 0; p < HW; p++, out += cw) {
        for (c = 0; c < cw; c++)
            out[c] = 0;
        for (c = 0; c < C; c++) {
            int32_t v = x[c * HW + p];
            int b = bit_at(flip, c) ? v <= thresh[c] : v >= thresh[c];
            out[c >> 5] |= (uint32_t)b << (c & 31);
        }
    }
}

/* bnnkit:kernel maxpool_bits */
/* Window OR per word; channels set in min (may be NULL) take the window AND instead. */
static void maxpool_bits(const uint32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, const uint32_t *min,
                         uint32_t *out)
{
    int cw = (C + 31) / 32, Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, y, xo, k, i, j;
    for (y = 0; y < Ho; y++)
        for (xo = 0; xo < Wo; xo++)
            for (k = 0; k < cw; k++) {
                uint32_t any = 0, all = 0xffffffffu, m = min != NULL ? min[k] : 0;
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++) {
                        uint32_t v = x[((y * SH + i) * W + xo * SW + j) * cw + k];
                        any |= v;
                        all &= v;
                    }
                *out++ = (any & ~m) | (all & m);
            }
}

/* bnnkit:kernel maxpool_i32 */
static void maxpool_i32(const int32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, int32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;
    for (c = 0; c < C; c++, x += H * W)
        for (y = 0; y < Ho; y++)
            for (xo = 0; xo < Wo; xo++) {
                int32_t m = x[y * SH * W + xo * SW];
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++) {
                        int32_t v = x[(y * SH + i) * W + xo * SW + j];
                        m = v > m ? v : m;
                    }
                *out++ = m;
            }
}

/* bnnkit:kernel maxpool_f32 needs f32_of */
/* The window's first maximal value, bit pattern and all (of +0.0 and -0.0, the first). */
static void maxpool_f32(const uint32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, uint32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;
    for (c = 0; c < C; c++, x += H * W)
        for (y = 0; y < Ho; y++)
            for (xo = 0; xo < Wo; xo++) {
                uint32_t m = x[y * SH * W + xo * SW];
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++) {
                        uint32_t v = x[(y * SH + i) * W + xo * SW + j];
                        m = f32_of(v) > f32_of(m) ? v : m;
                    }
                *out++ = m;
            }
}

/* bnnkit:kernel avgpool */
/* The window SUM: the consumer folds the 1/(KH*KW). */
static void avgpool(const int32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, int32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;
    for (c = 0; c < C; c++, x += H * W)
        for (y = 0; y < Ho; y++)
            for (xo = 0; xo < Wo; xo++) {
                int32_t s = 0;
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++)
                        s += x[(y * SH + i) * W + xo * SW + j];
                *out++ = s;
            }
}

/* bnnkit:kernel add_i32 */
static void add_i32(const int32_t *a, const int32_t *b, int n, int32_t *out)
{
    int i;
    for (i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* bnnkit:kernel add_f32 needs f32_bits f32_of */
static void add_f32(const uint32_t *a, const uint32_t *b, int n, uint32_t *out)
{
    int i;
    for (i = 0; i < n; i++)
        out[i] = f32_bits(f32_of(a[i]) + f32_of(b[i]));
}

/* bnnkit:kernel argmax_i32 */
/* The first maximum wins. */
static int argmax_i32(const int32_t *x, int n, float *scores)
{
    int i, best = 0;
    for (i = 0; i < n; i++) {
        if (scores != NULL)
            scores[i] = (float)x[i];
        if (x[i] > x[best])
            best = i;
    }
    return best;
}

/* bnnkit:kernel argmax_f32 needs f32_of */
/* The first maximum wins. */
static int argmax_f32(const uint32_t *x, int n, float *scores)
{
    int i, best = 0;
    for (i = 0; i < n; i++) {
        if (scores != NULL)
            scores[i] = f32_of(x[i]);
        if (f32_of(x[i]) > f32_of(x[best]))
            best = i;
    }
    return best;
}

/* bnnkit:kernel affine needs f32_bits */
/* float(x) * scale[c], rounded to float, then + bias[c]: the volatile product cannot be
   contracted into an FMA whatever -ffp-contract says. LOAD turns an input word into a float. */
#define AFFINE_KERNEL(name, xtype, LOAD)                                                                               \
    static void name(const xtype *x, int C, int HW, const float *scale, const float *bias, uint32_t *out)              \
    {                                                                                                                  \
        int c, p;                                                                                                      \
        for (c = 0; c < C; c++)                                                                                        \
            for (p = 0; p < HW; p++) {                                                                                 \
                volatile float prod = LOAD(x[c * HW + p]) * scale[c];                                                  \
                *out++ = f32_bits(prod + bias[c]);                                                                     \
            }                                                                                                          \
    }

/* bnnkit:kernel affine_u8 needs affine */
AFFINE_KERNEL(affine_u8, uint8_t, (float))

/* bnnkit:kernel affine_i32 needs affine */
AFFINE_KERNEL(affine_i32, int32_t, (float))

/* bnnkit:kernel affine_f32 needs affine f32_of */
AFFINE_KERNEL(affine_f32, uint32_t, f32_of)

/* bnnkit:kernel conv needs structs */
/* -> i32 CHW; ACC is input_acc or binary_acc, for an input of xtype. */
#define CONV_KERNEL(name, xtype, ACC)                                                                                  \
    static void name(const struct conv *L, const xtype *x, int32_t *out)                                               \
    {                                                                                                                  \
        int o, y, xo;                                                                                                  \
        for (o = 0; o < L->O; o++)                                                                                     \
            for (y = 0; y < L->Ho; y++)                                                                                \
                for (xo = 0; xo < L->Wo; xo++)                                                                         \
                    *out++ = ACC(L, x, L->w + o * L->wpo, y, xo);                                                      \
    }

/* bnnkit:kernel conv_sign needs structs bit_at */
/* Fused with its threshold and a max-pool (1x1 when there is none) -> bits HWC; the i32
   map is never stored. A pooled OR stops at the first 1, an AND (min channel) at the first 0. */
#define CONV_SIGN_KERNEL(name, xtype, ACC)                                                                             \
    static void name(const struct conv *L, const struct sign *S, const xtype *x, uint32_t *out)                        \
    {                                                                                                                  \
        int ow = (L->O + 31) / 32, py, px, o, i, j;                                                                    \
        for (py = 0; py < S->Ho; py++)                                                                                 \
            for (px = 0; px < S->Wo; px++, out += ow) {                                                                \
                for (o = 0; o < ow; o++)                                                                               \
                    out[o] = 0;                                                                                        \
                for (o = 0; o < L->O; o++) {                                                                           \
                    const uint32_t *w = L->w + o * L->wpo;                                                             \
                    int32_t t = S->thresh[o];                                                                          \
                    int flip = bit_at(S->flip, o), init = S->min != NULL && bit_at(S->min, o), b = init;               \
                    for (i = 0; i < S->KH && b == init; i++)                                                           \
                        for (j = 0; j < S->KW && b == init; j++) {                                                     \
                            int32_t acc = ACC(L, x, w, py * S->SH + i, px * S->SW + j);                                \
                            b = flip ? acc <= t : acc >= t;                                                            \
                        }                                                                                              \
                    out[o >> 5] |= (uint32_t)b << (o & 31);                                                            \
                }                                                                                                      \
            }                                                                                                          \
    }

/* bnnkit:kernel input_conv needs conv input_acc */
CONV_KERNEL(input_conv, uint8_t, input_acc)

/* bnnkit:kernel input_conv_sign needs conv_sign input_acc */
CONV_SIGN_KERNEL(input_conv_sign, uint8_t, input_acc)

/* bnnkit:kernel binary_conv needs conv binary_acc */
CONV_KERNEL(binary_conv, uint32_t, binary_acc)

/* bnnkit:kernel binary_conv_sign needs conv_sign binary_acc */
CONV_SIGN_KERNEL(binary_conv_sign, uint32_t, binary_acc)

/* bnnkit:kernel sign_f32 needs f32_of */
/* f32 CHW -> bits HWC: x >= thresh[c], an IEEE comparison (-0.0 >= 0.0; NaN gives 0). */
static void sign_f32(const uint32_t *x, int C, int HW, const float *thresh, uint32_t *out)
{
    int cw = (C + 31) / 32, p, c;
    for (p = 0; p < HW; p++, out += cw) {
        for (c = 0; c < cw; c++)
            out[c] = 0;
        for (c = 0; c < C; c++)
            out[c >> 5] |= (uint32_t)(f32_of(x[c * HW + p]) >= thresh[c]) << (c & 31);
    }
}

/* bnnkit:kernel prelu needs f32_bits */
/* float(x) where it is >= 0, else float(x) * slope[c], one rounding. */
#define PRELU_KERNEL(name, xtype, LOAD)                                                                                \
    static void name(const xtype *x, int C, int HW, const float *slope, uint32_t *out)                                 \
    {                                                                                                                  \
        int c, p;                                                                                                      \
        for (c = 0; c < C; c++)                                                                                        \
            for (p = 0; p < HW; p++) {                                                                                 \
                float v = LOAD(x[c * HW + p]);                                                                         \
                *out++ = f32_bits(v >= 0.0f ? v : v * slope[c]);                                                       \
            }                                                                                                          \
    }

/* bnnkit:kernel prelu_i32 needs prelu */
PRELU_KERNEL(prelu_i32, int32_t, (float))

/* bnnkit:kernel prelu_f32 needs prelu f32_of */
PRELU_KERNEL(prelu_f32, uint32_t, f32_of)

/* bnnkit:kernel meanpool needs f32_bits f32_of */
/* The window's values summed left to right from +0.0, row by row, each sum rounded to
   float, then one division by the window's size; no padding (floor). */
static void meanpool(const uint32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, uint32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;
    float n = (float)(KH * KW);
    for (c = 0; c < C; c++, x += H * W)
        for (y = 0; y < Ho; y++)
            for (xo = 0; xo < Wo; xo++) {
                float s = 0.0f;
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++)
                        s = s + f32_of(x[(y * SH + i) * W + xo * SW + j]);
                *out++ = f32_bits(s / n);
            }
}

/* bnnkit:kernel fconv needs f32_bits */
/* A full-precision convolution (a dense layer: C = F inputs, a 1x1 map and kernel). */
struct fconv {
    int C, H, W; /* input layout */
    int O, KH, KW, SH, SW, PH, PW;
    int Ho, Wo;     /* output */
    const float *w; /* (O, C, KH, KW) */
    const float *bias;
};

/* -> f32 CHW: per output, s = +0.0, then s + float(x) * w over the taps inside the map, c
   then i then j, then s + bias[o]. The volatile product is rounded on its own: no FMA. */
#define FCONV_KERNEL(name, xtype, LOAD)                                                                                \
    static void name(const struct fconv *L, const xtype *x, uint32_t *out)                                             \
    {                                                                                                                  \
        int o, y, xo, c, i, j;                                                                                         \
        for (o = 0; o < L->O; o++)                                                                                     \
            for (y = 0; y < L->Ho; y++)                                                                                \
                for (xo = 0; xo < L->Wo; xo++) {                                                                       \
                    int y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW;                                               \
                    int i0 = y0 < 0 ? -y0 : 0, i1 = L->H - y0 < L->KH ? L->H - y0 : L->KH;                             \
                    int j0 = x0 < 0 ? -x0 : 0, j1 = L->W - x0 < L->KW ? L->W - x0 : L->KW;                             \
                    float s = 0.0f;                                                                                    \
                    for (c = 0; c < L->C; c++)                                                                         \
                        for (i = i0; i < i1; i++)                                                                      \
                            for (j = j0; j < j1; j++) {                                                                \
                                volatile float prod = LOAD(x[(c * L->H + y0 + i) * L->W + x0 + j]) *                   \
                                                      L->w[((o * L->C + c) * L->KH + i) * L->KW + j];                  \
                                s = s + prod;                                                                          \
                            }                                                                                          \
                    *out++ = f32_bits(s + L->bias[o]);                                                                 \
                }                                                                                                      \
    }

/* bnnkit:kernel fconv_u8 needs fconv */
FCONV_KERNEL(fconv_u8, uint8_t, (float))

/* bnnkit:kernel fconv_f32 needs fconv f32_of */
FCONV_KERNEL(fconv_f32, uint32_t, f32_of)
