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
#define ALIGN 64 /* bytes: a cache line, one AVX-512 vector */

typedef void dot_fn(const uint64_t *x, const uint64_t *w, int32_t words, int32_t *out, int32_t ostride);

struct kernel {
    dot_fn *dot; /* the sums of MP patches against MO outputs */
    int mp, mo;  /* MO divides BNN_OUTPUT_BLOCK */
};

/* --- micro-kernels ---
 * out[p * ostride + o] = popcount(patch p XOR weights of output o), for p < MP, o < MO.
 * x holds MP patches of `words` words each. w holds the weights in blocks of 8 outputs,
 * word k of the 8 side by side: one vector of 8 (AVX-512) or two of 4 (AVX2) outputs.
 * A patch word is broadcast against it, so the vector lanes are outputs and the sums
 * need no horizontal reduction, and no vector lane is wasted on short patches. */

#define PORTABLE_MP 2
#define PORTABLE_MO 8

static void dot_portable(const uint64_t *x, const uint64_t *w, int32_t words, int32_t *out, int32_t ostride)
{
    uint64_t acc[PORTABLE_MP][PORTABLE_MO] = {{0}};
    for (int32_t k = 0; k < words; k++)
        for (int p = 0; p < PORTABLE_MP; p++)
            for (int o = 0; o < PORTABLE_MO; o++)
                acc[p][o] += (uint64_t)__builtin_popcountll(x[(size_t)p * words + k] ^ w[(size_t)k * 8 + o]);
    for (int p = 0; p < PORTABLE_MP; p++)
        for (int o = 0; o < PORTABLE_MO; o++)
            out[p * ostride + o] = (int32_t)acc[p][o];
}

#ifdef BNN_X86

#define AVX2_MP 4
#define AVX2_MO 8
#define AVX2_CHUNK 31 /* steps before a byte counter (<= 8 per step) could pass 255 */

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

__attribute__((target("avx2"))) static void dot_avx2(const uint64_t *x, const uint64_t *w, int32_t words, int32_t *out,
                                                     int32_t ostride)
{
    __m256i sums[AVX2_MP][2];
    for (int p = 0; p < AVX2_MP; p++)
        sums[p][0] = sums[p][1] = _mm256_setzero_si256();
    for (int32_t k0 = 0; k0 < words; k0 += AVX2_CHUNK) {
        int32_t k1 = words < k0 + AVX2_CHUNK ? words : k0 + AVX2_CHUNK;
        __m256i bytes[AVX2_MP][2];
        for (int p = 0; p < AVX2_MP; p++)
            bytes[p][0] = bytes[p][1] = _mm256_setzero_si256();
        for (int32_t k = k0; k < k1; k++) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + (size_t)k * 8));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + (size_t)k * 8 + 4));
            for (int p = 0; p < AVX2_MP; p++) {
                __m256i xv = _mm256_set1_epi64x((long long)x[(size_t)p * words + k]);
                bytes[p][0] = _mm256_add_epi8(bytes[p][0], byte_counts(_mm256_xor_si256(xv, w0)));
                bytes[p][1] = _mm256_add_epi8(bytes[p][1], byte_counts(_mm256_xor_si256(xv, w1)));
            }
        }
        for (int p = 0; p < AVX2_MP; p++)
            for (int h = 0; h < 2; h++)
                sums[p][h] = _mm256_add_epi64(sums[p][h], _mm256_sad_epu8(bytes[p][h], _mm256_setzero_si256()));
    }
    const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (int p = 0; p < AVX2_MP; p++)
        for (int h = 0; h < 2; h++)
            _mm_storeu_si128((__m128i *)(out + p * ostride + 4 * h),
                             _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sums[p][h], low_halves)));
}

#define AVX512_MP 8
#define AVX512_MO 16

