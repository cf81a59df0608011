/* Arm semihosting: an operation number in r0, a pointer to its argument block in r1,
   BKPT 0xAB, the result back in r0. */
#include "mcu.h"

#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE0 0x04
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_FLEN 0x0c
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

static int32_t semihost(uint32_t op, const void *args)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

static uint32_t length(const char *s)
{
    uint32_t n = 0;
    while (s[n] != '\0')
        n++;
    return n;
}

int sh_open(const char *name, int mode)
{
    uint32_t args[3] = {(uint32_t)name, (uint32_t)mode, length(name)};
    return semihost(SYS_OPEN, args);
}

int sh_close(int fd)
{
    uint32_t args[1] = {(uint32_t)fd};
    return semihost(SYS_CLOSE, args);
}

int sh_read(int fd, void *buf, uint32_t len)
{
    uint32_t args[3] = {(uint32_t)fd, (uint32_t)buf, len};
    return semihost(SYS_READ, args);
}

int sh_write(int fd, const void *buf, uint32_t len)
{
    uint32_t args[3] = {(uint32_t)fd, (uint32_t)buf, len};
    return semihost(SYS_WRITE, args);
}

int32_t sh_flen(int fd)
{
    uint32_t args[1] = {(uint32_t)fd};
    return semihost(SYS_FLEN, args);
}

void sh_print(const char *text)
{
    semihost(SYS_WRITE0, text);
}

/* The plain SYS_EXIT of AArch32 carries no status (QEMU exits 0 or 1); the extended one
   passes the subcode on as QEMU's exit status. The block is static, not on the stack, so
   that it is readable even after the stack has overflowed. */
void sh_exit(int status)
{
    static uint32_t args[2];
    args[0] = ADP_STOPPED_APPLICATION_EXIT;
    args[1] = (uint32_t)status;
    for (;;)
        semihost(SYS_EXIT_EXTENDED, args);
}
