/* Fused CPU reductions for actstat/fused.py: every statistic of a float32 tensor in one read;
   and the attention numbers of a piece of logits (`attention`, near the end of this file).

   Built by setup.py as the optional extension actstat._kernels; where it cannot be built (no C
   compiler), actstat keeps its torch reductions. The statistics' definitions live in
   actstat/capture.py's docstring; here only how they are computed:

   - The tensor is walked a row at a time (last row first: a module leaves the end of its output
     in the caches), each row in segments of at most `segment` values (fused.SEGMENT: 4096,
     16 KiB, in L1 after the first of their few passes).
   - A segment's sum of |x| (the coordinate size of actstat coord-check) is summed as the sum
     of x is, in float32 blocks added in float64.
   - A segment's sum and its squares are taken of x - k, k its first value, in one pass: in
     float32 over blocks of BLOCK values (8 lanes of 32 values: at most 32 additions per lane)
     and the blocks in float64. The mean is k + sum / n, and the squares are corrected to it
     exactly (sum (x - m)^2 = sum (x - k)^2 - n (m - k)^2). Values far from 0 need the shift:
     summed as x in float32, 1e4 + N(0, 1e-3) lost 0.3 % of its std. Where the correction would
     cancel (k far from the mean) or a square left float32's range, a second pass squares
     x - mean instead, scaled by a power of two. Segments are merged by Chan, Golub and
     LeVeque's update, in float64.
   - Thresholds are compared in float32, as torch compares a float32 tensor with a Python float.
   - A tensor holding NaN or +-inf gives a non-finite mean or m2: the caller then reduces it with
     torch (whose propagation rules the reports document).
   - setup.py compiles this file with finite-math and reassociation flags, so that min, max and
     the sums vectorise (without them the kernel took twice as long). Nothing here depends on
     the order of a sum's terms; the one rewrite those flags allow that would hurt, sum(x - k)
     into sum(x) - n k, GCC does not make (tests/test_capture.py checks the std of
     1e4 + N(0, 1e-3) to 1e-9). A non-finite tensor's other numbers are never used.
   - The kernel runs with the GIL released, on the calling thread or, for a large tensor, on
     torch's own OpenMP pool (below). Several Python threads may call it at once: each call's
     state is on its stack or in its calling thread's working buffer, and the process-wide
     state (the pool's entry points, the buffer's key) is set once, under pthread_once
     (tests/test_threads.py). */

#define _GNU_SOURCE /* dl_iterate_phdr, RTLD_NOLOAD */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER)
#define restrict __restrict
#endif

#define BLOCK 256
#define TILE 32 /* positions whose extremes across channels are tracked at once */
/* values per thread below which a tensor is not shared among threads, and the most threads */
#define PARALLEL (1 << 16)
#define MAX_THREADS 64

/* Threads: torch's own OpenMP pool, found among the libraries loaded in the process (torch
   loaded it before any tensor reached us) and driven through the entry point that GCC's
   `#pragma omp parallel` compiles to. Its workers are still spinning after the module's own
   op, so the team starts in microseconds; a pool of our own (pthreads, or a second OpenMP
   runtime as numba's was) would fight them for the cores, and on the 2-core machine it gained
   nothing (docs/performance.md, benchmarks/kernel.py).
   A tensor's parts are fixed by the thread count asked for, not by the team the runtime gives
   (OMP_THREAD_LIMIT, OMP_DYNAMIC or a nested region give fewer threads): each member reduces
   every n-th part. Where no OpenMP runtime is loaded (torch built without OpenMP, or off
   Linux), the calling thread reduces the parts one after another, to the same numbers. */
#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#define HAVE_POOL
typedef void (*parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*thread_num_fn)(void);
/* written once, by find_pool under pool_once, before any caller reads them */
static parallel_fn omp_parallel;
static thread_num_fn omp_thread_num, omp_num_threads;
static char omp_library[256];
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* The first loaded OpenMP runtime that has the three entry points (GCC's libgomp has them, and
   LLVM's and Intel's runtimes, which export the GOMP_ ABI); its file is kept for `pool()`. */
