/* BatchNorm's training pass on float32 maps, channels last (rows x C, C a multiple of 8), for
 * bnnkit.nn.BatchNorm2d: the batch statistics, the normalisation and the backward, with ATen's
 * arithmetic bit for bit (PyTorch's batch_norm_kernel.cpp, channels-last float path, built
 * for AVX2 or AVX-512, where the compiler fuses its multiply-adds):
 *
 * - a channel's sum over rows runs row after row in float within each of `chunks` equal
 *   ranges of rows (ATen's threads), and the chunks' sums are added in double;
 * - the fused multiply-adds are where ATen's build has them, and nowhere else (-std=c11
 *   turns the compiler's own contraction off).
 *
 * ATen keeps each channel's running sum in a buffer that it loads and stores every row; here
 * it stays in a register across the rows, and the three passes over a map become two. The
 * order of every sum is ATen's, so the chain of additions along the rows bounds the passes
 * (about 4 cycles a row). x86-64 only (bnn_bn_supported says 0 elsewhere): the FMA
 * instructions are what make the results ATen's.
 *
 * The input x may also be bfloat16 (x_bf16): the output of a bfloat16 convolution, widened
 * exactly as it is loaded instead of in a pass of its own. The input gradient is then written
 * in bfloat16 too, rounded as PyTorch's vectorised float-to-bfloat16 cast rounds (to nearest
 * even, NaN to 0xFFFF), which the convolution's backward would otherwise apply to it.
 *
 * Before a binary convolution that takes the clipped sign of this output in bfloat16
 * (bnnkit.nn.bf16.clipped_sign_for_conv), the forward may write that sign instead of y or beside
 * it (signs: +1 for y >= 0 and NaN, -1 below, as bfloat16 bits), and the backward take the sign's bfloat16
 * gradient (dy_signs): dy is that gradient widened where low < y < high and +0.0 elsewhere (NaN
 * included), y recomputed from x exactly as the forward computed it. The same bits as the sign's
 * own kernels (sign.c) between the two, without y's float32 map.
 *
 * Where the output has a second reader (a residual block's input: the shortcut beside the first
 * convolution), the backward may take the sign's gradient with the saved output y and the second
 * reader's float32 gradient (plus): the first pass then makes the whole output gradient, plus +
 * the clipped one as sign.c's bnn_clipped_grad_bf16 makes it, writes it (the shortcut's gradient
 * too) and sums it; the second pass reads it back. One pass over the maps fewer than making it
 * apart. */
#include <stdint.h>
#include <string.h>

#include "bconv.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define FMA_TARGET __attribute__((target("avx2,fma")))
#define MAX_VECTORS 4 /* channels held in registers per pass over the rows: 4 x 8 */

/* Eight channels of x at element `at`, float32 or bfloat16 (widened exactly: the bits shifted up). */
static inline __attribute__((always_inline)) FMA_TARGET __m256 load_x(const void *x, int64_t at, int x_bf16)
{
    if (x_bf16) {
        __m128i half = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + at));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
    }
    return _mm256_loadu_ps((const float *)x + at);
}

/* The output's gradient as the backward reads it (signs):
 *   SIGNS_NONE: float32 dy;
 *   SIGNS_RECOMPUTED: the bfloat16 gradient of the output's clipped sign, the output recomputed
 *     (y = x * alpha + beta) for the clip;
 *   SIGNS_SAVED: that gradient clipped by the saved output y, plus the float32 map `plus` where it
 *     is not NULL, written to `combined` as it is read. */
enum { SIGNS_NONE, SIGNS_RECOMPUTED, SIGNS_SAVED };
struct out_grad {
    const void *dy;
    int signs;
    const float *alpha, *beta;
    float low, high;
    const float *y, *plus;
    float *combined;
};

/* Eight 32-bit lanes, each at most 0xFFFF, stored as 16 bits at element `at`. */
static inline __attribute__((always_inline)) FMA_TARGET void store_u16(uint16_t *out, int64_t at, __m256i lanes)
{
    /* packus interleaves the two 128-bit lanes; the permute joins their halves */
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lanes, lanes), 0x08);
    _mm_storeu_si128((__m128i *)(out + at), _mm256_castsi256_si128(packed));
}

/* Eight float32 values stored as bfloat16 at element `at`, as PyTorch's vectorised cast rounds. */
static inline __attribute__((always_inline)) FMA_TARGET void store_bf16(uint16_t *out, int64_t at, __m256 v)
{
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    store_u16(out, at, _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0xffff), nan));
}

