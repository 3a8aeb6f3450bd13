/* scratchllm's matrix-vector product: y = W x + b for one input row, W (out, in) row-major fp32.
 *
 * Why it exists: a batch-1 decode step reads every weight once and does two FLOPs per weight, so
 * its speed is the speed at which memory delivers W. Memory delivers it fastest when many
 * streams are read at once: this kernel walks ROWS rows of W side by side, each into its own
 * vector accumulator, so the CPU's prefetchers run ROWS streams in parallel (ROWS 4, 8, 16 measured
 * 32, 38, 42 GB/s on our 2-core machine against a plain sum's 45; 24 and 32 run out of registers
 * and are slower; prefetching ahead within a row, with or without a non-temporal hint, measured
 * slower; prefetching the heads of the next rows helps, see HEAD_LINES).
 * The rows are split in ROWS-aligned halves (or thirds, ...) between OpenMP threads.
 *
 * Portable C: `vec` is a GCC/Clang vector type of 16 floats that the compiler maps to the
 * machine's registers (one AVX-512 register, two AVX2 ones, four NEON ones). Built by
 * scratchllm.model.gemv with `cc -O3 -march=native -fopenmp -shared -fPIC`. OpenMP here is the
 * runtime torch already loaded (same soname), so it shares torch's threads instead of competing.
 *
 * bf16 weights (scratchllm_gemv_bf16) are widened to fp32 as they are read (half the bytes to
 * read); inputs, sums and outputs are fp32.
 *
 * Sums run lane by lane and are then added across lanes: the result equals F.linear's up to float
 * rounding (another order of the same sums).
 */
#include <stddef.h>
#include <string.h>

#define LANES 16 /* floats per vector */
#define ROWS 16 /* rows of W read side by side */
/* The hardware prefetcher finds each new row's stream only after a few misses, and a GPT-2 row is
 * just 48 cache lines; so while a block of rows is read, the first HEAD_LINES lines of each row of
 * the next block are requested. Measured on GPT-2 124M decoding, interleaved runs: 2 -> ~1%,
 * 4 -> ~3% fewer ms per token, 6 and 8 no better than none. */
#define HEAD_LINES 4

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static inline vec load(const float *p) { /* unaligned load */
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float lane_sum(vec v) {
    float s = 0.0f;
    for (int k = 0; k < LANES; k++) s += v[k];
    return s;
}

/* y[r] = W[r, :] . x (+ b[r]) for rows r0 <= r < r1, fp32 weights */
static void rows_dot(const float *w, const float *x, const float *b, float *y, long in, long r0, long r1) {
    long full = in / LANES * LANES; /* columns done by vectors; the rest one by one */
    long o = r0;
    for (; o + ROWS <= r1; o += ROWS) {
        const float *wr = w + o * in;
        vec acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = (vec){0};
        if (o + 2 * ROWS <= r1) /* start the next block's 16 streams early (see HEAD_LINES) */
            for (int r = 0; r < ROWS; r++)
                for (int l = 0; l < HEAD_LINES; l++) __builtin_prefetch(wr + (ROWS + r) * in + l * LANES, 0, 3);
        for (long i = 0; i < full; i += LANES) {
            vec xv = load(x + i);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) acc[r] += load(wr + r * in + i) * xv;
        }
        for (int r = 0; r < ROWS; r++) {
            float s = lane_sum(acc[r]);
            for (long i = full; i < in; i++) s += wr[r * in + i] * x[i];
            y[o + r] = b ? s + b[o + r] : s;
        }
    }
    for (; o < r1; o++) { /* fewer than ROWS rows left */
        const float *wr = w + o * in;
        vec acc = {0};
        for (long i = 0; i < full; i += LANES) acc += load(wr + i) * load(x + i);
        float s = lane_sum(acc);
        for (long i = full; i < in; i++) s += wr[i] * x[i];
        y[o] = b ? s + b[o] : s;
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

static void rows_dot_bf16(const unsigned short *w, const float *x, const float *xe, const float *xo, const float *b,
                          float *y, long in, long r0, long r1) {
    long full = in / (2 * LANES) * (2 * LANES);
    long o = r0;
    vec e, d;
    for (; o + ROWS <= r1; o += ROWS) {
        const unsigned short *wr = w + o * in;
        vec acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = (vec){0};
        for (long i = 0; i < full; i += 2 * LANES) {
            vec xev = load(xe + i / 2), xov = load(xo + i / 2);
#pragma GCC unroll 16
            for (int r = 0; r < ROWS; r++) {
                load_bf16(wr + r * in + i, &e, &d);
                acc[r] += e * xev; /* two multiply-adds (not a product sum, then an add) */
                acc[r] += d * xov;
            }
        }
        for (int r = 0; r < ROWS; r++) {
            float s = lane_sum(acc[r]) + dot_tail_bf16(wr + r * in, x, full, in);
            y[o + r] = b ? s + b[o + r] : s;
        }
    }
    for (; o < r1; o++) {
        const unsigned short *wr = w + o * in;
        vec acc = {0};
        for (long i = 0; i < full; i += 2 * LANES) {
            load_bf16(wr + i, &e, &d);
            acc += e * load(xe + i / 2);
            acc += d * load(xo + i / 2);
        }
        float s = lane_sum(acc) + dot_tail_bf16(wr, x, full, in);
        y[o] = b ? s + b[o] : s;
    }
}

int omp_get_num_threads(void);
int omp_get_thread_num(void);

/* this thread's share of `out` rows: whole blocks of ROWS, in order */
#define SHARE(out)                                                           \
    long n = omp_get_num_threads(), t = omp_get_thread_num();                \
    long chunk = ((out + n - 1) / n + ROWS - 1) / ROWS * ROWS;               \
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
