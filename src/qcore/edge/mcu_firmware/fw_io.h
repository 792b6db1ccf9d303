/* fw_io.h: what the check firmware (fw_main.c) needs from its platform. Two
 * implementations: fw_mcu.c (Cortex-M4 on QEMU: semihosting files, a CMSDK timer, the
 * painted stack) and fw_host.c (stdio files and the monotonic clock). */
#ifndef FW_IO_H
#define FW_IO_H

#include <stdint.h>

/* Open qc_in.bin (read) and qc_out.bin (write) in the working directory: 0, or -1. */
int fw_open(void);
/* Read exactly n bytes: 0, or -1 at the end of the input (or a short read). */
int fw_read(void *buf, uint32_t n);
/* Write n bytes: 0, or -1. */
int fw_write(const void *buf, uint32_t n);
/* A free-running counter: timer ticks on the MCU (a fixed number of instructions each
 * under QEMU -icount), nanoseconds on the host. Differences are taken modulo 2^32. */
uint32_t fw_ticks(void);
/* Ticks between two calls of fw_count_loop(n1) and fw_count_loop(n2): the MCU's
 * instruction counter checked against a loop of known length. */
void fw_calibrate(uint32_t n1, uint32_t n2, uint32_t *t1, uint32_t *t2);
/* Deepest stack use so far in bytes (0 where it is not measured). */
uint32_t fw_stack_used(void);
/* Print a line for a person (stderr of the process or of QEMU). */
void fw_say(const char *text);
/* End the program with status 0 (success) or 1. */
void fw_exit(int status);

#endif