static int find_runtime(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    const char *name = info->dlpi_name;
    if (!name || !(strstr(name, "libgomp") || strstr(name, "libiomp") || strstr(name, "libomp")))
        return 0;
    void *handle = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle) return 0;
    parallel_fn parallel = (parallel_fn)dlsym(handle, "GOMP_parallel");
    thread_num_fn thread_num = (thread_num_fn)dlsym(handle, "omp_get_thread_num");
    thread_num_fn num_threads = (thread_num_fn)dlsym(handle, "omp_get_num_threads");
    dlclose(handle); /* RTLD_NOLOAD took a reference; the runtime stays loaded by torch's */
    if (!parallel || !thread_num || !num_threads) return 0;
    omp_parallel = parallel;
    omp_thread_num = thread_num;
    omp_num_threads = num_threads;
    snprintf(omp_library, sizeof omp_library, "%s", name);
    return 1;
}

static void find_pool(void) { dl_iterate_phdr(find_runtime, NULL); }
#endif

/* an AVX2 copy of the kernel beside the baseline one, chosen at load time by the CPU (GCC's
   function multi-versioning; ifunc needs glibc, so Linux on x86-64 only) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
/* the attention rows' exp, a chain of multiply-adds, takes half the time fused (FMA: x86-64-v3);
   the statistics above keep "avx2" alone, so that their roundings stay as they were */
#define CLONES_FMA __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#define CLONES_FMA
#endif

typedef struct {
    double count, mean, m2, small, saturated, abs; /* abs: the sum of |x| */
    float lo, hi, gap;
} Acc;

typedef struct {
    float near, mid, half, lo_edge, hi_edge, alive_above;
    int saturation; /* 0: none, 1: |x - mid| >= half, 2: x <= lo_edge or x >= hi_edge */
    int alive_rule; /* a unit is alive where a value is 1: nonzero, 2: above alive_above */
} Params;

static inline void merge(Acc *a, double n, double total, double squares) {
    double both = a->count + n, delta = total / n - a->mean;
    a->mean += delta * n / both;
    a->m2 += squares + delta * delta * (a->count * n / both);
    a->count = both;
}

/* One segment of n >= 1 values: its moments merged into `a`, its near-zero and saturated
   counts added, its extremes in lo and hi. `alive`: per-value flags set where a value is
   nonzero (a row's units), or NULL. */
static inline void reduce_segment(const float *restrict v, ptrdiff_t n, const Params *p, Acc *a,
                                  float *lo_out, float *hi_out, uint8_t *restrict alive) {
    double total = 0.0, squares = 0.0, magnitude = 0.0;
    float lo = v[0], hi = v[0];
    int32_t small = 0;
    const float near = p->near, k = v[0];
    ptrdiff_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        float t = 0.0f, q = 0.0f, m = 0.0f;
        for (int j = 0; j < BLOCK; j++) {
            float x = v[i + j], d = x - k;
            t += d;
            q += d * d;
            m += fabsf(x);
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
            small += fabsf(x) < near;
        }
        total += t;
        squares += q;
        magnitude += m;
    }
    for (; i < n; i++) {
        float x = v[i], d = x - k;
        total += d;
        squares += (double)d * d;
        magnitude += fabsf(x);
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
        small += fabsf(x) < near;
    }
    double mean = k + total / (double)n, offset = total * total / (double)n;
    total = mean * (double)n;
    /* The squares about the first value k stand when k sat near the mean (the offset takes
       at most 8/9 of them: at most a digit lost) and no square of x - k overflowed or lost
       its bits below float32's range; else a second pass squares each x - mean, scaled by a
       power of two (exactly) to max|x| < 1 so that no square overflows or underflows */
    double reach = fmax(fabs((double)lo - k), fabs((double)hi - k));
    if (offset <= squares * (8.0 / 9.0) && reach < 0x1p60 && (reach > 0x1p-60 || reach == 0.0)) {
        squares -= offset;
    } else {
        int exponent;
        frexpf(fmaxf(fabsf(lo), fabsf(hi)), &exponent);
        const float scale = ldexpf(1.0f, -exponent), m32 = (float)mean * scale;
        squares = 0.0;
        for (i = 0; i + BLOCK <= n; i += BLOCK) {
            float q = 0.0f;
            for (int j = 0; j < BLOCK; j++) {
                float d = v[i + j] * scale - m32;
                q += d * d;
            }
            squares += q;
        }
        for (; i < n; i++) {
            double d = (double)(v[i] * scale - m32);
            squares += d * d;
        }
        double shift = mean * scale - (double)m32;
        squares = ldexp(squares - (double)n * shift * shift, 2 * exponent);
    }
    if (squares < 0.0) squares = 0.0;
    if (alive)
        if (p->alive_rule == 2)
            for (i = 0; i < n; i++) alive[i] |= (v[i] > p->alive_above);
        else
            for (i = 0; i < n; i++) alive[i] |= (v[i] != 0.0f);
    if (p->saturation == 1) {
        int32_t s = 0;
        for (i = 0; i < n; i++) s += fabsf(v[i] - p->mid) >= p->half;
        a->saturated += s;
    } else if (p->saturation == 2) {
        int32_t s = 0;
        for (i = 0; i < n; i++) s += (v[i] <= p->lo_edge) | (v[i] >= p->hi_edge);
        a->saturated += s;
    }
    merge(a, (double)n, total, squares);
    a->small += small;
    a->abs += magnitude;
    *lo_out = lo;
    *hi_out = hi;
}

