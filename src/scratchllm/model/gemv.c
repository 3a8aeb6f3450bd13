/* scratchllm's matrix-vector product: y = W x + b for one input row, W (out, in) row-major fp32.
 *
 * Why it exists: a batch-1 decode step reads every weight once and does two FLOPs per weight, so
 * its speed is the speed at which memory delivers W. Memory delivers it fastest as a few long
 * sequential streams per core, which the CPU's prefetchers follow far ahead. So each thread's
 * rows are cut into STREAMS equal parts, and row j of every part is read at the same time, each
 * into its own vector accumulator: rows follow each other in memory, so every part is one long
 * stream. (4 streams per thread read a little faster than 2, 3, 6 or 8 and than 16 neighbouring
 * rows side by side, each a short stream: see benchmarks/RESULTS.md, "gemv.c's design".)
 * Threads (OpenMP) take equal halves (thirds, ...) of the rows.
 *
 * Portable C: `vec` is a GCC/Clang vector type of 16 floats that the compiler maps to the
 * machine's registers (one AVX-512 register, two AVX2 ones, four NEON ones). Built by
 * scratchllm.model.gemv with `cc -O3 -march=native -fopenmp -shared -fPIC`. OpenMP here is the
 * runtime torch already loaded (same soname), so it shares torch's threads instead of competing.
 *
 * bf16 weights (scratchllm_gemv_bf16) are widened to fp32 as they are read (half the bytes to
 * read); inputs, sums and outputs are fp32.
 *
 * Sums run lane by lane and the lanes are then folded together: the result equals F.linear's up to
 * float rounding (another order of the same sums).
 */
#include <stddef.h>
#include <string.h>

#define LANES 16 /* floats per vector */
#define STREAMS 4 /* parts of a thread's rows read at once (see above) */

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static inline vec load(const float *p) { /* unaligned load */
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

typedef float half_vec __attribute__((vector_size(LANES / 2 * sizeof(float))));
typedef float quarter_vec __attribute__((vector_size(LANES / 4 * sizeof(float))));

/* the sum of v's lanes, folded in halves (16 -> 8 -> 4 lanes, then pairs): four vector or scalar adds
 * in a row, not sixteen (a lane-by-lane sum sits between the rows' reads and measured slower) */
static inline float lane_sum(vec v) {
    half_vec a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char *)&v + sizeof a, sizeof b);
    a += b;
    quarter_vec c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (const char *)&a + sizeof c, sizeof d);
    c += d;
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* W[r, from:in] . x[from:in]: the columns left over after the whole vectors, one by one */
static inline float dot_tail(const float *wr, const float *x, long from, long in) {
    float s = 0.0f;
    for (long i = from; i < in; i++) s += wr[i] * x[i];
    return s;
}

static inline float with_bias(float v, const float *b, long r) { return b ? v + b[r] : v; }

/* y[r] = W[r, :] . x (+ b[r]) for rows r0 <= r < r1, fp32 weights, as STREAMS streams (see above) */
static void rows_dot(const float *w, const float *x, const float *b, float *y, long in, long r0, long r1) {
    long per = (r1 - r0) / STREAMS;  /* rows per stream; the last few rows are done one by one */
    long full = in / LANES * LANES; /* columns done by vectors */
    for (long j = 0; j < per; j++) {
        const float *wr[STREAMS];
        vec acc[STREAMS];
        for (int s = 0; s < STREAMS; s++) {
            wr[s] = w + (r0 + s * per + j) * in; /* row j of part s */
            acc[s] = (vec){0};
        }
        for (long i = 0; i < full; i += LANES) {
            vec xv = load(x + i);
            for (int s = 0; s < STREAMS; s++) acc[s] += load(wr[s] + i) * xv;
        }
        for (int s = 0; s < STREAMS; s++) {
            long r = r0 + s * per + j;
            y[r] = with_bias(lane_sum(acc[s]) + dot_tail(wr[s], x, full, in), b, r);
        }
    }
    for (long r = r0 + STREAMS * per; r < r1; r++) {
        const float *wr = w + r * in;
        vec acc = {0};
        for (long i = 0; i < full; i += LANES) acc += load(wr + i) * load(x + i);
        y[r] = with_bias(lane_sum(acc) + dot_tail(wr, x, full, in), b, r);
    }
}

/* bf16 weights. A bf16 number is the top 16 bits of an fp32 one. Read as 32-bit words, LANES
 * words hold 2 * LANES weights: the even-indexed ones in their low halves (shift left 16 to get
 * the float) and the odd-indexed ones in their high halves (clear the low 16 bits). So the inputs
 * are split once into even- and odd-indexed halves (xe, xo), and a step needs two integer ops and
 * two multiply-adds per 32 weights, with no shuffles. */
