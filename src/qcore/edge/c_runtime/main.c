/* main.c: an example host program for the exported runtime.
 *
 * stdin: records, each an int32 label (little-endian; -1: none) and one raw window of
 * QC_CHANNELS * QC_WINDOW float32 values, channel-major (a NumPy (c, t) float32 array's
 * bytes). For each record it prints, before learning from it:
 *   P <device prediction> <model head prediction> <streaming head prediction>
 *   F <pooled features>   M <model head logits>   H <streaming head logits>
 * A record with a label adds the window to the head (label == qc_head_classes() adds a
 * class first) and solves the head again. At the end: the head statistics
 *   N <counts>   U <means, row-major>   S <scatter, row-major>
 */
#include <stdio.h>

#include "qcore_rt.h"

static void put(const char *tag, const float *v, int n) {
    int i;
    printf("%s", tag);
    for (i = 0; i < n; i++) printf(" %.9g", (double)v[i]);
    printf("\n");
}

int main(void) {
    static float window[QC_CHANNELS * QC_WINDOW];
    float f[QC_FEATURES], m[QC_CLASSES], h[QC_MAX_CLASSES];
    int32_t label;
    if (qc_init() != 0) {
        fprintf(stderr, "the head statistics do not solve\n");
        return 1;
    }
    while (fread(&label, sizeof label, 1, stdin) == 1) {
        int k = qc_head_classes(), mp, hp;
        if (fread(window, sizeof window, 1, stdin) != 1) {
            fprintf(stderr, "truncated window\n");
            return 1;
        }
        qc_features(window, f);
        qc_model_logits(f, m);
        qc_head_logits(f, h);
        mp = qc_argmax(m, QC_CLASSES);
        hp = qc_argmax(h, k);
        printf("P %d %d %d\n", QC_USE_HEAD ? hp : mp, mp, hp);
        put("F", f, QC_FEATURES);
        put("M", m, QC_CLASSES);
        put("H", h, k);
        if (label < 0) continue;
        if (label == k && qc_head_add_class() < 0) {
            fprintf(stderr, "no room for another class (QC_MAX_CLASSES)\n");
            return 1;
        }
        if (qc_head_add(f, label) != 0 || qc_head_solve() != 0) {
            fprintf(stderr, "cannot learn label %d\n", (int)label);
            return 1;
        }
    }
    put("N", qc_head_count(), qc_head_classes());
    put("U", qc_head_mean(), qc_head_classes() * QC_FEATURES);
    put("S", qc_head_scatter(), QC_FEATURES * QC_FEATURES);
    return 0;
}
