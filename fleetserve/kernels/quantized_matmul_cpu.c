/* Matrix products straight from GGUF weight blocks (Q4_0, Q4_1, Q8_0) on the CPU.
 *
 * A weight matrix is N rows of K inputs, each row K/32 blocks laid out as in ggml. Dequantizing a block
 * rounds exactly as the gguf package does (fp16 scale to fp32, then d*q, then + m, each op rounded), so
 * the values dequantized are bit-identical to the dequantized checkpoint other engines load.
 *
 * Small batches (decode steps) are bound by reading weights, so quantized_matmul reads each block once
 * per call, at 4.5-8.5 bits per weight instead of 32. Up to 8 input rows it takes each block's quantized
 * values into registers and multiplies the block's sum of x * q by its scale (plus, for Q4_1, its offset
 * times the sum of x): the same values, in another rounding order. Beyond, it dequantizes 6 weight rows at
 * a time into an L1 buffer and runs a register tile over the inputs packed k-major. Large batches (the
 * caller decides) dequantize the whole matrix with dequantize_rows and hand it to the BLAS matmul. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define USE_AVX2 1
#endif

enum { TYPE_Q4_0 = 2, TYPE_Q4_1 = 3, TYPE_Q8_0 = 8 }; /* ggml's type ids */
#define QK 32

static inline int block_bytes(int type) {
    switch (type) {
    case TYPE_Q4_0: return 18;
    case TYPE_Q4_1: return 20;
    case TYPE_Q8_0: return 34;
    default: return 0;
    }
}

static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef USE_AVX2
    return _cvtsh_ss(h);
#endif
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            exponent = 127 - 15 + 1;
            while (!(mantissa & 0x400)) { mantissa <<= 1; exponent--; }
            bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000 | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#define INLINE static inline __attribute__((always_inline))

#ifdef USE_AVX2
/* The block's 32 quantized values as floats (exact), in four registers. */
INLINE void block_quants(const int type, const uint8_t *block, __m256 q[4]) {
    if (type == TYPE_Q8_0) {
        for (int i = 0; i < 4; i++)
            q[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(block + 2 + 8 * i))));
        return;
    }
    /* Widening bytes to 32-bit lanes first leaves the high nibble alone above bit 3: one shift, no mask. */
    const uint8_t *qs = block + (type == TYPE_Q4_1 ? 4 : 2);
    const __m256i first = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i second = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    const __m256i mask = _mm256_set1_epi32(0x0f);
    __m256i v[4] = {_mm256_and_si256(first, mask), _mm256_and_si256(second, mask), _mm256_srli_epi32(first, 4),
                    _mm256_srli_epi32(second, 4)};
    for (int i = 0; i < 4; i++) {
        if (type == TYPE_Q4_0) v[i] = _mm256_sub_epi32(v[i], _mm256_set1_epi32(8));
        q[i] = _mm256_cvtepi32_ps(v[i]);
    }
}

/* d*q, then + m, each rounded, as the gguf package does. */
INLINE void dequantize_block(const int type, const uint8_t *block, float *out) {
    const __m256 vd = _mm256_set1_ps(half_to_float(block));
    __m256 w[4];
    block_quants(type, block, w);
    for (int i = 0; i < 4; i++) {
        w[i] = _mm256_mul_ps(w[i], vd);
        if (type == TYPE_Q4_1) w[i] = _mm256_add_ps(w[i], _mm256_set1_ps(half_to_float(block + 2)));
        _mm256_storeu_ps(out + 8 * i, w[i]);
    }
}
#else
INLINE void dequantize_block(const int type, const uint8_t *block, float *out) {
    const float d = half_to_float(block);
    if (type == TYPE_Q8_0) {
        for (int j = 0; j < QK; j++) out[j] = (float)(int8_t)block[2 + j] * d;
        return;
    }
    const uint8_t *qs = block + (type == TYPE_Q4_1 ? 4 : 2);
    const float m = type == TYPE_Q4_1 ? half_to_float(block + 2) : 0.0f;
    const int offset = type == TYPE_Q4_0 ? 8 : 0;
    for (int j = 0; j < QK / 2; j++) {
        float lo = (float)((qs[j] & 0x0f) - offset) * d, hi = (float)((qs[j] >> 4) - offset) * d;
        out[j] = type == TYPE_Q4_1 ? lo + m : lo;
        out[j + QK / 2] = type == TYPE_Q4_1 ? hi + m : hi;
    }
}
#endif