/* Whether every one of n flags is set: checked every ALIVE_CHECK rows, after which a tensor
   whose units are all alive (most) skips the per-value flags for its remaining rows */
#define ALIVE_CHECK 16

static int all_set(const uint8_t *flags, ptrdiff_t n) {
    uint8_t all = 1;
    for (ptrdiff_t i = 0; i < n; i++) all &= flags[i];
    return all;
}

/* Whether a unit's value `v` makes it alive under the rule of p (see reduce_doc) */
static inline int alive_value(const Params *p, float v) {
    return p->alive_rule == 2 ? v > p->alive_above : v != 0.0f;
}

/* x: (rows, units), the unit the column; `alive` (units) or NULL; the gap: the largest range
   across units on one row. `dead` (units int32s, or NULL): room for the units not yet known
   alive once they are few (at most 1 in SPARSE): their values alone are then looked at, row
   by row, instead of every unit's flag (a deep relu MLP keeps a handful of dead units, and
   the per-value flags cost a third of its statistics' time). */
#define SPARSE 8

CLONES static void reduce_rows(const float *x, ptrdiff_t rows, ptrdiff_t units, ptrdiff_t segment,
                               const Params *p, int spread, Acc *a, uint8_t *alive,
                               int32_t *dead) {
    ptrdiff_t left = -1; /* the count of units in `dead`, once it is in use */
    for (ptrdiff_t r = rows - 1; r >= 0; r--) {
        const float *row = x + r * units;
        float row_lo = row[0], row_hi = row[0];
        uint8_t *flags = left < 0 ? alive : NULL;
        for (ptrdiff_t s = 0; s < units; s += segment) {
            ptrdiff_t n = units - s < segment ? units - s : segment;
            float lo, hi;
            reduce_segment(row + s, n, p, a, &lo, &hi, flags ? flags + s : NULL);
            row_lo = lo < row_lo ? lo : row_lo;
            row_hi = hi > row_hi ? hi : row_hi;
        }
        if (spread && row_hi - row_lo > a->gap) a->gap = row_hi - row_lo;
        a->lo = row_lo < a->lo ? row_lo : a->lo;
        a->hi = row_hi > a->hi ? row_hi : a->hi;
        if (left > 0) {
            for (ptrdiff_t j = left - 1; j >= 0; j--)
                if (alive_value(p, row[dead[j]])) {
                    alive[dead[j]] = 1;
                    dead[j] = dead[--left];
                }
        } else if (flags && r % ALIVE_CHECK == 0) {
            ptrdiff_t none = 0;
            for (ptrdiff_t i = 0; i < units; i++) none += !alive[i];
            if (none == 0) {
                alive = NULL;
            } else if (dead && none * SPARSE <= units) {
                left = 0;
                for (ptrdiff_t i = 0; i < units; i++)
                    if (!alive[i]) dead[left++] = (int32_t)i;
            }
        }
    }
}

