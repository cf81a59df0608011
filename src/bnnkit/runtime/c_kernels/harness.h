/* The models of one build, as its harness sees them: host_harness.c on the host and mcu/harness.c
   on a Cortex-M both include this. The generated bnnkit_models.h includes every model's header
   and lists the models in BNNKIT_MODELS(X); models[i] is the i-th of them. */
#ifndef BNNKIT_HARNESS_H
#define BNNKIT_HARNESS_H

#include <stdint.h>

#include "bnnkit_models.h"

struct model {
    int (*infer)(const uint8_t *, float *);
    uint8_t *(*input)(void); /* the model's input slot: images are read straight into it */
    uint32_t input_size, classes;
};

#define BNNKIT_MODEL(prefix, PREFIX) {prefix##_infer, prefix##_input_buffer, PREFIX##_INPUT_SIZE, PREFIX##_NUM_CLASSES},
static const struct model models[] = {BNNKIT_MODELS(BNNKIT_MODEL)};
#define BNNKIT_NUM_MODELS (sizeof models / sizeof models[0])

#endif