/* The sign of eight values as bfloat16 bits: -1 (0xBF80) below 0, +1 (0x3F80) otherwise, NaN included. */
static inline __attribute__((always_inline)) FMA_TARGET void store_sign(uint16_t *out, int64_t at, __m256 v)
{
    __m256i negative = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
    __m256i minus = _mm256_and_si256(negative, _mm256_set1_epi32(0x8000));
    store_u16(out, at, _mm256_or_si256(minus, _mm256_set1_epi32(0x3F80)));
}

/* The output's gradient at element `at` of channel k (its x: xv), as struct out_grad says: the
 * clipped sign's bfloat16 gradient where low < y < high, +0.0 elsewhere (NaN included). */
static inline __attribute__((always_inline)) FMA_TARGET __m256 load_dy(const struct out_grad *g, int signs,
                                                                        int64_t at, int64_t k, __m256 xv)
{
    if (signs == SIGNS_NONE)
        return _mm256_loadu_ps((const float *)g->dy + at);
    __m256 y = signs == SIGNS_SAVED ? _mm256_loadu_ps(g->y + at)
                                    : _mm256_fmadd_ps(xv, _mm256_loadu_ps(g->alpha + k), _mm256_loadu_ps(g->beta + k));
    __m256 inside = _mm256_and_ps(_mm256_cmp_ps(y, _mm256_set1_ps(g->low), _CMP_GT_OQ),
                                  _mm256_cmp_ps(y, _mm256_set1_ps(g->high), _CMP_LT_OQ));
    __m256 d = _mm256_and_ps(inside, load_x(g->dy, at, 1));
    if (signs != SIGNS_SAVED)
        return d;
    if (g->plus) /* as autograd adds the two: a -0.0 in plus where the clip passes nothing gives +0.0 */
        d = _mm256_add_ps(_mm256_loadu_ps(g->plus + at), d);
    _mm256_storeu_ps(g->combined + at, d);
    return d;
}

