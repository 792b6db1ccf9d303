/* qcore_rt.c: see qcore_rt.h. Every step follows qcore.edge.runner / qcore.edge.head.
 *
 * Inference runs one output channel at a time: every output channel of a block comes
 * from exactly one branch convolution, so a block's output is computed as T-long
 * columns, each normalised (BatchNorm, ReLU, shortcut, ReLU) and handed on at once to
 * what reads it: the next block's bottleneck and max-pool branch as 8-bit activation
 * codes (every such layer fake-quantizes its input; the max-pool is taken over the float
 * column before quantizing, as NumPy does), the residual when a later shortcut reads it,
 * or the mean over time after the last block. A code c stands for ((float)c - z) * s,
 * the very float operations of the fake-quantization, so the values are NumPy's. */
#include "qcore_rt.h"

#include <math.h>
#include <string.h>

#define QC_UNSEEN (-1e30f)
#define QC_TD (QC_WINDOW * QC_FEATURES)

static double qc_arena[(QC_ARENA_BYTES + 7) / 8];

/* scratch, inference: floats first, then byte codes */
#define X0 ((float *)qc_arena)                            /* (T, C) normalised input */
#define RES (X0 + QC_WINDOW * QC_CHANNELS)                /* (T, D) residual */
#define COL (RES + QC_KEEP_RES * QC_TD)                   /* (T,) an output column */
#define SCOL (COL + QC_WINDOW)                            /* (T,) a shortcut column */
#define WROW (SCOL + QC_WINDOW)                           /* one weight row */
#define TAB (WROW + QC_MAX_KC)                            /* code -> value */
#define CODES ((uint8_t *)(TAB + 256))
#define QC_TF (QC_WINDOW * QC_FILTERS)
#define CA (CODES)                                        /* (T, D) bottleneck input */
#define RING (CODES + QC_TD)                              /* 5 slots of F columns */
#define CB(s) (CODES + QC_TD + 5 * QC_TF + (s) * QC_TF)   /* (T, F) branch input */
/* Column c (T codes) of the max-pooled input of block g (>= 1). Block g's channels fill
 * slots g .. g + 3 (mod 5), F channels each; the fifth is free, and it is where block
 * g - 1 writes the pool branch's channels of block g + 1 first, while block g's pool
 * convolution still reads all of its slots. */
#define POOLED(g, c) (RING + (((g) + (c) / QC_FILTERS) % 5) * QC_TF + ((c) % QC_FILTERS) * QC_WINDOW)
/* scratch, the solve */
#define S_L (qc_arena)                                    /* packed lower factor */
#define S_V (qc_arena + QC_TRI)                           /* (D,) */
/* the head's statistics and solution */
#define H_COUNT ((float *)((unsigned char *)qc_arena + QC_SCRATCH_BYTES))
#define H_BIAS (H_COUNT + QC_MAX_CLASSES)
#define H_MEAN (H_BIAS + QC_MAX_CLASSES)
#define H_WEIGHT (H_MEAN + QC_MAX_CLASSES * QC_FEATURES)
#define H_SCATTER (H_WEIGHT + QC_MAX_CLASSES * QC_FEATURES) /* lower triangle, row-major */
#define TRI(i, j) ((i) * ((i) + 1) / 2 + (j))             /* i >= j */

static int qc_k;                  /* classes the streaming head knows now */
static uint32_t qc_step;          /* windows learnt */
static const qc_layer_t *qc_tab_of; /* the layer whose codes TAB dequantizes */

/* Round half to even (np.rint) in float32 without libm: adding 2^23 leaves no
 * fraction bits, so the FPU's default rounding does the work. */
static float qc_rint(float v) {
    const float big = 8388608.0f;
    if (!(v < big && v > -big)) return v; /* already integral (or NaN) */
    return v >= 0.0f ? (v + big) - big : (v - big) + big;
}

/* The code of x for layer L's input: clip(rint(x / s) + z, 0, max), a whole float. */
static float qc_code_of(const qc_layer_t *L, float x) {
    float v = qc_rint(x / L->act_scale);
    v += L->act_zero;
    if (!(v > 0.0f)) v = 0.0f;
    if (v > L->act_max) v = L->act_max;
    return v;
}

