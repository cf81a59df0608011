/* Binary convolution and dense layers on the host (see bconv.h for the layouts).
 *
 * A layer is a GEMM: one row per output pixel (its patch of packed input bits, the
 * im2col) against one row per output channel (its weights), each product a
 * XOR-popcount. Pixels are processed in tiles of TILE; a tile's patches stay in L1
 * while every weight row passes over them in register blocks of MP pixels x MO
 * outputs. The micro-kernel is the only code that depends on the instruction set.
 *
 * Padding is exact without a padded copy of the input: a padded tap's patch bits are
 * 0 (read as -1), and border pixels then add pad_factor x the tap's weight sum back,
 * which turns "-1" into "0" (zero padding, valid taps only) or "+1". */
#include "bconv.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BNN_X86 1
#include <immintrin.h>
#endif

#define TILE 64 /* pixels per tile: a multiple of every MP */

typedef void dot_fn(const uint64_t *x, const uint64_t *w, int32_t words, int32_t stride, int32_t *out, int32_t ostride);

struct kernel {
    dot_fn *dot; /* popcount(x_p ^ w_o) for MP rows of x and MO rows of w */
    int mp, mo;  /* MO divides 8: weight rows come in multiples of 8 */
};

/* --- micro-kernels: out[p * ostride + o] = popcount of row p of x XOR row o of w --- */

#define PORTABLE_MP 2
#define PORTABLE_MO 4

static void dot_portable(const uint64_t *x, const uint64_t *w, int32_t words, int32_t stride, int32_t *out, int32_t ostride)
{
    uint64_t acc[PORTABLE_MP][PORTABLE_MO] = {{0}};
    for (int32_t k = 0; k < words; k++)
        for (int p = 0; p < PORTABLE_MP; p++)
            for (int o = 0; o < PORTABLE_MO; o++)
                acc[p][o] += (uint64_t)__builtin_popcountll(x[(size_t)p * stride + k] ^ w[(size_t)o * stride + k]);
    for (int p = 0; p < PORTABLE_MP; p++)
        for (int o = 0; o < PORTABLE_MO; o++)
            out[p * ostride + o] = (int32_t)acc[p][o];
}

#ifdef BNN_X86

#define AVX2_MP 2
#define AVX2_MO 4
#define AVX2_CHUNK 31 /* 256-bit steps before a byte counter (<= 8 per step) could pass 255 */