__attribute__((target("avx512f,avx512vpopcntdq"))) static void dot_avx512(const uint64_t *x, const uint64_t *w, int32_t words,
                                                                          int32_t *out, int32_t ostride)
{
    __m512i acc[AVX512_MP][2];
    const uint64_t *w1 = w + (size_t)words * 8;
    for (int p = 0; p < AVX512_MP; p++)
        acc[p][0] = acc[p][1] = _mm512_setzero_si512();
    for (int32_t k = 0; k < words; k++) {
        __m512i w0v = _mm512_loadu_si512(w + (size_t)k * 8), w1v = _mm512_loadu_si512(w1 + (size_t)k * 8);
        for (int p = 0; p < AVX512_MP; p++) {
            __m512i xv = _mm512_set1_epi64((long long)x[(size_t)p * words + k]);
            acc[p][0] = _mm512_add_epi64(acc[p][0], _mm512_popcnt_epi64(_mm512_xor_si512(xv, w0v)));
            acc[p][1] = _mm512_add_epi64(acc[p][1], _mm512_popcnt_epi64(_mm512_xor_si512(xv, w1v)));
        }
    }
    for (int p = 0; p < AVX512_MP; p++)
        for (int h = 0; h < 2; h++)
            _mm256_storeu_si256((__m256i *)(out + p * ostride + 8 * h), _mm512_cvtepi64_epi32(acc[p][h]));
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

int bnn_output_block(void)
{
    return BNN_OUTPUT_BLOCK;
}

static size_t padded_outputs(const struct bnn_layer *L)
{
    return ((size_t)L->O + BNN_OUTPUT_BLOCK - 1) / BNN_OUTPUT_BLOCK * BNN_OUTPUT_BLOCK;
}

/* An output pixel: its index over the batch and its coordinates. A tile walks its
 * pixels with next() rather than dividing for each. */
struct pixel {
    int64_t index, image;
    int32_t y, x;
};

static struct pixel locate(const struct bnn_layer *L, int64_t index)
{
    int64_t per_image = (int64_t)L->Ho * L->Wo;
    struct pixel p = {index, index / per_image, (int32_t)(index % per_image / L->Wo), (int32_t)(index % L->Wo)};
    return p;
}

static void next(const struct bnn_layer *L, struct pixel *p)
{
    p->index++;
    if (++p->x == L->Wo) {
        p->x = 0;
        if (++p->y == L->Ho) {
            p->y = 0;
            p->image++;
        }
    }
}

static int inside(const struct bnn_layer *L, int32_t iy, int32_t ix)
{
    return iy >= 0 && iy < L->H && ix >= 0 && ix < L->W;
}

/* Eight 0/1 bytes -> one byte, bit i from byte i: the multiplier moves byte i's bit to
 * bit 56 + i; no two partial products meet, so nothing carries into the top byte. */
static uint64_t pack8(const uint8_t *bytes)
{
    uint64_t v;
    memcpy(&v, bytes, sizeof v);
    return (v * 0x0102040810204080ull) >> 56;
}

/* Fields are copied to locals throughout: acc is int32_t like them, so the compiler
 * would otherwise reload them after every store (and not vectorise). */
static void emit(const struct bnn_layer *L, const int32_t *restrict acc, int64_t pixel, void *out)
{
    const int32_t O = L->O, *restrict thresh = L->thresh;
    const uint8_t *restrict flip = L->flip;
    if (thresh == NULL) {
        memcpy((int32_t *)out + pixel * O, acc, (size_t)O * sizeof *acc);
        return;
    }
    int32_t words = (O + 63) / 64;
    uint64_t *dst = (uint64_t *)out + pixel * words;
    for (int32_t j = 0; j < words; j++) {
        uint8_t bits[64] = {0};
        int32_t n = O - 64 * j < 64 ? O - 64 * j : 64;
        const int32_t *a = acc + 64 * j, *t = thresh + 64 * j;
        const uint8_t *f = flip + 64 * j;
        for (int32_t o = 0; o < n; o++)
            bits[o] = (uint8_t)((a[o] >= t[o]) ^ f[o]);
        uint64_t word = 0;
        for (int q = 0; q < 8; q++)
            word |= pack8(bits + 8 * q) << (8 * q);
        dst[j] = word;
    }
}

/* ORs nbits bits of src (higher bits of its last word zero) into row at bit offset bit. */
static void append_bits(uint64_t *row, size_t bit, const uint64_t *src, int32_t nbits)
{
    if (bit % 64 == 0) { /* always so for C a multiple of 64: whole words */
        memcpy(row + bit / 64, src, ((size_t)nbits + 63) / 64 * sizeof *src);
        return;
    }
    for (int32_t k = 0; k * 64 < nbits; k++, bit += 64) {
        size_t word = bit / 64;
        unsigned off = bit % 64;
        int32_t n = nbits - 64 * k < 64 ? nbits - 64 * k : 64;
        row[word] |= src[k] << off;
        if (off + (unsigned)n > 64)
            row[word + 1] |= src[k] >> (64 - off);
    }
}

static void binary_patch(const struct bnn_layer *L, const uint64_t *x, struct pixel p, uint64_t *row)
{
    size_t cw = ((size_t)L->C + 63) / 64, bit = 0;
    memset(row, 0, (size_t)L->words * sizeof *row);
    for (int32_t i = 0; i < L->kh; i++)
        for (int32_t j = 0; j < L->kw; j++, bit += (size_t)L->C) {
            int32_t iy = p.y * L->sh - L->ph + i, ix = p.x * L->sw - L->pw + j;
            if (inside(L, iy, ix))
                append_bits(row, bit, x + (((size_t)p.image * L->H + iy) * L->W + ix) * cw, L->C);
        }
}

static int window_inside(const struct bnn_layer *L, struct pixel p)
{
    int32_t y0 = p.y * L->sh - L->ph, x0 = p.x * L->sw - L->pw;
    return y0 >= 0 && x0 >= 0 && y0 + L->kh <= L->H && x0 + L->kw <= L->W;
}

/* Popcounts of one pixel's row -> its +-1 sums, with the padded taps' correction. */
static void binary_sums(const struct bnn_layer *L, struct pixel p, int32_t *restrict acc)
{
    const int32_t O = L->O, taps = L->kh * L->kw, fan_in = taps * L->C, factor = L->pad_factor;
    const int32_t *restrict tap_sum = L->tap_sum;
    for (int32_t o = 0; o < O; o++)
        acc[o] = fan_in - 2 * acc[o];
    if (factor == 0 || window_inside(L, p))
        return;
    for (int32_t i = 0; i < L->kh; i++)
        for (int32_t j = 0; j < L->kw; j++)
            if (!inside(L, p.y * L->sh - L->ph + i, p.x * L->sw - L->pw + j))
                for (int32_t o = 0; o < O; o++)
                    acc[o] += factor * tap_sum[(size_t)o * taps + i * L->kw + j];
}

typedef void tile_fn(const struct bnn_layer *L, const struct kernel *k, const void *x, int64_t p0, int32_t np,
                     const struct scratch *s, void *out);

static void binary_tile(const struct bnn_layer *L, const struct kernel *k, const void *x, int64_t p0, int32_t np,
                        const struct scratch *s, void *out)
{
    uint64_t *rows = s->rows;
    const uint64_t *w = L->weight;
    size_t op = padded_outputs(L);
    struct pixel p = locate(L, p0);
    for (int32_t i = 0; i < np; i++, next(L, &p))
        binary_patch(L, x, p, rows + (size_t)i * L->words);
    /* rows past np hold an earlier tile's patches (or zeros): computed, never emitted */
    for (int32_t o0 = 0; o0 < L->O; o0 += k->mo)
        for (int32_t i0 = 0; i0 < np; i0 += k->mp)
            k->dot(rows + (size_t)i0 * L->words, w + (size_t)o0 * L->words, L->words, s->acc + i0 * op + o0, (int32_t)op);
    p = locate(L, p0);
    for (int32_t i = 0; i < np; i++, next(L, &p)) {
        binary_sums(L, p, s->acc + i * op);
        emit(L, s->acc + i * op, p.index, out);
    }
}

static void input_patch(const struct bnn_layer *L, const uint8_t *pixels, struct pixel p, int32_t *row)
{
    for (int32_t i = 0, t = 0; i < L->kh; i++)
        for (int32_t j = 0; j < L->kw; j++)
            for (int32_t c = 0; c < L->C; c++, t++) {
                int32_t iy = p.y * L->sh - L->ph + i, ix = p.x * L->sw - L->pw + j;
                row[t] = inside(L, iy, ix) ? pixels[(((size_t)p.image * L->C + c) * L->H + iy) * L->W + ix] : 0;
            }
}

#define INPUT_MP 8 /* pixels that share each loaded block of weights */

/* One block of outputs as a vector: one register on AVX-512, two on AVX2, four on SSE2
 * (GCC and clang vector extensions; the masks are 64-byte aligned). */
typedef int32_t sums_block __attribute__((vector_size(BNN_OUTPUT_BLOCK * sizeof(int32_t))));

/* Integer pixels times +-1 weights, a GEMM vectorised along the outputs: the weights are
 * sign masks (0 for +1, -1 for -1), v * w = (v ^ mask) - mask, stored per block of
 * outputs [O/BLOCK][kh*kw*C][BLOCK]; INPUT_MP pixels x one block of sums stay in
 * registers while the block's masks stream past once. Compiled once per instruction
 * set below. */
static inline __attribute__((always_inline)) void input_tile_body(const struct bnn_layer *L, const void *x, int64_t p0,
                                                                  int32_t np, const struct scratch *s, void *out)
{
    const int32_t *masks = L->weight;
    const size_t op = padded_outputs(L), fan_in = (size_t)L->kh * L->kw * L->C;
    int32_t *rows = s->rows;
    struct pixel p = locate(L, p0);
    for (int32_t n = 0; n < np; n++, next(L, &p))
        input_patch(L, x, p, rows + n * fan_in);
    /* rows past np hold an earlier tile's patches (or zeros): computed, never emitted */
    for (size_t o0 = 0; o0 < op; o0 += BNN_OUTPUT_BLOCK)
        for (int32_t i0 = 0; i0 < np; i0 += INPUT_MP) {
            sums_block sums[INPUT_MP] = {{0}};
            const sums_block *m = (const sums_block *)(masks + o0 * fan_in);
            for (size_t q = 0; q < fan_in; q++, m++)
                for (int i = 0; i < INPUT_MP; i++) {
                    const int32_t v = rows[(i0 + i) * fan_in + q];
                    sums[i] += (v ^ *m) - *m;
                }
            for (int i = 0; i < INPUT_MP; i++)
                memcpy(s->acc + (i0 + i) * op + o0, &sums[i], sizeof sums[i]);
        }
    p = locate(L, p0);
    for (int32_t n = 0; n < np; n++, next(L, &p))
        emit(L, s->acc + n * op, p.index, out);
}

#define INPUT_TILE(name, target)                                                                                        \
    target static void name(const struct bnn_layer *L, const struct kernel *k, const void *x, int64_t p0, int32_t np, \
                            const struct scratch *s, void *out)                                                         \
    {                                                                                                                  \
        (void)k;                                                                                                       \
        input_tile_body(L, x, p0, np, s, out);                                                                         \
    }

INPUT_TILE(input_tile_portable, )
#ifdef BNN_X86
INPUT_TILE(input_tile_avx2, __attribute__((target("avx2"))))
INPUT_TILE(input_tile_avx512, __attribute__((target("avx512f"))))
#endif

static tile_fn *input_tile_for(int isa)
{
    static tile_fn *const tiles[] = {
        [BNN_PORTABLE] = input_tile_portable,
#ifdef BNN_X86
        [BNN_AVX2] = input_tile_avx2,
        [BNN_AVX512] = input_tile_avx512,
#endif
    };
    if (isa < 0 || isa >= (int)(sizeof tiles / sizeof tiles[0]) || !bnn_isa_supported(isa))
        return NULL;
    return tiles[isa];
}

static void *zeroed(size_t bytes)
{
    bytes = (bytes / ALIGN + 1) * ALIGN; /* a whole number of lines, never 0 */
    void *p = aligned_alloc(ALIGN, bytes);
    return p == NULL ? NULL : memset(p, 0, bytes);
}

static int run_tiles(const struct bnn_layer *L, const struct kernel *k, tile_fn *tile, size_t row_bytes, const void *x,
                     int64_t n, void *out, int threads)
{
    int64_t pixels = n * L->Ho * L->Wo, tiles = (pixels + TILE - 1) / TILE;
    int failed = 0;
    threads = threads < 1 ? 1 : tiles < threads ? (int)tiles : threads; /* no thread without a tile */
    (void)threads; /* without OpenMP the pragmas are ignored and one thread runs */
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        struct scratch s = {zeroed(TILE * row_bytes), zeroed(TILE * padded_outputs(L) * sizeof(int32_t))};
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
    return run_tiles(L, k, binary_tile, (size_t)L->words * sizeof(uint64_t), x, n, out, threads);
}

int bnn_input_conv(const struct bnn_layer *L, const uint8_t *x, int64_t n, void *out, int isa, int threads)
{
    tile_fn *tile = input_tile_for(isa);
    if (tile == NULL)
        return -1;
    return run_tiles(L, NULL, tile, (size_t)L->kh * L->kw * L->C * sizeof(int32_t), x, n, out, threads);
}

int64_t bnn_popcount_peak(int isa, const uint64_t *x, const uint64_t *w, int32_t words, int64_t reps, int64_t *sink)
{
    const struct kernel *k = kernel_for(isa);
    int32_t out[TILE * BNN_OUTPUT_BLOCK];
    int64_t total = 0;
    if (k == NULL)
        return 0;
    for (int64_t r = 0; r < reps; r++) {
        k->dot(x, w, words, out, BNN_OUTPUT_BLOCK);
        total += out[0];
    }
    *sink = total;
    return reps * k->mp * k->mo * words * 64;
}
