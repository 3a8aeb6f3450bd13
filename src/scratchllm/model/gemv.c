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
 * read); the input row and the output are bf16 (a bf16 model's activations, read and written without
 * a conversion in torch), the sums fp32.
 *
 * Each output may get, besides the bias, a residual added (`add`, of the output's dtype: y = W x + b
 * + add, `add` may be `y` itself), with the roundings a bf16 model makes in torch (the product and
 * the sum each rounded to bf16), so a decode step's `x + proj(h)` is one call.
 *
 * Weights stored (in, out) (GPT-2's Conv1D matrices, which scratchllm reads where the file maps them,
 * through transposed views) have their own product, scratchllm_gemv_t (_bf16): each thread streams a run of
 * the rows and sums them, scaled by their inputs, into a partial output row (see its section).
 *
 * scratchllm_attend is the other half of a decode step: one new query per head attending over a
 * KV cache (the keys and values written into it first, after QK-norm and RoPE when the model has them),
 * for fp32 and bf16 caches. The last section is the glue between the products: one row's RMSNorm or
 * LayerNorm (scratchllm_norm), a product whose input row is normalized first (scratchllm_gemv_normed),
 * and an MLP's products with its activation, its norm first, in one call (SwiGLU, GELU:
 * scratchllm_mlp_hidden). The quantized products (int8, int4: their own section) take the same glue:
 * a residual, a norm first, and the MLP in one call (scratchllm_mlp_q).
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

/* what happens to a row's sum before it is stored: bias, rounding to bf16, residual (see the header) */
struct epilogue {
    const float *b;   /* bias (out) fp32, or NULL */
    const void *add;  /* residual (out) of the output's dtype, or NULL; may be y */
    void *y;          /* output (out): fp32, or bf16 when bf16 */
    int bf16;         /* output and residual are bf16 */
};

static inline float bf16_to_float(unsigned short h) {
    unsigned int w = (unsigned int)h << 16;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

/* fp32 -> bf16, rounding to nearest even (as torch's .to(torch.bfloat16)); NaN stays NaN */
static inline unsigned short float_to_bf16(float f) {
    unsigned int w;
    memcpy(&w, &f, sizeof w);
    if ((w & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((w >> 16) | 0x40);
    w += 0x7FFFu + ((w >> 16) & 1u);
    return (unsigned short)(w >> 16);
}

static inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

static inline float with_bias(float v, const float *b, long r) { return b ? v + b[r] : v; }

static inline void finish(float v, const struct epilogue *e, long r) {
    if (e->b) v += e->b[r];
    if (e->bf16) {
        if (e->add) v = round_bf16(v) + bf16_to_float(((const unsigned short *)e->add)[r]);
        ((unsigned short *)e->y)[r] = float_to_bf16(v);
    } else {
        if (e->add) v += ((const float *)e->add)[r];
        ((float *)e->y)[r] = v;
    }
}

/* y[r] = W[r, :] . x, finished (bias, residual), for rows r0 <= r < r1, fp32 weights, as STREAMS streams */
static void rows_dot(const float *w, const float *x, const struct epilogue *ep, long in, long r0, long r1) {
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
            finish(lane_sum(acc[s]) + dot_tail(wr[s], x, full, in), ep, r);
        }
    }
    for (long r = r0 + STREAMS * per; r < r1; r++) {
        const float *wr = w + r * in;
        vec acc = {0};
        for (long i = 0; i < full; i += LANES) acc += load(wr + i) * load(x + i);
        finish(lane_sum(acc) + dot_tail(wr, x, full, in), ep, r);
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

static float dot_tail_bf16(const unsigned short *wr, const float *x, long from, long in) {
    float s = 0.0f;
    for (long i = from; i < in; i++) s += bf16_to_float(wr[i]) * x[i];
    return s;
}

/* rows r0 <= r < r1 with bf16 weights, as rows_dot: STREAMS long streams; each step is two multiply-adds
 * (not a product sum, then an add) */
static void rows_dot_bf16(const unsigned short *w, const float *x, const float *xe, const float *xo,
                          const struct epilogue *ep, long in, long r0, long r1) {
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
            finish(lane_sum(acc[s]) + dot_tail_bf16(wr[s], x, full, in), ep, r);
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
        finish(lane_sum(acc) + dot_tail_bf16(wr, x, full, in), ep, r);
    }
}

int omp_get_num_threads(void);
int omp_get_thread_num(void);

/* A replayed decode step's team (scratchllm_run_plan, at the end of the file): one team of threads makes all of the
 * step's calls, each call's parallel part shared among the team's threads, one barrier between calls, in place of a
 * team started and joined per call. Inside it team_t is the thread's number (else -1) and team_n the team's size.
 * A call's input preparation, which a call alone does once into the layer's scratch before its threads start (the
 * row normalized, quantized, or a bf16 row widened), each team thread does for itself into its own buffers here
 * (team_row, team_split, team_q): a few hundred nanoseconds of the same work twice rather than one more barrier.
 * The plan runs as a team only when every call's input fits them (TEAM_FLOATS values). */
#define TEAM_FLOATS 32768
static __thread int team_t = -1, team_n = 1;
#define IN_TEAM (team_t >= 0)
#define TEAM_Q (2 * (TEAM_FLOATS + 64) + 4 * (TEAM_FLOATS / 4 + 16 + 2 * TEAM_FLOATS / 32) + 192)
static __thread float team_row[TEAM_FLOATS] __attribute__((aligned(64)));   /* a normalized row */
static __thread float team_split[TEAM_FLOATS] __attribute__((aligned(64))); /* a bf16 row widened, split */
static __thread unsigned char team_q[TEAM_Q] __attribute__((aligned(64)));  /* a quantized row (struct qin) */

/* The team's barrier, a dissemination barrier (Hensgen, Finkel and Manber 1988): in round r each thread raises its
 * own flag to the barrier's number and waits for the flag of the thread 2^r before it (mod n), ceil(log2 n) rounds.
 * Every flag has its own cache line and one writer, so a round costs one line's trip between two cores each way,
 * at once. Waiting threads spin (a pause per turn; after many turns they yield the core, in case a thread waited for
 * is not running). A decode step has ~25 of them. Measured in a loop of barriers on 2 threads (benchmarks/
 * quantize.py's machine, where the VM's two cores are sometimes near and sometimes far apart): 66 and 285 ns for a
 * barrier counting threads in with one shared counter and flag (three trips one after another), against OpenMP's
 * 0.2-0.4 us, which also puts threads that wait longer to sleep. */
#define TEAM_MAX 64   /* threads a team may have (more: the plan's calls are made one after another) */
#define TEAM_ROUNDS 6 /* log2(TEAM_MAX) */
struct team_flag {
    long number __attribute__((aligned(64))); /* the last barrier this thread reached in this round */
};
struct team_barrier {
    struct team_flag flag[TEAM_ROUNDS][TEAM_MAX];
};
static __thread struct team_barrier *team_bar;
static __thread long team_number; /* barriers this thread has reached in the team */
#define SPINS_BEFORE_YIELD 20000

int sched_yield(void);

static void team_barrier(void) {
    struct team_barrier *b = team_bar;
    long number = ++team_number;
    for (int r = 0, d = 1; d < team_n; r++, d *= 2) {
        __atomic_store_n(&b->flag[r][team_t].number, number, __ATOMIC_RELEASE);
        const long *before = &b->flag[r][(team_t - d + team_n) % team_n].number;
        for (long spins = 0; __atomic_load_n(before, __ATOMIC_ACQUIRE) < number; spins++) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if (spins > SPINS_BEFORE_YIELD) sched_yield();
        }
    }
}

/* BODY done once: by the calling thread, or inside a plan's team by its first thread while the others wait */
#define SERIAL(...)                                                            \
    do {                                                                       \
        if (!IN_TEAM || team_t == 0) {                                         \
            __VA_ARGS__                                                        \
        }                                                                      \
        if (IN_TEAM) team_barrier();                                           \
    } while (0)

/* the parallel part of a call, BODY, run by threads numbered t of n: the plan's team's when inside it, else on
 * `threads` threads of its own (the caller's variable) */
#define PARALLEL(...)                                                          \
    do {                                                                       \
        if (IN_TEAM) {                                                         \
            long t = team_t, n = team_n;                                       \
            __VA_ARGS__                                                        \
        } else if (threads <= 1) {                                             \
            long t = 0, n = 1;                                                 \
            __VA_ARGS__                                                        \
        } else {                                                               \
            _Pragma("omp parallel num_threads(threads)")                       \
            {                                                                  \
                long t = omp_get_thread_num(), n = omp_get_num_threads();      \
                __VA_ARGS__                                                    \
            }                                                                  \
        }                                                                      \
    } while (0)

/* thread t of n's share of `out` rows: an equal run of them, in order */
#define SHARE(out)                                                           \
    long chunk = (out + n - 1) / n;                                          \
    long r0 = t * chunk, r1 = r0 + chunk > out ? out : r0 + chunk;

/* A plan's team thread may be handed its own runs of a product's output rows (team_rows: team_runs pairs
 * [from, to)) in place of SHARE's: the rows of the heads it attends with next (plan_run's "heads' rows"). Each row
 * is computed as it would be in any other share, so the outputs are the same. */
static __thread const long *team_rows;
static __thread int team_runs;

/* BODY for thread t of n's rows [r0, r1) of `out` units of `unit` rows each: SHARE's run, or the runs handed to it */
#define SHARE_ROWS(out, unit, ...)                                             \
    if (IN_TEAM && team_rows) {                                                \
        for (int u = 0; u < team_runs; u++) {                                  \
            long r0 = team_rows[2 * u] / (unit), r1 = team_rows[2 * u + 1] / (unit); \
            __VA_ARGS__                                                        \
        }                                                                      \
    } else {                                                                   \
        SHARE(out)                                                             \
        __VA_ARGS__                                                            \
    }

/* y (out) = W (out, in) @ x (in) + b (out, or NULL) + add (out, or NULL), on `threads` threads; fp32 weights */
void scratchllm_gemv(const float *w, const float *x, const float *b, float *y, long out, long in, int threads,
                     const float *add) {
    struct epilogue ep = {b, add, y, 0};
    PARALLEL(SHARE_ROWS(out, 1, if (r0 < r1) rows_dot(w, x, &ep, in, r0, r1);));
}

/* the same with bf16 weights, input, output and residual (raw 16-bit words); b stays fp32, sums are fp32.
 * `scratch` holds `in` floats: the input widened and split into even- and odd-indexed halves. */
void scratchllm_gemv_bf16(const unsigned short *w, const unsigned short *x, const float *b, unsigned short *y,
                          long out, long in, int threads, float *scratch, const unsigned short *add) {
    long half = in / 2;
    if (IN_TEAM) scratch = team_split; /* each team thread its own (see "A replayed decode step's team") */
    float *xe = scratch, *xo = scratch + half;
    for (long j = 0; j < half; j++) {
        xe[j] = bf16_to_float(x[2 * j]);
        xo[j] = bf16_to_float(x[2 * j + 1]);
    }
    /* the inputs past the whole vectors (dot_tail_bf16 reads them in order), widened */
    long full = in / (2 * LANES) * (2 * LANES);
    float tail[2 * LANES];
    for (long i = full; i < in; i++) tail[i - full] = bf16_to_float(x[i]);
    const float *xf = tail - full; /* xf[i] for full <= i < in */
    struct epilogue ep = {b, add, y, 1};
    PARALLEL(SHARE_ROWS(out, 1, if (r0 < r1) rows_dot_bf16(w, xf, xe, xo, &ep, in, r0, r1);));
}

/* ---- weights stored (in, out): GPT-2's Conv1D layout, read where they are ----
 * y = x W + b for W (in, out) row-major, the transpose of the layout above: y is a weighted sum of W's
 * rows, x[i] times row i. Each thread takes an equal run of the rows (inputs): one long sequential read,
 * cut again into STREAMS parts read at the same time (as above), each part's row scaled by its input and
 * added into the thread's partial sum, a row of `out` floats that stays in the cache. Then the threads'
 * partial rows are added up, each thread finishing an equal run of the outputs (bias, residual, rounding).
 * `part` holds threads * out floats. bf16 weights: a row read as 32-bit words holds the even outputs in the
 * words' low halves and the odd ones in their high halves (see load_bf16), so a partial row is kept as its
 * even outputs then its odd ones (out must be even). */

static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }

