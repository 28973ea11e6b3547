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
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define USE_AVX2 1
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
        int i = 0;
#ifdef USE_AVX2
        for (; i + 8 <= d; i += 8) {
            __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
        }
#endif
        for (; i < d; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        memcpy(dst, (const float *)base + offset, sizeof(float) * d);
    }
}

static inline float dot(const float *a, const float *b, int d) {
    int i = 0;
    float s = 0.f;
#ifdef USE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    s = _mm_cvtss_f32(half);
#endif
    for (; i < d; i++) s += a[i] * b[i];
    return s;
}

#ifdef USE_AVX2
/* exp for x <= 0 (softmax after subtracting the max): Cephes' range reduction and polynomial, ~1 ulp. */
static inline __m256 exp_ps(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
}
#endif

/* scores <- softmax(scores), in place. */
static inline void softmax(float *scores, int64_t len) {
    float m = -INFINITY, sum = 0.f;
    for (int64_t t = 0; t < len; t++) m = scores[t] > m ? scores[t] : m;
    int64_t t = 0;
#ifdef USE_AVX2
    __m256 vm = _mm256_set1_ps(m), vsum = _mm256_setzero_ps();
    for (; t + 8 <= len; t += 8) {
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(scores + t), vm));
        _mm256_storeu_ps(scores + t, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vsum);
    for (int i = 0; i < 8; i++) sum += lanes[i];
#endif
    for (; t < len; t++) { scores[t] = expf(scores[t] - m); sum += scores[t]; }
    const float inv = 1.f / sum;
    for (t = 0; t < len; t++) scores[t] *= inv;
}

static inline void axpy(float *y, float a, const float *x, int d) {
    int i = 0;
#ifdef USE_AVX2
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= d; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < d; i++) y[i] += a * x[i];
}

#ifndef KERNELS_SHARE_SET_THREADS /* decode_layers_cpu.c includes this file after quantized_matmul_cpu.c */
void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}
#endif

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
                    for (int g = 0; g < group; g++)
                        scores[(int64_t)g * max_len + t] = dot(qh + (int64_t)g * head_dim, row, head_dim) * scale;
                }
                for (int g = 0; g < group; g++) softmax(scores + (int64_t)g * max_len, len);
                memset(acc, 0, sizeof(float) * group * head_dim);
                for (int64_t t = 0; t < len; t++) {
                    int64_t offset = half + (((int64_t)h * num_blocks + table[t / block_size]) * block_size
                                             + t % block_size) * head_dim;
                    load_row(kv, offset, is_bf16, head_dim, row);
                    for (int g = 0; g < group; g++)
                        axpy(acc + (int64_t)g * head_dim, scores[(int64_t)g * max_len + t], row, head_dim);
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
