/* Decode attention straight from the paged KV cache on the CPU: one query token per sequence, every
 * (sequence, kv head) pair in parallel, keys and values read in place from their blocks (no gather copy).
 * Cache layout per layer: [2][kv_heads][num_blocks][block_size][head_dim], fp32 or bf16. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = ((uint32_t)v) << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline void load_row(const void *base, int64_t offset, int is_bf16, int d, float *dst) {
    if (is_bf16) {
        const uint16_t *src = (const uint16_t *)base + offset;
        for (int i = 0; i < d; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        memcpy(dst, (const float *)base + offset, sizeof(float) * d);
    }
}

void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

void paged_decode_attention(const float *q, const void *kv, const int64_t *block_tables, const int64_t *seq_lens,
                            float *out, int batch, int heads, int kv_heads, int head_dim, int block_size,
                            int64_t num_blocks, int max_blocks, float scale, int is_bf16) {
    const int group = heads / kv_heads;
    const int64_t half = (int64_t)kv_heads * num_blocks * block_size * head_dim;
#pragma omp parallel
    {
        int max_len = max_blocks * block_size;
        float *scores = (float *)malloc(sizeof(float) * group * (max_len > 0 ? max_len : 1));
        float *row = (float *)malloc(sizeof(float) * head_dim);
        float *acc = (float *)malloc(sizeof(float) * group * head_dim);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < batch; b++) {
            for (int h = 0; h < kv_heads; h++) {
                const int64_t len = seq_lens[b];
                const int64_t *table = block_tables + (int64_t)b * max_blocks;
                const float *qh = q + ((int64_t)b * heads + (int64_t)h * group) * head_dim;
                for (int64_t t = 0; t < len; t++) {
                    int64_t offset = (((int64_t)h * num_blocks + table[t / block_size]) * block_size
                                      + t % block_size) * head_dim;
                    load_row(kv, offset, is_bf16, head_dim, row);
                    for (int g = 0; g < group; g++) {
                        const float *qg = qh + (int64_t)g * head_dim;
                        float s = 0.f;
#pragma omp simd reduction(+ : s)
                        for (int i = 0; i < head_dim; i++) s += qg[i] * row[i];
                        scores[(int64_t)g * max_len + t] = s * scale;
                    }
                }
                for (int g = 0; g < group; g++) {
                    float *sg = scores + (int64_t)g * max_len;
                    float m = -INFINITY, sum = 0.f;
                    for (int64_t t = 0; t < len; t++) m = sg[t] > m ? sg[t] : m;
                    for (int64_t t = 0; t < len; t++) { sg[t] = expf(sg[t] - m); sum += sg[t]; }
                    float inv = 1.f / sum;
                    for (int64_t t = 0; t < len; t++) sg[t] *= inv;
                }
                memset(acc, 0, sizeof(float) * group * head_dim);
                for (int64_t t = 0; t < len; t++) {
                    int64_t offset = half + (((int64_t)h * num_blocks + table[t / block_size]) * block_size
                                             + t % block_size) * head_dim;
                    load_row(kv, offset, is_bf16, head_dim, row);
                    for (int g = 0; g < group; g++) {
                        float p = scores[(int64_t)g * max_len + t];
                        float *ag = acc + (int64_t)g * head_dim;
#pragma omp simd
                        for (int i = 0; i < head_dim; i++) ag[i] += p * row[i];
                    }
                }
                float *oh = out + ((int64_t)b * heads + (int64_t)h * group) * head_dim;
                memcpy(oh, acc, sizeof(float) * group * head_dim);
            }
        }
        free(scores);
        free(row);
        free(acc);
    }
}