int bnn_bn_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Rows [first, last) of chunk t of `chunks` (ATen's at::parallel_for split of 0..rows). */
static void chunk_rows(int64_t rows, int chunks, int t, int64_t *first, int64_t *last)
{
    int64_t size = (rows + chunks - 1) / chunks;
    *first = t * size < rows ? t * size : rows;
    *last = (t + 1) * size < rows ? (t + 1) * size : rows;
}

/* Channels k0 .. k0 + 8 nv - 1 summed over rows [first, last) in row order, into acc (and acc2):
 *   what 0: acc += x                                   (the mean's sum)
 *   what 1: acc = fma(x - mean, x - mean, acc)         (the variance's sum of squares)
 *   what 2: acc += dy, acc2 = fma(x - mean, dy, acc2)  (the backward's sum and dot product)
 *   what 3: what 2, dy from the sign's gradient        (load_dy, SIGNS_RECOMPUTED)
 *   what 4: what 2, dy from the sign's gradient        (load_dy, SIGNS_SAVED) */
static inline __attribute__((always_inline)) FMA_TARGET void sum_rows(const void *x, int x_bf16,
                                                                       const struct out_grad *dy, const float *mean,
                                                                       int64_t c, int64_t k0, int64_t first,
                                                                       int64_t last, int nv, int what, float *acc,
                                                                       float *acc2)
{
    __m256 a[MAX_VECTORS], a2[MAX_VECTORS], m[MAX_VECTORS];
    for (int v = 0; v < nv; v++) {
        a[v] = _mm256_loadu_ps(acc + k0 + 8 * v);
        a2[v] = what >= 2 ? _mm256_loadu_ps(acc2 + k0 + 8 * v) : _mm256_setzero_ps();
        m[v] = what ? _mm256_loadu_ps(mean + k0 + 8 * v) : _mm256_setzero_ps();
    }
    for (int64_t i = first; i < last; i++) {
        for (int v = 0; v < nv; v++) {
            __m256 xv = load_x(x, i * c + k0 + 8 * v, x_bf16);
            if (what == 0) {
                a[v] = _mm256_add_ps(a[v], xv);
            } else if (what == 1) {
                __m256 d = _mm256_sub_ps(xv, m[v]);
                a[v] = _mm256_fmadd_ps(d, d, a[v]);
            } else {
                __m256 g = load_dy(dy, what - 2, i * c + k0 + 8 * v, k0 + 8 * v, xv);
                a[v] = _mm256_add_ps(a[v], g);
                a2[v] = _mm256_fmadd_ps(_mm256_sub_ps(xv, m[v]), g, a2[v]);
            }
        }
    }
    for (int v = 0; v < nv; v++) {
        _mm256_storeu_ps(acc + k0 + 8 * v, a[v]);
        if (what >= 2)
            _mm256_storeu_ps(acc2 + k0 + 8 * v, a2[v]);
    }
}

/* partial[t * c + k] (and partial2's): channel k summed over chunk t, by `what` as in sum_rows */
static FMA_TARGET void chunk_sums(const void *x, int x_bf16, const struct out_grad *dy, const float *mean, int64_t rows,
                                  int64_t c, int chunks, int threads, int what, float *partial, float *partial2)
{
    int t;
    memset(partial, 0, sizeof(float) * (size_t)(chunks * c));
    if (partial2)
        memset(partial2, 0, sizeof(float) * (size_t)(chunks * c));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (t = 0; t < chunks; t++) {
        int64_t first, last;
        chunk_rows(rows, chunks, t, &first, &last);
        for (int64_t k0 = 0; k0 < c; k0 += 8 * MAX_VECTORS) {
            int64_t left = (c - k0) / 8;
            int nv = left < MAX_VECTORS ? (int)left : MAX_VECTORS;
            float *acc = partial + t * c, *acc2 = partial2 ? partial2 + t * c : NULL;
            /* one call per count and type, so each inlined copy keeps its accumulators in registers */
            switch ((nv * 5 + what) * 2 + x_bf16) {
#define CASE(n, w, b)                                                         \
    case (n * 5 + w) * 2 + b:                                                 \
        sum_rows(x, b, dy, mean, c, k0, first, last, n, w, acc, acc2);        \
        break;
#define CASES(n, w) CASE(n, w, 0) CASE(n, w, 1)
#define ALL(n) CASES(n, 0) CASES(n, 1) CASES(n, 2) CASES(n, 3) CASES(n, 4)
                ALL(1) ALL(2) ALL(3) ALL(4)
#undef ALL
#undef CASES
#undef CASE
            }
        }
    }
}

/* The chunks' sums of channel k, added in double as ATen adds its threads' buffers. */
static double total(const float *partial, int64_t c, int chunks, int64_t k)
{
    double s = 0;
    for (int t = 0; t < chunks; t++)
        s += partial[t * c + k];
    return s;
}

/* The forward of training: the batch's mean and 1 / sqrt(var + eps) of each channel (mean and
 * invstd, for the backward), y = x * alpha + beta with alpha = invstd * weight and beta = bias -
 * mean * alpha (plus the float32 map `residual` where it is not NULL: a residual block's addition,
 * rounded once as PyTorch's own), written where y is not NULL, and its sign as bfloat16 bits where
 * signs is not NULL, and the running
 * statistics moved towards the batch's by `momentum` (where running_mean and running_var are not
 * NULL; the variance unbiased). */
FMA_TARGET void bnn_bn_forward(const void *x, int x_bf16, int64_t rows, int64_t c, int chunks, int threads,
                               float *partial,
                               const float *weight, const float *bias, float *running_mean, float *running_var,
                               double momentum, double eps, float *mean, float *invstd, float *alpha, float *beta,
                               float *y, uint16_t *signs, const float *residual)
{
    chunk_sums(x, x_bf16, NULL, NULL, rows, c, chunks, threads, 0, partial, NULL);
    for (int64_t k = 0; k < c; k++)
        mean[k] = (float)(total(partial, c, chunks, k) / (double)rows);
    chunk_sums(x, x_bf16, NULL, mean, rows, c, chunks, threads, 1, partial, NULL);
    float m = (float)momentum, keep = (float)(1 - momentum);
    for (int64_t k = 0; k < c; k++) {
        float var_sum = (float)total(partial, c, chunks, k);
        __m128d var = _mm_set_sd((double)(var_sum / (float)rows) + eps); /* sqrtsd: no errno, no libm */
        invstd[k] = (float)(1 / _mm_cvtsd_f64(_mm_sqrt_sd(var, var)));
        alpha[k] = invstd[k] * weight[k];
        beta[k] = __builtin_fmaf(-mean[k], alpha[k], bias[k]);
        if (running_mean)
            running_mean[k] = m * mean[k] + keep * running_mean[k];
        if (running_var)
            running_var[k] = __builtin_fmaf(m, var_sum / (float)(rows - 1), keep * running_var[k]);
    }
    int64_t i;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i = 0; i < rows; i++)
        for (int64_t k = 0; k < c; k += 8) {
            __m256 xv = load_x(x, i * c + k, x_bf16);
            __m256 out = _mm256_fmadd_ps(xv, _mm256_loadu_ps(alpha + k), _mm256_loadu_ps(beta + k));
            if (residual)
                out = _mm256_add_ps(out, _mm256_loadu_ps(residual + i * c + k));
            if (signs)
                store_sign(signs, i * c + k, out);
            if (y)
                _mm256_storeu_ps(y + i * c + k, out);
        }
}

