/* Counts guest instructions executed, written against QEMU's public TCG plugin API
   (API version 1, QEMU 7.x): only the few entry points used here are declared.

   Arguments: out=PATH (default insn_count.txt) and mark=ADDRESS (hex, optional). The file
   gets the total, then, one a line, the running count each time the block at ADDRESS
   started: the harness's bnnkit_layer_mark(), called between the layers of a build with
   BNNKIT_LAYER_MARKS (bnnkit.runtime.cortex_m.layer_instructions turns them into layers). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);

size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *), void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t executed, mark_at;
static int marking;
static uint64_t *marks;
static size_t n_marks, cap_marks;
static const char *out_path;

/* The count when the mark's block starts; whether the block's own two instructions are in
   it or not, they fall on the same side every time. */
static void on_mark(unsigned int vcpu, void *p)
{
    (void)vcpu;
    (void)p;
    if (n_marks == cap_marks) {
        uint64_t *grown = realloc(marks, (cap_marks ? 2 * cap_marks : 1024) * sizeof *marks);
        if (grown == NULL) {
            marking = 0;
            return;
        } /* the file then has no marks: the caller sees none */
        marks = grown;
        cap_marks = cap_marks ? 2 * cap_marks : 1024;
    }
    marks[n_marks++] = executed;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    if (marking && qemu_plugin_tb_vaddr(tb) == mark_at)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    FILE *f = fopen(out_path, "w");
    if (f) {
        fprintf(f, "%" PRIu64 "\n", executed);
        for (size_t i = 0; marking && i < n_marks; i++)
            fprintf(f, "%" PRIu64 "\n", marks[i]);
        fclose(f);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                                               char **argv)
{
    (void)info;
    out_path = "insn_count.txt";
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0)
            out_path = argv[i] + 4;
        if (strncmp(argv[i], "mark=", 5) == 0) {
            mark_at = strtoull(argv[i] + 5, NULL, 16);
            marking = 1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