/* part (out) = sum of x[i] W[i, :] for i0 <= i < i1, fp32 weights */
static void cols_axpy(const float *w, const float *x, float *part, long out, long i0, long i1) {
    long per = (i1 - i0) / STREAMS, full = out / LANES * LANES;
    memset(part, 0, out * sizeof(float));
    for (long j = 0; j < per; j++) {
        const float *wr[STREAMS];
        float xs[STREAMS];
        for (int s = 0; s < STREAMS; s++) {
            long i = i0 + s * per + j; /* row j of part s */
            wr[s] = w + i * out;
            xs[s] = x[i];
        }
        for (long c = 0; c < full; c += LANES) {
            vec a = load(part + c);
            for (int s = 0; s < STREAMS; s++) a += load(wr[s] + c) * xs[s];
            store(part + c, a);
        }
        for (long c = full; c < out; c++)
            for (int s = 0; s < STREAMS; s++) part[c] += wr[s][c] * xs[s];
    }
    for (long i = i0 + STREAMS * per; i < i1; i++) {
        const float *wr = w + i * out;
        for (long c = 0; c < full; c += LANES) store(part + c, load(part + c) + load(wr + c) * x[i]);
        for (long c = full; c < out; c++) part[c] += wr[c] * x[i];
    }
}

/* the same, bf16 weights: part = even outputs (out / 2) then odd ones (out / 2) */
static void cols_axpy_bf16(const unsigned short *w, const unsigned short *x, float *part, long out, long i0,
                           long i1) {
    long half = out / 2, per = (i1 - i0) / STREAMS, full = out / (2 * LANES) * (2 * LANES);
    float *pe = part, *po = part + half;
    vec e, d;
    memset(part, 0, out * sizeof(float));
    for (long j = 0; j < per; j++) {
        const unsigned short *wr[STREAMS];
        float xs[STREAMS];
        for (int s = 0; s < STREAMS; s++) {
            long i = i0 + s * per + j;
            wr[s] = w + i * out;
            xs[s] = bf16_to_float(x[i]);
        }
        for (long c = 0; c < full; c += 2 * LANES) {
            vec ae = load(pe + c / 2), ao = load(po + c / 2);
            for (int s = 0; s < STREAMS; s++) {
                load_bf16(wr[s] + c, &e, &d);
                ae += e * xs[s];
                ao += d * xs[s];
            }
            store(pe + c / 2, ae);
            store(po + c / 2, ao);
        }
        for (long c = full; c < out; c++)
            for (int s = 0; s < STREAMS; s++) (c % 2 ? po : pe)[c / 2] += bf16_to_float(wr[s][c]) * xs[s];
    }
    for (long i = i0 + STREAMS * per; i < i1; i++) {
        const unsigned short *wr = w + i * out;
        float xi = bf16_to_float(x[i]);
        for (long c = 0; c < full; c += 2 * LANES) {
            load_bf16(wr + c, &e, &d);
            store(pe + c / 2, load(pe + c / 2) + e * xi);
            store(po + c / 2, load(po + c / 2) + d * xi);
        }
        for (long c = full; c < out; c++) (c % 2 ? po : pe)[c / 2] += bf16_to_float(wr[c]) * xi;
    }
}

/* y (out) = x (in) @ W (in, out) + b + add, on `threads` threads (fp32; bf16: weights, x, y and add bf16);
 * `part`: threads * out floats of scratch */
/* thread t of n's part of gemv_t: its run of rows into its partial row, then (after all threads' partial rows are
 * done: a barrier of the team it runs in) its run of the outputs */
static void gemv_t_part(const void *w, const void *x, const float *b, void *y, long out, long in, float *part,
                        const void *add, int bf16, long t, long n) {
    struct epilogue ep = {b, add, y, bf16};
    long half = out / 2;
    long chunk = (in + n - 1) / n, i0 = t * chunk, i1 = i0 + chunk > in ? in : i0 + chunk;
    float *mine = part + t * out;
    if (i0 > i1) i0 = i1;
    if (bf16)
        cols_axpy_bf16((const unsigned short *)w, (const unsigned short *)x, mine, out, i0, i1);
    else
        cols_axpy((const float *)w, (const float *)x, mine, out, i0, i1);
    if (IN_TEAM)
        team_barrier();
    else {
#pragma omp barrier
    }
    long per = (out + n - 1) / n, c0 = t * per, c1 = c0 + per > out ? out : c0 + per;
    for (long c = c0; c < c1; c++) {
        long k = bf16 ? (c % 2 ? half + c / 2 : c / 2) : c; /* where output c sits in a partial row */
        float v = 0.0f;
        for (long u = 0; u < n; u++) v += part[u * out + k];
        finish(v, &ep, c);
    }
}

static void gemv_t(const void *w, const void *x, const float *b, void *y, long out, long in, int threads,
                   float *part, const void *add, int bf16) {
    if (IN_TEAM) {
        gemv_t_part(w, x, b, y, out, in, part, add, bf16, team_t, team_n);
        return;
    }
#pragma omp parallel num_threads(threads > 1 ? threads : 1)
    gemv_t_part(w, x, b, y, out, in, part, add, bf16, omp_get_thread_num(), omp_get_num_threads());
}

void scratchllm_gemv_t(const float *w, const float *x, const float *b, float *y, long out, long in, int threads,
                       float *part, const float *add) {
    gemv_t(w, x, b, y, out, in, threads, part, add, 0);
}

void scratchllm_gemv_t_bf16(const unsigned short *w, const unsigned short *x, const float *b, unsigned short *y,
                            long out, long in, int threads, float *part, const unsigned short *add) {
    gemv_t(w, x, b, y, out, in, threads, part, add, 1);
}

/* ---- single-query attention over a KV cache (a decode step, batch 1) ----
 *
 * q: n_head * head_dim new queries, k and v: n_kv_head * head_dim new keys and values (one position), laid
 * out head after head. kc, vc: one layer's cache for one row, (n_kv_head, max_len, head_dim) with head
 * stride `head_stride` elements. The new keys and values are written at position `pos`, then each query
 * head h (grouped-query: it reads kv head h / (n_head / n_kv_head)) attends to positions 0..pos:
 * y_h = softmax(q_h K^T / sqrt(head_dim)) V, computed in fp32, keys taken in chunks of CHUNK (scores of a
 * chunk, then the running maximum and sum rescaled: the online softmax of flash attention). y is written
 * head after head (n_head * head_dim), in the cache's dtype (bf16: rounded once, at the end). Heads are
 * shared between threads.
 *
 * Before that, each new query and key head may go through Qwen3's QK-norm (an RMSNorm over the head, one
 * weight of head_dim shared by the heads: q_norm for queries, k_norm for keys) and then RoPE (the rotate-half
 * convention of model.functional.apply_rope: v cos + rotate_half(v) sin, with the position's rows of the
 * model's cos and sin tables), with the roundings the general path makes: in a bf16 model the norm rounds
 * once, and each product and the sum of RoPE round to bf16 when the tables are bf16 (fp32 tables: once). */
#define CHUNK 128
#define MAX_HEAD_DIM 512

static inline float load_val(const void *p, long i, const int bf16) {
    return bf16 ? bf16_to_float(((const unsigned short *)p)[i]) : ((const float *)p)[i];
}

typedef unsigned short bf16_vec __attribute__((vector_size(LANES * sizeof(unsigned short))));

/* LANES values from p + i (fp32, or bf16 widened) */
static inline vec load_vec(const void *p, long i, const int bf16) {
    if (!bf16) return load((const float *)p + i);
    bf16_vec h;
    memcpy(&h, (const unsigned short *)p + i, sizeof h);
    word_vec w = __builtin_convertvector(h, word_vec) << 16;
    vec f;
    memcpy(&f, &w, sizeof f);
    return f;
}

typedef int int_vec __attribute__((vector_size(LANES * sizeof(int))));

/* e^x for x <= 0, LANES at once: Cephes' expf (x = n ln 2 + r, |r| <= ln 2 / 2, e^r by a degree-7 polynomial,
 * 2^n put into the exponent bits), within 2 ulp of expf; x below -87.3 is taken as -87.3 (e^x ~ 1e-38). */
static inline vec exp_neg(vec x) {
    vec lo = x * 0.0f - 87.3365f;
    int_vec below = x < lo;
    x = (vec)(((int_vec)x & ~below) | ((int_vec)lo & below));
    int_vec n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, int_vec); /* nearest (x <= 0) */
    vec nf = __builtin_convertvector(n, vec);
    vec r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    vec e = p * r * r + r + 1.0f;
    return e * (vec)((n + 127) << 23);
}

/* q . K[row] over d values (the first dv by vectors) */
static inline __attribute__((always_inline)) float key_dot(const float *qh, const void *kc, long row, long d, long dv,
                                                           const int bf16) {
    vec a = {0};
    for (long i = 0; i < dv; i += LANES) a += load(qh + i) * load_vec(kc, row + i, bf16);
    float dot = lane_sum(a);
    for (long i = dv; i < d; i++) dot += qh[i] * load_val(kc, row + i, bf16);
    return dot;
}

/* what happens to a new query or key head before attention (see above): QK-norm weight and RoPE rows, or NULL */
struct head_prep {
    const void *norm; /* QK-norm weight (head_dim) of the row's dtype, or NULL */
    float eps;
    const void *cos, *sin; /* the position's RoPE rows (head_dim), or NULL */
    int table_bf16;        /* cos and sin are bf16 (else fp32) */
};

/* v[0..d): one head's values (of the row's dtype, widened), through QK-norm and RoPE as `p` says, rounded as
 * the general path rounds (bf16 rows: see the section's header) */
static inline vec round_bf16_vec(vec v);

static void prep_head(float *v, long d, const struct head_prep *p, int bf16) {
    if (p->norm) {
        float ss = 0.0f;
        for (long i = 0; i < d; i++) ss += v[i] * v[i];
        float r = 1.0f / __builtin_sqrtf(ss / (float)d + p->eps);
        for (long i = 0; i < d; i++) {
            float t = v[i] * r * load_val(p->norm, i, bf16);
            v[i] = bf16 ? round_bf16(t) : t;
        }
    }
    if (p->cos && d % (2 * LANES) == 0) { /* the same, LANES at once: v[i] with v[i + half], the rotated pair */
        long half = d / 2;
        int steps = bf16 && p->table_bf16;
        for (long i = 0; i < half; i += LANES) {
            vec a = load(v + i), b = load(v + half + i);
            vec ca = load_vec(p->cos, i, p->table_bf16), sa = load_vec(p->sin, i, p->table_bf16);
            vec cb = load_vec(p->cos, half + i, p->table_bf16), sb = load_vec(p->sin, half + i, p->table_bf16);
            vec x = a * ca, y = -b * sa, u = b * cb, w = a * sb; /* out[i] = x + y, out[half + i] = u + w */
            vec lo = steps ? round_bf16_vec(x) + round_bf16_vec(y) : x + y;
            vec hi = steps ? round_bf16_vec(u) + round_bf16_vec(w) : u + w;
            if (bf16) lo = round_bf16_vec(lo), hi = round_bf16_vec(hi);
            memcpy(v + i, &lo, sizeof lo);
            memcpy(v + half + i, &hi, sizeof hi);
        }
    } else if (p->cos) {
        float t[MAX_HEAD_DIM];
        long half = d / 2;
        int steps = bf16 && p->table_bf16; /* bf16 * bf16 tables: each product and the sum rounded */
        for (long i = 0; i < d; i++) {
            float rot = i < half ? -v[i + half] : v[i - half];
            float a = v[i] * load_val(p->cos, i, p->table_bf16), b = rot * load_val(p->sin, i, p->table_bf16);
            t[i] = steps ? round_bf16(a) + round_bf16(b) : a + b;
        }
        for (long i = 0; i < d; i++) v[i] = bf16 ? round_bf16(t[i]) : t[i];
    }
}