/* The backward: sum (ATen's grad_bias) and dotp of each channel, then every input gradient
 *   dx = ((dy - sum / N) - (x - mean) * scale) * invstd * w,  scale = dotp * invstd * invstd / N,
 * with the subtraction of the product fused, in x's type. `partial` holds 2 x chunks x C floats;
 * scale and grad_mean are C floats of scratch. dy_signs says what dy is (struct out_grad): with
 * SIGNS_RECOMPUTED the output is recomputed from bias as the forward computed it (alpha and
 * beta: C floats of scratch); with SIGNS_SAVED it is y, and the whole output gradient is written
 * to `combined` (rows x C floats), which the second pass reads. */
FMA_TARGET void bnn_bn_backward(const void *x, int x_bf16, const void *dy, const float *mean, const float *invstd,
                                const float *weight, int64_t rows, int64_t c, int chunks, int threads,
                                float *partial, float *sum, float *dotp, float *scale, float *grad_mean, void *dx,
                                int dy_signs, const float *bias, float low, float high, float *alpha, float *beta,
                                const float *y, const float *plus, float *combined)
{
    struct out_grad g = {dy, dy_signs, alpha, beta, low, high, y, plus, combined};
    if (dy_signs == SIGNS_RECOMPUTED)
        for (int64_t k = 0; k < c; k++) { /* as bnn_bn_forward computes them */
            alpha[k] = invstd[k] * weight[k];
            beta[k] = __builtin_fmaf(-mean[k], alpha[k], bias[k]);
        }
    chunk_sums(x, x_bf16, &g, mean, rows, c, chunks, threads, 2 + dy_signs, partial, partial + chunks * c);
    if (dy_signs == SIGNS_SAVED)
        g = (struct out_grad){.dy = combined, .signs = SIGNS_NONE};
    float n = (float)rows;
    for (int64_t k = 0; k < c; k++) {
        sum[k] = (float)total(partial, c, chunks, k);
        dotp[k] = (float)total(partial + chunks * c, c, chunks, k);
        scale[k] = dotp[k] * invstd[k] * invstd[k] / n;
        grad_mean[k] = sum[k] / n;
    }
    if (!dx)
        return;
    int64_t i;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i = 0; i < rows; i++)
        for (int64_t k = 0; k < c; k += 8) {
            __m256 xv = load_x(x, i * c + k, x_bf16), d = load_dy(&g, g.signs, i * c + k, k, xv);
            __m256 centred = _mm256_fnmadd_ps(_mm256_sub_ps(xv, _mm256_loadu_ps(mean + k)),
                                              _mm256_loadu_ps(scale + k),
                                              _mm256_sub_ps(d, _mm256_loadu_ps(grad_mean + k)));
            __m256 out = _mm256_mul_ps(_mm256_mul_ps(centred, _mm256_loadu_ps(invstd + k)),
                                       _mm256_loadu_ps(weight + k));
            if (x_bf16)
                store_bf16((uint16_t *)dx, i * c + k, out);
            else
                _mm256_storeu_ps((float *)dx + i * c + k, out);
        }
}

#else

int bnn_bn_supported(void) { return 0; }
void bnn_bn_forward(const void *x, int x_bf16, int64_t rows, int64_t c, int chunks, int threads, float *partial,
                    const float *weight, const float *bias, float *running_mean, float *running_var, double momentum,
                    double eps, float *mean, float *invstd, float *alpha, float *beta, float *y, uint16_t *signs,
                    const float *residual)
{
    (void)x, (void)x_bf16, (void)rows, (void)c, (void)chunks, (void)threads, (void)partial, (void)weight, (void)bias;
    (void)running_mean, (void)running_var, (void)momentum, (void)eps, (void)mean, (void)invstd, (void)alpha;
    (void)beta, (void)y, (void)signs, (void)residual;
}
void bnn_bn_backward(const void *x, int x_bf16, const void *dy, const float *mean, const float *invstd,
                     const float *weight, int64_t rows, int64_t c, int chunks, int threads, float *partial, float *sum,
                     float *dotp, float *scale, float *grad_mean, void *dx, int dy_signs, const float *bias, float low,
                     float high, float *alpha, float *beta, const float *y, const float *plus, float *combined)
{
    (void)x, (void)x_bf16, (void)dy, (void)mean, (void)invstd, (void)weight, (void)rows, (void)c, (void)chunks, (void)threads;
    (void)partial, (void)sum, (void)dotp, (void)scale, (void)grad_mean, (void)dx, (void)dy_signs, (void)bias, (void)low;
    (void)high, (void)alpha, (void)beta, (void)y, (void)plus, (void)combined;
}

#endif