typedef unsigned int word_vec __attribute__((vector_size(LANES * sizeof(unsigned int))));

static inline void load_bf16(const unsigned short *p, vec *even, vec *odd) {
    word_vec w;
    memcpy(&w, p, sizeof w);
    word_vec lo = w << 16, hi = w & 0xFFFF0000u;
    memcpy(even, &lo, sizeof *even);
    memcpy(odd, &hi, sizeof *odd);
}

static inline float bf16_to_float(unsigned short h) {
    unsigned int w = (unsigned int)h << 16;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static float dot_tail_bf16(const unsigned short *wr, const float *x, long from, long in) {
    float s = 0.0f;
    for (long i = from; i < in; i++) s += bf16_to_float(wr[i]) * x[i];
    return s;
}

/* rows r0 <= r < r1 with bf16 weights, as rows_dot: STREAMS long streams; each step is two multiply-adds
 * (not a product sum, then an add) */
static void rows_dot_bf16(const unsigned short *w, const float *x, const float *xe, const float *xo, const float *b,
                          float *y, long in, long r0, long r1) {
    long per = (r1 - r0) / STREAMS, full = in / (2 * LANES) * (2 * LANES);
    vec e, d;
    for (long j = 0; j < per; j++) {
        const unsigned short *wr[STREAMS];
        vec acc[STREAMS];
        for (int s = 0; s < STREAMS; s++) {
            wr[s] = w + (r0 + s * per + j) * in;
            acc[s] = (vec){0};
        }
        for (long i = 0; i < full; i += 2 * LANES) {
            vec xev = load(xe + i / 2), xov = load(xo + i / 2);
            for (int s = 0; s < STREAMS; s++) {
                load_bf16(wr[s] + i, &e, &d);
                acc[s] += e * xev;
                acc[s] += d * xov;
            }
        }
        for (int s = 0; s < STREAMS; s++) {
            long r = r0 + s * per + j;
            y[r] = with_bias(lane_sum(acc[s]) + dot_tail_bf16(wr[s], x, full, in), b, r);
        }
    }
    for (long r = r0 + STREAMS * per; r < r1; r++) {
        const unsigned short *wr = w + r * in;
        vec acc = {0};
        for (long i = 0; i < full; i += 2 * LANES) {
            load_bf16(wr + i, &e, &d);
            acc += e * load(xe + i / 2);
            acc += d * load(xo + i / 2);
        }
        y[r] = with_bias(lane_sum(acc) + dot_tail_bf16(wr, x, full, in), b, r);
    }
}

int omp_get_num_threads(void);
int omp_get_thread_num(void);

/* this thread's share of `out` rows: an equal run of them, in order */
#define SHARE(out)                                                           \
    long n = omp_get_num_threads(), t = omp_get_thread_num();                \
    long chunk = (out + n - 1) / n;                                          \
    long r0 = t * chunk, r1 = r0 + chunk > out ? out : r0 + chunk;

/* y (out) = W (out, in) @ x (in) + b (out, or NULL), on `threads` threads; fp32 weights */
void scratchllm_gemv(const float *w, const float *x, const float *b, float *y, long out, long in, int threads) {
#pragma omp parallel num_threads(threads)
    {
        SHARE(out)
        if (r0 < r1) rows_dot(w, x, b, y, in, r0, r1);
    }
}

/* the same with bf16 weights (raw 16-bit words); x, b and y stay fp32. `scratch` holds `in` floats. */
void scratchllm_gemv_bf16(const unsigned short *w, const float *x, const float *b, float *y, long out, long in,
                          int threads, float *scratch) {
    long half = in / 2;
    float *xe = scratch, *xo = scratch + half;
    for (long j = 0; j < half; j++) {
        xe[j] = x[2 * j];
        xo[j] = x[2 * j + 1];
    }
#pragma omp parallel num_threads(threads)
    {
        SHARE(out)
        if (r0 < r1) rows_dot_bf16(w, x, xe, xo, b, y, in, r0, r1);
    }
}

/* ---- quantized weights (model.quant_linear): integers read as they are stored, scales applied in registers ----
 *
 * int8, one scale per row (per output channel): y[r] = scale[r] * (q[r, :] . x) + b[r]. Each step widens
 * LANES int8 weights to floats (a quarter of fp32's bytes to read) and multiply-adds them, in STREAMS
 * streams per thread as rows_dot does; the row's scale multiplies the folded sum once.
 *
 * int4, one scale (and for asymmetric weights one zero point) per group of `group` weights of a row,
 * two weights per byte: byte j of a row holds weight 2j in its low 4 bits and weight 2j + 1 in its
 * high 4 bits, each an unsigned u in 0..15 standing for (u - z) * scale (z = 8 for symmetric weights).
 * LANES bytes hold 2 * LANES weights: the low halves are the even-indexed ones, the high halves the
 * odd-indexed ones, so the inputs are split once into even and odd halves (xe, xo), as for bf16.
 * Per group: d = sum u * x (vector, in registers), then acc += scale * d (one multiply-add per group),
 * and the zero point is taken out with the group's input sum xs: sum (u - z) s x = s (d - z xs). The
 * vector path needs group % (2 * LANES) == 0 (model.quant_linear uses the kernel only then). */
/* Widening LANES bytes to LANES floats: GCC 12 turns __builtin_convertvector from bytes to floats into
 * scalar code, so on x86 the widening is spelled with the instructions it should have used (AVX-512:
 * one register; AVX2: two halves); elsewhere the portable conversion. */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static inline vec bytes_to_vec(const unsigned char *p, int is_signed, unsigned char mask, int shift) {
    vec out;
#if defined(__AVX512F__)
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m512i w = is_signed ? _mm512_cvtepi8_epi32(b) /* signed bytes are never masked or shifted */
                          : _mm512_and_si512(_mm512_srli_epi32(_mm512_cvtepu8_epi32(b), shift), _mm512_set1_epi32(mask));
    __m512 f = _mm512_cvtepi32_ps(w);
    memcpy(&out, &f, sizeof out);
#elif defined(__AVX2__)
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m128i b2 = _mm_srli_si128(b, 8);
    __m256i lo = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
    __m256i hi = is_signed ? _mm256_cvtepi8_epi32(b2) : _mm256_cvtepu8_epi32(b2);
    if (!is_signed) {
        lo = _mm256_and_si256(_mm256_srli_epi32(lo, shift), _mm256_set1_epi32(mask));
        hi = _mm256_and_si256(_mm256_srli_epi32(hi, shift), _mm256_set1_epi32(mask));
    }
    __m256 f[2] = {_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi)};
    memcpy(&out, f, sizeof out);
#else
    for (int k = 0; k < LANES; k++)
        out[k] = is_signed ? (float)(signed char)p[k] : (float)((p[k] >> shift) & mask);
#endif
    return out;
}

