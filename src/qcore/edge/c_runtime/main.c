/* main.c: an example host program for the exported runtime.
 *
 *   qcore_example [--load STATE] [--save STATE] < records
 *
 * --load reads a state blob (qc_state_save's bytes) before the first record; a blob it
 * refuses ends the program with exit status 2 and the refusal's code on stderr. --save
 * writes the head's state blob after the last record.
 *
 * stdin: records, each an int32 label (little-endian; -1: none) and one raw window of
 * QC_CHANNELS * QC_WINDOW float32 values, channel-major (a NumPy (c, t) float32 array's
 * bytes). For each record it prints, before learning from it:
 *   P <device prediction> <model head prediction> <streaming head prediction>
 *   F <pooled features>   M <model head logits>   H <streaming head logits>
 * A record with a label adds the window to the head (label == qc_head_classes() adds a
 * class first) and solves the head again. At the end: the head statistics
 *   N <counts>   U <means, row-major>   S <scatter, row-major>   W <windows learnt>
 */
#include <stdio.h>
#include <string.h>

#include "qcore_rt.h"

static void put(const char *tag, const float *v, int n) {
    int i;
    printf("%s", tag);
    for (i = 0; i < n; i++) printf(" %.9g", (double)v[i]);
    printf("\n");
}

/* The blob is read into, and saved from, the runtime's scratch arena: no buffer here. */
static int load(const char *path) {
    size_t n;
    int rc;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    n = fread(qc_state_buffer(), 1, QC_STATE_BYTES, f);
    if (n == QC_STATE_BYTES && fgetc(f) != EOF) n++; /* longer than a state */
    fclose(f);
    rc = qc_state_load(qc_state_buffer(), n);
    if (rc != 0) {
        fprintf(stderr, "state %s refused: %d\n", path, rc);
        return 2;
    }
    return 0;
}

static int save(const char *path) {
    const uint8_t *blob = qc_state_blob();
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(blob, 1, QC_STATE_BYTES, f) != QC_STATE_BYTES || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    static float window[QC_CHANNELS * QC_WINDOW];
    float f[QC_FEATURES], m[QC_CLASSES], h[QC_MAX_CLASSES];
    const char *load_path = NULL, *save_path = NULL;
    int32_t label;
    int i, rc;
    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--load") == 0) load_path = argv[i + 1];
        else if (strcmp(argv[i], "--save") == 0) save_path = argv[i + 1];
        else break;
    }
    if (i != argc) {
        fprintf(stderr, "usage: %s [--load STATE] [--save STATE] < records\n", argv[0]);
        return 1;
    }
    if (qc_init() != 0) {
        fprintf(stderr, "the head statistics do not solve\n");
        return 1;
    }
    if (load_path && (rc = load(load_path)) != 0) return rc;
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
    printf("W %lu\n", (unsigned long)qc_head_step());
    return save_path ? save(save_path) : 0;
}