INLINE void dequantize_row(const int type, const uint8_t *row, int k, float *out) {
    const int bytes = block_bytes(type);
    for (int b = 0; b < k / QK; b++) dequantize_block(type, row + (size_t)b * bytes, out + b * QK);
}

/* One switch per row, so each case inlines a body specialized to its type (a type passed into an OpenMP
 * region is a runtime value there, and would leave a branch in every block). */
static void dequantize_row_any(int type, const uint8_t *row, int k, float *out) {
    switch (type) {
    case TYPE_Q4_0: dequantize_row(TYPE_Q4_0, row, k, out); break;
    case TYPE_Q4_1: dequantize_row(TYPE_Q4_1, row, k, out); break;
    default: dequantize_row(TYPE_Q8_0, row, k, out); break;
    }
}

INLINE void dequantize_rows_of(const int type, const uint8_t *weight, int k, const int64_t *rows, int count,
                               float *out) {
    const size_t row_bytes = (size_t)(k / QK) * block_bytes(type);
#pragma omp parallel for schedule(static) if (count > 64)
    for (int i = 0; i < count; i++) {
        const int64_t row = rows ? rows[i] : i;
        dequantize_row_any(type, weight + (size_t)row * row_bytes, k, out + (size_t)i * k);
    }
}

/* out[i, :] = dequantized row rows[i] (or row i when rows is NULL) of the [n, k] matrix. */
int dequantize_rows(int type, const uint8_t *weight, int k, const int64_t *rows, int count, float *out) {
    if (k % QK) return -1;
    switch (type) {
    case TYPE_Q4_0: dequantize_rows_of(TYPE_Q4_0, weight, k, rows, count, out); return 0;
    case TYPE_Q4_1: dequantize_rows_of(TYPE_Q4_1, weight, k, rows, count, out); return 0;
    case TYPE_Q8_0: dequantize_rows_of(TYPE_Q8_0, weight, k, rows, count, out); return 0;
    default: return -1;
    }
}

static inline float sum8(const float *v) {
    float s = 0;
    for (int i = 0; i < 8; i++) s += v[i];
    return s;
}

#ifdef USE_AVX2
static inline float hsum(__m256 v) {
    float buf[8];
    _mm256_storeu_ps(buf, v);
    return sum8(buf);
}

/* Up to FUSED_ROWS input rows: each block is read once and used at once, no buffer. The block's scale
 * multiplies the sum of x * q over the block (and a Q4_1 block adds its offset times the sum of x), so a
 * block costs one chained add per row. x_sums holds each row's per-block sums of x (Q4_1 only). */
#define FUSED_ROWS 8
INLINE __m256 block_dot(const __m256 q[4], const float *xb) {
    __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(xb), q[0]);
    __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(xb + 8), q[1]);
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 16), q[2], s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 24), q[3], s1);
    return _mm256_add_ps(s0, s1);
}

/* One accumulator per row, the same arithmetic for a row whatever the other rows are: a sequence's logits
 * do not depend on how many rows its step has (so speculative verification gives the tokens one-row steps
 * give). The fp16 scales of eight blocks convert in one instruction; a Q4_1 block's offset times its sum of
 * x accumulates eight blocks at a time the same way. */
