/* qcore_rt.c: see qcore_rt.h. Every step follows qcore.edge.runner / qcore.edge.head. */
#include "qcore_rt.h"

#include <math.h>
#include <string.h>

#define QC_UNSEEN (-1e30f)
#define QC_ARENA_WORDS ((QC_ARENA_BYTES + 7) / 8)

static double qc_arena[QC_ARENA_WORDS];

/* arena parts: doubles first (alignment), then floats */
#define QC_F ((float *)(qc_arena + QC_SOLVE_DOUBLES))
#define BUF_X (QC_F)
#define BUF_RES (BUF_X + QC_WINDOW * QC_WIDEST)
#define BUF_Q (BUF_RES + QC_WINDOW * QC_WIDEST)
#define BUF_P (BUF_Q + QC_WINDOW * QC_WIDEST)
#define BUF_B (BUF_P + QC_WINDOW * QC_WIDEST)
#define BUF_Y (BUF_B + QC_WINDOW * QC_FILTERS)
#define BUF_R (BUF_Y + QC_WINDOW * QC_FEATURES)
#define BUF_W (BUF_R + QC_WINDOW * QC_FEATURES)
#define H_COUNT (QC_F + QC_ACT_FLOATS)
#define H_MEAN (H_COUNT + QC_MAX_CLASSES)
#define H_SCATTER (H_MEAN + QC_MAX_CLASSES * QC_FEATURES)
#define H_WEIGHT (H_SCATTER + QC_FEATURES * QC_FEATURES)
#define H_BIAS (H_WEIGHT + QC_MAX_CLASSES * QC_FEATURES)
#define S_L (qc_arena)
#define S_V (qc_arena + QC_FEATURES * QC_FEATURES)

static int qc_k; /* classes the streaming head knows now */

/* Round half to even (np.rint) in float32 without libm: adding 2^23 leaves no
 * fraction bits, so the FPU's default rounding does the work. */
static float qc_rint(float v) {
    const float big = 8388608.0f;
    if (!(v < big && v > -big)) return v; /* already integral (or NaN) */
    return v >= 0.0f ? (v + big) - big : (v - big) + big;
}

