/* Start-up for the MPS2 boards: the vector table, a reset handler that prepares RAM as C
   expects, and fault handlers that end the run through semihosting. No vendor SDK: the
   few system registers used are named here.

   main runs on the process stack (PSP), painted beforehand so that its high-water mark
   can be read back; the handlers keep the main stack (MSP). A fault taken after the
   process stack overflowed therefore still finds a stack to run on and can report. */
#include "mcu.h"

#define SCB_SHCSR (*(volatile uint32_t *)0xe000ed24u)
#define SCB_CFSR (*(volatile uint32_t *)0xe000ed28u)
#define SCB_HFSR (*(volatile uint32_t *)0xe000ed2cu)
#define SCB_CPACR (*(volatile uint32_t *)0xe000ed88u)

/* Not a repeated byte, so that no memset can produce it and few data words equal it. */
#define STACK_PAINT 0xdeadbeefu

/* From the linker script. */
extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[], __handler_stack_top[];

void reset_handler(void) __attribute__((noreturn));
void fault_handler(void) __attribute__((noreturn));

typedef void (*vector)(void);

/* The initial main stack pointer, then exceptions 1-6 (reset, NMI and the faults); every one
   but reset ends the run. The table stops there and code follows it: the later exceptions
   (SVCall, DebugMonitor, PendSV, SysTick, the IRQs) are raised only by an SVC instruction, the
   debug monitor, a write to ICSR, an enabled SysTick or an enabled interrupt, none of which
   this image has. */
__attribute__((section(".vectors"), used)) static const vector vectors[7] = {
    (vector)__handler_stack_top,
    reset_handler,
    fault_handler,
    fault_handler,
    fault_handler,
    fault_handler,
    fault_handler,
};

uint32_t stack_unused_bytes(void)
{
    const volatile uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == STACK_PAINT)
        p++;
    return (uint32_t)((const volatile char *)p - (const volatile char *)__stack_bottom);
}

/* A stack that reached its bottom has run into memory that is not RAM, which makes any
   result suspect: the status says so whatever the run's own status was. */
__attribute__((used, noreturn)) static void finish(int status)
{
    sh_exit(stack_unused_bytes() == 0 ? EXIT_STACK_OVERFLOW : status);
}

/* Naked: once SP is the process stack, no compiled code of this function may address
   its frame on the main stack. */
__attribute__((naked, noreturn)) static void run_main(void)
{
    __asm__ volatile("ldr r0, =__stack_top\n\t"
                     "msr psp, r0\n\t"
                     "movs r0, #2\n\t" /* CONTROL.SPSEL: thread mode uses PSP */
                     "msr control, r0\n\t"
                     "isb\n\t"
                     "bl main\n\t"
                     "b finish\n\t"
                     ".ltorg");
}

void reset_handler(void)
{
    uint32_t *to;
    const uint32_t *from;
#ifdef __ARM_FP
    /* Hard-float code traps with a UsageFault until CP10 and CP11 are given full access. */
    SCB_CPACR |= 0xfu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    /* MemManage, BusFault and UsageFault report as themselves instead of a HardFault. */
    SCB_SHCSR |= 7u << 16;
    for (to = __data_start, from = __data_load; to < __data_end;)
        *to++ = *from++;
    for (to = __bss_start; to < __bss_end;)
        *to++ = 0;
    for (to = __stack_bottom; to < __stack_top;)
        *to++ = STACK_PAINT;
    run_main();
}

/* On the handler stack, not in .data: that would cost flash and RAM in every image. */
static void print_hex(const char *label, uint32_t v)
{
    char text[12];
    int i;
    text[0] = ' ';
    text[1] = '0';
    text[2] = 'x';
    for (i = 0; i < 8; i++)
        text[10 - i] = "0123456789abcdef"[(v >> (4 * i)) & 0xfu];
    text[11] = '\0';
    sh_print(label);
    sh_print(text);
}

/* IPSR holds the exception number; CFSR and HFSR say why a fault was taken. */
void fault_handler(void)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    print_hex("bnnkit: fault: exception", ipsr & 0x1ffu);
    print_hex(", CFSR", SCB_CFSR);
    print_hex(", HFSR", SCB_HFSR);
    sh_print("\n");
    finish(EXIT_FAULT);
}
