/* The kernels of the generated C (bnnkit.runtime.c). A model's .c holds only the sections its
   ops call, each after the sections it needs, copied from here without the marker lines. A
   section runs from its marker to the next one:

       / * bnnkit:kernel NAME [needs OTHER ...] * /

   and may need only sections above it. Everything above the first marker is for compiling
   this file on its own (tests/test_c_kernels.py does, section by section): a generated .c
   includes <stddef.h> and its header, which includes <stdint.h>.

   Layouts (bnnkit.graph.plan): bits HWC, pixel p's channel c at bit p * pb + c of the map's
   32-bit words (bit b in bit b % 32 of word b / 32), where pb, the bits per pixel, is C for a
   map stored bit-dense (C < 32, chosen by the planner) and else 32 * ceil(C/32) (each pixel
   whole words); unused bits 0; integers and floats CHW; floats stored in the uint32_t arena as
   their bit patterns. Weights of a binary
   convolution: per output channel its KH*KW*C bits densely, bit (i * KW + j) * C + c, in
   ceil(KH*KW*C/32) words; of a u8 one: bit (c * KH + i) * KW + j. */
#include <stddef.h>
#include <stdint.h>

/* bnnkit:kernel structs */
/* A convolution; a dense layer is one whose kernel covers its whole input. */
struct conv {
    int C, H, W; /* input layout */
    int pb;      /* binary input: bits per pixel (C bit-dense, else whole words) */
    int O, KH, KW, SH, SW, PH, PW;
    int Ho, Wo; /* output */
    int wpo;    /* weight words per output channel */
    const uint32_t *w;
    const uint32_t *pad; /* binary input: the padded pixel, NULL to count valid taps only */
    uint32_t *patch;     /* room for one output pixel's patch (the generator sizes it), or NULL */
};

/* A threshold fused after a conv, then a max-pool (1x1, stride 1 when none). Its thresholds are
   int16_t where the generator defines SIGN_THRESH_16: every fused sum of the model is within
   +-32766, so a threshold clamped to int16 decides every bit as the int32 one does (half the
   flash of the tables). */
