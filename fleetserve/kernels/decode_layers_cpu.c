/* Every transformer layer of a decode step (one new token per sequence) in one call: no Python or torch
 * dispatch between the operations of a layer. The layer is the Llama block of fleetserve/model/llama.py,
 * operation for operation (fp32 norms, rotary in fp32, the residual adds in the same order), with weight
 * matrices in GGUF blocks (quantized_matmul_cpu.c) and keys and values read in place from the paged cache
 * (paged_attention_cpu.c). Each matrix product is one parallel region; the small per-row work between
 * them runs on the calling thread, or spread over rows when there are many. */
#define KERNELS_SHARE_SET_THREADS 1
#include "quantized_matmul_cpu.c"
#include "paged_attention_cpu.c"

typedef struct {
    int layers, hidden, heads, kv_heads, head_dim, intermediate;
    int block_size, kv_is_bf16;
    int64_t num_blocks;
    float eps, scale;
    const float *cos, *sin; /* [max_positions][head_dim / 2] */
} decode_shape;

/* Per layer, in this order: the block matrices (qkv, o, gate_up, down), the norms and the optional parts
 * (NULL where the model has none), the layer's KV cache. */
enum { QKV, O, GATE_UP, DOWN, INPUT_NORM, POST_NORM, QKV_BIAS, Q_NORM, K_NORM, KV_CACHE, LAYER_POINTERS };
enum { KIND_QKV, KIND_O, KIND_GATE_UP, KIND_DOWN, LAYER_KINDS };

static void rms_norm_rows(const float *x, int m, int d, const float *weight, float eps, float *out) {
#pragma omp parallel for schedule(static) if ((size_t)m * d >= 32768)
    for (int r = 0; r < m; r++) {
        const float *row = x + (size_t)r * d;
        float squares = 0.0f;
        for (int i = 0; i < d; i++) squares += row[i] * row[i];
        const float inverse = 1.0f / sqrtf(squares / (float)d + eps);
        for (int i = 0; i < d; i++) out[(size_t)r * d + i] = weight[i] * (row[i] * inverse);
    }
}