INLINE void column_fused(const int type, const int rows, const uint8_t *row, int k, const float *x,
                         const float *x_sums, float *y, int n_stride) {
    __m256 sums[FUSED_ROWS], offsets[FUSED_ROWS];
    for (int r = 0; r < rows; r++) sums[r] = offsets[r] = _mm256_setzero_ps();
    const int bytes = block_bytes(type), blocks = k / QK;
    int b = 0;
    for (; b + 8 <= blocks; b += 8) {
        uint16_t scale_bits[8], offset_bits[8];
        for (int j = 0; j < 8; j++) {
            memcpy(scale_bits + j, row + (size_t)(b + j) * bytes, 2);
            if (type == TYPE_Q4_1) memcpy(offset_bits + j, row + (size_t)(b + j) * bytes + 2, 2);
        }
        float scales[8];
        _mm256_storeu_ps(scales, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)scale_bits)));
        for (int j = 0; j < 8; j++) {
            __m256 q[4];
            block_quants(type, row + (size_t)(b + j) * bytes, q);
            const __m256 d = _mm256_broadcast_ss(scales + j);
            for (int r = 0; r < rows; r++)
                sums[r] = _mm256_fmadd_ps(d, block_dot(q, x + (size_t)r * k + (size_t)(b + j) * QK), sums[r]);
        }
        if (type == TYPE_Q4_1) {
            const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)offset_bits));
            for (int r = 0; r < rows; r++)
                offsets[r] = _mm256_fmadd_ps(m, _mm256_loadu_ps(x_sums + (size_t)r * blocks + b), offsets[r]);
        }
    }
    float tail[FUSED_ROWS] = {0};
    for (; b < blocks; b++) {
        const uint8_t *block = row + (size_t)b * bytes;
        __m256 q[4];
        block_quants(type, block, q);
        const __m256 d = _mm256_set1_ps(half_to_float(block));
        for (int r = 0; r < rows; r++) {
            sums[r] = _mm256_fmadd_ps(d, block_dot(q, x + (size_t)r * k + (size_t)b * QK), sums[r]);
            if (type == TYPE_Q4_1) tail[r] += half_to_float(block + 2) * x_sums[(size_t)r * blocks + b];
        }
    }
    for (int r = 0; r < rows; r++) y[(size_t)r * n_stride] = hsum(_mm256_add_ps(sums[r], offsets[r])) + tail[r];
}

#define FUSED_CASE(T)                                                                                      \
    case T:                                                                                                \
        switch (rows) {                                                                                    \
        case 1: column_fused(T, 1, row, k, x, x_sums, y, n_stride); return;                                \
        case 2: column_fused(T, 2, row, k, x, x_sums, y, n_stride); return;                                \
        case 3: column_fused(T, 3, row, k, x, x_sums, y, n_stride); return;                                \
        case 4: column_fused(T, 4, row, k, x, x_sums, y, n_stride); return;                                \
        case 5: column_fused(T, 5, row, k, x, x_sums, y, n_stride); return;                                \
        case 6: column_fused(T, 6, row, k, x, x_sums, y, n_stride); return;                                \
        case 7: column_fused(T, 7, row, k, x, x_sums, y, n_stride); return;                                \
        default: column_fused(T, 8, row, k, x, x_sums, y, n_stride); return;                               \
        }
static void column_fused_any(int type, int rows, const uint8_t *row, int k, const float *x, const float *x_sums,
                             float *y, int n_stride) {
    switch (type) {
        FUSED_CASE(TYPE_Q4_0)
        FUSED_CASE(TYPE_Q4_1)
        FUSED_CASE(TYPE_Q8_0)
    }
}

/* Register tile of WEIGHT_ROWS output columns x 8 * LANES input rows. The inputs are packed k-major
 * (xt[j * stride + r] = x[r, j]) so each step loads LANES vectors of inputs, broadcasts one dequantized
 * weight per output column, and needs no horizontal sums; weight rows are dequantized once per call. */
#define WEIGHT_ROWS 6
INLINE void tile_columns(const int lanes, const float *xt, int stride, int k, const float *w, int columns,
                         float *y, int n_stride, int rows) {
    __m256 acc[WEIGHT_ROWS][2];
    for (int c = 0; c < WEIGHT_ROWS; c++) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    for (int j = 0; j < k; j++) {
        const __m256 x0 = _mm256_loadu_ps(xt + (size_t)j * stride);
        const __m256 x1 = lanes == 2 ? _mm256_loadu_ps(xt + (size_t)j * stride + 8) : x0;
        for (int c = 0; c < WEIGHT_ROWS; c++) {
            const __m256 wv = _mm256_broadcast_ss(w + (size_t)c * k + j);
            acc[c][0] = _mm256_fmadd_ps(x0, wv, acc[c][0]);
            if (lanes == 2) acc[c][1] = _mm256_fmadd_ps(x1, wv, acc[c][1]);
        }
    }
    /* Constant indices only: a runtime index into acc would keep it in memory inside the loop. */
    float buf[WEIGHT_ROWS][16];
    for (int c = 0; c < WEIGHT_ROWS; c++) {
        _mm256_storeu_ps(buf[c], acc[c][0]);
        _mm256_storeu_ps(buf[c] + 8, acc[c][1]);
    }
    for (int c = 0; c < columns; c++)
        for (int r = 0; r < rows; r++) y[(size_t)r * n_stride + c] = buf[c][r];
}
#else
#define FUSED_ROWS 0
static void column_fused_any(int type, int rows, const uint8_t *row, int k, const float *x, const float *x_sums,
                             float *y, int n_stride) {
    (void)type; (void)rows; (void)row; (void)k; (void)x; (void)x_sums; (void)y; (void)n_stride;
}