/* Whether any of n values is nonzero (-0.0 is zero) */
static int any_nonzero(const float *restrict v, ptrdiff_t n) {
    uint32_t bits = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, v + i, sizeof b);
        bits |= b << 1; /* the sign bit dropped */
    }
    return bits != 0;
}

/* Whether any of n values is above t */
static int any_above(const float *restrict v, ptrdiff_t n, float t) {
    int any = 0;
    for (ptrdiff_t i = 0; i < n; i++) any |= v[i] > t;
    return any;
}

/* x: (batch, channels, positions), the unit the channel; `alive` (channels) or NULL; the gap:
   the largest range across channels at one sample and position (`lows`, `highs`: positions
   floats each, or NULL without spread). A sample's channels are contiguous: its moments are
   taken over all of them in segments (short rows, 7 x 7 maps, would otherwise pay a
   segment's fixed cost each), then each channel not yet known alive is looked at for a
   nonzero value, and the positions' extremes are updated channel by channel. */
CLONES static void reduce_channels(const float *x, ptrdiff_t batch, ptrdiff_t channels,
                                   ptrdiff_t positions, ptrdiff_t segment, const Params *p, Acc *a,
                                   uint8_t *alive,
                                   float *restrict lows, float *restrict highs) {
    ptrdiff_t size = channels * positions;
    int dead_left = alive != NULL;
    for (ptrdiff_t b = batch - 1; b >= 0; b--) {
        const float *sample = x + b * size;
        for (ptrdiff_t s = 0; s < size; s += segment) {
            ptrdiff_t n = size - s < segment ? size - s : segment;
            float lo, hi;
            reduce_segment(sample + s, n, p, a, &lo, &hi, NULL);
            a->lo = lo < a->lo ? lo : a->lo;
            a->hi = hi > a->hi ? hi : a->hi;
        }
        if (dead_left) {
            for (ptrdiff_t c = 0; c < channels; c++)
                if (!alive[c])
                    alive[c] = p->alive_rule == 2
                                   ? any_above(sample + c * positions, positions, p->alive_above)
                                   : any_nonzero(sample + c * positions, positions);
            dead_left = !all_set(alive, channels);
        }
        if (lows) {
            /* TILE positions at a time, their extremes across channels kept in registers */
            ptrdiff_t t = 0;
            for (; t + TILE <= positions; t += TILE) {
                float low[TILE], high[TILE];
                memcpy(low, sample + t, sizeof low);
                memcpy(high, sample + t, sizeof high);
                for (ptrdiff_t c = 1; c < channels; c++) {
                    const float *row = sample + c * positions + t;
                    for (int i = 0; i < TILE; i++) {
                        low[i] = row[i] < low[i] ? row[i] : low[i];
                        high[i] = row[i] > high[i] ? row[i] : high[i];
                    }
                }
                float gap = a->gap;
                for (int i = 0; i < TILE; i++) gap = high[i] - low[i] > gap ? high[i] - low[i] : gap;
                a->gap = gap;
            }
            if (t < positions) {
                ptrdiff_t rest = positions - t;
                memcpy(lows, sample + t, rest * sizeof(float));
                memcpy(highs, sample + t, rest * sizeof(float));
                for (ptrdiff_t c = 1; c < channels; c++) {
                    const float *row = sample + c * positions + t;
                    for (ptrdiff_t i = 0; i < rest; i++) {
                        lows[i] = row[i] < lows[i] ? row[i] : lows[i];
                        highs[i] = row[i] > highs[i] ? row[i] : highs[i];
                    }
                }
                for (ptrdiff_t i = 0; i < rest; i++)
                    if (highs[i] - lows[i] > a->gap) a->gap = highs[i] - lows[i];
            }
        }
    }
}

/* One part of a tensor: samples [first, last) of it, reduced by one thread into its own Acc,
   alive flags and position extremes. */
