/* fw_main.c: the check firmware. It streams labelled windows through the exported runtime
 * using only the qcore_rt.h API, as `qcore device` streams batches, and writes what the
 * check compares (qcore.edge.mcu): the same source builds for the host (fw_host.c) and
 * for the Cortex-M4 (fw_mcu.c).
 *
 * Input (qc_in.bin), little-endian records, each an int32 code:
 *   code >= -1: a raw window follows (QC_CHANNELS * QC_WINDOW float32, channel-major);
 *               code is its label (-1: none). The window is predicted with the head as it
 *               was solved at the end of the previous batch; a labelled window is then
 *               added to the statistics (code == qc_head_classes() adds a class first).
 *   code == -2: the end of a batch: the head is solved again from the statistics.
 * Since qc_head_add changes the statistics and not the solved head, every window of a
 * batch is predicted before the batch is learnt, as the NumPy device does.
 *
 * Output (qc_out.bin): records of a uint32 tag, a uint32 word count and that many 32-bit
 * words (int32, uint32 or float32):
 *   'C' n1 n2 t1 t2: ticks of fw_count_loop(n1) and (n2), to check the counter;
 *   'I' ticks: qc_init (the first solve);
 *   'W' pred model_pred head_pred ticks k head_logits[k] model_logits[QC_CLASSES]
 *       features[QC_FEATURES]: one window; ticks cover qc_features, the logits of the
 *       head the device predicts with and the argmax (what qc_predict does);
 *   'L' added add_ticks solve_ticks status: one learnt batch (status 0: solved);
 *   'T' k counts[k] means[k * QC_FEATURES] scatter[QC_FEATURES^2]: the final statistics;
 *   'M' stack_bytes: the deepest stack use (0 where it is not measured).
 */
#include <stdint.h>

#include "fw_io.h"
#include "qcore_rt.h"

#define CAL_N1 1000u
#define CAL_N2 1001000u

static float window[QC_CHANNELS * QC_WINDOW];

/* The start of a record: its tag and how many words follow. */
static int put_head(char tag, uint32_t n) {
    uint32_t head[2];
    head[0] = (uint32_t)(unsigned char)tag;
    head[1] = n;
    return fw_write(head, sizeof head);
}

static int put(char tag, const uint32_t *words, uint32_t n) {
    if (put_head(tag, n) != 0) return -1;
    return fw_write(words, 4u * n);
}

static int fail(const char *why) {
    fw_say(why);
    fw_exit(1);
    return 1;
}

static int head_class(const float *f, float *h, int k) {
    qc_head_logits(f, h);
    return qc_argmax(h, k);
}

static int model_class(const float *f, float *m) {
    qc_model_logits(f, m);
    return qc_argmax(m, QC_CLASSES);
}

/* Predict the window in `window`, write its 'W' record, then learn it when labelled. The
 * ticks cover what qc_predict does (features, the device's head); the other head's logits
 * are computed after. */
static int one_window(int32_t label, uint32_t *added, uint32_t *add_ticks) {
    float f[QC_FEATURES], m[QC_CLASSES], h[QC_MAX_CLASSES];
    uint32_t w[5], t0, t1;
    int k = qc_head_classes(), mp = 0, hp = 0;
    t0 = fw_ticks();
    qc_features(window, f);
    if (QC_USE_HEAD)
        hp = head_class(f, h, k);
    else
        mp = model_class(f, m);
    t1 = fw_ticks();
    if (QC_USE_HEAD)
        mp = model_class(f, m);
    else
        hp = head_class(f, h, k);
    w[0] = (uint32_t)(QC_USE_HEAD ? hp : mp);
    w[1] = (uint32_t)mp;
    w[2] = (uint32_t)hp;
    w[3] = t1 - t0;
    w[4] = (uint32_t)k;
    if (put_head('W', 5u + (uint32_t)k + QC_CLASSES + QC_FEATURES) != 0) return -1;
    if (fw_write(w, sizeof w) != 0 || fw_write(h, 4u * (uint32_t)k) != 0) return -1;
    if (fw_write(m, sizeof m) != 0 || fw_write(f, sizeof f) != 0) return -1;
    if (label < 0) return 0;
    t0 = fw_ticks();
    if (label == k && qc_head_add_class() < 0) return fail("no room for another class");
    if (qc_head_add(f, (int)label) != 0) return fail("a label the head does not know");
    *add_ticks += fw_ticks() - t0;
    *added += 1;
    return 0;
}

int main(void) {
    uint32_t w[4], added = 0, add_ticks = 0, t0;
    int32_t code;
    int k;
    if (fw_open() != 0) return fail("cannot open qc_in.bin and qc_out.bin");
    w[0] = CAL_N1;
    w[1] = CAL_N2;
    fw_calibrate(CAL_N1, CAL_N2, &w[2], &w[3]);
    if (put('C', w, 4) != 0) return fail("cannot write qc_out.bin");
    t0 = fw_ticks();
    if (qc_init() != 0) return fail("the head statistics do not solve");
    w[0] = fw_ticks() - t0;
    if (put('I', w, 1) != 0) return fail("cannot write qc_out.bin");
    while (fw_read(&code, sizeof code) == 0) {
        if (code == -2) {
            int status;
            t0 = fw_ticks();
            status = qc_head_solve();
            w[0] = added;
            w[1] = add_ticks;
            w[2] = fw_ticks() - t0;
            w[3] = (uint32_t)status;
            if (put('L', w, 4) != 0) return fail("cannot write qc_out.bin");
            added = add_ticks = 0;
            continue;
        }
        if (code < -2 || fw_read(window, sizeof window) != 0) return fail("a bad input record");
        if (one_window(code, &added, &add_ticks) != 0) return fail("cannot write qc_out.bin");
    }
    k = qc_head_classes();
    w[0] = (uint32_t)k;
    if (put_head('T', 1u + (uint32_t)k * (1u + QC_FEATURES) + QC_FEATURES * QC_FEATURES) != 0 ||
        fw_write(w, 4) != 0 || fw_write(qc_head_count(), 4u * (uint32_t)k) != 0 ||
        fw_write(qc_head_mean(), 4u * (uint32_t)k * QC_FEATURES) != 0 ||
        fw_write(qc_head_scatter(), 4u * QC_FEATURES * QC_FEATURES) != 0)
        return fail("cannot write qc_out.bin");
    w[0] = fw_stack_used();
    if (put('M', w, 1) != 0) return fail("cannot write qc_out.bin");
    fw_exit(0);
    return 0;
}
