/* What the start-up code, the semihosting calls and the harness share. The harness talks
   to the host only through Arm semihosting (BKPT 0xAB), which QEMU serves with
   -semihosting-config enable=on,target=native; on a real board a debugger would. */
#ifndef BNNKIT_MCU_H
#define BNNKIT_MCU_H

#include <stdint.h>

/* Exit statuses QEMU passes on; 0 is success. bnnkit.runtime.cortex_m names each. */
#define EXIT_NO_FILES 2 /* bnnkit.in or bnnkit.out cannot be opened */
#define EXIT_NO_MODEL 3 /* bnnkit.in names no model of the image */
#define EXIT_FAULT 4
#define EXIT_STACK_OVERFLOW 5
#define EXIT_PARTIAL_IMAGE 6 /* bnnkit.in ends with a partial image */
#define EXIT_READ 7          /* an image cannot be read */
#define EXIT_WRITE 8         /* bnnkit.out cannot be written */

/* SYS_OPEN modes */
#define SH_MODE_RB 1
#define SH_MODE_WB 5

int sh_open(const char *name, int mode);
int sh_close(int fd);
int sh_read(int fd, void *buf, uint32_t len);        /* 0 when all len bytes were read */
int sh_write(int fd, const void *buf, uint32_t len); /* 0 when all len bytes were written */
int32_t sh_flen(int fd);
void sh_print(const char *text); /* to QEMU's stderr */
void sh_exit(int status) __attribute__((noreturn));

/* Bytes at the bottom of the stack region never written since reset. */
uint32_t stack_unused_bytes(void);

int main(void);

#endif