/* one head; `bf16` is a constant at each call (the compiler makes a copy of the loops for each dtype) */
static inline __attribute__((always_inline)) void attend_head(const void *q, const void *kc, const void *vc,
                                                              void *y, long h, long g, long d, long n_keys,
                                                              long head_stride, float scale,
                                                              const struct head_prep *prep, const int bf16) {
    float qh[MAX_HEAD_DIM] __attribute__((aligned(64))), acc[MAX_HEAD_DIM] __attribute__((aligned(64)));
    float s[CHUNK] __attribute__((aligned(64)));
    long dv = d / LANES * LANES; /* columns done by vectors; the rest one by one */
    for (long i = 0; i < d; i++) {
        qh[i] = load_val(q, h * d + i, bf16);
        acc[i] = 0.0f;
    }
    if (prep) prep_head(qh, d, prep, bf16);
    for (long i = 0; i < d; i++) qh[i] *= scale;
    float m = -__builtin_inff(), l = 0.0f;
    long base = g * head_stride;
    for (long j0 = 0; j0 < n_keys; j0 += CHUNK) {
        long n = n_keys - j0 < CHUNK ? n_keys - j0 : CHUNK;
        float cm = -__builtin_inff();
        long j = 0;
        for (; j + 4 <= n && dv == d; j += 4) { /* four keys at once: four independent sums */
            long row = base + (j0 + j) * d;
            vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (long i = 0; i < d; i += LANES) {
                vec qv = load(qh + i);
                a0 += qv * load_vec(kc, row + i, bf16);
                a1 += qv * load_vec(kc, row + d + i, bf16);
                a2 += qv * load_vec(kc, row + 2 * d + i, bf16);
                a3 += qv * load_vec(kc, row + 3 * d + i, bf16);
            }
            s[j] = lane_sum(a0), s[j + 1] = lane_sum(a1), s[j + 2] = lane_sum(a2), s[j + 3] = lane_sum(a3);
        }
        for (; j < n; j++) s[j] = key_dot(qh, kc, base + (j0 + j) * d, d, dv, bf16);
        for (j = 0; j < n; j++) cm = s[j] > cm ? s[j] : cm;
        if (cm > m) { /* a new maximum: what was summed so far is rescaled to it */
            float c = __builtin_expf(m - cm);
            l *= c;
            for (long i = 0; i < d; i++) acc[i] *= c;
            m = cm;
        }
        for (j = n; j < (n + LANES - 1) / LANES * LANES; j++) s[j] = m; /* whole vectors (these unused) */
        for (j = 0; j < n; j += LANES) {
            vec e = exp_neg(load(s + j) - m);
            memcpy(s + j, &e, sizeof e);
        }
        for (j = 0; j < n; j++) {
            float p = s[j];
            l += p;
            long row = base + (j0 + j) * d;
            for (long i = 0; i < dv; i += LANES) {
                vec t = load(acc + i) + p * load_vec(vc, row + i, bf16);
                memcpy(acc + i, &t, sizeof t);
            }
            for (long i = dv; i < d; i++) acc[i] += p * load_val(vc, row + i, bf16);
        }
    }
    float inv = 1.0f / l;
    for (long i = 0; i < d; i++) {
        float v = acc[i] * inv;
        if (bf16)
            ((unsigned short *)y)[h * d + i] = float_to_bf16(v);
        else
            ((float *)y)[h * d + i] = v;
    }
}

/* kv head g's new key (through QK-norm and RoPE when `kp` says) and value, written into the caches at `pos` */
static void store_kv(const void *k, const void *v, void *kc, void *vc, long g, long pos, long head_dim,
                     long head_stride, const struct head_prep *kp, int bf16) {
    long el = bf16 ? 2 : 4;
    char *kd = (char *)kc + (g * head_stride + pos * head_dim) * el;
    if (kp) { /* the key head through QK-norm and RoPE, then stored in the cache's dtype */
        float t[MAX_HEAD_DIM];
        for (long i = 0; i < head_dim; i++) t[i] = load_val(k, g * head_dim + i, bf16);
        prep_head(t, head_dim, kp, bf16);
        for (long i = 0; i < head_dim; i++) {
            if (bf16)
                ((unsigned short *)kd)[i] = float_to_bf16(t[i]);
            else
                ((float *)kd)[i] = t[i];
        }
    } else {
        memcpy(kd, (const char *)k + g * head_dim * el, head_dim * el);
    }
    memcpy((char *)vc + (g * head_stride + pos * head_dim) * el, (const char *)v + g * head_dim * el, head_dim * el);
}

/* returns 0, or -1 when head_dim is larger than MAX_HEAD_DIM (nothing is done). q_norm, k_norm: QK-norm weights
 * (head_dim, the row's dtype) or NULL; cos, sin: the position's RoPE rows (head_dim; bf16 when table_bf16, else
 * fp32) or NULL (see the section's header). When the threads divide the kv heads, each thread writes its own kv
 * heads' new keys and values and then attends with their query heads, so no thread waits for another; else the keys
 * and values are written first, then the threads share the query heads. */
int scratchllm_attend(const void *q, const void *k, const void *v, void *kc, void *vc, void *y, long n_head,
                      long n_kv_head, long head_dim, long pos, long head_stride, int bf16, int threads,
                      const void *q_norm, const void *k_norm, float eps, const void *cos, const void *sin,
                      int table_bf16) {
    if (head_dim > MAX_HEAD_DIM) return -1;
    long rep = n_head / n_kv_head;
    struct head_prep qp = {q_norm, eps, cos, sin, table_bf16}, kp = {k_norm, eps, cos, sin, table_bf16};
    int prep = q_norm || k_norm || cos;
    const struct head_prep *qpp = prep ? &qp : 0, *kpp = prep ? &kp : 0;
    float scale = 1.0f / __builtin_sqrtf((float)head_dim);
    if (threads > n_head) threads = (int)n_head;
    /* heads of 64 and 128 values (GPT-2's, Llama's) get copies of the loops for their size: unrolled, the sums
     * over the values held in registers */
#define ATTEND_HEAD_D(h, d, b) attend_head(q, kc, vc, y, h, (h) / rep, d, pos + 1, head_stride, scale, qpp, b)
#define ATTEND_HEAD(h)                                                                                          \
    {                                                                                                           \
        if (bf16)                                                                                               \
            ATTEND_HEAD_D(h, head_dim, 1);                                                                      \
        else if (head_dim == 64)                                                                                \
            ATTEND_HEAD_D(h, 64, 0);                                                                            \
        else if (head_dim == 128)                                                                               \
            ATTEND_HEAD_D(h, 128, 0);                                                                           \
        else                                                                                                    \
            ATTEND_HEAD_D(h, head_dim, 0);                                                                      \
    }
    long nt = IN_TEAM ? team_n : threads > 1 ? threads : 1;
    if (n_kv_head % nt == 0) {
        PARALLEL(SHARE(n_kv_head) for (long g = r0; g < r1; g++) {
            store_kv(k, v, kc, vc, g, pos, head_dim, head_stride, kpp, bf16);
            for (long h = g * rep; h < (g + 1) * rep; h++) ATTEND_HEAD(h)
        });
    } else {
        SERIAL(for (long g = 0; g < n_kv_head; g++) store_kv(k, v, kc, vc, g, pos, head_dim, head_stride, kpp, bf16););
        PARALLEL(SHARE(n_head) for (long h = r0; h < r1; h++) ATTEND_HEAD(h));
    }
#undef ATTEND_HEAD
#undef ATTEND_HEAD_D
    return 0;
}

/* ---- quantized weights (model.quant_linear): integer dot products, scales applied per block in floats ----
 *
 * The input rows are quantized once per call the way llama.cpp quantizes activations for its q8_0/q4_0
 * products: in blocks of QBLOCK = 32 values, each block one fp32 step d = max|x| / 127 and integers
 * q = round(x / d) in -127..127 (round half to even). A row's product is then a sum over blocks of float
 * steps times integer dot products, which the CPU computes 64 (AVX-512 VNNI `vpdpbusd`) or 32 (AVX2
 * `vpmaddubsw`, `vpmaddwd`) bytes per instruction, with no widening of weights to floats. Up to `nx` input
 * rows per call (a prompt's): each piece of the weight is read from memory once and applied to every row
 * while it is in the cache.
 *
 * int8, one scale per row, read as stored (model.quant_linear's format):
 * y[r] = s[r] * sum_blocks d_b * (sum_i w_i q_i). The products of two signed bytes go through the
 * unsigned-times-signed instructions, and 4 packed bytes sum into one int32 lane, multiplied by its block's d
 * (`lane_d`). AVX-512 (`vpdpbusd`, 32-bit sums): the weight's sign bit flipped, w ^ 0x80 = w + 128 as an unsigned
 * byte, times q, the lane's sum starting from -128 times its sum of q (`lane_c`, computed with the input), so
 * sum (w + 128) q - 128 sum q = sum w q exactly: a load, an xor and the product per 64 weights. AVX2
 * (`vpmaddubsw`, 16-bit pair sums, which (w + 128) q could overflow): |w| times (q with w's sign) (w and q are
 * never -128, so nothing saturates: 2 * 127 * 127 < 2^15). Rows are read in STREAMS streams per thread, as
 * rows_dot.
 *
 * int4, group-wise: each weight an unsigned u in 0..15 standing for (u - z) s (z = 8 for symmetric
 * weights), two a byte (weight 2j low, 2j + 1 high, as the file has them), read in the KERNEL LAYOUT,
 * into which model.quant_linear rearranges its buffers in place (gemv.to_kernel_layout) so that one
 * vector holds the same inputs' weights of QROWS = 16 rows:
 * - rows in blocks of QROWS (the last block may have fewer, t); within a block, each row's bytes cut in
 *   chunks of 4 (8 weights) and stored chunk by chunk: chunk c of row 0, of row 1, ..., of row t - 1,
 *   then chunk c + 1. So 64 bytes (an AVX-512 register) are 8 weights of 16 rows, and each 32-bit lane of
 *   an integer dot product is one row's sum: no shuffles, no sums across lanes.
 * - scales (and zero points) per block group by group: the t rows' scales of group 0, of group 1, ...
 * A byte's low nibbles meet the even inputs and its high nibbles the odd ones, so the quantized input is
 * stored split into even (xe) and odd (xo) halves and each 4-byte chunk meets one broadcast 4-byte word
 * of each. Per input block (32 weights: 4 chunks) the integer sum of u q is corrected for the zero point
 * in integers, sum (u - z) q = sum u q - z Q_b (Q_b = the block's sum of q, computed with the input), then
 * converted once and scaled by s d: y[r] = sum_b s_g(b) d_b (sum_{i in b} u_i q_i - z Q_b). The high
 * nibbles are summed in place, 16 times their value (AVX-512: 240 * 127 * 4 < 2^31), and divided by 16
 * after (exact: a multiple of 16).
 *
 * The result differs from the product with the unquantized input by at most sum_b d_b / 2 * sum_{i in b}
 * |W_ri| (the input's rounding; tests check it) plus float rounding.
 *
 * A decode step's glue, as the fp32/bf16 products have it: a residual added as the outputs are written
 * (`add`, fp32, may be y: each output's sum is complete before it is stored, and `add` is read first), a norm
 * applied to each input row before it is quantized (`struct row_norm`, scratchllm_norm), and an MLP's products
 * with their activation in one call (scratchllm_mlp_q: the input quantized once for both products, then
 * `activate`, as scratchllm_mlp_hidden).
 *
 * Paths, chosen at run time (`scratchllm_q_isas` says which this CPU runs; a caller may ask for a lesser
 * one): 2 = AVX-512 (F, BW, VL, VNNI), 1 = AVX2 + FMA, 0 = portable C. All three compute the same integer
 * sums; only the order of the float additions differs. */