typedef struct {
    const float *x;
    ptrdiff_t first, last, units, positions, segment;
    int channels, spread;
    const Params *p;
    Acc a;
    uint8_t *alive;
    int32_t *dead; /* rows only: room for the units not yet known alive (reduce_rows) */
    float *lows, *highs;
} Part;

static void reduce_part(Part *t) {
    const float *x = t->x + t->first * t->units * (t->channels ? t->positions : 1);
    t->a = (Acc){0.0, 0.0, 0.0, 0.0, 0.0, 0.0, x[0], x[0], 0.0f};
    if (t->channels)
        reduce_channels(x, t->last - t->first, t->units, t->positions, t->segment, t->p, &t->a,
                        t->alive, t->lows, t->highs);
    else
        reduce_rows(x, t->last - t->first, t->units, t->segment, t->p, t->spread, &t->a,
                    t->alive, t->dead);
}

/* `count` parts of `size` bytes each at `parts`, each done by `work`: on the threads of torch's
   OpenMP pool where one is loaded and there is more than one part, else one after another on
   the calling thread. Call it with the GIL released. */
typedef struct {
    void (*work)(void *);
    char *parts;
    size_t size;
    int count;
} Team;

#ifdef HAVE_POOL
static void run_team(void *arg) {
    Team *team = arg;
    int members = omp_num_threads();
    for (int k = omp_thread_num(); k < team->count; k += members)
        team->work(team->parts + (size_t)k * team->size);
}
#endif

static void run_parts(void (*work)(void *), void *parts, size_t size, int count) {
    Team team = {work, parts, size, count};
#ifdef HAVE_POOL
    if (count > 1 && omp_parallel) {
        omp_parallel(run_team, &team, (unsigned)count, 0);
        return;
    }
#endif
    for (int k = 0; k < count; k++) work(team.parts + (size_t)k * size);
}

static void reduce_part_of(void *part) { reduce_part(part); }

/* the parts' numbers into the first's */
static void combine(Part *parts, int count) {
    Acc *a = &parts[0].a;
    for (int k = 1; k < count; k++) {
        Acc *b = &parts[k].a;
        double both = a->count + b->count, delta = b->mean - a->mean;
        a->mean += delta * b->count / both;
        a->m2 += b->m2 + delta * delta * (a->count * b->count / both);
        a->count = both;
        a->small += b->small;
        a->saturated += b->saturated;
        a->abs += b->abs;
        a->lo = b->lo < a->lo ? b->lo : a->lo;
        a->hi = b->hi > a->hi ? b->hi : a->hi;
        a->gap = b->gap > a->gap ? b->gap : a->gap;
        if (parts[0].alive)
            for (ptrdiff_t i = 0; i < parts[0].units; i++) parts[0].alive[i] |= parts[k].alive[i];
    }
}

/* The parts' working memory (alive flags, position extremes): one buffer per calling thread,
   grown when a call needs more and kept until the thread ends. Small buffers malloc'd and
   freed per call were carved out of the large blocks a model's forward had just freed, and a
   large output later found no block to reuse: a captured CNN forward then paid 12,545 page
   faults (one 51 MB feature map) that the bare forward did not. The buffer is the calling
   thread's own because the kernel runs with the GIL released: one buffer for the process was
   overwritten by a second Python thread's call while the first still read it. */
typedef struct {
    size_t size;
    unsigned char data[];
} Workspace;

#if !defined(_WIN32) && !defined(HAVE_POOL)
#include <pthread.h>
#endif
#if defined(_WIN32)
/* no destructor here: a thread's buffer is not freed when the thread ends */
static __declspec(thread) Workspace *own_workspace;
static Workspace *workspace_get(void) { return own_workspace; }
static int workspace_set(Workspace *w) {
    own_workspace = w;
    return 1;
}
#else
/* a thread-specific key rather than a thread-local variable: its destructor frees a thread's
   buffer when the thread ends */
static pthread_key_t workspace_key;
static pthread_once_t workspace_once = PTHREAD_ONCE_INIT;
static int workspace_keyed;