/* Nibble-table popcount (vpshufb): the count of each byte of v. */
__attribute__((target("avx2"))) static inline __m256i byte_counts(__m256i v)
{
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

__attribute__((target("avx2"))) static void dot_avx2(const uint64_t *x, const uint64_t *w, int32_t words, int32_t stride,
                                                     int32_t *out, int32_t ostride)
{
    __m256i sums[AVX2_MP][AVX2_MO];
    for (int p = 0; p < AVX2_MP; p++)
        for (int o = 0; o < AVX2_MO; o++)
            sums[p][o] = _mm256_setzero_si256();
    for (int32_t k0 = 0; k0 < words; k0 += 4 * AVX2_CHUNK) {
        int32_t k1 = words < k0 + 4 * AVX2_CHUNK ? words : k0 + 4 * AVX2_CHUNK;
        __m256i bytes[AVX2_MP][AVX2_MO];
        for (int p = 0; p < AVX2_MP; p++)
            for (int o = 0; o < AVX2_MO; o++)
                bytes[p][o] = _mm256_setzero_si256();
        for (int32_t k = k0; k < k1; k += 4) {
            __m256i xv[AVX2_MP], wv[AVX2_MO];
            for (int p = 0; p < AVX2_MP; p++)
                xv[p] = _mm256_loadu_si256((const __m256i *)(x + (size_t)p * stride + k));
            for (int o = 0; o < AVX2_MO; o++)
                wv[o] = _mm256_loadu_si256((const __m256i *)(w + (size_t)o * stride + k));
            for (int p = 0; p < AVX2_MP; p++)
                for (int o = 0; o < AVX2_MO; o++)
                    bytes[p][o] = _mm256_add_epi8(bytes[p][o], byte_counts(_mm256_xor_si256(xv[p], wv[o])));
        }
        for (int p = 0; p < AVX2_MP; p++)
            for (int o = 0; o < AVX2_MO; o++)
                sums[p][o] = _mm256_add_epi64(sums[p][o], _mm256_sad_epu8(bytes[p][o], _mm256_setzero_si256()));
    }
    for (int p = 0; p < AVX2_MP; p++)
        for (int o = 0; o < AVX2_MO; o++) {
            __m128i s = _mm_add_epi64(_mm256_castsi256_si128(sums[p][o]), _mm256_extracti128_si256(sums[p][o], 1));
            out[p * ostride + o] = (int32_t)(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
        }
}

#define AVX512_MP 4
#define AVX512_MO 4

__attribute__((target("avx512f,avx512vpopcntdq"))) static void dot_avx512(const uint64_t *x, const uint64_t *w, int32_t words,
                                                                          int32_t stride, int32_t *out, int32_t ostride)
{
    __m512i acc[AVX512_MP][AVX512_MO];
    for (int p = 0; p < AVX512_MP; p++)
        for (int o = 0; o < AVX512_MO; o++)
            acc[p][o] = _mm512_setzero_si512();
    for (int32_t k = 0; k < words; k += 8) {
        __m512i xv[AVX512_MP], wv[AVX512_MO];
        for (int p = 0; p < AVX512_MP; p++)
            xv[p] = _mm512_loadu_si512(x + (size_t)p * stride + k);
        for (int o = 0; o < AVX512_MO; o++)
            wv[o] = _mm512_loadu_si512(w + (size_t)o * stride + k);
        for (int p = 0; p < AVX512_MP; p++)
            for (int o = 0; o < AVX512_MO; o++)
                acc[p][o] = _mm512_add_epi64(acc[p][o], _mm512_popcnt_epi64(_mm512_xor_si512(xv[p], wv[o])));
    }
    for (int p = 0; p < AVX512_MP; p++)
        for (int o = 0; o < AVX512_MO; o++)
            out[p * ostride + o] = (int32_t)_mm512_reduce_add_epi64(acc[p][o]);
}

#endif /* BNN_X86 */

int bnn_isa_supported(int isa)
{
    if (isa == BNN_PORTABLE)
        return 1;
#ifdef BNN_X86
    __builtin_cpu_init();
    if (isa == BNN_AVX2)
        return __builtin_cpu_supports("avx2");
    if (isa == BNN_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
    return 0;
}

static const struct kernel *kernel_for(int isa)
{
    static const struct kernel kernels[] = {
        [BNN_PORTABLE] = {dot_portable, PORTABLE_MP, PORTABLE_MO},
#ifdef BNN_X86
        [BNN_AVX2] = {dot_avx2, AVX2_MP, AVX2_MO},
        [BNN_AVX512] = {dot_avx512, AVX512_MP, AVX512_MO},
#endif
    };
    if (isa < 0 || isa >= (int)(sizeof kernels / sizeof kernels[0]) || !bnn_isa_supported(isa))
        return NULL;
    return &kernels[isa];
}

/* --- tiles: patches, GEMM, then sums or thresholded bits per output pixel --- */

struct scratch {
    void *rows;   /* TILE patches */
    int32_t *acc; /* TILE x padded_outputs sums */
};

static size_t padded_outputs(const struct bnn_layer *L)
{
    return ((size_t)L->O + 7) & ~(size_t)7;
}

static void locate(const struct bnn_layer *L, int64_t pixel, int64_t *image, int32_t *y, int32_t *x)
{
    int64_t per_image = (int64_t)L->Ho * L->Wo;
    *image = pixel / per_image;
    *y = (int32_t)(pixel % per_image / L->Wo);
    *x = (int32_t)(pixel % L->Wo);
}

static int inside(const struct bnn_layer *L, int32_t iy, int32_t ix)
{
    return iy >= 0 && iy < L->H && ix >= 0 && ix < L->W;
}

static void emit(const struct bnn_layer *L, const int32_t *acc, int64_t pixel, void *out)
{
    if (L->thresh == NULL) {
        memcpy((int32_t *)out + pixel * L->O, acc, (size_t)L->O * sizeof *acc);
        return;
    }
    int32_t words = (L->O + 63) / 64;
    uint64_t *dst = (uint64_t *)out + pixel * words;
    for (int32_t j = 0; j < words; j++) {
        uint64_t word = 0;
        for (int32_t o = j * 64; o < L->O && o < (j + 1) * 64; o++) {
            int bit = L->flip[o] ? acc[o] <= L->thresh[o] : acc[o] >= L->thresh[o];
            word |= (uint64_t)bit << (o % 64);
        }
        dst[j] = word;
    }
}

/* ORs nbits bits of src (higher bits of its last word zero) into row at bit offset bit. */
static void append_bits(uint64_t *row, size_t bit, const uint64_t *src, int32_t nbits)
{
    for (int32_t k = 0; k * 64 < nbits; k++, bit += 64) {
        size_t word = bit / 64;
        unsigned off = bit % 64;
        int32_t n = nbits - 64 * k < 64 ? nbits - 64 * k : 64;
        row[word] |= src[k] << off;
        if (off != 0 && off + (unsigned)n > 64)
            row[word + 1] |= src[k] >> (64 - off);
    }
}

static void binary_patch(const struct bnn_layer *L, const uint64_t *x, int64_t pixel, uint64_t *row)
{
    int64_t image;
    int32_t oy, ox;
    size_t cw = ((size_t)L->C + 63) / 64, bit = 0;
    locate(L, pixel, &image, &oy, &ox);
    memset(row, 0, (size_t)L->stride * sizeof *row);
    for (int32_t i = 0; i < L->kh; i++)
        for (int32_t j = 0; j < L->kw; j++, bit += (size_t)L->C) {
            int32_t iy = oy * L->sh - L->ph + i, ix = ox * L->sw - L->pw + j;
            if (inside(L, iy, ix))
                append_bits(row, bit, x + (((size_t)image * L->H + iy) * L->W + ix) * cw, L->C);
        }
}

/* Popcounts of one pixel's row -> its +-1 sums, with the padded taps' correction. */
static void binary_sums(const struct bnn_layer *L, int64_t pixel, int32_t *acc)
{
    int32_t taps = L->kh * L->kw, fan_in = taps * L->C;
    for (int32_t o = 0; o < L->O; o++)
        acc[o] = fan_in - 2 * acc[o];
    if (L->pad_factor == 0)
        return;
    int64_t image;
    int32_t oy, ox;
    locate(L, pixel, &image, &oy, &ox);
    for (int32_t i = 0; i < L->kh; i++)
        for (int32_t j = 0; j < L->kw; j++)
            if (!inside(L, oy * L->sh - L->ph + i, ox * L->sw - L->pw + j))
                for (int32_t o = 0; o < L->O; o++)
                    acc[o] += L->pad_factor * L->tap_sum[(size_t)o * taps + i * L->kw + j];
}

typedef void tile_fn(const struct bnn_layer *L, const struct kernel *k, const void *x, int64_t p0, int32_t np,
                     const struct scratch *s, void *out);

static void binary_tile(const struct bnn_layer *L, const struct kernel *k, const void *x, int64_t p0, int32_t np,
                        const struct scratch *s, void *out)
{
    uint64_t *rows = s->rows;
    const uint64_t *w = L->weight;
    size_t op = padded_outputs(L);
    for (int32_t i = 0; i < np; i++)
        binary_patch(L, x, p0 + i, rows + (size_t)i * L->stride);
    /* rows past np hold an earlier tile's patches (or zeros): computed, never emitted */
    for (int32_t o0 = 0; o0 < L->O; o0 += k->mo)
        for (int32_t i0 = 0; i0 < np; i0 += k->mp)
            k->dot(rows + (size_t)i0 * L->stride, w + (size_t)o0 * L->stride, L->words, L->stride, s->acc + i0 * op + o0,
                   (int32_t)op);
    for (int32_t i = 0; i < np; i++) {
        binary_sums(L, p0 + i, s->acc + i * op);
        emit(L, s->acc + i * op, p0 + i, out);
    }
}

/* Integer pixels times +-1 weights: int16 products the compiler vectorises (pmaddwd). */
static void input_tile(const struct bnn_layer *L, const struct kernel *k, const void *x, int64_t p0, int32_t np,
                       const struct scratch *s, void *out)
{
    (void)k;
    const uint8_t *pixels = x;
    const int16_t *w = L->weight;
    int16_t *patch = s->rows;
    int32_t fan_in = L->kh * L->kw * L->C;
    for (int32_t n = 0; n < np; n++) {
        int64_t image;
        int32_t oy, ox, t = 0;
        locate(L, p0 + n, &image, &oy, &ox);
        for (int32_t i = 0; i < L->kh; i++)
            for (int32_t j = 0; j < L->kw; j++)
                for (int32_t c = 0; c < L->C; c++, t++) {
                    int32_t iy = oy * L->sh - L->ph + i, ix = ox * L->sw - L->pw + j;
                    patch[t] = inside(L, iy, ix) ? pixels[(((size_t)image * L->C + c) * L->H + iy) * L->W + ix] : 0;
                }
        for (int32_t o = 0; o < L->O; o++) {
            int32_t sum = 0;
            for (int32_t q = 0; q < fan_in; q++)
                sum += patch[q] * w[(size_t)o * fan_in + q];
            s->acc[o] = sum;
        }
        emit(L, s->acc, p0 + n, out);
    }
}

static int run_tiles(const struct bnn_layer *L, const struct kernel *k, tile_fn *tile, size_t row_bytes, const void *x,
                     int64_t n, void *out, int threads)
{
    int64_t pixels = n * L->Ho * L->Wo, tiles = (pixels + TILE - 1) / TILE;
    int failed = 0;
    (void)threads; /* without OpenMP the pragmas are ignored and one thread runs */
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(| : failed)
    {
        struct scratch s = {calloc(TILE, row_bytes), calloc(TILE * padded_outputs(L), sizeof(int32_t))};
        failed = s.rows == NULL || s.acc == NULL;
        /* every thread must reach the loop, so a failed one takes tiles and skips them */
#pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t p0 = t * TILE;
            if (!failed)
                tile(L, k, x, p0, (int32_t)(pixels - p0 < TILE ? pixels - p0 : TILE), &s, out);
        }
        free(s.rows);
        free(s.acc);
    }
    return failed ? -2 : 0;
}

int bnn_binary_conv(const struct bnn_layer *L, const uint64_t *x, int64_t n, void *out, int isa, int threads)
{
    const struct kernel *k = kernel_for(isa);
    if (k == NULL)
        return -1;
    return run_tiles(L, k, binary_tile, (size_t)L->stride * sizeof(uint64_t), x, n, out, threads);
}

int bnn_input_conv(const struct bnn_layer *L, const uint8_t *x, int64_t n, void *out, int threads)
{
    return run_tiles(L, NULL, input_tile, (size_t)L->kh * L->kw * L->C * sizeof(int16_t), x, n, out, threads);
}

int64_t bnn_popcount_peak(int isa, const uint64_t *x, const uint64_t *w, int32_t words, int64_t reps, int64_t *sink)
{
    const struct kernel *k = kernel_for(isa);
    int32_t out[8 * 8];
    int64_t total = 0;
    if (k == NULL)
        return 0;
    for (int64_t r = 0; r < reps; r++) {
        k->dot(x, w, words, words, out, 8);
        total += out[0];
    }
    *sink = total;
    return reps * k->mp * k->mo * words * 64;
}