#endif

INLINE void matmul_of(const int type, const float *x, int m, int k, const uint8_t *weight, int n, float *y) {
    const size_t row_bytes = (size_t)(k / QK) * block_bytes(type);
    if (m <= FUSED_ROWS) {
        const int blocks = k / QK;
        float *x_sums = malloc(sizeof(float) * (size_t)(m * blocks + 1));
        for (int i = 0; i < m * blocks; i++) x_sums[i] = sum8(x + (size_t)i * QK) + sum8(x + (size_t)i * QK + 8)
                                                         + sum8(x + (size_t)i * QK + 16) + sum8(x + (size_t)i * QK + 24);
#pragma omp parallel for schedule(static)
        for (int col = 0; col < n; col++) {
            const uint8_t *row = weight + (size_t)col * row_bytes;
            column_fused_any(type, m, row, k, x, x_sums, y + col, n);
        }
        free(x_sums);
        return;
    }
#ifdef USE_AVX2
    const int stride = (m + 7) & ~7;
    float *xt = aligned_alloc(64, sizeof(float) * (size_t)stride * k);
    for (int j = 0; j < k; j++)
        for (int r = 0; r < stride; r++) xt[(size_t)j * stride + r] = r < m ? x[(size_t)r * k + j] : 0.0f;
#pragma omp parallel
    {
        float *w = aligned_alloc(64, sizeof(float) * WEIGHT_ROWS * k);
#pragma omp for schedule(static)
        for (int col = 0; col < n; col += WEIGHT_ROWS) {
            const int columns = n - col < WEIGHT_ROWS ? n - col : WEIGHT_ROWS;
            for (int c = 0; c < WEIGHT_ROWS; c++) {
                if (c < columns) dequantize_row_any(type, weight + (size_t)(col + c) * row_bytes, k, w + (size_t)c * k);
                else memset(w + (size_t)c * k, 0, sizeof(float) * k);
            }
            for (int r = 0; r < m; r += 16) {
                const int rows = m - r < 16 ? m - r : 16;
                if (rows > 8) tile_columns(2, xt + r, stride, k, w, columns, y + (size_t)r * n + col, n, rows);
                else tile_columns(1, xt + r, stride, k, w, columns, y + (size_t)r * n + col, n, rows);
            }
        }
        free(w);
    }
    free(xt);
#else
    float *w = malloc(sizeof(float) * k);
    for (int col = 0; col < n; col++) {
        dequantize_row_any(type, weight + (size_t)col * row_bytes, k, w);
        for (int r = 0; r < m; r++) {
            float sum = 0;
            for (int j = 0; j < k; j++) sum += x[(size_t)r * k + j] * w[j];
            y[(size_t)r * n + col] = sum;
        }
    }
    free(w);
#endif
}

/* y[m, n] = sum_j x[m, j] * W[n, j] (+ bias[n]); x is [m, k] fp32, W is [n, k] in blocks, y is [m, n]. */
int quantized_matmul(int type, const float *x, int m, int k, const uint8_t *weight, int n, const float *bias,
                     float *y) {
    if (k % QK) return -1;
    switch (type) {
    case TYPE_Q4_0: matmul_of(TYPE_Q4_0, x, m, k, weight, n, y); break;
    case TYPE_Q4_1: matmul_of(TYPE_Q4_1, x, m, k, weight, n, y); break;
    case TYPE_Q8_0: matmul_of(TYPE_Q8_0, x, m, k, weight, n, y); break;
    default: return -1;
    }
    if (bias)
        for (int i = 0; i < m; i++)
            for (int col = 0; col < n; col++) y[(size_t)i * n + col] += bias[col];
    return 0;
}

int fused_max_rows(void) { return FUSED_ROWS; }

void set_threads(int count) {
#ifdef _OPENMP
    omp_set_num_threads(count);
#else
    (void)count;
#endif
}