/* The value a layer really consumes: (code - z) * s. */
static float qc_fq(const qc_layer_t *L, float x) {
    float v = qc_code_of(L, x);
    v -= L->act_zero;
    return v * L->act_scale;
}

static void qc_table(const qc_layer_t *L) {
    int c;
    if (qc_tab_of == L) return;
    for (c = 0; c <= (int)L->act_max; c++) {
        float v = (float)c;
        v -= L->act_zero;
        TAB[c] = v * L->act_scale;
    }
    qc_tab_of = L;
}

/* Code i of a packed stream: bits [i*bits, (i+1)*bits), least significant first. */
static unsigned qc_code(const qc_layer_t *L, long i) {
    long bit = i * L->bits;
    unsigned shift = (unsigned)(bit & 7), v = L->codes[bit >> 3];
    if (L->bits == 8) return v;
    if (shift + (unsigned)L->bits > 8u) v |= (unsigned)L->codes[(bit >> 3) + 1] << 8;
    return (v >> shift) & ((1u << L->bits) - 1u);
}

/* Output channel o's weights, dequantized ((q - zp) * scale, float32), tap-major. */
static void qc_weight_row(const qc_layer_t *L, int o, float *w) {
    int i, j;
    float zp = (float)L->zero[o], s = L->scale[o];
    for (i = 0; i < L->c_in; i++)
        for (j = 0; j < L->k; j++)
            w[j * L->c_in + i] = ((float)qc_code(L, ((long)o * L->c_in + i) * L->k + j) - zp) * s;
}

/* What a convolution reads, (T, c_in) with `stride` values per time step: codes of its
 * own input quantization, or floats (fake-quantized on the fly when the layer has act
 * parameters), optionally max-pooled over time (kernel 3, padding as -inf) first. */
typedef struct {
    const uint8_t *codes;
    const float *x;
    int stride, pool;
} qc_src_t;

static float qc_float_in(const qc_layer_t *L, const qc_src_t *S, int t, int i) {
    const float *x = S->x + i;
    float m = x[(long)t * S->stride];
    if (S->pool) {
        if (t > 0 && x[(long)(t - 1) * S->stride] > m) m = x[(long)(t - 1) * S->stride];
        if (t + 1 < QC_WINDOW && x[(long)(t + 1) * S->stride] > m)
            m = x[(long)(t + 1) * S->stride];
    }
    return L->has_act ? qc_fq(L, m) : m;
}

/* Output channel o of the 'same' zero-padded convolution L over all T, into out. */
static void qc_conv_col(const qc_layer_t *L, const qc_src_t *S, int o, float *out) {
    int t, j, i, p = L->k / 2, n = L->c_in;
    qc_weight_row(L, o, WROW);
    if (S->codes) qc_table(L);
    for (t = 0; t < QC_WINDOW; t++) {
        float acc = 0.0f;
        int j0 = t < p ? p - t : 0, j1 = QC_WINDOW - t + p < L->k ? QC_WINDOW - t + p : L->k;
        for (j = j0; j < j1; j++) {
            int tt = t + j - p;
            const float *wr = WROW + j * n;
            if (S->codes) {
                const uint8_t *xr = S->codes + (long)tt * S->stride;
                for (i = 0; i < n; i++) acc += TAB[xr[i]] * wr[i];
            } else {
                for (i = 0; i < n; i++) acc += qc_float_in(L, S, tt, i) * wr[i];
            }
        }
        out[t] = acc;
    }
}

/* Output channel o of block g's (>= 1) pool convolution, 1x1 over the max-pooled codes,
 * into out: each sum over the input channels in channel order, as qc_conv_col's. */
static void qc_pool_col(const qc_layer_t *L, int g, int o, float *out) {
    int t, i;
    qc_weight_row(L, o, WROW);
    qc_table(L);
    for (t = 0; t < QC_WINDOW; t++) out[t] = 0.0f;
    for (i = 0; i < QC_FEATURES; i++) {
        const uint8_t *x = POOLED(g, i);
        float w = WROW[i];
        for (t = 0; t < QC_WINDOW; t++) out[t] += TAB[x[t]] * w;
    }
}

