/* fw_mcu.c: fw_io.h on QEMU's mps2-an386: semihosting calls (bkpt 0xAB) for files and
 * exit, the CMSDK APB timer 0 (0x40000000, 25 MHz: under -icount shift=0 one tick per 40
 * instructions) as the counter, and a painted stack for its high-water mark. */
#include <stdint.h>
#include <string.h>

#include "fw_io.h"

#define SYS_OPEN 0x01
#define SYS_WRITE0 0x04
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_EXIT 0x18
#define ADP_EXIT_OK 0x20026u  /* ADP_Stopped_ApplicationExit: QEMU exits with 0 */
#define ADP_EXIT_ERR 0x20023u /* ADP_Stopped_RunTimeErrorUnknown: QEMU exits with 1 */

#define TIMER_CTRL (*(volatile uint32_t *)0x40000000u)
#define TIMER_VALUE (*(volatile uint32_t *)0x40000004u)
#define TIMER_RELOAD (*(volatile uint32_t *)0x40000008u)

#define PAINT 0xC5C5C5C5u

extern uint32_t __data_start[], __data_end[], __data_load[], __bss_start[], __bss_end[];
extern uint32_t __stack_top[];
extern int main(void);
extern void fw_count_loop(uint32_t n);

static int fd_in = -1, fd_out = -1;

static uint32_t semihost(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static int sh_open(const char *name, uint32_t mode) {
    uint32_t block[3];
    block[0] = (uint32_t)(uintptr_t)name;
    block[1] = mode;
    block[2] = (uint32_t)strlen(name);
    return (int)semihost(SYS_OPEN, block);
}

int fw_open(void) {
    fd_in = sh_open("qc_in.bin", 1);   /* "rb" */
    fd_out = sh_open("qc_out.bin", 5); /* "wb" */
    return fd_in < 0 || fd_out < 0 ? -1 : 0;
}

int fw_read(void *buf, uint32_t n) {
    uint32_t block[3];
    block[0] = (uint32_t)fd_in;
    block[1] = (uint32_t)(uintptr_t)buf;
    block[2] = n;
    return semihost(SYS_READ, block) == 0 ? 0 : -1; /* returns the bytes NOT read */
}

int fw_write(const void *buf, uint32_t n) {
    uint32_t block[3];
    block[0] = (uint32_t)fd_out;
    block[1] = (uint32_t)(uintptr_t)buf;
    block[2] = n;
    return semihost(SYS_WRITE, block) == 0 ? 0 : -1;
}

uint32_t fw_ticks(void) { return ~TIMER_VALUE; } /* a down-counter, turned upwards */

void fw_calibrate(uint32_t n1, uint32_t n2, uint32_t *t1, uint32_t *t2) {
    uint32_t a = fw_ticks();
    fw_count_loop(n1);
    *t1 = fw_ticks() - a;
    a = fw_ticks();
    fw_count_loop(n2);
    *t2 = fw_ticks() - a;
}

uint32_t fw_stack_used(void) {
    const uint32_t *p = __bss_end;
    while (p < __stack_top && *p == PAINT) p++;
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)p);
}

void fw_say(const char *text) {
    semihost(SYS_WRITE0, text);
    semihost(SYS_WRITE0, "\n");
}

void fw_exit(int status) {
    semihost(SYS_EXIT, (const void *)(uintptr_t)(status == 0 ? ADP_EXIT_OK : ADP_EXIT_ERR));
    for (;;) {
    }
}

/* Called by fw_reset with the FPU on: .data from flash, .bss zeroed, the free stack
 * painted up to a little below the current stack pointer, the timer started, main. */
void fw_start(void) {
    uint32_t *d = __data_start, *s = __data_load, *p;
    uint32_t sp;
    while (d < __data_end) *d++ = *s++;
    for (d = __bss_start; d < __bss_end; d++) *d = 0;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = __bss_end; (uintptr_t)p < sp - 64u; p++) *p = PAINT;
    TIMER_CTRL = 0;
    TIMER_RELOAD = 0xFFFFFFFFu;
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = 1; /* enable, no interrupt */
    fw_exit(main());
}