#define QBLOCK 32
#define QPAD 64  /* bytes of zeros after the quantized input, so a last vector load stays inside */
#define QROWS 16 /* rows side by side in the int4 kernel layout */

#if defined(__x86_64__) || defined(__i386__)
#define SCRATCHLLM_X86 1
#include <immintrin.h>
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define T256 __attribute__((target("avx2,fma")))
#endif

/* which paths this CPU runs: bit k set for path k */
int scratchllm_q_isas(void) {
    int isas = 1;
#ifdef SCRATCHLLM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        isas |= 4;
#endif
    return isas;
}

/* one quantized input row, carved out of the caller's scratch (scratchllm_q_scratch_bytes per row) */
struct qin {
    signed char *xe, *xo; /* int4: even / odd inputs (in / 2 each); int8: xe holds all `in` inputs in order */
    float *xd;            /* per block: its step d */
    int *xq;              /* per block: the sum of its q */
    float *lane_d;        /* int8, per lane (4 inputs): its block's d */
    int *lane_c;          /* int8, per lane: -128 times its sum of q (in the room int4's xo takes) */
};

static long round_up(long n, long m) { return (n + m - 1) / m * m; }

/* bytes of scratch a call needs per input row of `in` inputs */
long scratchllm_q_scratch_bytes(long in) {
    long lanes = round_up(in, 64) / 4 + 16, blocks = round_up(in, QBLOCK) / QBLOCK;
    return round_up(2 * (round_up(in, 64) + QPAD) + 4 * (lanes + 2 * blocks) + 64, 64);
}

static struct qin carve(void *scratch, long in, long row) {
    long lanes = round_up(in, 64) / 4 + 16, blocks = round_up(in, QBLOCK) / QBLOCK, nb = round_up(in, 64) + QPAD;
    char *p = (char *)(((size_t)scratch + 63) & ~(size_t)63) + (row ? row * scratchllm_q_scratch_bytes(in) : 0);
    struct qin q;
    q.xe = (signed char *)p;
    q.xo = q.xe + nb / 2 + QPAD / 2;
    q.lane_c = (int *)(p + nb); /* (int8's xe ends before nb; round_up(in, 64) bytes, aligned) */
    q.lane_d = (float *)(p + 2 * nb);
    q.xd = q.lane_d + lanes;
    q.xq = (int *)(q.xd + blocks);
    return q;
}

/* x[0..n) (n <= QBLOCK) -> q, its step d; returns sum q. d = max|x| / 127 and q = rint(x * (1 / d)) in fp32,
 * rounding half to even (as torch.round); written so that the compiler vectorizes it (the largest |x| as the
 * largest of the floats' bit patterns without their sign: the same order for non-negative floats). */
static int quantize_block(const float *x, long n, signed char *q, float *d_out) {
    unsigned int top = 0;
    for (long i = 0; i < n; i++) {
        unsigned int u;
        memcpy(&u, x + i, sizeof u);
        u &= 0x7FFFFFFFu;
        top = u > top ? u : top;
    }
    float amax;
    memcpy(&amax, &top, sizeof amax);
    float d = amax / 127.0f, id = amax > 0 ? 1.0f / d : 0.0f;
    int sum = 0;
    for (long i = 0; i < n; i++) {
        int k = (int)__builtin_rintf(x[i] * id);
        q[i] = (signed char)k;
        sum += k;
    }
    *d_out = d;
    return sum;
}

/* int8: per lane of 4 inputs (xe zero beyond `in`), its block's d and -128 times its sum of q */
static void prep_lanes(long in, struct qin *q) {
    long lanes = round_up(in, 64) / 4;
    for (long l = 0; l < lanes; l++) {
        const signed char *e = q->xe + 4 * l;
        q->lane_d[l] = l * 4 < in ? q->xd[l * 4 / QBLOCK] : 0.0f;
        q->lane_c[l] = -128 * (e[0] + e[1] + e[2] + e[3]);
    }
}

/* int8 weights: the input in order, lane_d and lane_c per 4 inputs */
static void prep_q8(const float *x, long in, struct qin *q) {
    long blocks = round_up(in, QBLOCK) / QBLOCK;
    for (long b = 0; b < blocks; b++) {
        long n = in - b * QBLOCK < QBLOCK ? in - b * QBLOCK : QBLOCK;
        q->xq[b] = quantize_block(x + b * QBLOCK, n, q->xe + b * QBLOCK, &q->xd[b]);
    }
    memset(q->xe + in, 0, round_up(in, 64) + QPAD - in);
    prep_lanes(in, q);
}

/* int4 weights (in % 32 == 0): the input split in even/odd halves, d and the sum of q per block */
static void prep_q4(const float *x, long in, struct qin *q) {
    signed char t[QBLOCK];
    for (long b = 0; b < in / QBLOCK; b++) {
        q->xq[b] = quantize_block(x + b * QBLOCK, QBLOCK, t, &q->xd[b]);
        for (int j = 0; j < QBLOCK / 2; j++) {
            q->xe[b * QBLOCK / 2 + j] = t[2 * j];
            q->xo[b * QBLOCK / 2 + j] = t[2 * j + 1];
        }
    }
}

#ifdef SCRATCHLLM_X86
/* quantize_block of QBLOCK inputs, AVX-512, with the same numbers (the largest |x| from the bit patterns, q rounded half
 * to even: the CPU's default rounding, as rintf's); the 32 q in order into `even` (odd NULL: int8's), or the 16
 * even-indexed ones into `even` and the 16 odd-indexed ones into `odd` (int4's split) */
T512 static int quantize_block_512(const float *x, signed char *even, signed char *odd, float *d_out) {
    __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i top = _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(a), magnitude),
                                   _mm512_and_si512(_mm512_castps_si512(b), magnitude));
    unsigned int t = _mm512_reduce_max_epu32(top);
    float amax;
    memcpy(&amax, &t, sizeof amax);
    float d = amax / 127.0f, id = amax > 0 ? 1.0f / d : 0.0f;
    __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(id)));
    __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, _mm512_set1_ps(id)));
    if (odd) {
        const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const __m512i odds = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        _mm_storeu_si128((__m128i *)even, _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(qa, evens, qb)));
        _mm_storeu_si128((__m128i *)odd, _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(qa, odds, qb)));
    } else {
        _mm_storeu_si128((__m128i *)even, _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128((__m128i *)(even + 16), _mm512_cvtepi32_epi8(qb));
    }
    *d_out = d;
    return _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
}

/* prep_q8 and prep_q4 with quantize_block_512 for the whole blocks: the same bytes */
T512 static void prep_q8_512(const float *x, long in, struct qin *q) {
    long whole = in / QBLOCK, blocks = round_up(in, QBLOCK) / QBLOCK;
    for (long b = 0; b < whole; b++) q->xq[b] = quantize_block_512(x + b * QBLOCK, q->xe + b * QBLOCK, 0, &q->xd[b]);
    if (whole < blocks) q->xq[whole] = quantize_block(x + whole * QBLOCK, in - whole * QBLOCK, q->xe + whole * QBLOCK,
                                                      &q->xd[whole]);
    memset(q->xe + in, 0, round_up(in, 64) + QPAD - in);
    prep_lanes(in, q);
}

T512 static void prep_q4_512(const float *x, long in, struct qin *q) {
    for (long b = 0; b < in / QBLOCK; b++)
        q->xq[b] = quantize_block_512(x + b * QBLOCK, q->xe + b * QBLOCK / 2, q->xo + b * QBLOCK / 2, &q->xd[b]);
}
#endif

static inline int word(const signed char *p) { /* 4 inputs as one 32-bit word (to broadcast) */
    int v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- int4: one block of t <= QROWS rows in the kernel layout (w, s, z at the block's start; b, y at its first
 * row): y[0..t) = its rows' products with the input q (+ b) */

/* portable C, any t */
static void q4_block_c(const unsigned char *w, const float *s, const unsigned char *z, long in, long group, int t,
                       const struct qin *q, const float *b, const float *add, float *y) {
    long per = group / QBLOCK; /* input blocks per group */
    for (int r = 0; r < t; r++) {
        float acc = 0.0f;
        for (long k = 0; k < in / QBLOCK; k++) {
            long g = k / per;
            int isum = 0;
            for (long c = k * QBLOCK / 8; c < (k + 1) * QBLOCK / 8; c++) { /* the block's 4 chunks */
                const unsigned char *p = w + (c * t + r) * 4;
                for (int j = 0; j < 4; j++) isum += (p[j] & 15) * q->xe[4 * c + j] + (p[j] >> 4) * q->xo[4 * c + j];
            }
            int zp = z ? z[g * t + r] : 8;
            acc += s[g * t + r] * q->xd[k] * (float)(isum - zp * q->xq[k]);
        }
        float v = with_bias(acc, b, r);
        y[r] = add ? v + add[r] : v; /* add[r] read before y[r] is written: add may be y */
    }
}

#ifdef SCRATCHLLM_X86
/* AVX-512, t = QROWS: a chunk of the 16 rows is one register, each lane one row; per input block 8 dot products
 * into 4 accumulators (low and high nibbles, even and odd chunks: short dependency chains) */
T512 static void q4_block_512(const unsigned char *w, const float *s, const unsigned char *z, long in, long group,
                              const struct qin *q, const float *b, const float *add, float *y) {
    const __m512i low = _mm512_set1_epi8(15);
    long per = group / QBLOCK;
    __m512 acc = _mm512_setzero_ps();
    for (long k = 0; k < in / QBLOCK; k++) {
        const unsigned char *p = w + k * (QBLOCK / 2) * QROWS;
        const signed char *xe = q->xe + k * QBLOCK / 2, *xo = q->xo + k * QBLOCK / 2;
        __m512i lo[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, hi[2] = {lo[0], lo[0]};
        _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {
            __m512i v = _mm512_loadu_si512(p + 64 * c);
            lo[c & 1] = _mm512_dpbusd_epi32(lo[c & 1], _mm512_and_si512(v, low), _mm512_set1_epi32(word(xe + 4 * c)));
            hi[c & 1] = _mm512_dpbusd_epi32(hi[c & 1], _mm512_andnot_si512(low, v), _mm512_set1_epi32(word(xo + 4 * c)));
        }
        __m512i isum = _mm512_add_epi32(_mm512_add_epi32(lo[0], lo[1]),
                                        _mm512_srai_epi32(_mm512_add_epi32(hi[0], hi[1]), 4));
        long g = k / per;
        __m512i zq = z ? _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(z + g * QROWS))),
                                            _mm512_set1_epi32(q->xq[k]))
                       : _mm512_set1_epi32(8 * q->xq[k]);
        __m512 sd = _mm512_mul_ps(_mm512_loadu_ps(s + g * QROWS), _mm512_set1_ps(q->xd[k]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(isum, zq)), sd, acc);
    }
    if (b) acc = _mm512_add_ps(acc, _mm512_loadu_ps(b));
    if (add) acc = _mm512_add_ps(acc, _mm512_loadu_ps(add)); /* read before y is written: add may be y */
    _mm512_storeu_ps(y, acc);
}

