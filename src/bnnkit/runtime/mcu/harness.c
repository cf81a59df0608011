/* The emulator harness. bnnkit.in holds the model index (uint32) then N images (uint8,
   CHW); for each image bnnkit.out receives its scores (float32) then its label (int32),
   and after the last one a trailer {BNNKIT_TRAILER, unused stack bytes} (uint32 each).
   All little-endian. Files are the host's, opened through semihosting. */
#include "mcu.h"
#include "harness.h" /* the models of this image (c_kernels/harness.h, shared with the host) */

#define BNNKIT_TRAILER 0x4b4e4e42u /* "BNNK" */

#ifdef BNNKIT_LAYER_MARKS
/* A build with layer marks (bnnkit.runtime.cortex_m.layer_instructions): the generated code
   calls this before each layer and the harness after the last; the counting plugin records
   the running count whenever it starts. It must stay a call of its own, hence noinline. */
__attribute__((noinline)) void bnnkit_layer_mark(void)
{
    __asm__ volatile("" ::: "memory");
}
#define LAYER_MARK() bnnkit_layer_mark()
#else
#define LAYER_MARK() ((void)0)
#endif

static float scores[BNNKIT_MAX_CLASSES];

/* A failure is its exit status alone (mcu.h): the host names it, so the image carries no
   message text. */
int main(void)
{
    const struct model *m;
    uint8_t *input;
    uint32_t index, bytes, n, trailer[2];
    int32_t label;
    int in = sh_open("bnnkit.in", SH_MODE_RB), out = sh_open("bnnkit.out", SH_MODE_WB);
    if (in < 0 || out < 0)
        return EXIT_NO_FILES;
    if (sh_flen(in) < 4 || sh_read(in, &index, 4) != 0 || index >= BNNKIT_NUM_MODELS)
        return EXIT_NO_MODEL;
    m = &models[index];
    input = m->input();
    bytes = (uint32_t)sh_flen(in) - 4;
    if (bytes % m->input_size != 0)
        return EXIT_PARTIAL_IMAGE;
    for (n = bytes / m->input_size; n != 0; n--) {
        if (sh_read(in, input, m->input_size) != 0)
            return EXIT_READ;
        label = m->infer(input, scores);
        LAYER_MARK();
        if (sh_write(out, scores, m->classes * sizeof scores[0]) != 0 || sh_write(out, &label, sizeof label) != 0)
            return EXIT_WRITE;
    }
    trailer[0] = BNNKIT_TRAILER;
    trailer[1] = stack_unused_bytes();
    if (sh_write(out, trailer, sizeof trailer) != 0 || sh_close(out) != 0 || sh_close(in) != 0)
        return EXIT_WRITE;
    return 0;
}