/* heads rows of head_dim values, each rotated by its position (the rotate-half form). */
static void rotate_heads(float *v, int heads, int head_dim, const float *cos, const float *sin) {
    const int half = head_dim / 2;
    for (int h = 0; h < heads; h++) {
        float *x = v + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float x1 = x[i], x2 = x[i + half];
            x[i] = x1 * cos[i] - x2 * sin[i];
            x[i + half] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

static inline uint16_t f32_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    if ((bits & 0x7fffffff) > 0x7f800000) return (uint16_t)((bits >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);                /* round to nearest even */
}

static void store_kv(const decode_shape *s, void *cache, int64_t slot, const float *k, const float *v) {
    const int64_t per_head = s->num_blocks * s->block_size * s->head_dim;
    const int64_t half = (int64_t)s->kv_heads * per_head;
    for (int h = 0; h < s->kv_heads; h++) {
        const int64_t offset = h * per_head + slot * s->head_dim;
        const float *kh = k + (size_t)h * s->head_dim, *vh = v + (size_t)h * s->head_dim;
        if (s->kv_is_bf16) {
            uint16_t *c = cache;
            for (int i = 0; i < s->head_dim; i++) {
                c[offset + i] = f32_to_bf16(kh[i]);
                c[half + offset + i] = f32_to_bf16(vh[i]);
            }
        } else {
            float *c = cache;
            memcpy(c + offset, kh, sizeof(float) * s->head_dim);
            memcpy(c + half + offset, vh, sizeof(float) * s->head_dim);
        }
    }
}

/* out = silu(gate) * up, with gate|up side by side in each row of gu. */
static void silu_and_multiply(const float *gu, int m, int d, float *out) {
#pragma omp parallel for schedule(static) if ((size_t)m * d >= 8192)
    for (int r = 0; r < m; r++) {
        const float *gate = gu + (size_t)r * 2 * d, *up = gate + d;
        float *o = out + (size_t)r * d;
        int i = 0;
#ifdef USE_AVX2
        /* exp_ps wants arguments <= 0 or moderately positive; beyond 88 the product is 0 either way. */
        const __m256 one = _mm256_set1_ps(1.0f), limit = _mm256_set1_ps(88.0f), zero = _mm256_setzero_ps();
        for (; i + 8 <= d; i += 8) {
            const __m256 g = _mm256_loadu_ps(gate + i);
            const __m256 e = exp_ps(_mm256_min_ps(_mm256_sub_ps(zero, g), limit));
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
        }
#endif
        for (; i < d; i++) o[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
}

static void add_into(float *x, const float *y, size_t count) {
    for (size_t i = 0; i < count; i++) x[i] = x[i] + y[i];
}

/* x: [m, hidden], this step's embeddings in, the last layer's output out (before the final norm).
 * Returns 0, or -1 when a matrix's block type is not one the kernels take (x is then undefined). */
int decode_layers(const decode_shape *s, const int64_t *pointers, const int32_t *kinds, float *x, int m,
                  const int64_t *positions, const int64_t *slots, const int64_t *block_tables, int max_blocks,
                  const int64_t *seq_lens) {
    const int hd = s->head_dim, q_size = s->heads * hd, kv_size = s->kv_heads * hd;
    const int qkv_size = q_size + 2 * kv_size, hidden = s->hidden, inter = s->intermediate;
    const size_t widest = (size_t)(qkv_size > 2 * inter ? qkv_size : 2 * inter);
    float *h = malloc(sizeof(float) * (size_t)m * (hidden > inter ? hidden : inter));
    float *wide = malloc(sizeof(float) * (size_t)m * widest);
    float *q = malloc(sizeof(float) * (size_t)m * q_size);
    float *attn = malloc(sizeof(float) * (size_t)m * q_size);
    float *delta = malloc(sizeof(float) * (size_t)m * hidden);
    int status = 0;
    for (int layer = 0; layer < s->layers && status == 0; layer++) {
        const int64_t *p = pointers + (size_t)layer * LAYER_POINTERS;
        const int32_t *kind = kinds + (size_t)layer * LAYER_KINDS;
        rms_norm_rows(x, m, hidden, (const float *)p[INPUT_NORM], s->eps, h);
        status |= quantized_matmul(kind[KIND_QKV], h, m, hidden, (const uint8_t *)p[QKV], qkv_size,
                                   (const float *)p[QKV_BIAS], wide);
        for (int r = 0; r < m; r++) {
            float *row = wide + (size_t)r * qkv_size, *k = row + q_size, *v = k + kv_size;
            if (p[Q_NORM]) {
                rms_norm_rows(row, s->heads, hd, (const float *)p[Q_NORM], s->eps, row);
                rms_norm_rows(k, s->kv_heads, hd, (const float *)p[K_NORM], s->eps, k);
            }
            const float *cos = s->cos + (size_t)positions[r] * (hd / 2), *sin = s->sin + (size_t)positions[r] * (hd / 2);
            rotate_heads(row, s->heads, hd, cos, sin);
            rotate_heads(k, s->kv_heads, hd, cos, sin);
            memcpy(q + (size_t)r * q_size, row, sizeof(float) * q_size);
            store_kv(s, (void *)p[KV_CACHE], slots[r], k, v);
        }
        paged_decode_attention(q, (const void *)p[KV_CACHE], block_tables, seq_lens, attn, m, s->heads, s->kv_heads,
                               hd, s->block_size, s->num_blocks, max_blocks, s->scale, s->kv_is_bf16);
        status |= quantized_matmul(kind[KIND_O], attn, m, q_size, (const uint8_t *)p[O], hidden, NULL, delta);
        add_into(x, delta, (size_t)m * hidden);
        rms_norm_rows(x, m, hidden, (const float *)p[POST_NORM], s->eps, h);
        status |= quantized_matmul(kind[KIND_GATE_UP], h, m, hidden, (const uint8_t *)p[GATE_UP], 2 * inter, NULL, wide);
        silu_and_multiply(wide, m, inter, h);
        status |= quantized_matmul(kind[KIND_DOWN], h, m, inter, (const uint8_t *)p[DOWN], hidden, NULL, delta);
        add_into(x, delta, (size_t)m * hidden);
    }
    free(h);
    free(wide);
    free(q);
    free(attn);
    free(delta);
    return status ? -1 : 0;
}