/* AVX-512, NB full blocks `bs` blocks apart at once (w, s, z, b, add, y at the first): each input block's words
 * broadcast once for all of them, NB independent sums in flight. The same integer sums and the same float steps per
 * block as q4_block_512, so the same outputs; ~30% fewer instructions per block. */
T512 static inline __attribute__((always_inline)) void q4_blocks_512(const unsigned char *w, const float *s,
                                                                      const unsigned char *z, long in, long group,
                                                                      const struct qin *q, const float *b,
                                                                      const float *add, float *y, const int NB,
                                                                      long bs) {
    const __m512i low = _mm512_set1_epi8(15), zero = _mm512_setzero_si512();
    long per = group / QBLOCK, groups = in / group, wstep = bs * QROWS * (in / 2), sstep = bs * QROWS * groups;
    __m512 acc[4];
    for (int j = 0; j < NB; j++) acc[j] = _mm512_setzero_ps();
    for (long k = 0; k < in / QBLOCK; k++) {
        const signed char *xe = q->xe + k * QBLOCK / 2, *xo = q->xo + k * QBLOCK / 2;
        __m512i e[4], o[4];
        for (int c = 0; c < 4; c++) e[c] = _mm512_set1_epi32(word(xe + 4 * c)), o[c] = _mm512_set1_epi32(word(xo + 4 * c));
        long g = k / per;
        __m512 d = _mm512_set1_ps(q->xd[k]);
        __m512i xq = _mm512_set1_epi32(q->xq[k]), zq8 = _mm512_set1_epi32(8 * q->xq[k]);
        _Pragma("GCC unroll 4") for (int j = 0; j < NB; j++) {
            const unsigned char *p = w + j * wstep + k * (QBLOCK / 2) * QROWS;
            __m512i lo = zero, hi = zero;
            _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {
                __m512i v = _mm512_loadu_si512(p + 64 * c);
                lo = _mm512_dpbusd_epi32(lo, _mm512_and_si512(v, low), e[c]);
                hi = _mm512_dpbusd_epi32(hi, _mm512_andnot_si512(low, v), o[c]);
            }
            __m512i isum = _mm512_add_epi32(lo, _mm512_srai_epi32(hi, 4));
            __m512i zq = z ? _mm512_mullo_epi32(
                                 _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(z + j * sstep + g * QROWS))), xq)
                           : zq8;
            __m512 sd = _mm512_mul_ps(_mm512_loadu_ps(s + j * sstep + g * QROWS), d);
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(isum, zq)), sd, acc[j]);
        }
    }
    for (int j = 0; j < NB; j++) {
        __m512 r = acc[j];
        if (b) r = _mm512_add_ps(r, _mm512_loadu_ps(b + j * bs * QROWS));
        if (add) r = _mm512_add_ps(r, _mm512_loadu_ps(add + j * bs * QROWS)); /* read before y is written */
        _mm512_storeu_ps(y + j * bs * QROWS, r);
    }
}

T512 static void q4_blocks4_512(const unsigned char *w, const float *s, const unsigned char *z, long in, long group,
                                const struct qin *q, const float *b, const float *add, float *y, long bs) {
    q4_blocks_512(w, s, z, in, group, q, b, add, y, 4, bs);
}

/* AVX2, t = QROWS: a chunk is two registers (rows 0-7, 8-15); pairs of products summed in 16 bits
 * (15 * 127 * 4 < 2^15), then in 32 */
T256 static void q4_block_256(const unsigned char *w, const float *s, const unsigned char *z, long in, long group,
                              const struct qin *q, const float *b, const float *add, float *y) {
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    long per = group / QBLOCK;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (long k = 0; k < in / QBLOCK; k++) {
        const unsigned char *p = w + k * (QBLOCK / 2) * QROWS;
        const signed char *xe = q->xe + k * QBLOCK / 2, *xo = q->xo + k * QBLOCK / 2;
        __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {
            __m256i e = _mm256_set1_epi32(word(xe + 4 * c)), o = _mm256_set1_epi32(word(xo + 4 * c));
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(p + 64 * c + 32 * h));
                __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, e), _mm256_maddubs_epi16(hi, o));
                isum[h] = _mm256_add_epi32(isum[h], _mm256_madd_epi16(pairs, ones));
            }
        }
        long g = k / per;
        __m256 d = _mm256_set1_ps(q->xd[k]);
        for (int h = 0; h < 2; h++) {
            __m256i zq = z ? _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(z + g * QROWS + 8 * h))),
                                                _mm256_set1_epi32(q->xq[k]))
                           : _mm256_set1_epi32(8 * q->xq[k]);
            __m256 sd = _mm256_mul_ps(_mm256_loadu_ps(s + g * QROWS + 8 * h), d);
            acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[h], zq)), sd, acc[h]);
        }
    }
    for (int h = 0; h < 2; h++) {
        if (b) acc[h] = _mm256_add_ps(acc[h], _mm256_loadu_ps(b + 8 * h));
        if (add) acc[h] = _mm256_add_ps(acc[h], _mm256_loadu_ps(add + 8 * h)); /* read before written (add may be y) */
        _mm256_storeu_ps(y + 8 * h, acc[h]);
    }
}
#endif

/* ---- int8: the row sums, rows[0..nr) at once, each one stream; sums[s] = sum over lanes of d * (integer sum),
 * before the row's scale */

/* portable C */
static void q8_rows_c(const signed char *w, long in, const struct qin *q, const long *rows, int nr, float *sums) {
    for (int s = 0; s < nr; s++) {
        const signed char *p = w + rows[s] * in;
        float acc = 0.0f;
        for (long b = 0; b * QBLOCK < in; b++) {
            int isum = 0;
            long end = (b + 1) * QBLOCK < in ? (b + 1) * QBLOCK : in;
            for (long i = b * QBLOCK; i < end; i++) isum += p[i] * q->xe[i];
            acc += q->xd[b] * (float)isum;
        }
        sums[s] = acc;
    }
}

#ifdef SCRATCHLLM_X86
/* AVX-512: 64 bytes (16 lanes) a step; the last step's bytes beyond the row masked to zero */
T512 static inline __attribute__((always_inline)) void q8_rows_512(const signed char *w, long in,
                                                                    const struct qin *q, const long *rows, int nr,
                                                                    float *sums) {
    const signed char *p[STREAMS];
    __m512 acc[STREAMS];
    for (int s = 0; s < nr; s++) {
        p[s] = w + rows[s] * in;
        acc[s] = _mm512_setzero_ps();
    }
    const __m512i sign = _mm512_set1_epi8((char)0x80);
    for (long o = 0; o < in; o += 64) {
        __mmask64 bytes = o + 64 <= in ? ~0ULL : (1ULL << (in - o)) - 1;
        __m512i x = _mm512_loadu_si512(q->xe + o); /* (zero beyond `in`: the masked bytes' w + 128 meet q = 0) */
        __m512 d = _mm512_loadu_ps(q->lane_d + o / 4);
        __m512i c = _mm512_loadu_si512(q->lane_c + o / 4);
        _Pragma("GCC unroll 4") for (int s = 0; s < nr; s++) {
            __m512i wb = bytes == ~0ULL ? _mm512_loadu_si512(p[s] + o) : _mm512_maskz_loadu_epi8(bytes, p[s] + o);
            __m512i isum = _mm512_dpbusd_epi32(c, _mm512_xor_si512(wb, sign), x); /* sum (w + 128) q - 128 sum q */
            acc[s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc[s]);
        }
    }
    for (int s = 0; s < nr; s++) sums[s] = _mm512_reduce_add_ps(acc[s]);
}

/* (always inlined, as q8_rows_512, into each of its callers' loops: called as a function, from the several callers
 * the MLP call adds, it measured slower) */
T512 static inline __attribute__((always_inline)) void q8_rows_512_4(const signed char *w, long in,
                                                                      const struct qin *q, const long *rows, int nr,
                                                                      float *sums) {
    if (nr == STREAMS)
        q8_rows_512(w, in, q, rows, STREAMS, sums);
    else
        q8_rows_512(w, in, q, rows, 1, sums);
}

T256 static inline float hsum256(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* AVX2: 32 bytes (8 lanes) a step; the bytes after the last whole step one by one */
T256 static inline __attribute__((always_inline)) void q8_rows_256(const signed char *w, long in,
                                                                    const struct qin *q, const long *rows, int nr,
                                                                    float *sums) {
    const signed char *p[STREAMS];
    __m256 acc[STREAMS];
    float tail[STREAMS];
    long full = in / 32 * 32;
    for (int s = 0; s < nr; s++) {
        p[s] = w + rows[s] * in;
        acc[s] = _mm256_setzero_ps();
        tail[s] = 0.0f;
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (long o = 0; o < full; o += 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(q->xe + o));
        __m256 d = _mm256_loadu_ps(q->lane_d + o / 4);
        _Pragma("GCC unroll 4") for (int s = 0; s < nr; s++) {
            __m256i wb = _mm256_loadu_si256((const __m256i *)(p[s] + o));
            __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(wb), _mm256_sign_epi8(x, wb));
            acc[s] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones)), d, acc[s]);
        }
    }
    for (int s = 0; s < nr; s++) {
        int isum = 0;
        for (long i = full; i < in; i++) isum += p[s][i] * q->xe[i];
        tail[s] = full < in ? q->xd[full / QBLOCK] * (float)isum : 0.0f;
        sums[s] = hsum256(acc[s]) + tail[s];
    }
}

T256 static inline __attribute__((always_inline)) void q8_rows_256_4(const signed char *w, long in,
                                                                      const struct qin *q, const long *rows, int nr,
                                                                      float *sums) {
    if (nr == STREAMS)
        q8_rows_256(w, in, q, rows, STREAMS, sums);
    else
        q8_rows_256(w, in, q, rows, 1, sums);
}
#endif

static int usable(int isa) {
    static int isas = 0;
    if (!isas) isas = scratchllm_q_isas();
    while (isa > 0 && !(isas >> isa & 1)) isa--; /* never a path this CPU lacks */
    return isa;
}

/* int8: rows r0 <= r < r1 as STREAMS streams (as rows_dot), then the rest one by one; each step's rows applied to
 * every input row i (`qi`, its quantized input) while they are in the cache; `CALL` computes nr rows' sums */
#define Q8_ROWS(CALL)                                                                                     \
    {                                                                                                     \
        long per = (r1 - r0) / STREAMS, rows[STREAMS];                                                    \
        float sums[STREAMS];                                                                              \
        for (long j = 0; j < per; j++) {                                                                  \
            for (int s = 0; s < STREAMS; s++) rows[s] = r0 + s * per + j;                                 \
            for (long i = 0; i < nx; i++) {                                                               \
                struct qin qi = carve(scratch, in, i);                                                    \
                int nr = STREAMS;                                                                         \
                CALL;                                                                                     \
                for (int s = 0; s < STREAMS; s++) FINISH(i, rows[s], sums[s]);                            \
            }                                                                                             \
        }                                                                                                 \
        for (long r = r0 + STREAMS * per; r < r1; r++) {                                                  \
            rows[0] = r;                                                                                  \
            for (long i = 0; i < nx; i++) {                                                               \
                struct qin qi = carve(scratch, in, i);                                                    \
                int nr = 1;                                                                               \
                CALL;                                                                                     \
                FINISH(i, r, sums[0]);                                                                    \
            }                                                                                             \
        }                                                                                                 \
    }

/* what stays the same from call to call of one layer's product: set once when it is bound (a call then passes
 * a handful of arguments, not 13: each costs the caller, ctypes, about 0.1 us) */
struct q_weights {
    const void *w;              /* int8 (out, in) or int4 packed (out, in / 2), in the kernel layout */
    const float *scales;        /* int8 (out); int4 (out, in / group) */
    const unsigned char *zeros; /* int4 (out, in / group), or NULL (symmetric: 8) */
    const float *b;             /* bias (out), or NULL */
    void *scratch;              /* nx * scratchllm_q_scratch_bytes(in) bytes, for the quantized input rows */
    long out, in, group;        /* group: int4 only (0: int8) */
    long isa;                   /* the path asked for (the best below it this CPU runs is taken) */
};