#if defined(SIGN_THRESH_16)
typedef int16_t sign_thresh_t;
#define SIGN_THRESH_LOAD "ldrsh"
#define SIGN_THRESH_LOG2 "1"
#else
typedef int32_t sign_thresh_t;
#define SIGN_THRESH_LOAD "ldr"
#define SIGN_THRESH_LOG2 "2"
#endif
struct sign {
    const sign_thresh_t *thresh;
    const uint32_t *flip;
    int KH, KW, SH, SW;
    const uint32_t *min; /* pooled channels taking the minimum (AND), or NULL */
    int Ho, Wo;          /* output */
    int dense;           /* output bit-dense (O < 32): each pixel's O bits right after the last */
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
static inline int popcount32(uint32_t v) /* inline: popcount_words may not call it */
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

/* bnnkit:kernel patch needs structs */
/* A kernel of its own keeps the registers to itself: inlined into the model's function, the
   compiler spills its loop variables. COLD code (the borders) is compiled for size. */
#if defined(__GNUC__) || defined(__clang__)
#define NOINLINE __attribute__((noinline))
#define COLD __attribute__((cold))
#else
#define NOINLINE
#define COLD
#endif

/* What a convolution's kernel reads for one output pixel, gathered once for all its output
   channels (input_patch, binary_patch). */
struct patch {
    const uint32_t *w;    /* binary: KH*KW*C bits, densely in tap then channel order, unused bits 0 */
    const uint8_t *b;     /* u8: the pixels in (c, i, j) order, padded pixels 0 */
    const uint32_t *mask; /* binary: NULL when every bit counts, else those that do */
    int n;                /* binary: the bits that count; u8: the sum of the pixels */
    int words;            /* u8: whole 4-byte words to read at b; the bytes after them are the tail */
};

/* bnnkit:kernel popcount_words needs popcount patch */
/* The popcount of a[k] ^ b[k] summed over n >= 1 words, or with MASK of (a[k] ^ b[k]) & m[k]:
   popcount_xor[_and] for a few words, popcount_xor[_and]_pairs for many (binary_dot chooses).
   On a core without a popcount instruction (SWAR, SHIFTS), popcount_xor[_and] (inline) adds the
   bit-parallel sums of up to 31 words bytewise before one fold, so a word costs its loads, its
   XOR and seven operations. With the DSP extension (M4, M7) and Thumb-2, popcount_xor[_and]_pairs
   (a function, BNNKIT_POPCOUNT_PAIRS) put the words through a carry-save adder two at a time
   (Harley-Seal): ONES holds the bits of weight 1 carried from word to word, and only the bits of
   weight 2 of each pair (the carry) are counted, in byte fields that USADA8 sums in one
   instruction; ONES is counted once at the end. Against 0x0f0f0f0f (a mask already in a
   register, where 0 would take another) USADA8 adds 15 - c for each byte c <= 8, so each addition
   adds 60 - its count. Its fixed cost (a call, the masks, counting ONES) is what makes it the
   choice for many words only. On the M3 the same steps in C were no faster than the per-word
   sum (benchmarks/mcu_kernels.py), so elsewhere the _pairs names are popcount_xor[_and]. */
#if defined(BNNKIT_POPCOUNT_SWAR) || defined(BNNKIT_POPCOUNT_SHIFTS)
/* Thumb-2 ANDs a shifted register with a register in one instruction, not with an immediate:
   an empty asm keeps the masks in registers. */
#if defined(__GNUC__) && defined(__thumb2__)
#define IN_REGISTER(v) __asm__("" : "+r"(v))
#if defined(__ARM_FEATURE_SIMD32) && !defined(BNNKIT_NO_DSP)
#define BNNKIT_POPCOUNT_PAIRS
#endif
#else
#define IN_REGISTER(v) ((void)0)
#endif
#define POPCOUNT_WORDS_KERNEL(name, MASK, ...)                                                                         \
    static inline int name(const uint32_t *a, const uint32_t *b, __VA_ARGS__ int n)                                    \
    {                                                                                                                  \
        uint32_t m1 = 0x55555555u, m2 = 0x33333333u, m4 = 0x0f0f0f0fu;                                                 \
        int total = 0, k, chunk;                                                                                       \
        IN_REGISTER(m1);                                                                                               \
        IN_REGISTER(m2);                                                                                               \
        IN_REGISTER(m4);                                                                                               \
        for (;;) {                                                                                                     \
            uint32_t s = 0;                                                                                            \
            chunk = n < 31 ? n : 31; /* 31 words of at most 8 per byte fit a byte */                                   \
            for (k = 0; k < chunk; k++) {                                                                              \
                uint32_t v = MASK(a[k] ^ b[k], k);                                                                     \
                v = v - ((v >> 1) & m1);                                                                               \
                v = (v & m2) + ((v >> 2) & m2);                                                                        \
                s += (v + (v >> 4)) & m4;                                                                              \
            }                                                                                                          \
            s = (s & 0x00ff00ffu) + ((s >> 8) & 0x00ff00ffu);                                                          \
            total += (int)((s + (s >> 16)) & 0xffffu);                                                                 \
            if ((n -= chunk) == 0)                                                                                     \
                return total;                                                                                          \
            a += chunk;                                                                                                \
            b += chunk;                                                                                                \
            MASK_CHUNK(chunk);                                                                                         \
        }                                                                                                              \
    }
#else
#define POPCOUNT_WORDS_KERNEL(name, MASK, ...)                                                                         \
    static inline int name(const uint32_t *a, const uint32_t *b, __VA_ARGS__ int n)                                    \
    {                                                                                                                  \
        int total = 0, k;                                                                                              \
        for (k = 0; k < n; k++) {                                                                                      \
            uint32_t v = MASK(a[k] ^ b[k], k);                                                                         \
            total += POPCOUNT(v);                                                                                      \
        }                                                                                                              \
        return total;                                                                                                  \
    }
#endif
#define NO_MASK(v, k) (v)
#define MASK_CHUNK(chunk) ((void)0)
POPCOUNT_WORDS_KERNEL(popcount_xor, NO_MASK, )
#undef MASK_CHUNK
#define MASK_CHUNK(chunk) (m += (chunk))
#define AND_MASK(v, k) ((v)&m[k])
POPCOUNT_WORDS_KERNEL(popcount_xor_and, AND_MASK, const uint32_t *m, )
#if defined(BNNKIT_POPCOUNT_PAIRS)
#include <arm_acle.h>
/* One pair's step in Thumb-2 assembly once X and Y hold its two words (the patch's XOR the
   weights'): the carry-save add into ONES, then the carry counted in byte fields and summed onto
   S by USADA8 (60 - its count). T and U are scratch; M1, M2, M4 hold the masks. */
#define PAIR_STEP(x, y, t, u, ones, s, m1, m2, m4)                                                                     \
    "eor " u ", " ones ", " x "\n\t" /* u = ones ^ x */                                                                \
    "and " t ", " ones ", " x "\n\t"                                                                                   \
    "and " x ", " u ", " y "\n\t"                                                                                      \
    "eor " ones ", " u ", " y "\n\t"                                                                                   \
    "orr " t ", " t ", " x "\n\t" /* the carry */                                                                      \
    "and " x ", " m1 ", " t ", lsr #1\n\t"                                                                             \
    "sub " t ", " t ", " x "\n\t"                                                                                      \
    "and " x ", " m2 ", " t ", lsr #2\n\t"                                                                             \
    "and " t ", " t ", " m2 "\n\t"                                                                                     \
    "add " t ", " t ", " x "\n\t"                                                                                      \
    "add " t ", " t ", " t ", lsr #4\n\t"                                                                              \
    "and " t ", " t ", " m4 "\n\t"                                                                                     \
    "usada8 " s ", " t ", " m4 ", " s "\n\t"
/* n >= 2. The pairs in assembly, 19 instructions a pair (22 with a mask): GCC neither loads a
   pair with one LDRD nor keeps all twelve values in registers. ONES starts at the odd word out;
   the carries' byte counts of all pairs go into one USADA8 sum (at most 60 a pair). */
#define POPCOUNT_PAIRS_KERNEL(name, MASK, MASK_ADVANCE, MASK_ASM, MASK_OPERAND, ...)                                   \
    static NOINLINE int name(const uint32_t *a, const uint32_t *b, __VA_ARGS__ int n)                                  \
    {                                                                                                                  \
        uint32_t m1 = 0x55555555u, m2 = 0x33333333u, m4 = 0x0f0f0f0fu, ones = 0, s = 0, x, y, t, u;                    \
        const uint32_t *stop;                                                                                          \
        if (n & 1) {                                                                                                   \
            ones = MASK(*a ^ *b, 0);                                                                                   \
            a++, b++;                                                                                                  \
            MASK_ADVANCE(1);                                                                                           \
        }                                                                                                              \
        stop = a + (n & ~1);                                                                                           \
        __asm__(                                                                                                       \
            "1: ldrd %[x], %[y], [%[a]], #8\n\t"                                                                       \
            "ldrd %[t], %[u], [%[b]], #8\n\t"                                                                          \
            "eor %[x], %[x], %[t]\n\t"                                                                                 \
            "eor %[y], %[y], %[u]\n\t" /* x, y: the pair */                                                            \
            MASK_ASM                   /* x, y masked */                                                               \
                PAIR_STEP("%[x]", "%[y]", "%[t]", "%[u]", "%[ones]", "%[s]", "%[m1]", "%[m2]", "%[m4]") /* counted */  \
            "cmp %[a], %[stop]\n\t"                                                                                    \
            "bne 1b"                                                                                                   \
            : [a] "+r"(a), [b] "+r"(b), [ones] "+r"(ones), [s] "+r"(s), [x] "=&r"(x), [y] "=&r"(y), [t] "=&r"(t),      \
              [u] "=&r"(u)MASK_OPERAND()                                                                               \
            : [stop] "r"(stop), [m1] "r"(m1), [m2] "r"(m2), [m4] "r"(m4)                                               \
            : "cc", "memory");                                                                                         \
        ones = ones - ((ones >> 1) & m1);                                                                              \
        ones = (ones & m2) + ((ones >> 2) & m2);                                                                       \
        ones = (ones + (ones >> 4)) & m4;                                                                              \
        /* 2 * (60 * pairs - s) + 60 - the USADA8 of ONES = 60 * (n | 1) - that of ONES onto 2 * s */                  \
        return 60 * (n | 1) - (int)__usada8(ones, m4, 2 * s);                                                          \
    }
#define NO_ADVANCE(k) ((void)0)
#define NO_OPERAND() /* the asm operand of the mask pointer: expanded in the asm only */
POPCOUNT_PAIRS_KERNEL(popcount_xor_pairs, NO_MASK, NO_ADVANCE, "", NO_OPERAND, )
#define MASK_ADVANCE(k) (m += (k))
#define MASK_ASM "ldrd %[t], %[u], [%[m]], #8\n\tand %[x], %[x], %[t]\n\tand %[y], %[y], %[u]\n\t"
#define MASK_OPERAND() , [m] "+r"(m)
POPCOUNT_PAIRS_KERNEL(popcount_xor_and_pairs, AND_MASK, MASK_ADVANCE, MASK_ASM, MASK_OPERAND, const uint32_t *m, )
#else
#define popcount_xor_pairs popcount_xor
#define popcount_xor_and_pairs popcount_xor_and
#endif

/* bnnkit:kernel bits_out needs patch */
/* Appends runs of bits to words, densely. A map's writer ends it with
   end_bits: its last word is written whole, the bits after the map 0. Bit offsets fit an int:
   a map holds fewer than 2^31 bits (bnnkit.graph.limits bounds its values to 2^30, and a pixel
   is padded to less than twice its channels only where C >= 32). */
struct bits_out {
    uint32_t *p, cur;
    int off; /* bits of cur in use, < 32 */
};

/* v's low n bits (1 <= n <= 32), the others 0 */
static inline void append_bits(struct bits_out *o, uint32_t v, int n)
{
    o->cur |= v << o->off;
    if (o->off + n < 32) {
        o->off += n;
        return;
    }
    *o->p++ = o->cur;
    o->cur = (v >> 1) >> (31 - o->off); /* v >> (32 - off) without a shift by 32, undefined */
    o->off += n - 32;
}

/* append_bits for writers off the hot path: one copy, compiled for size. */
static COLD NOINLINE void put_bits(struct bits_out *o, uint32_t v, int n)
{
    append_bits(o, v, n);
}

static void end_bits(struct bits_out *o)
{
    if (o->off != 0)
        *o->p = o->cur;
}

/* bnnkit:kernel binary_patch needs patch bits_out */
/* Appends the n >= 1 bits from bit at of x, a word of x at a time; reads no word after them. */
static inline void append_run(struct bits_out *o, const uint32_t *x, int at, int n)
{
    int s = at & 31, k; /* s: the first bit of the next word to read */
    for (x += at >> 5; n > 0; n -= k, s = 0) {
        k = 32 - s < n ? 32 - s : n;
        append_bits(o, (*x++ >> s) & (0xffffffffu >> (32 - k)), k);
    }
}

/* Appends n >= 1 bits, all 0 (v = 0) or all 1 (v = 0xffffffff); compiled for size. */
static COLD NOINLINE void put_fill(struct bits_out *o, uint32_t v, int n)
{
    for (; n > 32; n -= 32)
        put_bits(o, v, 32);
    put_bits(o, v >> (32 - n), n);
}

/* The patch of the output pixel whose window starts at (y0, x0), into L->patch (unless the
   kernel covers the whole unpadded map and the map has no unused bits between pixels: then the
   map is its own patch). It is written in runs, the writer's state in registers: where pixels
   follow each other without unused bits (pb = C: bit-dense, or whole words) the taps of a window
   row inside the map are one run, else each tap is one. A tap outside the map reads L->pad or,
   when that is NULL (pad 'zero'), counts for nothing: its bits are cleared in the mask that
   follows the patch (such a layer's patch has room for it, bnnkit.runtime.c sizes it), so any C
   bits do (the map's first pixel's), and n says how many count. */
static NOINLINE struct patch binary_patch_at(const struct conv *L, const uint32_t *x, int y, int xo)
{
    int y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW, all = L->KH * L->KW * L->C, i, j, t;
    /* the taps of a row inside the map: j0 <= j < j1 (none when j0 >= j1) */
    int j0 = x0 < 0 ? -x0 : 0, j1 = L->W - x0 < L->KW ? L->W - x0 : L->KW;
    int masked = L->pad == NULL && (y0 < 0 || y0 + L->KH > L->H || j0 > 0 || j1 < L->KW);
    struct bits_out bits = {L->patch, 0, 0}, mask = {L->patch + L->wpo, 0, 0};
    struct patch P = {L->patch, NULL, NULL, all, 0};
    /* Never taken (binary_patch reads such a map in place), but GCC may clone this function for
       such a layer and would warn of the writes through NULL. */
    if (L->patch == NULL)
        return P;
    for (i = 0; i < L->KH; i++) {
        int iy = y0 + i, a = iy >= 0 && iy < L->H ? j0 : L->KW; /* inside: a <= j < j1 */
        for (j = 0; j < L->KW; j += t) {
            int in = j >= a && j < j1;
            t = in && L->pb == L->C ? j1 - j : 1;
            append_run(&bits, in || masked ? x : L->pad, in ? (iy * L->W + x0 + j) * L->pb : 0, t * L->C);
            if (masked) {
                put_fill(&mask, in ? 0xffffffffu : 0, t * L->C);
                P.n -= in ? 0 : L->C;
            }
        }
    }
    end_bits(&bits);
    if (masked) { /* a layer with a pad pixel has no room for a mask */
        end_bits(&mask);
        P.mask = L->patch + L->wpo;
    }
    return P;
}

/* Inline, so that a kernel specialised to a layer read in place loses the patch and the mask. */
static inline struct patch binary_patch(const struct conv *L, const uint32_t *x, int y, int xo)
{
    struct patch P = {NULL, NULL, NULL, 0, 0};
    if (L->patch != NULL)
        return binary_patch_at(L, x, y, xo);
    P.w = x;
    P.n = L->KH * L->KW * L->C;
    return P;
}

/* bnnkit:kernel binary_patch_words needs patch */
/* binary_patch for a map of C a multiple of 32 channels (pb = C: whole words a pixel, no unused
   bits), the generator's choice (binary_conv_sign_words): the taps' words are copied, a window
   row inside the map at once, without the bit writer; at a border with pad 'zero' the mask's
   words are all 0 or all 1. A kernel covering the whole unpadded map reads it in place. */
static NOINLINE struct patch binary_patch_words_at(const struct conv *L, const uint32_t *x, int y, int xo)
{
    int y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW, pw = L->C / 32, i, j, k;
    uint32_t *p = L->patch, *m = L->patch + L->wpo;
    struct patch P = {L->patch, NULL, NULL, L->KH * L->KW * L->C, 0};
    if (L->patch == NULL) /* as in binary_patch_at */
        return P;
    if (y0 >= 0 && x0 >= 0 && y0 + L->KH <= L->H && x0 + L->KW <= L->W) {
        const uint32_t *row = x + (y0 * L->W + x0) * pw;
        for (i = 0; i < L->KH; i++, row += L->W * pw)
            for (k = 0; k < L->KW * pw; k++)
                *p++ = row[k];
        return P;
    }
    for (i = 0; i < L->KH; i++)
        for (j = 0; j < L->KW; j++) {
            int iy = y0 + i, ix = x0 + j, in = iy >= 0 && iy < L->H && ix >= 0 && ix < L->W;
            const uint32_t *from = in ? x + (iy * L->W + ix) * pw : L->pad;
            for (k = 0; k < pw; k++) {
                *p++ = from != NULL ? from[k] : 0;
                if (L->pad == NULL)
                    *m++ = in ? 0xffffffffu : 0;
            }
            P.n -= L->pad == NULL && !in ? L->C : 0;
        }
    if (L->pad == NULL) /* a layer with a pad pixel has no room for a mask */
        P.mask = L->patch + L->wpo;
    return P;
}

static inline struct patch binary_patch_words(const struct conv *L, const uint32_t *x, int y, int xo)
{
    struct patch P = {x, NULL, NULL, 0, 0};
    P.n = L->KH * L->KW * L->C;
    return L->patch != NULL ? binary_patch_words_at(L, x, y, xo) : P;
}

/* bnnkit:kernel binary_dot needs patch popcount_words */
/* n - 2 * popcount(x ^ w) over the bits that count. From PAIRS_FROM words on (the 3x3 windows
   of 32 channels and more, a dense layer) the carry-save function, below it the inline sum
   (benchmarks/mcu_kernels.py measured both on ebnn_cnn and small_cnn). */
#define PAIRS_FROM 8
static inline int32_t binary_dot(const struct conv *L, const struct patch *P, int o)
{
    const uint32_t *w = L->w + o * L->wpo;
    if (L->wpo >= PAIRS_FROM)
        return P->n - 2 * (P->mask == NULL ? popcount_xor_pairs(P->w, w, L->wpo)
                                           : popcount_xor_and_pairs(P->w, w, P->mask, L->wpo));
    return P->n - 2 * (P->mask == NULL ? popcount_xor(P->w, w, L->wpo) : popcount_xor_and(P->w, w, P->mask, L->wpo));
}

/* bnnkit:kernel sign_pairs_asm needs popcount_words */
/* With BNNKIT_POPCOUNT_PAIRS (M4, M7), a fused convolution's patches of PAIRS_FROM words or more:
   all open channels of a word of output channels in one piece of assembly, each channel's pair
   count (as popcount_xor[_and]_pairs) and its threshold included, with the masks and the patch's
   end in registers across channels. A C function around the pair loop spilled its values around
   the twelve registers the loop takes (about 50 instructions a channel outside the loop, where
   this takes about 40). The channels are visited highest first (CLZ): channel 31 - i's weights
   and threshold are i strides below channel 31's. */
#if defined(BNNKIT_POPCOUNT_PAIRS)
struct sign_pairs {    /* 32-bit words at the offsets the assembly reads */
    uint32_t a;        /* 0: the patch's first pair (after its odd word, if any) */
    uint32_t stop;     /* 4: the patch's end */
    uint32_t mask;     /* 8: 0, or the mask from its first word */
    uint32_t odd;      /* 12: the patch has an odd word out (its first) */
    uint32_t w31;      /* 16: where channel 31's weights would be */
    uint32_t stride;   /* 20: bytes of weights per channel */
    uint32_t thresh31; /* 24: where channel 31's threshold would be */
    uint32_t flip;     /* 28 */
    int32_t base;      /* 32: the bits that count - 120 * (words | 1): a sum is base + 2 * its USADA8 */
    uint32_t open;     /* 36: the channels to compute; scratch */
    uint32_t set;      /* 40: out, 0 in: the channels whose bit is 1 */
};

/* r0 a, r1 b (the weights), r2-r5 scratch, r6 ONES, r7 the open channels (the mask pointer in
   the masked loop), r8 S, r9-r11 the masks, ip the patch's end, lr J. */
#define SIGN_PAIRS_LOAD(b) "ldrd r2, r3, [r0], #8\n\tldrd r4, r5, [" b "], #8\n\teors r2, r4\n\teors r3, r5\n\t"
#define SIGN_PAIRS_STEP PAIR_STEP("r2", "r3", "r4", "r5", "r6", "r8", "r9", "r10", "r11") "cmp r0, ip\n\t"
static NOINLINE uint32_t sign_pairs(struct sign_pairs *J)
{
    register uint32_t r0 __asm__("r0") = (uint32_t)(uintptr_t)J;
    __asm__ volatile("mov lr, r0\n\t"
                     "ldr ip, [lr, #4]\n\t"
                     "mov r9, #0x55555555\n\t"
                     "mov r10, #0x33333333\n\t"
                     "mov r11, #0x0f0f0f0f\n\t"
                     "ldr r7, [lr, #36]\n\t"
                     "b 2f\n"
                     "1:\n\t" /* a channel counted: its sum, then its threshold */
                     "and r2, r9, r6, lsr #1\n\t"
                     "sub r6, r6, r2\n\t"
                     "and r2, r10, r6, lsr #2\n\t"
                     "and r6, r6, r10\n\t"
                     "add r6, r6, r2\n\t"
                     "add r6, r6, r6, lsr #4\n\t"
                     "and r6, r6, r11\n\t"
                     "lsls r8, r8, #1\n\t"
                     "usada8 r8, r6, r11, r8\n\t"
                     "ldr r2, [lr, #32]\n\t"
                     "add r8, r2, r8, lsl #1\n\t" /* the sum */
                     "clz r2, r7\n\t"
                     "ldr r3, [lr, #24]\n\t"
                     "sub r3, r3, r2, lsl #" SIGN_THRESH_LOG2 "\n\t" /* its threshold */
                     SIGN_THRESH_LOAD " r3, [r3]\n\t"
                     "mov r4, #0x80000000\n\t"
                     "lsrs r4, r4, r2\n\t" /* its bit */
                     "bics r7, r7, r4\n\t"
                     "ldr r5, [lr, #28]\n\t"
                     "lsls r5, r5, r2\n\t" /* N: flipped, ~sum >= ~threshold as in SIGN_BIT */
                     "itt mi\n\t"
                     "mvnmi r8, r8\n\t"
                     "mvnmi r3, r3\n\t"
                     "cmp r8, r3\n\t"
                     "blt 7f\n\t" /* a branch: taken, one instruction where an IT block takes four */
                     "ldr r5, [lr, #40]\n\t"
                     "orr r5, r5, r4\n\t"
                     "str r5, [lr, #40]\n"
                     "7:\n\t"
                     "cbnz r7, 2f\n\t"
                     "b 9f\n"
                     "2:\n\t" /* the highest open channel */
                     "clz r2, r7\n\t"
                     "ldr r1, [lr, #16]\n\t"
                     "ldr r3, [lr, #20]\n\t"
                     "mls r1, r2, r3, r1\n\t"
                     "ldr r0, [lr]\n\t"
                     "movs r6, #0\n\t"
                     "mov r8, #0\n\t"
                     "ldr r3, [lr, #8]\n\t"
                     "cbnz r3, 5f\n\t"
                     "ldr r4, [lr, #12]\n\t"
                     "cbz r4, 3f\n\t"
                     "ldr r6, [r0, #-4]\n\t"
                     "ldr r5, [r1], #4\n\t"
                     "eors r6, r5\n"
                     "3:\n\t" SIGN_PAIRS_LOAD("r1") SIGN_PAIRS_STEP
                     "bne 3b\n\t"
                     "b 1b\n"
                     "5:\n\t" /* masked */
                     "str r7, [lr, #36]\n\t"
                     "mov r7, r3\n\t"
                     "ldr r4, [lr, #12]\n\t"
                     "cbz r4, 6f\n\t"
                     "ldr r6, [r0, #-4]\n\t"
                     "ldr r5, [r1], #4\n\t"
                     "eors r6, r5\n\t"
                     "ldr r5, [r7], #4\n\t"
                     "ands r6, r5\n"
                     "6:\n\t" SIGN_PAIRS_LOAD(
                         "r1") "ldrd r4, r5, [r7], #8\n\tands r2, r4\n\tands r3, r5\n\t" SIGN_PAIRS_STEP "bne 6b\n\t"
                               "ldr r7, [lr, #36]\n\t"
                               "b 1b\n"
                               "9:\n\t"
                               "ldr r0, [lr, #40]"
                     : "+r"(r0)
                     :
                     : "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");
    return r0;
}
#endif

/* bnnkit:kernel byte_sums needs structs */
/* Sums of bytes 4 at a time. With the DSP extension (M4, M7): USADA8, the sum of absolute
   differences, against 0, one instruction per word; without (M3, hosts): two 16-bit lanes,
   at most 2 * 255 a word, folded every 128 words. load_word reads 4 bytes at any alignment
   (one LDR on the M3/M4/M7, which allow unaligned loads). */
#if defined(__ARM_FEATURE_SIMD32) && !defined(BNNKIT_NO_DSP)
#include <arm_acle.h>
#define BYTE_SUMS_DSP 1
#define BYTE_SUMS_CHUNK 0x7fffffff
#define ADD_BYTES(s, v) ((s) = __usada8((v), 0u, (s)))
#define FOLD_BYTES(s) ((int32_t)(s))
#else
#define BYTE_SUMS_CHUNK 128
#define ADD_BYTES(s, v) ((s) += ((v)&0x00ff00ffu) + (((v) >> 8) & 0x00ff00ffu))
#define FOLD_BYTES(s) ((int32_t)(((s)&0xffffu) + ((s) >> 16)))
#endif
#include <string.h>
static uint32_t load_word(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v; /* little-endian, as the masks are */
}

/* bnnkit:kernel input_patch needs patch byte_sums */
/* The pixels of the output pixel whose window starts at (y0, x0), in the weights' (c, i, j)
   order, padded pixels 0, into L->patch zero-filled to whole words; a dense layer reads the
   image in place. n = their sum. */
/* Any pixel, a test per tap; compiled for size (GCC's cold). */
static COLD void input_patch_edge(const struct conv *L, const uint8_t *x, int y0, int x0)
{
    uint8_t *b = (uint8_t *)L->patch;
    int c, i, j;
    for (c = 0; c < L->C; c++)
        for (i = 0; i < L->KH; i++)
            for (j = 0; j < L->KW; j++) {
                int iy = y0 + i, ix = x0 + j;
                *b++ = iy >= 0 && iy < L->H && ix >= 0 && ix < L->W ? x[(c * L->H + iy) * L->W + ix] : 0;
            }
}

static inline struct patch input_patch(const struct conv *L, const uint8_t *x, int y, int xo)
{
    int k = L->C * L->KH * L->KW, y0 = y * L->SH - L->PH, x0 = xo * L->SW - L->PW, c, i, j, q = 0;
    struct patch P = {NULL, x, NULL, 0, k >> 2};
    if (L->patch != NULL) {
        uint8_t *b = (uint8_t *)L->patch;
        if (y0 >= 0 && x0 >= 0 && y0 + L->KH <= L->H && x0 + L->KW <= L->W)
            for (c = 0; c < L->C; c++)
                for (i = 0; i < L->KH; i++)
                    for (j = 0; j < L->KW; j++)
                        *b++ = x[(c * L->H + y0 + i) * L->W + x0 + j];
        else
            input_patch_edge(L, x, y0, x0);
        for (k = L->C * L->KH * L->KW; k & 3; k++)
            ((uint8_t *)L->patch)[k] = 0;
        P.b = (const uint8_t *)L->patch;
        P.words = k >> 2;
    }
    while (q < P.words) {
        int end = P.words - q > BYTE_SUMS_CHUNK ? q + BYTE_SUMS_CHUNK : P.words;
        uint32_t s = 0;
        for (; q < end; q++) {
            uint32_t v = load_word(P.b + 4 * q);
            ADD_BYTES(s, v);
        }
        P.n += FOLD_BYTES(s);
    }
    for (q = 4 * P.words; L->patch == NULL && q < k; q++)
        P.n += P.b[q];
    return P;
}

/* bnnkit:kernel input_dot needs patch byte_sums bit_at */
/* sum(+-x) = 2 * sum(x where the weight is +1) - sum(x): the weight bits, 4 at a time, become
   a mask of whole bytes (a 16-word table) ANDed onto 4 pixels. */
static const uint32_t byte_masks[16] = {
    0x00000000u, 0x000000ffu, 0x0000ff00u, 0x0000ffffu, 0x00ff0000u, 0x00ff00ffu, 0x00ffff00u, 0x00ffffffu,
    0xff000000u, 0xff0000ffu, 0xff00ff00u, 0xff00ffffu, 0xffff0000u, 0xffff00ffu, 0xffffff00u, 0xffffffffu,
};

static inline int32_t input_dot(const struct conv *L, const struct patch *P, int o)
{
    const uint32_t *w = L->w + o * L->wpo;
    int k = L->C * L->KH * L->KW, q = 0;
    int32_t plus = 0;
    uint32_t bits = 0;
    while (q < P->words) {
        int end = P->words - q > BYTE_SUMS_CHUNK ? q + BYTE_SUMS_CHUNK : P->words;
        uint32_t s = 0;
        for (; q < end; q++) {
            uint32_t v;
            if ((q & 7) == 0)
                bits = w[q >> 3];
            v = load_word(P->b + 4 * q) & byte_masks[bits & 15u];
            bits >>= 4;
            ADD_BYTES(s, v);
        }
        plus += FOLD_BYTES(s);
    }
    for (q = 4 * P->words; L->patch == NULL && q < k; q++) /* a patch is whole words: no tail */
        plus += bit_at(w, q) ? P->b[q] : 0;
    return 2 * plus - P->n;
}

/* bnnkit:kernel threshold needs bit_at bits_out */
/* i32 CHW -> bits HWC, pb bits per pixel. thresh INT32_MIN needs no case of its own: no sum
   reaches it. */
static void threshold(const int32_t *x, int C, int HW, int pb, const int32_t *thresh, const uint32_t *flip,
                      uint32_t *out)
{
    struct bits_out bits = {out, 0, 0};
    int p, c, k;
    for (p = 0; p < HW; p++)
        for (k = 0; k < C; k += 32) { /* 32 channels a word, the last word of a pixel padded to pb */
            uint32_t word = 0;
            for (c = k; c < C && c < k + 32; c++) {
                int32_t v = x[c * HW + p];
                int b = bit_at(flip, c) ? v <= thresh[c] : v >= thresh[c];
                word |= (uint32_t)b << (c & 31);
            }
            put_bits(&bits, word, pb - k < 32 ? pb - k : 32);
        }
    end_bits(&bits);
}

/* bnnkit:kernel maxpool_bits needs bits_out */
/* The n bits (1 <= n <= 32) from bit at of x, the others 0; reads no word after them. */
static uint32_t get_bits(const uint32_t *x, int at, int n)
{
    int s = at & 31;
    uint32_t v = x[at >> 5] >> s;
    if (s + n > 32)
        v |= x[(at >> 5) + 1] << (32 - s);
    return n < 32 ? v & ((1u << n) - 1u) : v;
}

/* Window OR per 32 channels; channels set in min (may be NULL) take the window AND instead.
   A pixel is pbx bits of x and pbo bits of out. */
static void maxpool_bits(const uint32_t *x, int C, int H, int W, int KH, int KW, int SH, int SW, int pbx, int pbo,
                         const uint32_t *min, uint32_t *out)
{
    int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, y, xo, k, i, j;
    struct bits_out bits = {out, 0, 0};
    for (y = 0; y < Ho; y++)
        for (xo = 0; xo < Wo; xo++)
            for (k = 0; k < C; k += 32) {
                int n = C - k < 32 ? C - k : 32;
                uint32_t any = 0, all = 0xffffffffu, m = min != NULL ? min[k >> 5] : 0;
                for (i = 0; i < KH; i++)
                    for (j = 0; j < KW; j++) {
                        uint32_t v = get_bits(x, ((y * SH + i) * W + xo * SW + j) * pbx + k, n);
                        any |= v;
                        all &= v;
                    }
                put_bits(&bits, (any & ~m) | (all & m), pbo - k < 32 ? pbo - k : 32);
            }
    end_bits(&bits);
}

/* bnnkit:kernel maxpool */
/* A window max, no padding (floor): the window's first value that no later one is GREATER than
   (for floats the bit pattern of the first maximal value: of +0.0 and -0.0, the first). */
#define MAXPOOL_KERNEL(name, T, GREATER)                                                                               \
    static void name(const T *x, int C, int H, int W, int KH, int KW, int SH, int SW, T *out)                          \
    {                                                                                                                  \
        int Ho = (H - KH) / SH + 1, Wo = (W - KW) / SW + 1, c, y, xo, i, j;                                            \
        for (c = 0; c < C; c++, x += H * W)                                                                            \
            for (y = 0; y < Ho; y++)                                                                                   \
                for (xo = 0; xo < Wo; xo++) {                                                                          \
                    T m = x[y * SH * W + xo * SW];                                                                     \
                    for (i = 0; i < KH; i++)                                                                           \
                        for (j = 0; j < KW; j++) {                                                                     \
                            T v = x[(y * SH + i) * W + xo * SW + j];                                                   \
                            m = GREATER(v, m) ? v : m;                                                                 \
                        }                                                                                              \
                    *out++ = m;                                                                                        \
                }                                                                                                      \
    }
#define GREATER_INT(a, b) ((a) > (b))

/* bnnkit:kernel maxpool_i32 needs maxpool */
MAXPOOL_KERNEL(maxpool_i32, int32_t, GREATER_INT)

/* bnnkit:kernel maxpool_f32 needs maxpool f32_of */
#define GREATER_F32(a, b) (f32_of(a) > f32_of(b))
MAXPOOL_KERNEL(maxpool_f32, uint32_t, GREATER_F32)

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

/* bnnkit:kernel conv needs patch */
/* -> i32 CHW. PATCH gathers what one output pixel reads (input_patch, binary_patch) once for
   all output channels; DOT is an output channel's sum over it (input_dot, binary_dot). */
#define CONV_KERNEL(name, xtype, PATCH, DOT)                                                                           \
    static NOINLINE void name(const struct conv *L, const xtype *x, int32_t *out)                                      \
    {                                                                                                                  \
        int o, y, xo, HW = L->Ho * L->Wo;                                                                              \
        for (y = 0; y < L->Ho; y++)                                                                                    \
            for (xo = 0; xo < L->Wo; xo++) {                                                                           \
                struct patch P = PATCH(L, x, y, xo);                                                                   \
                for (o = 0; o < L->O; o++)                                                                             \
                    out[o * HW + y * L->Wo + xo] = DOT(L, &P, o);                                                      \
            }                                                                                                          \
    }

/* bnnkit:kernel conv_sign needs patch bits_out */
/* Fused with its threshold and a max-pool (1x1 when there is none) -> bits HWC; the i32 map
   is never stored. A pooled bit starts at its pool's identity (0 for an OR, 1 for a min
   channel's AND) and is final once it differs from it, so an output channel's sum is computed
   only until then (with pool windows that do not overlap, each output bit at most once): the
   channels still open are the bits of ~(out ^ identity), visited lowest first. A bit-dense
   output (S->dense, one word a pixel) is built in a word of its own, then appended. */
#if defined(__GNUC__) || defined(__clang__)
#define LOWEST_BIT(v) __builtin_ctz(v)
#else
static int LOWEST_BIT(uint32_t v)
{
    int n = 0;
    for (; !(v & 1u); v >>= 1)
        n++;
    return n;
}
#endif
/* The open channels of word k of a pooled pixel. */
static uint32_t sign_open(const struct sign *S, const uint32_t *out, int O, int k)
{
    uint32_t open = ~(out[k] ^ (S->min != NULL ? S->min[k] : 0));
    return O - 32 * k >= 32 ? open : open & ((1u << (O - 32 * k)) - 1);
}

static int sign_any_open(const struct sign *S, const uint32_t *out, int O)
{
    int k;
    for (k = 0; 32 * k < O; k++)
        if (sign_open(S, out, O, k) != 0)
            return 1;
    return 0;
}

/* An output channel's bit: flip ? acc <= t : acc >= t, as ~acc >= ~t when flipped (~ reverses the
   order); FLIP is 0 or -1. */
#define SIGN_BIT(acc, t, flip) (((acc) ^ (int32_t)(flip)) >= ((t) ^ (int32_t)(flip)))

/* The open channels' bits are set in SET as they are computed and written once per word: a
   visited channel's bit is its pool's identity until then. WORD(L, S, P, k, open, &set) may
   compute some of word k's open channels into set; it returns those left to DOT. */
#define CONV_SIGN_KERNEL(name, xtype, PATCH, DOT, WORD)                                                                \
    static NOINLINE void name(const struct conv *L, const struct sign *S, const xtype *x, uint32_t *out)               \
    {                                                                                                                  \
        int ow = (L->O + 31) / 32, py, px, k, i, j;                                                                    \
        uint32_t pixel[1];                                                                                             \
        struct bits_out dense = {out, 0, 0};                                                                           \
        for (py = 0; py < S->Ho; py++)                                                                                 \
            for (px = 0; px < S->Wo; px++, out += S->dense ? 0 : ow) {                                                 \
                uint32_t *o = S->dense ? pixel : out; /* the pixel's words */                                          \
                for (k = 0; k < ow; k++)                                                                               \
                    o[k] = S->min != NULL ? S->min[k] : 0;                                                             \
                for (i = 0; i < S->KH; i++)                                                                            \
                    for (j = 0; j < S->KW && sign_any_open(S, o, L->O); j++) {                                         \
                        struct patch P = PATCH(L, x, py * S->SH + i, px * S->SW + j);                                  \
                        for (k = 0; k < ow; k++) {                                                                     \
                            uint32_t visit = sign_open(S, o, L->O, k), set = 0, open = WORD(L, S, &P, k, visit, &set); \
                            uint32_t flip = S->flip[k];                                                                \
                            const sign_thresh_t *thresh = S->thresh + 32 * k;                                          \
                            while (open != 0) {                                                                        \
                                int b = LOWEST_BIT(open);                                                              \
                                int32_t acc = DOT(L, &P, 32 * k + b);                                                  \
                                if (SIGN_BIT(acc, thresh[b], -((flip >> b) & 1u)))                                     \
                                    set |= open & -open;                                                               \
                                open &= open - 1;                                                                      \
                            }                                                                                          \
                            o[k] ^= (o[k] ^ set) & visit;                                                              \
                        }                                                                                              \
                    }                                                                                                  \
                if (S->dense)                                                                                          \
                    put_bits(&dense, pixel[0], L->O);                                                                  \
            }                                                                                                          \
        end_bits(&dense);                                                                                              \
    }
#define ALL_TO_DOT(L, S, P, k, open, set) (open)

/* bnnkit:kernel input_conv needs conv input_patch input_dot */
CONV_KERNEL(input_conv, uint8_t, input_patch, input_dot)

/* bnnkit:kernel input_conv_sign needs conv_sign input_patch input_dot */
/* A patch of at most 12 pixels (a 3x3 window of one channel: the first layer of an image net)
   is three words and each channel's weights one: held in registers, the patch is read once for
   all open channels of a word of output channels, in a function of their own (inside the
   kernel, GCC reloaded the table and the weights' address every channel: about 49 instructions
   a channel, 32 in a C function of its own). Larger patches, and a
   dense layer read in place, go through input_dot, as does every patch on the cores without the
   DSP extension (the M3: the C function took 0.5 M instructions off small_cnn but made its image
   76 B larger). */
#if defined(BYTE_SUMS_DSP) && defined(__GNUC__) && defined(__thumb2__)
struct input_sign {              /* 32-bit words at the offsets the assembly reads */
    uint32_t p[3];               /* 0: the patch, its bytes after the last pixel 0 */
    const uint32_t *w;           /* 12: the word's channel 0's weights, one word a channel */
    const sign_thresh_t *thresh; /* 16: its threshold */
    int32_t n;                   /* 20: the patch's sum */
    uint32_t plain, flipped;     /* 24, 28: the open channels not flipped, flipped */
};
/* Thumb-2 with the DSP extension (M4, M7): 23 instructions a channel, and no byte_masks table
   (64 B of flash): MSR APSR_g puts four weight bits into the GE flags, SEL keeps the pixels whose
   weight is -1, and USADA8 of the patch word against them sums those whose weight is +1. One
   loop (a local function, lr saved) sets the bits of acc >= t: it runs over the channels not
   flipped, then over the flipped ones with n + 1, i.e. acc - 1 >= t, their bit (acc <= t)
   inverted, so no channel pays for choosing; the flipped channels' bits are inverted at the end.
   The open channels and the set ones are bit-reversed, so that CLZ gives the lowest channel.
   r0-r2 the patch, r3 zero, r4 the weights, r5 the thresholds, r6 n, r7 the open channels, r8
   the set ones, r9-r12 and lr scratch (r9 the channel, r10 its threshold, r11 its bit, r12 its
   weights, lr its sum). */
static NOINLINE uint32_t input_sign_short(const struct input_sign *J)
{
    register uint32_t r0 __asm__("r0") = (uint32_t)(uintptr_t)J;
    __asm__ volatile("ldr r7, [r0, #28]\n\t"
                     "push {r7}\n\t"
                     "ldr r7, [r0, #24]\n\t"
                     "ldm r0, {r0-r2, r4-r6}\n\t"
                     "movs r3, #0\n\t"
                     "mov r8, #0\n\t"
                     "bl 1f\n\t"
                     "ldr r7, [sp]\n\t"
                     "add r6, r6, #1\n\t"
                     "bl 1f\n\t"
                     "pop {r7}\n\t"
                     "rbit r0, r8\n\t"
                     "eor r0, r0, r7\n\t"
                     "b 9f\n"
                     "1:\n\t"
                     "push {lr}\n\t"
                     "rbit r7, r7\n\t"
                     "cbz r7, 3f\n"
                     "2:\n\t"
                     "clz r9, r7\n\t"
                     "ldr r12, [r4, r9, lsl #2]\n\t" SIGN_THRESH_LOAD " r10, [r5, r9, lsl #" SIGN_THRESH_LOG2 "]\n\t"
                     "mov r11, #0x80000000\n\t"
                     "lsr r11, r11, r9\n\t"
                     "lsl r9, r12, #16\n\t"
                     "msr APSR_g, r9\n\t"
                     "sel r9, r3, r0\n\t"
                     "usad8 lr, r0, r9\n\t"
                     "lsl r9, r12, #12\n\t"
                     "msr APSR_g, r9\n\t"
                     "sel r9, r3, r1\n\t"
                     "usada8 lr, r1, r9, lr\n\t"
                     "lsl r9, r12, #8\n\t"
                     "msr APSR_g, r9\n\t"
                     "sel r9, r3, r2\n\t"
                     "usada8 lr, r2, r9, lr\n\t"
                     "rsb lr, r6, lr, lsl #1\n\t" /* acc = 2 * plus - n */
                     "cmp lr, r10\n\t"
                     "it ge\n\t"
                     "orrge r8, r8, r11\n\t"
                     "bics r7, r7, r11\n\t"
                     "bne 2b\n"
                     "3:\n\t"
                     "pop {pc}\n"
                     "9:"
                     : "+r"(r0)
                     :
                     : "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");
    return r0;
}
static inline uint32_t input_sign_word(const struct conv *L, const struct sign *S, const struct patch *P, int k,
                                       uint32_t open, uint32_t *set)
{
    struct input_sign J;
    int q;
    if (L->patch == NULL || P->words > 3)
        return open;
    for (q = 0; q < 3; q++)
        J.p[q] = q < P->words ? load_word(P->b + 4 * q) : 0;
    J.w = L->w + 32 * k;
    J.thresh = S->thresh + 32 * k;
    J.n = P->n;
    J.plain = open & ~S->flip[k];
    J.flipped = open & S->flip[k];
    *set = input_sign_short(&J);
    return 0;
}
CONV_SIGN_KERNEL(input_conv_sign, uint8_t, input_patch, input_dot, input_sign_word)
#else
CONV_SIGN_KERNEL(input_conv_sign, uint8_t, input_patch, input_dot, ALL_TO_DOT)
#endif

/* bnnkit:kernel binary_conv needs conv binary_patch binary_dot */
CONV_KERNEL(binary_conv, uint32_t, binary_patch, binary_dot)

/* bnnkit:kernel binary_conv_sign needs conv_sign binary_patch binary_dot */
CONV_SIGN_KERNEL(binary_conv_sign, uint32_t, binary_patch, binary_dot, ALL_TO_DOT)

/* bnnkit:kernel binary_conv_sign_words needs conv_sign binary_patch_words binary_dot sign_pairs_asm */
/* binary_conv_sign over a map of C a multiple of 32 channels, the generator's choice: a kernel of
   its own, so that a model without such a layer (the narrow ones of small devices) carries none
   of its code. With the assembly, it computes all of word k's open channels at once when the
   patch is long (into set; none are left to DOT). */
static inline uint32_t binary_sign_pairs(const struct conv *L, const struct sign *S, const struct patch *P, int k,
                                         uint32_t open, uint32_t *set)
{
#if defined(BNNKIT_POPCOUNT_PAIRS)
    if (L->wpo >= PAIRS_FROM && open != 0) { /* the assembly computes one channel or more */
        int odd = L->wpo & 1;
        struct sign_pairs J;
        J.a = (uint32_t)(uintptr_t)(P->w + odd);
        J.stop = (uint32_t)(uintptr_t)(P->w + L->wpo);
        J.mask = (uint32_t)(uintptr_t)P->mask;
        J.odd = (uint32_t)odd;
        J.stride = 4u * (uint32_t)L->wpo;
        J.w31 = (uint32_t)(uintptr_t)(L->w + 32 * k * L->wpo) + 31u * J.stride;
        J.thresh31 = (uint32_t)(uintptr_t)(S->thresh + 32 * k) + 31u * (uint32_t)sizeof(sign_thresh_t);
        J.flip = S->flip[k];
        J.base = P->n - 120 * (L->wpo | 1);
        J.open = open;
        J.set = 0;
        *set = sign_pairs(&J);
        return 0;
    }
#else
    (void)L, (void)S, (void)P, (void)k, (void)set;
#endif
    return open;
}
CONV_SIGN_KERNEL(binary_conv_sign_words, uint32_t, binary_patch_words, binary_dot, binary_sign_pairs)

/* bnnkit:kernel sign_f32 needs f32_of bits_out */
/* f32 CHW -> bits HWC, pb bits per pixel: x >= thresh[c], an IEEE comparison (-0.0 >= 0.0; NaN
   gives 0). */
static void sign_f32(const uint32_t *x, int C, int HW, int pb, const float *thresh, uint32_t *out)
{
    struct bits_out bits = {out, 0, 0};
    int p, c, k;
    for (p = 0; p < HW; p++)
        for (k = 0; k < C; k += 32) { /* as in threshold */
            uint32_t word = 0;
            for (c = k; c < C && c < k + 32; c++)
                word |= (uint32_t)(f32_of(x[c * HW + p]) >= thresh[c]) << (c & 31);
            put_bits(&bits, word, pb - k < 32 ? pb - k : 32);
        }
    end_bits(&bits);
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

/* bnnkit:kernel conv_window */
/* For the CHW convolutions that read every tap (float and fixed point): the window of output
   pixel (y, xo) of layer L (any struct with struct conv's shape fields) starts at input row y0,
   column x0, and its taps inside the map are kernel rows i0..i1-1 and columns j0..j1-1. */
#define CONV_WINDOW(L, y, xo)                                                                                          \
    int y0 = (y) * (L)->SH - (L)->PH, x0 = (xo) * (L)->SW - (L)->PW;                                                   \
    int i0 = y0 < 0 ? -y0 : 0, i1 = (L)->H - y0 < (L)->KH ? (L)->H - y0 : (L)->KH;                                     \
    int j0 = x0 < 0 ? -x0 : 0, j1 = (L)->W - x0 < (L)->KW ? (L)->W - x0 : (L)->KW

/* bnnkit:kernel fconv needs f32_bits conv_window */
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
                    CONV_WINDOW(L, y, xo);                                                                             \
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