static void make_workspace_key(void) {
    workspace_keyed = pthread_key_create(&workspace_key, free) == 0;
}
static Workspace *workspace_get(void) {
    pthread_once(&workspace_once, make_workspace_key);
    return workspace_keyed ? pthread_getspecific(workspace_key) : NULL;
}
static int workspace_set(Workspace *w) {
    return workspace_keyed && pthread_setspecific(workspace_key, w) == 0;
}
#endif

/* at least `size` bytes of the calling thread's working memory, or NULL (out of memory) */
static unsigned char *workspace_of(size_t size) {
    Workspace *w = workspace_get();
    if (w && size <= w->size) return w->data;
    size_t had = w ? w->size : 0, grown = size > 2 * had ? size : 2 * had;
    Workspace *fresh = malloc(sizeof(Workspace) + grown);
    if (!fresh) return NULL;
    fresh->size = grown;
    if (!workspace_set(fresh)) {
        free(fresh);
        return NULL;
    }
    free(w);
    return fresh->data;
}

static const char reduce_doc[] =
    "reduce(address, batch, units, positions, channels, near, mid, half, lo_edge, hi_edge,\n"
    "       saturation, spread, alive_rule, alive_above, segment, threads) -> (count, mean,\n"
    "       m2, min, max, near_count, saturated_count, gap, dead_units, abs_sum)\n\n"
    "The statistics of the C-contiguous float32 tensor at `address` (which the caller keeps\n"
    "alive): (batch, units) when `channels` is false (positions ignored), else (batch,\n"
    "channels=units, positions). A unit is alive where one of its values is nonzero\n"
    "(alive_rule 1) or above alive_above (2); dead_units is -1 with alive_rule 0. `threads`: at most\n"
    "that many parts of samples (each of at least PARALLEL values), shared among threads of\n"
    "torch's OpenMP pool where one is loaded; the numbers depend on the part count only.";

static PyObject *reduce(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError, "reduce() takes 16 arguments");
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t batch = PyLong_AsSsize_t(args[1]), units = PyLong_AsSsize_t(args[2]),
               positions = PyLong_AsSsize_t(args[3]);
    int channels = PyObject_IsTrue(args[4]);
    Params p;
    p.near = (float)PyFloat_AsDouble(args[5]);
    p.mid = (float)PyFloat_AsDouble(args[6]);
    p.half = (float)PyFloat_AsDouble(args[7]);
    p.lo_edge = (float)PyFloat_AsDouble(args[8]);
    p.hi_edge = (float)PyFloat_AsDouble(args[9]);
    p.saturation = (int)PyLong_AsLong(args[10]);
    int spread = PyObject_IsTrue(args[11]);
    p.alive_rule = (int)PyLong_AsLong(args[12]);
    p.alive_above = (float)PyFloat_AsDouble(args[13]);
    int want_alive = p.alive_rule != 0;
    Py_ssize_t segment = PyLong_AsSsize_t(args[14]);
    long threads = PyLong_AsLong(args[15]);
    if (PyErr_Occurred()) return NULL;
    if (address == NULL || batch < 1 || units < 1 || (channels && positions < 1) || segment < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "reduce(): an empty tensor, a null address or a segment below 1");
        return NULL;
    }
    if (!channels) positions = 1;
    /* a thread costs its start (tens of microseconds): only large tensors are shared */
    double values = (double)batch * (double)units * (double)positions;
    int count = (int)(values / PARALLEL < threads ? values / PARALLEL : threads);
#ifdef HAVE_POOL
    pthread_once(&pool_once, find_pool);