struct row_norm;
static void norm_into_row(const float *x, const struct row_norm *nm, long n, const float **row);

/* the input rows x (nx, in) quantized into `scratch` (int8 or int4 weights: c->group), each normalized by nm first
 * (nm NULL: as they are); the normalized row goes through nm's row buffer, one row at a time */
static void q_prep(const struct q_weights *c, void *scratch, const float *x, long nx, const struct row_norm *nm) {
    long in = c->in;
    for (long i = 0; i < nx; i++) {
        struct qin qi = carve(scratch, in, i);
        const float *row = x + i * in;
        if (nm) norm_into_row(row, nm, in, &row);
#ifdef SCRATCHLLM_X86
        if (usable((int)c->isa) == 2) {
            if (c->group)
                prep_q4_512(row, in, &qi);
            else
                prep_q8_512(row, in, &qi);
            continue;
        }
#endif
        if (c->group)
            prep_q4(row, in, &qi);
        else
            prep_q8(row, in, &qi);
    }
}

/* int8: y[i, r] (+ add[i, r]) for rows r0 <= r < r1 of every input row i, from the quantized rows in scratch */
static void q8_part(const struct q_weights *c, void *scratch, long nx, float *y, const float *add, long r0, long r1,
                    int isa) {
    const signed char *w = c->w;
    const float *scales = c->scales, *b = c->b;
    long out = c->out, in = c->in;
    /* add's element read before y's is written: add may be y */
#define FINISH(i, r, v)                                                  \
    {                                                                    \
        float f_ = with_bias(scales[r] * (v), b, r);                     \
        y[(i) * out + (r)] = add ? f_ + add[(i) * out + (r)] : f_;       \
    }
#ifdef SCRATCHLLM_X86
    if (isa == 2)
        Q8_ROWS(q8_rows_512_4(w, in, &qi, rows, nr, sums))
    else if (isa == 1)
        Q8_ROWS(q8_rows_256_4(w, in, &qi, rows, nr, sums))
    else
#endif
        Q8_ROWS(q8_rows_c(w, in, &qi, rows, nr, sums))
#undef FINISH
}

/* int4: y[i, rows of blocks k0 <= k < k1] (+ add) for every input row i; each block applied to every input row while
 * it is in the cache */
static void q4_part(const struct q_weights *c, void *scratch, long nx, float *y, const float *add, long k0, long k1,
                    int isa) {
    const unsigned char *w = c->w, *zeros = c->zeros;
    const float *scales = c->scales, *b = c->b;
    long out = c->out, in = c->in, group = c->group, groups = in / group;
    /* AVX-512: the run's full blocks read as four streams, each a quarter of them (as rows_dot reads rows): block k
     * with k + streams, k + 2 streams and k + 3 streams, then the blocks left one by one. Measured on the demo
     * model's int4 step: one thread 39.5 -> 37.0 us against four blocks in a row; two threads the same. */
    long streams = 0;
#ifdef SCRATCHLLM_X86
    if (isa == 2) {
        long full = out / QROWS < k1 ? out / QROWS : k1;
        streams = full > k0 ? (full - k0) / 4 : 0;
    }
#endif
    for (long k = k0; k < k1; k++) {
        long row = k * QROWS;
        int t = out - row < QROWS ? (int)(out - row) : QROWS;
        const unsigned char *wk = w + row * (in / 2), *zk = zeros ? zeros + row * groups : 0;
        const float *sk = scales + row * groups, *bk = b ? b + row : 0;
        int four = k < k0 + streams; /* the four streams' next blocks */
        for (long i = 0; i < nx; i++) {
            struct qin qi = carve(scratch, in, i);
            float *yk = y + i * out + row;
            const float *ak = add ? add + i * out + row : 0;
#ifdef SCRATCHLLM_X86
            if (four)
                q4_blocks4_512(wk, sk, zk, in, group, &qi, bk, ak, yk, streams);
            else if (isa == 2 && t == QROWS)
                q4_block_512(wk, sk, zk, in, group, &qi, bk, ak, yk);
            else if (isa == 1 && t == QROWS)
                q4_block_256(wk, sk, zk, in, group, &qi, bk, ak, yk);
            else
#endif
                q4_block_c(wk, sk, zk, in, group, t, &qi, bk, ak, yk);
        }
        if (four && k == k0 + streams - 1) k = k0 + 4 * streams - 1; /* the streams' blocks are done */
    }
}

/* y (nx, out) = x (nx, in) @ (q (out, in) int8 * scales (out)).T + b (+ add (nx, out), or NULL; may be y), on
 * `threads` threads; nm: a norm applied to each input row first, or NULL */
void scratchllm_gemv_q8(const struct q_weights *c, const float *x, float *y, long nx, int threads, const float *add,
                        const struct row_norm *nm) {
    void *scratch = IN_TEAM ? (void *)team_q : c->scratch; /* a team thread's own (see "A replayed decode step's team") */
    q_prep(c, scratch, x, nx, nm);
    int isa = usable((int)c->isa);
    PARALLEL(SHARE_ROWS(c->out, 1, q8_part(c, scratch, nx, y, add, r0, r1, isa);));
}

/* y (nx, out) = x (nx, in) @ W.T + b (+ add, or NULL; may be y) with W int4 in the kernel layout (see above: packed
 * bytes (out, in / 2), scales (out, in / group), zero points (out, in / group) bytes or NULL for symmetric weights;
 * group a multiple of 32), on `threads` threads; nm: a norm applied to each input row first, or NULL. Threads take
 * equal runs of row blocks. Each block's sums are complete before its outputs are written, so an in-place `add` is
 * read before it is overwritten. */
void scratchllm_gemv_q4(const struct q_weights *c, const float *x, float *y, long nx, int threads, const float *add,
                        const struct row_norm *nm) {
    void *scratch = IN_TEAM ? (void *)team_q : c->scratch; /* (as scratchllm_gemv_q8's) */
    q_prep(c, scratch, x, nx, nm);
    int isa = usable((int)c->isa);
    long blocks = (c->out + QROWS - 1) / QROWS;
    PARALLEL(SHARE_ROWS(blocks, QROWS, q4_part(c, scratch, nx, y, add, r0, r1, isa);));
}

static void activate(const float *f, const float *g, void *y, long r0, long r1, int act, int bf16);

/* y (out) = the MLP's hidden activations of one fp32 row x (in) with quantized weights f (and g, SwiGLU; of the same
 * scheme and shape): as scratchllm_mlp_hidden (act, nm), the input quantized once (into f's scratch) for both
 * products; sums: 2 * out floats. Threads take equal runs of rows (int8) or row blocks (int4) of both products, then
 * activate their own rows. */
void scratchllm_mlp_q(const struct q_weights *f, const struct q_weights *g, const float *x, float *y, int threads,
                      int act, const struct row_norm *nm, float *sums) {
    void *scratch = IN_TEAM ? (void *)team_q : f->scratch; /* (as scratchllm_gemv_q8's) */
    q_prep(f, scratch, x, 1, nm);
    int isa = usable((int)f->isa);
    long out = f->out, units = f->group ? (out + QROWS - 1) / QROWS : out; /* int4: row blocks */
    float *sf = sums, *sg = sums + out;
    PARALLEL(SHARE(units) if (r0 < r1) {
        if (f->group) {
            q4_part(f, scratch, 1, sf, 0, r0, r1, isa);
            if (g) q4_part(g, scratch, 1, sg, 0, r0, r1, isa);
        } else {
            q8_part(f, scratch, 1, sf, 0, r0, r1, isa);
            if (g) q8_part(g, scratch, 1, sg, 0, r0, r1, isa);
        }
        long a0 = f->group ? r0 * QROWS : r0, a1 = f->group ? (r1 * QROWS < out ? r1 * QROWS : out) : r1;
        activate(sf, g ? sg : 0, y, a0, a1, act, 0);
    });
}

/* ---- the glue of a batch-1 decode step: a row's norm and the MLP's activation, inside the products' calls ----
 *
 * At batch 1 a small model's products take a few microseconds each, and so does each torch op between them (a
 * dispatch; torch's RMSNorm of one row on the CPU is several ops). These do that glue in C, in as few calls:
 * - scratchllm_norm: RMSNorm or LayerNorm (weight, optional bias, eps) of one row, fp32 or bf16 (computed in
 *   fp32 and rounded once, as torch's CPU norms round).
 * - scratchllm_gemv_normed: a product whose input row is normalized first (a block's norm and the product
 *   after it), as the two calls would compute it.
 * - scratchllm_mlp_hidden: the MLP's hidden activations of one row in one call (its norm first, optionally):
 *   SwiGLU silu(G x + bg) * (F x + bf) or GELU(F x + bf) (tanh form or exact), the products read as rows_dot
 *   reads them (each thread's share of the rows of F, and of G), each thread then activating its own rows.
 *   bf16: rounded to bf16 where torch's steps round (each product, silu, their product; GELU once). silu, tanh
 *   and erfc come from exp_neg (within a few fp32 ulp of libm's; erfc by Numerical Recipes' erfcc, within
 *   1.2e-7 relative). */

static inline vec select_vec(int_vec m, vec a, vec b) { /* m ? a : b, lane by lane */
    return (vec)(((int_vec)a & m) | ((int_vec)b & ~m));
}

static inline vec abs_vec(vec v) { return (vec)((int_vec)v & 0x7FFFFFFF); }

static inline vec copysign_vec(vec mag, vec sign) {
    return (vec)(((int_vec)mag & 0x7FFFFFFF) | ((int_vec)sign & (int)0x80000000u));
}

static inline vec silu_vec(vec g) { /* g / (1 + e^-g), from e^-|g| (never overflows) */
    vec t = exp_neg(-abs_vec(g));
    return select_vec(g < 0, g * t, g) / (1.0f + t);
}

static inline vec gelu_tanh_vec(vec x) { /* 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) */
    vec u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    vec t = exp_neg(-2.0f * abs_vec(u)); /* tanh |u| = (1 - e^-2|u|) / (1 + e^-2|u|) */
    return 0.5f * x * (1.0f + copysign_vec((1.0f - t) / (1.0f + t), u));
}

/* 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2), erfc(z) for z = |x| / sqrt 2 >= 0 by Numerical Recipes'
 * erfcc (relative error below 1.2e-7: no cancellation in the negative tail), erfc(-z) = 2 - erfc(z) */
static inline vec gelu_exact_vec(vec x) {
    vec z = abs_vec(x) * 0.7071067811865476f;
    vec t = 1.0f / (1.0f + 0.5f * z);
    vec p = t * 0.17087277f - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    vec erfc = t * exp_neg(p * t - 1.26551223f - z * z);
    return 0.5f * x * select_vec(x < 0, erfc, 2.0f - erfc);
}

static inline vec round_bf16_vec(vec v) { /* float_to_bf16 then back, LANES at once */
    word_vec w = (word_vec)v;
    word_vec nan = (word_vec)((w & 0x7FFFFFFFu) > 0x7F800000u);
    word_vec r = (w + 0x7FFFu + ((w >> 16) & 1u)) & 0xFFFF0000u;
    return (vec)((r & ~nan) | (((w >> 16 | 0x40u) << 16) & nan));
}

/* y = norm(x) for one row of n values (see the section's header): RMSNorm when rms, else LayerNorm; w (n) and b (n,
 * or NULL) of the row's dtype */
