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
 * even, NaN to 0xFFFF), which the convolution's backward would otherwise apply to it. */
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

/* Eight float32 values stored as bfloat16 at element `at`, as PyTorch's vectorised cast rounds. */
static inline __attribute__((always_inline)) FMA_TARGET void store_bf16(uint16_t *out, int64_t at, __m256 v)
{
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0xffff), nan);
    /* 32 -> 16 bits: packus interleaves the two 128-bit lanes; the permute joins their halves */
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0x08);
    _mm_storeu_si128((__m128i *)(out + at), _mm256_castsi256_si128(packed));
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
 *   what 2: acc += dy, acc2 = fma(x - mean, dy, acc2)  (the backward's sum and dot product) */
static inline __attribute__((always_inline)) FMA_TARGET void sum_rows(const void *x, int x_bf16, const float *dy,
                                                                       const float *mean, int64_t c, int64_t k0,
                                                                       int64_t first, int64_t last, int nv,
                                                                       int what, float *acc, float *acc2)
{
    __m256 a[MAX_VECTORS], a2[MAX_VECTORS], m[MAX_VECTORS];
    for (int v = 0; v < nv; v++) {
        a[v] = _mm256_loadu_ps(acc + k0 + 8 * v);
        a2[v] = what == 2 ? _mm256_loadu_ps(acc2 + k0 + 8 * v) : _mm256_setzero_ps();
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
                __m256 g = _mm256_loadu_ps(dy + i * c + k0 + 8 * v);
                a[v] = _mm256_add_ps(a[v], g);
                a2[v] = _mm256_fmadd_ps(_mm256_sub_ps(xv, m[v]), g, a2[v]);
            }
        }
    }
    for (int v = 0; v < nv; v++) {
        _mm256_storeu_ps(acc + k0 + 8 * v, a[v]);
        if (what == 2)
            _mm256_storeu_ps(acc2 + k0 + 8 * v, a2[v]);
    }
}

/* partial[t * c + k] (and partial2's): channel k summed over chunk t, by `what` as in sum_rows */
static FMA_TARGET void chunk_sums(const void *x, int x_bf16, const float *dy, const float *mean, int64_t rows,
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
            switch ((nv * 3 + what) * 2 + x_bf16) {
#define CASE(n, w, b)                                                         \
    case (n * 3 + w) * 2 + b:                                                 \
        sum_rows(x, b, dy, mean, c, k0, first, last, n, w, acc, acc2);        \
        break;
#define CASES(n, w) CASE(n, w, 0) CASE(n, w, 1)
                CASES(1, 0) CASES(1, 1) CASES(1, 2) CASES(2, 0) CASES(2, 1) CASES(2, 2)
                CASES(3, 0) CASES(3, 1) CASES(3, 2) CASES(4, 0) CASES(4, 1) CASES(4, 2)
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
 * mean * alpha, and the running statistics moved towards the batch's by `momentum` (where
 * running_mean and running_var are not NULL; the variance unbiased). */
FMA_TARGET void bnn_bn_forward(const void *x, int x_bf16, int64_t rows, int64_t c, int chunks, int threads,
                               float *partial,
                               const float *weight, const float *bias, float *running_mean, float *running_var,
                               double momentum, double eps, float *mean, float *invstd, float *alpha, float *beta,
                               float *y)
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
            _mm256_storeu_ps(y + i * c + k,
                             _mm256_fmadd_ps(xv, _mm256_loadu_ps(alpha + k), _mm256_loadu_ps(beta + k)));
        }
}

/* The backward: sum (ATen's grad_bias) and dotp of each channel, then every input gradient
 *   dx = ((dy - sum / N) - (x - mean) * scale) * invstd * w,  scale = dotp * invstd * invstd / N,
 * with the subtraction of the product fused, in x's type. `partial` holds 2 x chunks x C floats;
 * scale and grad_mean are C floats of scratch. */
FMA_TARGET void bnn_bn_backward(const void *x, int x_bf16, const float *dy, const float *mean, const float *invstd,
                                const float *weight, int64_t rows, int64_t c, int chunks, int threads,
                                float *partial, float *sum, float *dotp, float *scale, float *grad_mean, void *dx)
{
    chunk_sums(x, x_bf16, dy, mean, rows, c, chunks, threads, 2, partial, partial + chunks * c);
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
            __m256 xv = load_x(x, i * c + k, x_bf16), g = _mm256_loadu_ps(dy + i * c + k);
            __m256 centred = _mm256_fnmadd_ps(_mm256_sub_ps(xv, _mm256_loadu_ps(mean + k)),
                                              _mm256_loadu_ps(scale + k),
                                              _mm256_sub_ps(g, _mm256_loadu_ps(grad_mean + k)));
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
                    double eps, float *mean, float *invstd, float *alpha, float *beta, float *y)
{
    (void)x, (void)x_bf16, (void)rows, (void)c, (void)chunks, (void)threads, (void)partial, (void)weight, (void)bias;
    (void)running_mean, (void)running_var, (void)momentum, (void)eps, (void)mean, (void)invstd, (void)alpha;
    (void)beta, (void)y;
}
void bnn_bn_backward(const void *x, int x_bf16, const float *dy, const float *mean, const float *invstd,
                     const float *weight, int64_t rows, int64_t c, int chunks, int threads, float *partial, float *sum,
                     float *dotp, float *scale, float *grad_mean, void *dx)
{
    (void)x, (void)x_bf16, (void)dy, (void)mean, (void)invstd, (void)weight, (void)rows, (void)c, (void)chunks, (void)threads;
    (void)partial, (void)sum, (void)dotp, (void)scale, (void)grad_mean, (void)dx;
}

#endif
