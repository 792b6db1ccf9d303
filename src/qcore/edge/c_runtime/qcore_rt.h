/* qcore_rt.h: a C99 runtime for one qcore model (written by `qcore export --format c`).
 *
 * Inference of the quantized InceptionTime as the qcore NumPy device computes it
 * (float32 arithmetic on dequantized integer weights, activations fake-quantized with
 * round-half-to-even), the artifact's normaliser, and the streaming closed-form head
 * (per-class counts and means, one shared within-class scatter; solved in float64).
 * No dynamic allocation: everything mutable lives in one static arena of QC_ARENA_BYTES
 * bytes. Needs <stdint.h>, <stddef.h>, <string.h> and sqrt() from <math.h>. Build with
 * -ffp-contract=off and FLT_EVAL_METHOD == 0 (no x87 excess precision).
 */
#ifndef QCORE_RT_H
#define QCORE_RT_H

#include <stddef.h>
#include <stdint.h>

/* ---- this model's dimensions (written by the exporter) ---- */
@@DEFINES@@

/* ---- the arena ----
 * Scratch (used by one call at a time), the largest of:
 *   inference: floats T C (normalised input), T D (residual, only with QC_KEEP_RES),
 *     2 T (one output column, one shortcut column), QC_MAX_KC (one weight row), 256 (a
 *     dequantization table); bytes T D (the next block's bottleneck codes), 5 T F (the
 *     max-pooled codes of this block and the next, F channels a slot, sharing 3 slots) and
 *     QC_BRANCH_SETS T F (bottleneck output codes);
 *   the solve: doubles D (D + 1) / 2 (packed Cholesky factor) + D;
 *   qc_head_scatter(): floats D D (the scatter expanded);
 *   qc_state_blob() / qc_state_buffer(): QC_STATE_BYTES (a state blob).
 * Head: floats 2 Kmax (counts, biases), 2 Kmax D (means, weights), D (D + 1) / 2 (the
 * scatter's lower triangle). */
#define QC_TRI (QC_FEATURES * (QC_FEATURES + 1) / 2)
#define QC_ACT_BYTES                                                                    \
    (4 * (QC_WINDOW * QC_CHANNELS + QC_KEEP_RES * QC_WINDOW * QC_FEATURES + 2 * QC_WINDOW \
          + QC_MAX_KC + 256)                                                            \
     + QC_WINDOW * QC_FEATURES + (5 + QC_BRANCH_SETS) * QC_WINDOW * QC_FILTERS)
#define QC_SOLVE_BYTES (8 * (QC_TRI + QC_FEATURES))
#define QC_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define QC_SCRATCH_BYTES                                                                   \
    ((QC_MAX2(QC_MAX2(QC_ACT_BYTES, QC_SOLVE_BYTES),                                      \
              QC_MAX2(4 * QC_FEATURES * QC_FEATURES, QC_STATE_BYTES)) + 7) / 8 * 8)
#define QC_HEAD_BYTES \
    (4 * (2 * QC_MAX_CLASSES + 2 * QC_MAX_CLASSES * QC_FEATURES + QC_TRI))
#define QC_ARENA_BYTES (QC_SCRATCH_BYTES + QC_HEAD_BYTES)

/* ---- the state blob (qc_state_save / qc_state_load), all little-endian ----
 * "QCST", u32 version, 32-byte model fingerprint, u32 D, u32 Kmax, u32 classes, u32 step
 * (windows learnt), f32 counts[Kmax], f32 means[Kmax][D], f32 scatter lower triangle
 * (row i: columns 0..i), u32 CRC-32 (IEEE, as zlib.crc32) of every byte before it.
 * Class slots beyond the class count are zero. */
#define QC_STATE_VERSION 1
#define QC_STATE_HEADER 60
#define QC_STATE_BYTES \
    (QC_STATE_HEADER + 4 * (QC_MAX_CLASSES + QC_MAX_CLASSES * QC_FEATURES + QC_TRI) + 4)
#define QC_STATE_ESIZE (-1)    /* not QC_STATE_BYTES long (or no room to save) */
#define QC_STATE_EMAGIC (-2)   /* not a qcore state */
#define QC_STATE_EVERSION (-3) /* another format version */
#define QC_STATE_ECRC (-4)     /* the checksum does not match: corrupted */
#define QC_STATE_EMODEL (-5)   /* the state of another model */
#define QC_STATE_EVALUE (-6)   /* a class count or statistic out of range */
#define QC_STATE_ESOLVE (-7)   /* loaded, but the head does not solve */

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
    /* initial head statistics (QC_HEAD_CLASSES): counts, means, scatter lower triangle */
    const float *count, *mean, *scatter;
    int head_first;   /* head classes from here on were added on a device (may be young) */
    double shrinkage; /* covariance shrinkage towards the identity */
    float new_class_min; /* labelled windows before an added class is predicted */
    const uint8_t *fingerprint; /* 32 bytes: SHA-256 of the exported artifact */
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
/* The statistics: counts (K), means (K, D), scatter (D, D), float32. The scatter is kept
 * as a lower triangle; qc_head_scatter() expands it into the scratch arena, so its
 * pointer is valid until the next call of qc_features, qc_model_logits or qc_head_*. */
const float *qc_head_count(void);
const float *qc_head_mean(void);
const float *qc_head_scatter(void);
/* Windows learnt (qc_head_add) since qc_init, plus those of a loaded state. */
uint32_t qc_head_step(void);
/* The class the device predicts for a raw window (the head QC_USE_HEAD selects). */
int qc_predict(const float *window);
int qc_argmax(const float *v, int n);

/* The head's state as one blob of QC_STATE_BYTES (format above), to persist it. */
size_t qc_state_bytes(void);
/* Write the blob into out: its size, or 0 when cap < QC_STATE_BYTES. */
size_t qc_state_save(uint8_t *out, size_t cap);
/* Read a blob back and solve the head: 0, or a QC_STATE_E* code; any refusal before
 * QC_STATE_ESOLVE leaves the state as it was. */
int qc_state_load(const uint8_t *blob, size_t n);
/* Without a buffer of the firmware's own: qc_state_blob() saves the blob into the scratch
 * arena and returns it; qc_state_buffer() is that scratch, QC_STATE_BYTES long, to read a
 * blob into before qc_state_load(qc_state_buffer(), n). Either is valid until the next
 * call of qc_features, qc_model_logits, qc_head_* or qc_state_*. */
const uint8_t *qc_state_blob(void);
uint8_t *qc_state_buffer(void);

#endif /* QCORE_RT_H */