void scratchllm_norm(const void *x, const void *w, const void *b, void *y, long n, float eps, int rms, int bf16) {
    long nv = n / LANES * LANES;
    float mean = 0.0f;
    if (!rms) {
        vec s = {0};
        for (long i = 0; i < nv; i += LANES) s += load_vec(x, i, bf16);
        float sum = lane_sum(s);
        for (long i = nv; i < n; i++) sum += load_val(x, i, bf16);
        mean = sum / (float)n;
    }
    vec s2 = {0};
    for (long i = 0; i < nv; i += LANES) {
        vec d = load_vec(x, i, bf16) - mean;
        s2 += d * d;
    }
    float sq = lane_sum(s2);
    for (long i = nv; i < n; i++) {
        float d = load_val(x, i, bf16) - mean;
        sq += d * d;
    }
    float r = 1.0f / __builtin_sqrtf(sq / (float)n + eps);
    for (long i = 0; i < nv; i += LANES) { /* the same numbers as the loop below, LANES at once */
        vec v = (load_vec(x, i, bf16) - mean) * r * load_vec(w, i, bf16);
        if (b) v += load_vec(b, i, bf16);
        if (bf16) {
            bf16_vec o = __builtin_convertvector((word_vec)round_bf16_vec(v) >> 16, bf16_vec);
            memcpy((unsigned short *)y + i, &o, sizeof o);
        } else {
            store((float *)y + i, v);
        }
    }
    for (long i = nv; i < n; i++) {
        float v = (load_val(x, i, bf16) - mean) * r * load_val(w, i, bf16);
        if (b) v += load_val(b, i, bf16);
        if (bf16)
            ((unsigned short *)y)[i] = float_to_bf16(v);
        else
            ((float *)y)[i] = v;
    }
}

/* a norm a product applies to its input row first (scratchllm_gemv_normed, scratchllm_mlp_hidden): set once when the
 * call is bound */
struct row_norm {
    const void *w, *b; /* weight, bias (or NULL), of the row's dtype */
    void *row;         /* the normalized row (in values of the row's dtype) */
    float eps;
    int rms; /* RMSNorm, else LayerNorm */
};

/* x normalized by nm into nm's row (fp32); *row then points at it */
static void norm_into_row(const float *x, const struct row_norm *nm, long n, const float **row) {
    float *dst = IN_TEAM ? team_row : nm->row; /* a team thread's own (see "A replayed decode step's team") */
    scratchllm_norm(x, nm->w, nm->b, dst, n, nm->eps, nm->rms, 0);
    *row = dst;
}

/* y (out) = W norm(x) + b for one row x (in): the norm (scratchllm_norm), then the product (scratchllm_gemv, or
 * scratchllm_gemv_bf16 with its `scratch`; W stored (in, out), `transposed`: gemv_t, `scratch` its partial rows) */
void scratchllm_gemv_normed(const void *w, const void *x, const float *b, void *y, long out, long in, int threads,
                            float *scratch, const struct row_norm *nm, int bf16, int transposed) {
    void *row = IN_TEAM ? (void *)team_row : nm->row; /* (as norm_into_row's) */
    scratchllm_norm(x, nm->w, nm->b, row, in, nm->eps, nm->rms, bf16);
    if (transposed) /* W stored (in, out): gemv_t, `scratch` its partial rows */
        gemv_t(w, row, b, y, out, in, threads, scratch, 0, bf16);
    else if (bf16)
        scratchllm_gemv_bf16(w, row, b, y, out, in, threads, scratch, 0);
    else
        scratchllm_gemv(w, row, b, y, out, in, threads, 0);
}

#define ACT_SWIGLU 0
#define ACT_GELU_TANH 1
#define ACT_GELU 2

/* y[r0..r1) = the activation of the sums f (and g, SwiGLU) (fp32, bias added), rounded as the section's header says */
static void activate(const float *f, const float *g, void *y, long r0, long r1, int act, int bf16) {
    for (long r = r0; r < r1; r += LANES) {
        long k = r1 - r < LANES ? r1 - r : LANES;
        vec fv = {0}, gv = {0}, h;
        if (k == LANES) { /* (a whole vector: a load, not a call to memcpy) */
            fv = load(f + r);
            if (g) gv = load(g + r);
        } else {
            memcpy(&fv, f + r, k * sizeof(float));
            if (g) memcpy(&gv, g + r, k * sizeof(float));
        }
        if (bf16) fv = round_bf16_vec(fv), gv = round_bf16_vec(gv);
        if (act == ACT_SWIGLU) {
            vec s = silu_vec(gv);
            h = (bf16 ? round_bf16_vec(s) : s) * fv;
        } else {
            h = act == ACT_GELU_TANH ? gelu_tanh_vec(fv) : gelu_exact_vec(fv);
        }
        if (bf16) {
            bf16_vec o = __builtin_convertvector((word_vec)round_bf16_vec(h) >> 16, bf16_vec);
            if (k == LANES)
                memcpy((unsigned short *)y + r, &o, sizeof o);
            else
                memcpy((unsigned short *)y + r, &o, k * sizeof(unsigned short));
        } else if (k == LANES) {
            store((float *)y + r, h);
        } else {
            memcpy((float *)y + r, &h, k * sizeof(float));
        }
    }
}

/* y (out) = the MLP's hidden activations of one row x (in): act ACT_SWIGLU: silu(wg x + bg) * (wf x + bf),
 * ACT_GELU_TANH / ACT_GELU: GELU(wf x + bf); weights (out, in), x and y of the dtype (bf16 when bf16), biases fp32 or
 * NULL, wg NULL for GELU. scratch: 2 * out floats, and `in` more for bf16 (the input split, as scratchllm_gemv_bf16
 * splits it). nm: a norm applied to x first, or NULL. */
void scratchllm_mlp_hidden(const void *wf, const float *bf, const void *wg, const float *bg, const void *x, void *y,
                           long out, long in, int threads, float *scratch, int act, int bf16,
                           const struct row_norm *nm) {
    float *sf = scratch, *sg = scratch + out, *xe = IN_TEAM ? team_split : scratch + 2 * out, *xo = xe + in / 2;
    float tail[2 * LANES];
    if (nm) { /* the row normalized first, into nm->row (a team thread: its own, see "A replayed decode step's team") */
        void *row = IN_TEAM ? (void *)team_row : nm->row;
        scratchllm_norm(x, nm->w, nm->b, row, in, nm->eps, nm->rms, bf16);
        x = row;
    }
    const float *xf = x;
    if (bf16) { /* as scratchllm_gemv_bf16: the input split in even- and odd-indexed halves, the tail widened */
        const unsigned short *xb = x;
        for (long j = 0; j < in / 2; j++) {
            xe[j] = bf16_to_float(xb[2 * j]);
            xo[j] = bf16_to_float(xb[2 * j + 1]);
        }
        long full = in / (2 * LANES) * (2 * LANES);
        for (long i = full; i < in; i++) tail[i - full] = bf16_to_float(xb[i]);
        xf = tail - full;
    }
    const int gate = act == ACT_SWIGLU;
    PARALLEL(SHARE(out) if (r0 < r1) {
        struct epilogue ef = {bf, 0, sf, 0}, eg = {bg, 0, sg, 0}; /* fp32 sums + bias; rounded in `activate` */
        if (bf16) {
            rows_dot_bf16(wf, xf, xe, xo, &ef, in, r0, r1);
            if (gate) rows_dot_bf16(wg, xf, xe, xo, &eg, in, r0, r1);
        } else {
            rows_dot(wf, xf, &ef, in, r0, r1);
            if (gate) rows_dot(wg, xf, &eg, in, r0, r1);
        }
        activate(sf, gate ? sg : 0, y, r0, r1, act, bf16);
    });
}

/* ---- a decode step's first and last calls: the embedding row; and the whole step replayed in one call ----
 *
 * scratchllm_embed: one token's embedding row, table[token] (+ pos_table[pos], a learned position's row), fp32 or
 * bf16 (the sum rounded once, as torch's bf16 add rounds it). scratchllm_embed_q: the same from a quantized table
 * (struct q_weights: int8 per row, or int4 group-wise in the kernel layout), dequantized as model.quant_linear's
 * `dequantize` computes it (q * s; (u - z) * s), fp32.
 *
 * scratchllm_run_plan: a batch-1 decode step recorded once as the list of the calls above it made (model.step_plan),
 * run again in one call for the next position and token. Each `struct plan_op` names an entry point of this file
 * (PLAN_*, gemv.py's PLAN_FNS in the same order) and holds its arguments as recorded: pointers and integers as
 * longs, floats as a double's bits; the few that move with the step (the position, the token, the addresses of the
 * position's rows in the RoPE and position tables) are `patch`ed: args[i] = base + (position or token) * step.
 * Nothing else changes between steps: every buffer the step reads and writes stays where the recording left it.
 * Returns 0, or the index + 1 of the first call that failed. */
void scratchllm_embed(const void *table, const void *pos_table, long token, long pos, void *y, long n, int bf16) {
    const char *row = (const char *)table + token * n * (bf16 ? 2 : 4);
    const char *prow = pos_table ? (const char *)pos_table + pos * n * (bf16 ? 2 : 4) : 0;
    if (!prow) {
        memcpy(y, row, n * (bf16 ? 2 : 4));
        return;
    }
    for (long i = 0; i < n; i++) {
        float v = load_val(row, i, bf16) + load_val(prow, i, bf16);
        if (bf16)
            ((unsigned short *)y)[i] = float_to_bf16(v);
        else
            ((float *)y)[i] = v;
    }
}

void scratchllm_embed_q(const struct q_weights *c, const float *pos_table, long token, long pos, float *y) {
    long in = c->in;
    if (c->group == 0) { /* int8 (out, in), one scale per row */
        const signed char *q = (const signed char *)c->w + token * in;
        float s = c->scales[token];
        for (long i = 0; i < in; i++) y[i] = (float)q[i] * s;
    } else { /* int4 in the kernel layout: rows in blocks of QROWS, each stored chunk by chunk */
        long groups = in / c->group, block = token / QROWS, i = token % QROWS;
        long k = c->out - block * QROWS < QROWS ? c->out - block * QROWS : QROWS; /* rows in this block */
        const unsigned char *w = (const unsigned char *)c->w + block * QROWS * (in / 2);
        const float *sc = c->scales + block * QROWS * groups;
        const unsigned char *zc = c->zeros ? c->zeros + block * QROWS * groups : 0;
        for (long ch = 0; ch < in / 8; ch++) { /* chunks of 4 bytes: 8 weights, of one group (a multiple of 8) */
            const unsigned char *b = w + ch * k * 4 + i * 4;
            long g = ch * 8 / c->group;
            float z = zc ? (float)zc[g * k + i] : 8.0f, sg = sc[g * k + i];
            for (int e = 0; e < 8; e++) {
                float u = (float)(e % 2 ? b[e / 2] >> 4 : b[e / 2] & 15);
                y[ch * 8 + e] = (u - z) * sg;
            }
        }
    }
    if (pos_table)
        for (long j = 0; j < in; j++) y[j] += pos_table[pos * in + j];
}

#define PLAN_ARGS 20
#define PLAN_PATCHES 3
struct plan_op {
    long fn;                      /* the entry point: PLAN_* */
    long args[PLAN_ARGS];         /* as recorded (patched ones: their base) */
    long n_patch;                 /* args that move with the step */
    long patch_arg[PLAN_PATCHES]; /* which */
    long patch_var[PLAN_PATCHES]; /* 0: the position, 1: the token */
    long patch_step[PLAN_PATCHES];
};

enum { PLAN_GEMV, PLAN_GEMV_BF16, PLAN_GEMV_T, PLAN_GEMV_T_BF16, PLAN_ATTEND, PLAN_NORM, PLAN_MLP_HIDDEN,
       PLAN_GEMV_NORMED, PLAN_GEMV_Q8, PLAN_GEMV_Q4, PLAN_MLP_Q, PLAN_EMBED, PLAN_EMBED_Q };

static inline float plan_float(long bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return (float)d;
}

