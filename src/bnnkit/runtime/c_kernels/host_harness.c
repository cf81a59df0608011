/* The host harness: argv[1] picks the model; images (raw uint8) on stdin, for each its scores
   (float32) then its label (int32) on stdout, native byte order. */
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"

static float scores[BNNKIT_MAX_CLASSES];

int main(int argc, char **argv)
{
    const struct model *m;
    uint8_t *input;
    size_t got;
    int index = argc == 2 ? atoi(argv[1]) : -1;
    if (index < 0 || (size_t)index >= BNNKIT_NUM_MODELS) {
        fprintf(stderr, "usage: %s MODEL_INDEX < images > scores\n", argv[0]);
        return 2;
    }
    m = &models[index];
    input = m->input();
    while ((got = fread(input, 1, m->input_size, stdin)) == m->input_size) {
        int32_t label = m->infer(input, scores);
        fwrite(scores, sizeof *scores, m->classes, stdout);
        fwrite(&label, sizeof label, 1, stdout);
    }
    if (got != 0) {
        fprintf(stderr, "truncated image on stdin\n");
        return 4;
    }
    return fflush(stdout) != 0;
}