/* Which code set each of a block's three convolutions reads: one per distinct input
 * quantization (equal parameters share one); returns how many. */
static int qc_sets(const qc_block_t *B, int set[3]) {
    int i, j, n = 0;
    for (i = 0; i < 3; i++) {
        const qc_layer_t *a = B->convs[i];
        set[i] = -1;
        for (j = 0; j < i; j++) {
            const qc_layer_t *b = B->convs[j];
            if (a->act_scale == b->act_scale && a->act_zero == b->act_zero &&
                a->act_max == b->act_max) {
                set[i] = set[j];
                break;
            }
        }
        if (set[i] < 0) set[i] = n++;
    }
    return n;
}

/* Block d: reads CA and its max-pooled codes (or X0 for block 0), writes CA and the
 * max-pooled codes of the next block, or the pooled features after the last one. The pool
 * branch's output channels come first (see POOLED). *res_x0: the residual is still
 * the normalised input (no shortcut yet). */
static void qc_block(int d, float *features, int *res_x0) {
    const qc_block_t *B = &qc_model.blocks[d];
    const qc_block_t *N = d + 1 < QC_DEPTH ? &qc_model.blocks[d + 1] : NULL;
    qc_src_t in, pool, branch[3], res;
    int set[3], i, o, n, t;
    if (d == 0) {
        in.codes = NULL, in.x = X0, in.stride = QC_CHANNELS, in.pool = 0;
        pool = in, pool.pool = 1;
    } else {
        in.codes = CA, in.x = NULL, in.stride = QC_FEATURES, in.pool = 0;
        pool = in;
    }
    for (i = 0; i < 3; i++) branch[i] = in;
    if (B->bottleneck) {
        qc_sets(B, set);
        for (o = 0; o < QC_FILTERS; o++) {
            int done = -1; /* sets are numbered in order of first use */
            qc_conv_col(B->bottleneck, &in, o, COL);
            for (i = 0; i < 3; i++) {
                uint8_t *cb = CB(set[i]);
                if (set[i] <= done) continue;
                done = set[i];
                for (t = 0; t < QC_WINDOW; t++)
                    cb[t * QC_FILTERS + o] = (uint8_t)qc_code_of(B->convs[i], COL[t]);
            }
        }
        for (i = 0; i < 3; i++) {
            branch[i].codes = CB(set[i]), branch[i].x = NULL;
            branch[i].stride = QC_FILTERS, branch[i].pool = 0;
        }
    }
    res.codes = NULL, res.pool = 0;
    res.x = *res_x0 ? X0 : RES, res.stride = *res_x0 ? QC_CHANNELS : QC_FEATURES;
    for (n = 0; n < QC_FEATURES; n++) {
        int c = (n + 3 * QC_FILTERS) % QC_FEATURES, b = c / QC_FILTERS;
        float a = B->bn_alpha[c], be = B->bn_beta[c];
        if (b < 3)
            qc_conv_col(B->convs[b], &branch[b], c % QC_FILTERS, COL);
        else if (d > 0)
            qc_pool_col(B->pool_conv, d, c % QC_FILTERS, COL);
        else
            qc_conv_col(B->pool_conv, &pool, c % QC_FILTERS, COL);
        for (t = 0; t < QC_WINDOW; t++) {
            float v = COL[t] * a;
            v += be;
            COL[t] = v > 0.0f ? v : 0.0f;
        }
        if (B->sc_alpha) {
            const float *r = res.x + c;
            long rs = res.stride;
            float sa = B->sc_alpha[c], sb = B->sc_beta[c];
            if (B->shortcut_conv) {
                qc_conv_col(B->shortcut_conv, &res, c, SCOL);
                r = SCOL, rs = 1;
            }
            for (t = 0; t < QC_WINDOW; t++) {
                float v = r[t * rs] * sa;
                v += sb;
                v = COL[t] + v;
                COL[t] = v > 0.0f ? v : 0.0f;
            }
            if (QC_KEEP_RES)
                for (t = 0; t < QC_WINDOW; t++) RES[t * QC_FEATURES + c] = COL[t];
        }
        if (!N) {
            float s = 0.0f;
            for (t = 0; t < QC_WINDOW; t++) s += COL[t];
            features[c] = s / (float)QC_WINDOW;
            continue;
        }
        if (N->bottleneck)
            for (t = 0; t < QC_WINDOW; t++)
                CA[t * QC_FEATURES + c] = (uint8_t)qc_code_of(N->bottleneck, COL[t]);
        for (t = 0; t < QC_WINDOW; t++) {
            float m = COL[t];
            if (t > 0 && COL[t - 1] > m) m = COL[t - 1];
            if (t + 1 < QC_WINDOW && COL[t + 1] > m) m = COL[t + 1];
            POOLED(d + 1, c)[t] = (uint8_t)qc_code_of(N->pool_conv, m);
        }
    }
    if (B->sc_alpha) *res_x0 = 0;
}