/* op's arguments for this step: the recorded ones, the moving ones moved */
static void plan_args(const struct plan_op *op, long pos, long token, long *a) {
    memcpy(a, op->args, sizeof op->args);
    for (long p = 0; p < op->n_patch; p++) a[op->patch_arg[p]] += (op->patch_var[p] ? token : pos) * op->patch_step[p];
}

static int plan_call(long fn, const long *a) {
#define P(i) ((void *)a[i])
#define I(i) ((int)a[i])
    switch (fn) {
    case PLAN_GEMV: scratchllm_gemv(P(0), P(1), P(2), P(3), a[4], a[5], I(6), P(7)); return 0;
    case PLAN_GEMV_BF16: scratchllm_gemv_bf16(P(0), P(1), P(2), P(3), a[4], a[5], I(6), P(7), P(8)); return 0;
    case PLAN_GEMV_T: scratchllm_gemv_t(P(0), P(1), P(2), P(3), a[4], a[5], I(6), P(7), P(8)); return 0;
    case PLAN_GEMV_T_BF16: scratchllm_gemv_t_bf16(P(0), P(1), P(2), P(3), a[4], a[5], I(6), P(7), P(8)); return 0;
    case PLAN_ATTEND:
        return scratchllm_attend(P(0), P(1), P(2), P(3), P(4), P(5), a[6], a[7], a[8], a[9], a[10], I(11), I(12),
                                 P(13), P(14), plan_float(a[15]), P(16), P(17), I(18));
    case PLAN_NORM: scratchllm_norm(P(0), P(1), P(2), P(3), a[4], plan_float(a[5]), I(6), I(7)); return 0;
    case PLAN_MLP_HIDDEN:
        scratchllm_mlp_hidden(P(0), P(1), P(2), P(3), P(4), P(5), a[6], a[7], I(8), P(9), I(10), I(11), P(12));
        return 0;
    case PLAN_GEMV_NORMED:
        scratchllm_gemv_normed(P(0), P(1), P(2), P(3), a[4], a[5], I(6), P(7), P(8), I(9), I(10));
        return 0;
    case PLAN_GEMV_Q8: scratchllm_gemv_q8(P(0), P(1), P(2), a[3], I(4), P(5), P(6)); return 0;
    case PLAN_GEMV_Q4: scratchllm_gemv_q4(P(0), P(1), P(2), a[3], I(4), P(5), P(6)); return 0;
    case PLAN_MLP_Q: scratchllm_mlp_q(P(0), P(1), P(2), P(3), I(4), I(5), P(6), P(7)); return 0;
    case PLAN_EMBED: scratchllm_embed(P(0), P(1), a[2], a[3], P(4), a[5], I(6)); return 0;
    case PLAN_EMBED_Q: scratchllm_embed_q(P(0), P(1), a[2], a[3], P(4)); return 0;
    }
#undef P
#undef I
    return 1;
}

/* whether a call runs on the team's first thread alone: the one-thread calls (a row's norm, an embedding row) and
 * calls recorded for one thread */
static int plan_alone(long fn, const long *a) {
    switch (fn) {
    case PLAN_GEMV: case PLAN_GEMV_BF16: case PLAN_GEMV_T: case PLAN_GEMV_T_BF16: case PLAN_GEMV_NORMED:
        return a[6] <= 1;
    case PLAN_ATTEND: return a[12] <= 1;
    case PLAN_MLP_HIDDEN: return a[8] <= 1;
    case PLAN_GEMV_Q8: case PLAN_GEMV_Q4: case PLAN_MLP_Q: return a[4] <= 1;
    }
    return 1;
}

/* whether a call's input fits a team thread's own buffers (see "A replayed decode step's team") */
static int plan_fits_team(long fn, const long *a) {
    switch (fn) {
    case PLAN_GEMV_BF16: case PLAN_GEMV_NORMED: return a[5] <= TEAM_FLOATS;
    case PLAN_MLP_HIDDEN: return a[7] <= TEAM_FLOATS;
    case PLAN_GEMV_Q8: case PLAN_GEMV_Q4: return a[3] == 1 && ((const struct q_weights *)a[0])->in <= TEAM_FLOATS;
    case PLAN_MLP_Q: return ((const struct q_weights *)a[0])->in <= TEAM_FLOATS;
    }
    return 1;
}

/* The heads' rows. A block's query, key and value product (q, k and v of every head, one after another) is followed
 * by its attention call, whose threads each take whole kv heads (when they divide them: scratchllm_attend). Each
 * thread can then compute the product's rows of its own heads and go on to attend with them, with no barrier in
 * between: nothing it reads was written by another thread. heads_rows writes thread t of n's three runs of rows
 * (its queries', keys', values') into rows[6] and returns 1 when product call `fn` (args p) feeds attention call
 * `b` so, else 0 (a transposed or many-row product, heads the threads do not divide, int4 rows not in whole
 * blocks). Saves a barrier and the trip of the heads' rows between cores per layer. */
static int heads_rows(long fn, const long *p, const long *b, long t, long n, long *rows) {
    long y, out, el = 4, unit = 1;
    switch (fn) {
    case PLAN_GEMV: y = p[3], out = p[4]; break;
    case PLAN_GEMV_BF16: y = p[3], out = p[4], el = 2; break;
    case PLAN_GEMV_NORMED:
        if (p[10]) return 0; /* transposed */
        y = p[3], out = p[4], el = p[9] ? 2 : 4;
        break;
    case PLAN_GEMV_Q8: case PLAN_GEMV_Q4:
        if (p[3] != 1) return 0;
        y = p[2], out = ((const struct q_weights *)p[0])->out;
        unit = fn == PLAN_GEMV_Q4 ? QROWS : 1;
        break;
    default: return 0;
    }
    long h = b[6], hk = b[7], d = b[8], rep = h / hk;
    if (plan_alone(PLAN_ATTEND, b) || (b[11] ? 2 : 4) != el || hk % n || out != (h + 2 * hk) * d || d % unit
        || b[0] != y || b[1] != y + h * d * el || b[2] != y + (h + hk) * d * el)
        return 0;
    long g0 = t * (hk / n), g1 = g0 + hk / n; /* as the attention call's SHARE(n_kv_head) */
    rows[0] = g0 * rep * d, rows[1] = g1 * rep * d;
    rows[2] = (h + g0) * d, rows[3] = (h + g1) * d;
    rows[4] = (h + hk + g0) * d, rows[5] = (h + hk + g1) * d;
    return 1;
}

/* how many of the calls of `ops` a team of `threads` threads makes as the heads' rows (tests, benchmarks) */
long scratchllm_plan_heads_rows(const struct plan_op *ops, long n, int threads) {
    long count = 0, rows[6];
    for (long i = 0; i + 1 < n; i++) {
        if (ops[i + 1].fn != PLAN_ATTEND || plan_alone(ops[i].fn, ops[i].args)) continue;
        count += heads_rows(ops[i].fn, ops[i].args, ops[i + 1].args, 0, threads, rows);
    }
    return threads > 1 ? count : 0;
}

/* the calls of `ops`: as scratchllm_run_plan says; 0 or the failed call's index + 1 */
static long plan_run(const struct plan_op *ops, long n, long pos, long token, int threads) {
    int team = threads > 1 && threads <= TEAM_MAX && !IN_TEAM;
    for (long i = 0; i < n && team; i++) team = plan_fits_team(ops[i].fn, ops[i].args);
    if (!team) {
        for (long i = 0; i < n; i++) {
            long a[PLAN_ARGS];
            plan_args(ops + i, pos, token, a);
            if (plan_call(ops[i].fn, a)) return i + 1;
        }
        return 0;
    }
    long failed = 0;
    struct team_barrier bar; /* (only the flags a team of `threads` uses are set: the rest is never read) */
    for (int r = 0, d = 1; d < threads; r++, d *= 2)
        for (int t = 0; t < threads; t++) bar.flag[r][t].number = 0;
#pragma omp parallel num_threads(threads)
    {
        team_n = omp_get_num_threads();
        team_t = omp_get_thread_num();
        team_bar = &bar;
        team_number = 0;
        long rows[6];
        for (long i = 0; i < n; i++) {
            long a[PLAN_ARGS];
            plan_args(ops + i, pos, token, a);
            int r = 0, mine = 0;
            if (!plan_alone(ops[i].fn, a)) {
                if (i + 1 < n && ops[i + 1].fn == PLAN_ATTEND) { /* the heads' rows: no barrier before attending */
                    long b[PLAN_ARGS];
                    plan_args(ops + i + 1, pos, token, b);
                    mine = heads_rows(ops[i].fn, a, b, team_t, team_n, rows);
                }
                team_rows = mine ? rows : 0;
                team_runs = 3;
                r = plan_call(ops[i].fn, a);
                team_rows = 0;
            } else if (team_t == 0) { /* on its own: out of the team while it runs */
                team_t = -1;
                r = plan_call(ops[i].fn, a);
                team_t = 0;
            }
            if (mine) continue; /* (a product call does not fail) */
            if (r && team_t == 0) failed = i + 1;
            team_barrier();
            if (__atomic_load_n(&failed, __ATOMIC_RELAXED)) break;
        }
        team_t = -1;
        team_n = 1;
    }
    return failed;
}

/* The first index of the largest of x[0..n) (a NaN counts as largest, the first of equal largest wins), as
 * torch.argmax and sampling.greedy pick: a greedy decode step's token from its logits (scratchllm_run_plan's
 * `pick`). With AVX-512 in two passes over 16 values at a time: the largest value and whether there is a NaN,
 * then the first index holding it. */
static long argmax_c(const float *x, long n) {
    long best = 0;
    for (long i = 0; i < n; i++) {
        if (x[i] != x[i]) return i;
        if (x[i] > x[best]) best = i;
    }
    return best;
}

#ifdef SCRATCHLLM_X86
T512 static long argmax_512(const float *x, long n) {
    long full = n / 16 * 16;
    __m512 m = _mm512_set1_ps(-__builtin_inff());
    __mmask16 nan = 0;
    for (long i = 0; i < full; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m = _mm512_max_ps(m, v);
    }
    float top = _mm512_reduce_max_ps(m);
    for (long i = full; i < n; i++) {
        nan |= x[i] != x[i];
        top = x[i] > top ? x[i] : top;
    }
    if (nan || n < 1) return argmax_c(x, n); /* (a NaN: the plain loop finds the first) */
    __m512 t = _mm512_set1_ps(top);
    for (long i = 0; i < full; i += 16) {
        __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), t, _CMP_EQ_OQ);
        if (hit) return i + __builtin_ctz(hit);
    }
    for (long i = full; i < n; i++)
        if (x[i] == top) return i;
    return 0;
}
#endif

long scratchllm_argmax(const float *x, long n) {
#ifdef SCRATCHLLM_X86
    if (usable(2) == 2) return argmax_512(x, n);
#endif
    return argmax_c(x, n);
}

/* A plan and how it runs (set once: a call passes its address, the position and the token; ctypes converts each
 * argument of a call, ~80 ns apiece) */
struct plan_run {
    const struct plan_op *ops; /* the calls */
    long n;
    long threads;
    const float *logits; /* the step's logits, to pick the greedy token from, or NULL */
    long vocab;
};

/* the calls of `run` for position `pos` and token `token`: as one team of `threads` threads (see "A replayed decode
 * step's team") when every call fits, else one after the other, each with threads of its own. Returns minus (the
 * index + 1 of the first call that failed), else the greedy token when `logits` is not NULL: the argmax of the
 * step's `vocab` logits there once the calls are made (a greedy decode's whole step), else 0. */
long scratchllm_run_plan(const struct plan_run *run, long pos, long token) {
    long failed = plan_run(run->ops, run->n, pos, token, (int)run->threads);
    if (failed) return -failed;
    return run->logits ? scratchllm_argmax(run->logits, run->vocab) : 0;
}