static inline vec load_i8(const signed char *p) { return bytes_to_vec((const unsigned char *)p, 1, 0xFF, 0); }

static float dot_tail_i8(const signed char *wr, const float *x, long from, long in) {
    float s = 0.0f;
    for (long i = from; i < in; i++) s += (float)wr[i] * x[i];
    return s;
}

/* rows r0 <= r < r1 of int8 weights, STREAMS streams as rows_dot */
static void rows_dot_q8(const signed char *w, const float *scales, const float *x, const float *b, float *y,
                        long in, long r0, long r1) {
    long per = (r1 - r0) / STREAMS, full = in / LANES * LANES;
    for (long j = 0; j < per; j++) {
        const signed char *wr[STREAMS];
        vec acc[STREAMS];
        for (int s = 0; s < STREAMS; s++) {
            wr[s] = w + (r0 + s * per + j) * in;
            acc[s] = (vec){0};
        }
        for (long i = 0; i < full; i += LANES) {
            vec xv = load(x + i);
            for (int s = 0; s < STREAMS; s++) acc[s] += load_i8(wr[s] + i) * xv;
        }
        for (int s = 0; s < STREAMS; s++) {
            long r = r0 + s * per + j;
            y[r] = with_bias(scales[r] * (lane_sum(acc[s]) + dot_tail_i8(wr[s], x, full, in)), b, r);
        }
    }
    for (long r = r0 + STREAMS * per; r < r1; r++) {
        const signed char *wr = w + r * in;
        vec acc = {0};
        for (long i = 0; i < full; i += LANES) acc += load_i8(wr + i) * load(x + i);
        y[r] = with_bias(scales[r] * (lane_sum(acc) + dot_tail_i8(wr, x, full, in)), b, r);
    }
}

/* y (out) = (q (out, in) int8 * scales (out)) @ x (in) + b (out, or NULL), on `threads` threads */
void scratchllm_gemv_q8(const signed char *w, const float *scales, const float *x, const float *b, float *y,
                        long out, long in, int threads) {
#pragma omp parallel num_threads(threads)
    {
        SHARE(out)
        if (r0 < r1) rows_dot_q8(w, scales, x, b, y, in, r0, r1);
    }
}

/* the 2 * LANES weights in LANES bytes, as floats: even-indexed (low nibbles) and odd-indexed (high nibbles) */
static inline void load_q4(const unsigned char *p, vec *even, vec *odd) {
    *even = bytes_to_vec(p, 0, 15, 0);
    *odd = bytes_to_vec(p, 0, 15, 4);
}