#endif
    count = count < 1 ? 1 : (count > batch ? (int)batch : (count > MAX_THREADS ? MAX_THREADS : count));
    Part parts[MAX_THREADS];
    /* per part: `units` alive flags, (rows) `units` int32 indices, then (with a feature map's
       spread) two float arrays of `positions`, each rounded up to 64 bytes */
    size_t flags = want_alive ? ((size_t)units + 63) / 64 * 64 : 0;
    size_t indices = want_alive && !channels && units <= INT32_MAX
                         ? ((size_t)units * sizeof(int32_t) + 63) / 64 * 64
                         : 0;
    size_t extremes = channels && spread ? ((size_t)positions * sizeof(float) + 63) / 64 * 64 : 0;
    size_t per_part = flags + indices + 2 * extremes;
    unsigned char *work = workspace_of(per_part * (size_t)count + 1);
    if (!work) return PyErr_NoMemory();
    for (int k = 0; k < count; k++) {
        Part *t = &parts[k];
        unsigned char *mine = work + per_part * (size_t)k;
        *t = (Part){address, batch * k / count, batch * (k + 1) / count, units, positions,
                    segment, channels, spread, &p};
        if (want_alive) {
            t->alive = mine;
            memset(t->alive, 0, (size_t)units);
        }
        if (indices) t->dead = (int32_t *)(mine + flags);
        if (extremes) {
            t->lows = (float *)(mine + flags);
            t->highs = (float *)(mine + flags + extremes);
        }
    }
    Py_BEGIN_ALLOW_THREADS
    run_parts(reduce_part_of, parts, sizeof(Part), count);
    combine(parts, count);
    Py_END_ALLOW_THREADS
    Acc a = parts[0].a;
    double dead = -1.0;
    if (want_alive) {
        Py_ssize_t none = 0;
        for (Py_ssize_t i = 0; i < units; i++) none += !parts[0].alive[i];
        dead = (double)none;
    }
    return Py_BuildValue("(dddddddddd)", a.count, a.mean, a.m2, (double)a.lo, (double)a.hi,
                         a.small, a.saturated, (double)a.gap, dead, a.abs);
}

/* Attention rows: the attention numbers of actstat/stream.py's `attention_numbers`, a row of
   logits (one query's, over its keys) at a time. A key takes part where its logit is above
   `floor` (a masked key's is -inf or its dtype's lowest); a row's max m is over all its
   logits (a masked one is never above an allowed one). With d = l - m over the allowed keys,
   e = exp(d), S = sum e and U = sum e d, the row's entropy -sum p ln p of p = e / S is
   ln S - U / S (no logarithm per key); it is divided by ln of the allowed keys, and rows with
   fewer than two are left out. exp is a degree-6 polynomial on [-ln2/2, ln2/2] times 2^n
   (Cephes' expf, within 2 ulp), written so that it vectorises; below -87 (exp < 2^-125,
   nothing beside the row's max of 1) it is 0. The caller checks that the logits hold no NaN
   or +inf (their max is finite): a row's max is then finite, and every d is. */
#define EXP_LOW -87.0f

static inline float exp_nonpositive(float d) {
    float x = d > EXP_LOW ? d : EXP_LOW;
    int32_t n = -(int32_t)(0.5f - x * 1.44269504088896341f); /* round(x / ln 2), x <= 0 */
    float fn = (float)n;
    float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
                4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return d > EXP_LOW ? y * scale : 0.0f;
}

typedef struct {
    const float *x;
    ptrdiff_t first, last, heads, queries, keys, stride_b, stride_h, stride_q;
    float floor;
    double *sums; /* 2 heads: per head the sum of normalised entropies, then the rows counted */
} Rows;

CLONES_FMA static void attention_part(Rows *t) {
    const ptrdiff_t keys = t->keys, queries = t->queries, heads = t->heads;
    const float floor = t->floor;
    /* the first row's (sample, head, query), then counted on: no division per row */
    ptrdiff_t q = t->first % queries, h = t->first / queries % heads,
              b = t->first / (queries * heads);
    int32_t last_n = 0;
    double log_n = 0.0; /* ln of the last row's allowed keys (most rows have as many) */
    for (ptrdiff_t row = t->first; row < t->last; row++) {
        const float *restrict l = t->x + b * t->stride_b + h * t->stride_h + q * t->stride_q;
        ptrdiff_t head = h;
        if (++q == queries) {
            q = 0;
            if (++h == heads) {
                h = 0;
                b++;
            }
        }
        float m = l[0];
        int32_t n = 0;
        for (ptrdiff_t i = 0; i < keys; i++) {
            m = l[i] > m ? l[i] : m;
            n += l[i] > floor;
        }
        if (n < 2) continue;
        double total = 0.0, weighted = 0.0;
        for (ptrdiff_t i = 0; i < keys; i += BLOCK) {
            ptrdiff_t end = keys - i < BLOCK ? keys : i + BLOCK;
            float s = 0.0f, u = 0.0f;
            for (ptrdiff_t j = i; j < end; j++) {
                float d = l[j] > floor ? l[j] - m : EXP_LOW;
                d = d > EXP_LOW ? d : EXP_LOW;
                float e = exp_nonpositive(d);
                s += e;
                u += e * d;
            }
            total += s;
            weighted += u;
        }
        if (n != last_n) {
            last_n = n;
            log_n = log((double)n);
        }
        t->sums[head] += (log(total) - weighted / total) / log_n;
        t->sums[heads + head] += 1.0;
    }
}

