/* y[m][n] = sum_k x[m][k] * w[n][k] for a few rows m, with w stored in bf16 and widened to fp32 on the
 * fly. Decoding a few sequences is bound by the bytes of weights read per token; bf16 halves them. */
#include <immintrin.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_ROWS 8

static inline __m256 load_bf16x8(const uint16_t *p) {
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_hadd_ps(lo, lo);
    lo = _mm_hadd_ps(lo, lo);
    return _mm_cvtss_f32(lo);
}

/* rows <= MAX_ROWS, k a multiple of 8 */
void bf16_gemv(const float *x, const uint16_t *w, float *y, int rows, int k, int n) {
#pragma omp parallel for schedule(static)
    for (int j = 0; j < n; j++) {
        const uint16_t *wj = w + (int64_t)j * k;
        __m256 acc[MAX_ROWS];
        for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_ps();
        for (int i = 0; i < k; i += 8) {
            __m256 wv = load_bf16x8(wj + i);
            for (int r = 0; r < rows; r++)
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (int64_t)r * k + i), wv, acc[r]);
        }
        for (int r = 0; r < rows; r++) y[(int64_t)r * n + j] = hsum(acc[r]);
    }
}