/* the zero points' part of a row: sum over groups of scale * z * xs (z = 8 for symmetric weights) */
static inline float zero_shift(const float *sr, const unsigned char *zr, const float *xs, long groups) {
    float t = 0.0f;
    if (zr)
        for (long g = 0; g < groups; g++) t += sr[g] * (float)zr[g] * xs[g];
    else {
        for (long g = 0; g < groups; g++) t += sr[g] * xs[g];
        t *= 8.0f;
    }
    return t;
}

/* rows[0..NR) of int4 weights at once (NR = STREAMS, or 1 for the leftover rows), each one stream, STEPS
 * vector steps a group;
 * per group: d = u . x in a vector, then acc += scale * d */
#define Q4_ROWS(NR, NAME, STEPS)                                                                               \
    static void NAME(const unsigned char *w, const float *scales, const unsigned char *zeros,           \
                             const float *xe, const float *xo, const float *xs, const float *b, float *y,         \
                             long in, long group, const long *rows) {                                            \
        long groups = in / group, steps = (STEPS), half = group / 2;                                             \
        const unsigned char *p[NR];                                                                              \
        const float *sc[NR];                                                                                     \
        vec acc[NR], e, o;                                                                                       \
        for (int s = 0; s < NR; s++) {                                                                           \
            p[s] = w + rows[s] * (in / 2);                                                                       \
            sc[s] = scales + rows[s] * groups;                                                                   \
            acc[s] = (vec){0};                                                                                   \
        }                                                                                                        \
        for (long g = 0; g < groups; g++) {                                                                      \
            const float *pe = xe + g * half, *po = xo + g * half;                                                \
            _Pragma("GCC unroll 4") /* every stream's accumulator in a register */                                \
            for (int s = 0; s < NR; s++) {                                                                       \
                vec d = {0};                                                                                     \
                for (long k = 0; k < steps; k++) {                                                               \
                    load_q4(p[s] + g * half + k * LANES, &e, &o);                                                \
                    d += e * load(pe + k * LANES);                                                               \
                    d += o * load(po + k * LANES);                                                               \
                }                                                                                                \
                acc[s] += sc[s][g] * d;                                                                          \
            }                                                                                                    \
        }                                                                                                        \
        for (int s = 0; s < NR; s++) {                                                                           \
            long r = rows[s];                                                                                    \
            float shift = zero_shift(sc[s], zeros ? zeros + r * groups : 0, xs, groups);                         \
            y[r] = with_bias(lane_sum(acc[s]) - shift, b, r);                                                    \
        }                                                                                                        \
    }
Q4_ROWS(4, rows_q4_4, group / (2 * LANES))
Q4_ROWS(1, rows_q4_1, group / (2 * LANES))
Q4_ROWS(4, rows_q4_4_g32, 1) /* group 32: one step a group, no inner loop */

/* rows r0 <= r < r1 of int4 weights: STREAMS rows in flight (parts of the range, as rows_dot), then the rest */
static void rows_dot_q4(const unsigned char *w, const float *scales, const unsigned char *zeros, const float *xe,
                        const float *xo, const float *xs, const float *b, float *y, long in, long group, long r0,
                        long r1) {
    long per = (r1 - r0) / STREAMS;
    for (long j = 0; j < per; j++) {
        long rows[STREAMS];
        for (int s = 0; s < STREAMS; s++) rows[s] = r0 + s * per + j;
        if (group == 2 * LANES)
            rows_q4_4_g32(w, scales, zeros, xe, xo, xs, b, y, in, group, rows);
        else
            rows_q4_4(w, scales, zeros, xe, xo, xs, b, y, in, group, rows);
    }
    for (long r = r0 + STREAMS * per; r < r1; r++) rows_q4_1(w, scales, zeros, xe, xo, xs, b, y, in, group, &r);
}

/* y (out) = W @ x + b with W int4 (packed (out, in / 2) bytes, scales (out, in / group), zero points
 * (out, in / group) bytes or NULL for symmetric weights); `scratch` holds in + in / group floats. */
void scratchllm_gemv_q4(const unsigned char *w, const float *scales, const unsigned char *zeros, const float *x,
                        const float *b, float *y, long out, long in, long group, int threads, float *scratch) {
    long half = in / 2, groups = in / group;
    float *xe = scratch, *xo = scratch + half, *xs = scratch + in;
    for (long j = 0; j < half; j++) {
        xe[j] = x[2 * j];
        xo[j] = x[2 * j + 1];
    }
    for (long g = 0; g < groups; g++) {
        float s = 0.0f;
        for (long i = g * group; i < (g + 1) * group; i++) s += x[i];
        xs[g] = s;
    }
#pragma omp parallel num_threads(threads)
    {
        SHARE(out)
        if (r0 < r1) rows_dot_q4(w, scales, zeros, xe, xo, xs, b, y, in, group, r0, r1);
    }
}