static void attention_part_of(void *part) { attention_part(part); }

static const char attention_doc[] =
    "attention(address, batch, heads, queries, keys, stride_b, stride_h, stride_q, floor,\n"
    "          sums, threads) -> None\n\n"
    "Adds the attention numbers of the float32 logits at `address` (batch, heads, queries,\n"
    "keys; the keys contiguous, the other strides in values) to the 2 heads float64s at\n"
    "`sums`: per head the sum of the rows' normalised entropies, then per head the count of\n"
    "rows with at least two allowed keys (above `floor`). The logits must hold no NaN or +inf.\n"
    "`threads`: at most that many parts of rows, shared among threads of torch's OpenMP pool\n"
    "where one is loaded; the numbers depend on the part count only.";

static PyObject *attention(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "attention() takes 11 arguments");
        return NULL;
    }
    const float *address = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t sizes[7];
    for (int i = 0; i < 7; i++) sizes[i] = PyLong_AsSsize_t(args[1 + i]);
    float floor = (float)PyFloat_AsDouble(args[8]);
    double *sums = PyLong_AsVoidPtr(args[9]);
    long threads = PyLong_AsLong(args[10]);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t batch = sizes[0], heads = sizes[1], queries = sizes[2], keys = sizes[3];
    if (address == NULL || sums == NULL || batch < 1 || heads < 1 || queries < 1 || keys < 1) {
        PyErr_SetString(PyExc_ValueError, "attention(): empty logits or a null address");
        return NULL;
    }
    ptrdiff_t rows = batch * heads * queries, width = 2 * heads;
    double values = (double)rows * (double)keys;
    int count = (int)(values / PARALLEL < threads ? values / PARALLEL : threads);
#ifdef HAVE_POOL
    pthread_once(&pool_once, find_pool);
#endif
    count = count < 1 ? 1 : (count > rows ? (int)rows : (count > MAX_THREADS ? MAX_THREADS : count));
    double *work = (double *)workspace_of((size_t)count * (size_t)width * sizeof(double));
    if (!work) return PyErr_NoMemory();
    Rows parts[MAX_THREADS];
    for (int k = 0; k < count; k++) {
        parts[k] = (Rows){address, rows * k / count, rows * (k + 1) / count, heads, queries, keys,
                          sizes[4], sizes[5], sizes[6], floor, work + (size_t)k * width};
        memset(parts[k].sums, 0, (size_t)width * sizeof(double));
    }
    Py_BEGIN_ALLOW_THREADS
    run_parts(attention_part_of, parts, sizeof(Rows), count);
    for (int k = 0; k < count; k++)
        for (ptrdiff_t i = 0; i < width; i++) sums[i] += parts[k].sums[i];
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *pool(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
#ifdef HAVE_POOL
    pthread_once(&pool_once, find_pool);
    if (omp_parallel) return PyUnicode_DecodeFSDefault(omp_library);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reduce", (PyCFunction)(void (*)(void))reduce, METH_FASTCALL, reduce_doc},
    {"attention", (PyCFunction)(void (*)(void))attention, METH_FASTCALL, attention_doc},
    {"pool", pool, METH_NOARGS,
     "pool() -> str | None\n\nThe file of the OpenMP runtime whose threads share a large tensor, "
     "or None: the calling thread reduces its parts alone. Looked up once, at the first call of "
     "reduce or pool: call it after importing torch (fused.py does)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "actstat's fused CPU reductions (see actstat/fused.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