/* The value a layer really consumes: ((clip(rint(x / s) + z, 0, max)) - z) * s. */
static void qc_fake_quant(const qc_layer_t *L, const float *x, float *q, int n) {
    int i;
    for (i = 0; i < n; i++) {
        float v = qc_rint(x[i] / L->act_scale);
        v += L->act_zero;
        if (v < 0.0f) v = 0.0f;
        if (v > L->act_max) v = L->act_max;
        v -= L->act_zero;
        q[i] = v * L->act_scale;
    }
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

/* 'same' zero-padded convolution of x (T, c_in) into out[t * stride + off + o]. */
static void qc_conv(const qc_layer_t *L, const float *x, float *out, int stride, int off) {
    int o, t, j, i, p = L->k / 2;
    const float *in = x;
    if (L->has_act) {
        qc_fake_quant(L, x, BUF_Q, QC_WINDOW * L->c_in);
        in = BUF_Q;
    }
    for (o = 0; o < L->c_out; o++) {
        qc_weight_row(L, o, BUF_W);
        for (t = 0; t < QC_WINDOW; t++) {
            float acc = 0.0f;
            for (j = 0; j < L->k; j++) {
                int tt = t + j - p;
                const float *xr, *wr = BUF_W + j * L->c_in;
                if (tt < 0 || tt >= QC_WINDOW) continue;
                xr = in + (long)tt * L->c_in;
                for (i = 0; i < L->c_in; i++) acc += xr[i] * wr[i];
            }
            out[(long)t * stride + off + o] = acc;
        }
    }
}

/* Max-pool over time: kernel 3, stride 1, padding as -inf. */
static void qc_maxpool3(const float *x, float *out, int c) {
    int t, i;
    for (t = 0; t < QC_WINDOW; t++)
        for (i = 0; i < c; i++) {
            float m = x[t * c + i];
            if (t > 0 && x[(t - 1) * c + i] > m) m = x[(t - 1) * c + i];
            if (t + 1 < QC_WINDOW && x[(t + 1) * c + i] > m) m = x[(t + 1) * c + i];
            out[t * c + i] = m;
        }
}

static void qc_block(const qc_block_t *B, int *cx) {
    int i, n = QC_WINDOW * QC_FEATURES;
    const float *src = BUF_X;
    float *y = BUF_Y;
    if (B->bottleneck) {
        qc_conv(B->bottleneck, BUF_X, BUF_B, QC_FILTERS, 0);
        src = BUF_B;
    }
    for (i = 0; i < 3; i++) qc_conv(B->convs[i], src, y, QC_FEATURES, i * QC_FILTERS);
    qc_maxpool3(BUF_X, BUF_P, *cx);
    qc_conv(B->pool_conv, BUF_P, y, QC_FEATURES, 3 * QC_FILTERS);
    for (i = 0; i < n; i++) {
        float v = y[i] * B->bn_alpha[i % QC_FEATURES];
        v += B->bn_beta[i % QC_FEATURES];
        y[i] = v > 0.0f ? v : 0.0f;
    }
    if (B->sc_alpha) {
        const float *r = BUF_RES;
        if (B->shortcut_conv) {
            qc_conv(B->shortcut_conv, BUF_RES, BUF_R, QC_FEATURES, 0);
            r = BUF_R;
        }
        for (i = 0; i < n; i++) {
            float v = r[i] * B->sc_alpha[i % QC_FEATURES];
            v += B->sc_beta[i % QC_FEATURES];
            v = y[i] + v;
            y[i] = v > 0.0f ? v : 0.0f;
        }
        memcpy(BUF_RES, y, sizeof(float) * (size_t)n);
    }
    memcpy(BUF_X, y, sizeof(float) * (size_t)n);
    *cx = QC_FEATURES;
}

void qc_features(const float *window, float *features) {
    int t, c, d, cx = QC_CHANNELS;
    for (c = 0; c < QC_CHANNELS; c++)
        for (t = 0; t < QC_WINDOW; t++) {
            float v = window[c * QC_WINDOW + t] - qc_model.norm_mean[c];
            BUF_X[t * QC_CHANNELS + c] = v / qc_model.norm_std[c];
        }
    memcpy(BUF_RES, BUF_X, sizeof(float) * QC_WINDOW * QC_CHANNELS);
    for (d = 0; d < QC_DEPTH; d++) qc_block(&qc_model.blocks[d], &cx);
    for (c = 0; c < QC_FEATURES; c++) {
        float s = 0.0f;
        for (t = 0; t < QC_WINDOW; t++) s += BUF_X[t * QC_FEATURES + c];
        features[c] = s / (float)QC_WINDOW;
    }
}

void qc_model_logits(const float *features, float *logits) {
    const qc_layer_t *L = qc_model.head;
    const float *in = features;
    int o, i;
    if (L->has_act) {
        qc_fake_quant(L, features, BUF_Q, QC_FEATURES);
        in = BUF_Q;
    }
    for (o = 0; o < L->c_out; o++) {
        float acc = 0.0f;
        qc_weight_row(L, o, BUF_W);
        for (i = 0; i < QC_FEATURES; i++) acc += in[i] * BUF_W[i];
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
const float *qc_head_count(void) { return H_COUNT; }
const float *qc_head_mean(void) { return H_MEAN; }
const float *qc_head_scatter(void) { return H_SCATTER; }

int qc_init(void) {
    qc_k = QC_HEAD_CLASSES;
    memcpy(H_COUNT, qc_model.count, sizeof(float) * QC_HEAD_CLASSES);
    memcpy(H_MEAN, qc_model.mean, sizeof(float) * QC_HEAD_CLASSES * QC_FEATURES);
    memcpy(H_SCATTER, qc_model.scatter, sizeof(float) * QC_FEATURES * QC_FEATURES);
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
    m = H_MEAN + label * QC_FEATURES;
    n_a = (double)H_COUNT[label];
    total = n_a + 1.0;
    w = n_a * 1.0 / total;
    r = 1.0 / total;
    for (i = 0; i < QC_FEATURES; i++) delta[i] = (double)features[i] - (double)m[i];
    for (i = 0; i < QC_FEATURES; i++)
        for (j = 0; j < QC_FEATURES; j++) {
            float *s = H_SCATTER + i * QC_FEATURES + j;
            *s = (float)((double)*s + (delta[i] * w) * delta[j]);
        }
    for (i = 0; i < QC_FEATURES; i++) m[i] = (float)((double)m[i] + delta[i] * r);
    H_COUNT[label] = (float)total;
    return 0;
}

/* Cholesky factor (lower, in S_L) of (1 - eps) scatter / N + eps I: 0, or -1. */
static int qc_cholesky(void) {
    int i, j, k;
    double n = 0.0, eps = qc_model.shrinkage, *L = S_L;
    for (k = 0; k < qc_k; k++) n += (double)H_COUNT[k];
    for (j = 0; j < QC_FEATURES; j++)
        for (i = j; i < QC_FEATURES; i++) {
            double a = n > 0.0 ? (double)H_SCATTER[i * QC_FEATURES + j] / n : 0.0;
            a = (1.0 - eps) * a + (i == j ? eps : 0.0);
            for (k = 0; k < j; k++) a -= L[i * QC_FEATURES + k] * L[j * QC_FEATURES + k];
            if (i == j) {
                if (!(a > 0.0)) return -1;
                L[j * QC_FEATURES + j] = sqrt(a);
            } else {
                L[i * QC_FEATURES + j] = a / L[j * QC_FEATURES + j];
            }
        }
    return 0;
}

/* weight_c = Λ mean_c, bias_c = -mean_c . weight_c / 2 (float64, stored float32); a class
 * never seen, or added on a device and still under new_class_min windows, is UNSEEN. */
int qc_head_solve(void) {
    int c, i, k;
    double *L = S_L, *v = S_V;
    if (qc_cholesky() != 0) return -1;
    for (c = 0; c < qc_k; c++) {
        const float *m = H_MEAN + c * QC_FEATURES;
        double b = 0.0;
        for (i = 0; i < QC_FEATURES; i++) {
            double a = (double)m[i];
            for (k = 0; k < i; k++) a -= L[i * QC_FEATURES + k] * v[k];
            v[i] = a / L[i * QC_FEATURES + i];
        }
        for (i = QC_FEATURES - 1; i >= 0; i--) {
            double a = v[i];
            for (k = i + 1; k < QC_FEATURES; k++) a -= L[k * QC_FEATURES + i] * v[k];
            v[i] = a / L[i * QC_FEATURES + i];
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