void qc_features(const float *window, float *features) {
    int t, c, d, res_x0 = 1;
    for (c = 0; c < QC_CHANNELS; c++)
        for (t = 0; t < QC_WINDOW; t++) {
            float v = window[c * QC_WINDOW + t] - qc_model.norm_mean[c];
            X0[t * QC_CHANNELS + c] = v / qc_model.norm_std[c];
        }
    qc_tab_of = NULL;
    for (d = 0; d < QC_DEPTH; d++) qc_block(d, features, &res_x0);
}

void qc_model_logits(const float *features, float *logits) {
    const qc_layer_t *L = qc_model.head;
    int o, i;
    for (o = 0; o < L->c_out; o++) {
        float acc = 0.0f;
        qc_weight_row(L, o, WROW);
        for (i = 0; i < QC_FEATURES; i++)
            acc += (L->has_act ? qc_fq(L, features[i]) : features[i]) * WROW[i];
        logits[o] = L->bias ? acc + L->bias[o] : acc;
    }
}

int qc_argmax(const float *v, int n) {
    int i, best = 0;
    for (i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* ------------------------------------------------------------ the streaming head */

int qc_head_classes(void) { return qc_k; }
uint32_t qc_head_step(void) { return qc_step; }
const float *qc_head_count(void) { return H_COUNT; }
const float *qc_head_mean(void) { return H_MEAN; }

const float *qc_head_scatter(void) {
    float *s = (float *)qc_arena;
    int i, j;
    for (i = 0; i < QC_FEATURES; i++)
        for (j = 0; j <= i; j++)
            s[i * QC_FEATURES + j] = s[j * QC_FEATURES + i] = H_SCATTER[TRI(i, j)];
    qc_tab_of = NULL;
    return s;
}

int qc_init(void) {
    qc_k = QC_HEAD_CLASSES;
    qc_step = 0;
    memset(H_COUNT, 0, (size_t)QC_HEAD_BYTES);
    memcpy(H_COUNT, qc_model.count, sizeof(float) * QC_HEAD_CLASSES);
    memcpy(H_MEAN, qc_model.mean, sizeof(float) * QC_HEAD_CLASSES * QC_FEATURES);
    memcpy(H_SCATTER, qc_model.scatter, sizeof(float) * QC_TRI);
    return qc_head_solve();
}

int qc_head_add_class(void) {
    if (qc_k >= QC_MAX_CLASSES) return -1;
    H_COUNT[qc_k] = 0.0f;
    memset(H_MEAN + qc_k * QC_FEATURES, 0, sizeof(float) * QC_FEATURES);
    memset(H_WEIGHT + qc_k * QC_FEATURES, 0, sizeof(float) * QC_FEATURES);
    H_BIAS[qc_k] = QC_UNSEEN;
    return qc_k++;
}

/* Chan's pairwise update with a batch of one (n_b = 1, its own scatter 0), float64. */
int qc_head_add(const float *features, int label) {
    int i, j;
    double n_a, total, w, r, *delta = S_V;
    float *m;
    if (label < 0 || label >= qc_k) return -1;
    qc_tab_of = NULL;
    m = H_MEAN + label * QC_FEATURES;
    n_a = (double)H_COUNT[label];
    total = n_a + 1.0;
    w = n_a * 1.0 / total;
    r = 1.0 / total;
    for (i = 0; i < QC_FEATURES; i++) delta[i] = (double)features[i] - (double)m[i];
    for (i = 0; i < QC_FEATURES; i++)
        for (j = 0; j <= i; j++) {
            float *s = H_SCATTER + TRI(i, j);
            *s = (float)((double)*s + (delta[i] * w) * delta[j]);
        }
    for (i = 0; i < QC_FEATURES; i++) m[i] = (float)((double)m[i] + delta[i] * r);
    H_COUNT[label] = (float)total;
    qc_step++;
    return 0;
}

/* Cholesky factor (packed lower, in S_L) of (1 - eps) scatter / N + eps I: 0, or -1. */
static int qc_cholesky(void) {
    int i, j, k;
    double n = 0.0, eps = qc_model.shrinkage, *L = S_L;
    for (k = 0; k < qc_k; k++) n += (double)H_COUNT[k];
    for (j = 0; j < QC_FEATURES; j++)
        for (i = j; i < QC_FEATURES; i++) {
            double a = n > 0.0 ? (double)H_SCATTER[TRI(i, j)] / n : 0.0;
            a = (1.0 - eps) * a + (i == j ? eps : 0.0);
            for (k = 0; k < j; k++) a -= L[TRI(i, k)] * L[TRI(j, k)];
            if (i == j) {
                if (!(a > 0.0)) return -1;
                L[TRI(j, j)] = sqrt(a);
            } else {
                L[TRI(i, j)] = a / L[TRI(j, j)];
            }
        }
    return 0;
}

/* weight_c = Λ mean_c, bias_c = -mean_c . weight_c / 2 (float64, stored float32); a class
 * never seen, or added on a device and still under new_class_min windows, is UNSEEN. */
int qc_head_solve(void) {
    int c, i, k;
    double *L = S_L, *v = S_V;
    qc_tab_of = NULL;
    if (qc_cholesky() != 0) return -1;
    for (c = 0; c < qc_k; c++) {
        const float *m = H_MEAN + c * QC_FEATURES;
        double b = 0.0;
        for (i = 0; i < QC_FEATURES; i++) {
            double a = (double)m[i];
            for (k = 0; k < i; k++) a -= L[TRI(i, k)] * v[k];
            v[i] = a / L[TRI(i, i)];
        }
        for (i = QC_FEATURES - 1; i >= 0; i--) {
            double a = v[i];
            for (k = i + 1; k < QC_FEATURES; k++) a -= L[TRI(k, i)] * v[k];
            v[i] = a / L[TRI(i, i)];
        }
        for (i = 0; i < QC_FEATURES; i++) {
            H_WEIGHT[c * QC_FEATURES + i] = (float)v[i];
            b += v[i] * (double)m[i];
        }
        H_BIAS[c] = (float)(-0.5 * b);
        if (H_COUNT[c] <= 0.0f || (c >= qc_model.head_first && H_COUNT[c] < qc_model.new_class_min))
            H_BIAS[c] = QC_UNSEEN;
    }
    return 0;
}

void qc_head_logits(const float *features, float *logits) {
    int c, i;
    for (c = 0; c < qc_k; c++) {
        float acc = 0.0f;
        for (i = 0; i < QC_FEATURES; i++) acc += features[i] * H_WEIGHT[c * QC_FEATURES + i];
        logits[c] = acc + H_BIAS[c];
    }
}

int qc_predict(const float *window) {
    float f[QC_FEATURES], l[QC_MAX_CLASSES > QC_CLASSES ? QC_MAX_CLASSES : QC_CLASSES];
    qc_features(window, f);
    if (QC_USE_HEAD) {
        qc_head_logits(f, l);
        return qc_argmax(l, qc_k);
    }
    qc_model_logits(f, l);
    return qc_argmax(l, QC_CLASSES);
}

/* ------------------------------------------------------------ the state blob */

static uint32_t qc_crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        for (k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

static void qc_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t qc_get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void qc_put_floats(uint8_t *p, const float *v, int n) {
    int i;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, v + i, 4);
        qc_put32(p + 4 * i, u);
    }
}

static float qc_get_float(const uint8_t *p) {
    uint32_t u = qc_get32(p);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

#define ST_COUNT QC_STATE_HEADER
#define ST_MEAN (ST_COUNT + 4 * QC_MAX_CLASSES)
#define ST_SCATTER (ST_MEAN + 4 * QC_MAX_CLASSES * QC_FEATURES)
#define ST_CRC (ST_SCATTER + 4 * QC_TRI)

size_t qc_state_bytes(void) { return (size_t)QC_STATE_BYTES; }

size_t qc_state_save(uint8_t *out, size_t cap) {
    if (cap < (size_t)QC_STATE_BYTES) return 0;
    memset(out, 0, (size_t)QC_STATE_BYTES);
    memcpy(out, "QCST", 4);
    qc_put32(out + 4, QC_STATE_VERSION);
    memcpy(out + 8, qc_model.fingerprint, 32);
    qc_put32(out + 40, QC_FEATURES);
    qc_put32(out + 44, QC_MAX_CLASSES);
    qc_put32(out + 48, (uint32_t)qc_k);
    qc_put32(out + 52, qc_step);
    /* bytes 56..59: reserved, zero */
    qc_put_floats(out + ST_COUNT, H_COUNT, qc_k);
    qc_put_floats(out + ST_MEAN, H_MEAN, qc_k * QC_FEATURES);
    qc_put_floats(out + ST_SCATTER, H_SCATTER, QC_TRI);
    qc_put32(out + ST_CRC, qc_crc32(out, ST_CRC));
    return (size_t)QC_STATE_BYTES;
}

static int qc_finite(float v) { return v - v == 0.0f; }

int qc_state_load(const uint8_t *blob, size_t n) {
    uint32_t k;
    int i;
    if (n != (size_t)QC_STATE_BYTES) return QC_STATE_ESIZE;
    if (memcmp(blob, "QCST", 4) != 0) return QC_STATE_EMAGIC;
    if (qc_get32(blob + 4) != QC_STATE_VERSION) return QC_STATE_EVERSION;
    if (qc_get32(blob + ST_CRC) != qc_crc32(blob, ST_CRC)) return QC_STATE_ECRC;
    if (memcmp(blob + 8, qc_model.fingerprint, 32) != 0 || qc_get32(blob + 40) != QC_FEATURES ||
        qc_get32(blob + 44) != QC_MAX_CLASSES)
        return QC_STATE_EMODEL;
    k = qc_get32(blob + 48);
    if (k < QC_HEAD_CLASSES || k > QC_MAX_CLASSES) return QC_STATE_EVALUE;
    for (i = 0; i < QC_MAX_CLASSES; i++) {
        float c = qc_get_float(blob + ST_COUNT + 4 * i);
        if (!qc_finite(c) || c < 0.0f || (i >= (int)k && c != 0.0f)) return QC_STATE_EVALUE;
    }
    for (i = 0; i < QC_MAX_CLASSES * QC_FEATURES + QC_TRI; i++)
        if (!qc_finite(qc_get_float(blob + ST_MEAN + 4 * i))) return QC_STATE_EVALUE;
    qc_k = (int)k;
    qc_step = qc_get32(blob + 52);
    for (i = 0; i < QC_MAX_CLASSES; i++) H_COUNT[i] = qc_get_float(blob + ST_COUNT + 4 * i);
    for (i = 0; i < QC_MAX_CLASSES * QC_FEATURES; i++)
        H_MEAN[i] = qc_get_float(blob + ST_MEAN + 4 * i);
    for (i = 0; i < QC_TRI; i++) H_SCATTER[i] = qc_get_float(blob + ST_SCATTER + 4 * i);
    memset(H_WEIGHT, 0, sizeof(float) * QC_MAX_CLASSES * QC_FEATURES);
    for (i = 0; i < QC_MAX_CLASSES; i++) H_BIAS[i] = QC_UNSEEN;
    return qc_head_solve() == 0 ? 0 : QC_STATE_ESOLVE;
}

const uint8_t *qc_state_blob(void) {
    qc_state_save((uint8_t *)qc_arena, (size_t)QC_STATE_BYTES);
    qc_tab_of = NULL;
    return (const uint8_t *)qc_arena;
}

uint8_t *qc_state_buffer(void) {
    qc_tab_of = NULL;
    return (uint8_t *)qc_arena;
}
