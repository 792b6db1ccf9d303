/* qcore_rt.h: a C99 runtime for one qcore model (written by `qcore export --format c`).
 *
 * Inference of the quantized InceptionTime as the qcore NumPy device computes it
 * (float32 arithmetic on dequantized integer weights, activations fake-quantized with
 * round-half-to-even), the artifact's normaliser, and the streaming closed-form head
 * (per-class counts and means, one shared within-class scatter; solved in float64).
 * No dynamic allocation: everything lives in one static arena of QC_ARENA_BYTES bytes.
 * Needs <stdint.h>, <stddef.h>, <string.h> and sqrt() from <math.h>. Build with
 * -ffp-contract=off and FLT_EVAL_METHOD == 0 (no x87 excess precision).
 */
#ifndef QCORE_RT_H
#define QCORE_RT_H

#include <stddef.h>
#include <stdint.h>

/* ---- this model's dimensions (written by the exporter) ---- */
@@DEFINES@@

/* ---- the arena: activations of one window, head statistics, the solve ---- */
#define QC_WIDEST (QC_CHANNELS > QC_FEATURES ? QC_CHANNELS : QC_FEATURES)
#define QC_ACT_FLOATS \
    (QC_WINDOW * (4 * QC_WIDEST + QC_FILTERS + 2 * QC_FEATURES) + QC_MAX_KC)
#define QC_HEAD_FLOATS \
    (2 * QC_MAX_CLASSES + 2 * QC_MAX_CLASSES * QC_FEATURES + QC_FEATURES * QC_FEATURES)
#define QC_SOLVE_DOUBLES (QC_FEATURES * QC_FEATURES + QC_FEATURES)
#define QC_ARENA_BYTES \
    (8 * QC_SOLVE_DOUBLES + 4 * (QC_ACT_FLOATS + QC_HEAD_FLOATS))

/* One bias-free 'same' convolution (c_out, c_in, k) or the linear head (k = 1). */
typedef struct {
    const uint8_t *codes; /* bits-bit codes, C order (c_out, c_in, k), packed LSB first */
    const float *scale;   /* (c_out,) per-output-channel scale */
    const uint8_t *zero;  /* (c_out,) per-output-channel zero point */
    const float *bias;    /* (c_out,) for the head, NULL for a convolution */
    int c_out, c_in, k, bits;
    int has_act;          /* 1: the input is fake-quantized with the three below */
    float act_scale, act_zero, act_max;
} qc_layer_t;

/* One inception block and the shortcut ending at it. */
typedef struct {
    const qc_layer_t *bottleneck;      /* NULL: the convolutions read the block input */
    const qc_layer_t *convs[3];
    const qc_layer_t *pool_conv;
    const float *bn_alpha, *bn_beta;   /* BatchNorm folded: y = x * alpha + beta */
    const qc_layer_t *shortcut_conv;   /* NULL: identity shortcut */
    const float *sc_alpha, *sc_beta;   /* NULL: no shortcut ends at this block */
} qc_block_t;

typedef struct {
    const qc_block_t *blocks;          /* QC_DEPTH */
    const qc_layer_t *head;            /* the model's own head (QC_CLASSES outputs) */
    const float *norm_mean, *norm_std; /* (QC_CHANNELS,) the normaliser */
    const float *count, *mean, *scatter; /* initial head statistics (QC_HEAD_CLASSES) */
    int head_first;   /* head classes from here on were added on a device (may be young) */
    double shrinkage; /* covariance shrinkage towards the identity */
    float new_class_min; /* labelled windows before an added class is predicted */
} qc_model_t;

extern const qc_model_t qc_model;

/* Load the initial head statistics into the arena and solve the head: 0, or -1. */
int qc_init(void);
/* Pooled features (QC_FEATURES) of one raw window, float32 (QC_CHANNELS, QC_WINDOW)
 * channel-major (a NumPy (c, t) array's bytes). */
void qc_features(const float *window, float *features);
/* The model head's logits (QC_CLASSES) of pooled features. */
void qc_model_logits(const float *features, float *logits);
/* The streaming head: its classes now, its logits (qc_head_classes()) of features. */
int qc_head_classes(void);
void qc_head_logits(const float *features, float *logits);
/* Add one labelled window's features to the statistics: 0, or -1 for a bad label. */
int qc_head_add(const float *features, int label);
/* Solve the head again from the statistics (float64 Cholesky): 0, or -1. */
int qc_head_solve(void);
/* Add a class without samples: its index, or -1 when QC_MAX_CLASSES are known. */
int qc_head_add_class(void);
/* The statistics: counts (K), means (K, D), scatter (D, D), float32. */
const float *qc_head_count(void);
const float *qc_head_mean(void);
const float *qc_head_scatter(void);
/* The class the device predicts for a raw window (the head QC_USE_HEAD selects). */
int qc_predict(const float *window);
int qc_argmax(const float *v, int n);

#endif /* QCORE_RT_H */
