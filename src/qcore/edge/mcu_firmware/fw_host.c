/* fw_host.c: fw_io.h on the host (the same firmware main built with gcc): stdio files,
 * CLOCK_MONOTONIC nanoseconds as the counter; the stack is not measured here. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "fw_io.h"

static FILE *in, *out;

int fw_open(void) {
    in = fopen("qc_in.bin", "rb");
    out = fopen("qc_out.bin", "wb");
    return in == NULL || out == NULL ? -1 : 0;
}

int fw_read(void *buf, uint32_t n) { return fread(buf, 1, n, in) == n ? 0 : -1; }

int fw_write(const void *buf, uint32_t n) { return fwrite(buf, 1, n, out) == n ? 0 : -1; }

uint32_t fw_ticks(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
}

void fw_calibrate(uint32_t n1, uint32_t n2, uint32_t *t1, uint32_t *t2) {
    (void)n1;
    (void)n2;
    *t1 = *t2 = 0;
}

uint32_t fw_stack_used(void) { return 0; }

void fw_say(const char *text) { fprintf(stderr, "%s\n", text); }

void fw_exit(int status) {
    if (out != NULL && fclose(out) != 0) status = 1;
    exit(status);
}
