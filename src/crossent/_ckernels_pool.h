/* A persistent pool of worker threads for the kernels (included once by _ckernels.c).
 *
 * Why not a thread per call: creating and joining a thread cost 50-90 us per call on the
 * 2-vCPU VMs we measure on, so two threads made a 66 x 1000 forward twice as slow as one
 * (150 us against 68). Waking a sleeping thread costs as much there (the idle vCPU is
 * halted), so a pool alone does not fix that either. Hence:
 *
 * - work is claimed, not assigned: a job is a number of items (chunks of rows, or the
 *   shares of a wide row) that every participating thread takes one at a time from a shared
 *   counter. The caller starts at once; a helper that wakes late takes what is left, or
 *   nothing, so a call is never much slower than on one thread. Each item's result depends
 *   only on the item, never on the thread that ran it: the bits do not depend on timing.
 * - helpers spin briefly on the job counter after a job (POOL_SPIN_NS) before sleeping,
 *   so that back-to-back calls find them awake - but only while calls do come back to back
 *   (the last gap between jobs shorter than the spin): in a PyTorch training step the next
 *   call is milliseconds away, and a spinning helper only takes a CPU from PyTorch's own
 *   threads (a 256 x 1000 classifier step: +0.9 ms spinning after every call, +0.3 ms not).
 *
 * One job at a time: a second caller (another Python thread, the GIL being released while a
 * kernel runs) does not wait for the pool but runs its job alone. After fork() the child has
 * no workers (only the forking thread survives): the pool is reset in the child and starts
 * its workers again on first use.
 */

#include <signal.h>
#include <time.h>

/* The body every participant runs: claim items with pool_claim until none is left. */
typedef void (*pool_fn)(void *ctx, int tid);

#define POOL_MAX 256
#ifndef POOL_SPIN_NS
#define POOL_SPIN_NS 100000 /* a helper spins this long after a job before sleeping */
#endif

static struct {
    pthread_mutex_t mu;  /* guards the fields below but gen (also read while spinning) */
    pthread_cond_t wake; /* a new job (gen bumped) */
    pthread_cond_t done; /* the last active helper left a closed job */
    pthread_mutex_t use; /* held by the caller whose job the pool runs */
    int n_workers;       /* started workers: tids 1 .. n_workers */
    int sleepers;        /* workers waiting on wake (no broadcast needed when 0) */
    unsigned long gen;   /* job counter */
    pool_fn fn;
    void *ctx;
    int nt;              /* threads allowed in the current job (tids 0 .. nt - 1) */
    int open;            /* helpers may still join the current job */
    int active;          /* helpers inside the current job */
    int atfork;          /* child handler registered */
    long long spin_ns;   /* how long helpers spin after the current job */
    long long last_end;  /* when the last job ended (0: none yet) */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, NULL, NULL, 0, 0, 0, 0, POOL_SPIN_NS, 0};

static unsigned long pool_start_gen[POOL_MAX];

static inline void pool_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long long pool_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* the conditions the pool waits for by spinning */
static int pool_gen_changed(const void *seen) {
    return __atomic_load_n(&pool.gen, __ATOMIC_ACQUIRE) != *(const unsigned long *)seen;
}
static int pool_helpers_done(const void *unused) {
    (void)unused;
    return __atomic_load_n(&pool.active, __ATOMIC_ACQUIRE) == 0;
}

/* spin until done(arg) (returns 1) or about ns nanoseconds have passed (returns 0) */
static int pool_spin(int (*done)(const void *), const void *arg, long long ns) {
    if (ns <= 0) return 0;
    const long long until = pool_now_ns() + ns;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (done(arg)) return 1;
            pool_relax();
        }
        if (pool_now_ns() > until) return 0;
    }
}

static void *pool_worker(void *arg) {
    const int tid = (int)(intptr_t)arg;
    unsigned long seen = pool_start_gen[tid];
    long long spin = POOL_SPIN_NS; /* (started for a job that is about to be published) */
    sigset_t all; /* signals are for the program's own threads (Python's handlers) */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        pool_spin(pool_gen_changed, &seen, spin);
        pthread_mutex_lock(&pool.mu);
        while (pool.gen == seen) {
            pool.sleepers++;
            pthread_cond_wait(&pool.wake, &pool.mu);
            pool.sleepers--;
        }
        seen = pool.gen;
        spin = pool.spin_ns;
        if (!pool.open || tid >= pool.nt) { /* finished already, or not wanted this time */
            pthread_mutex_unlock(&pool.mu);
            continue;
        }
        pool.active++;
        const pool_fn fn = pool.fn;
        void *const ctx = pool.ctx;
        pthread_mutex_unlock(&pool.mu);
        fn(ctx, tid);
        pthread_mutex_lock(&pool.mu);
        if (__atomic_sub_fetch(&pool.active, 1, __ATOMIC_RELEASE) == 0 && !pool.open)
            pthread_cond_signal(&pool.done);
        pthread_mutex_unlock(&pool.mu);
    }
    return NULL;
}

static void pool_after_fork_in_child(void) {
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    pool.mu = mu;
    pool.use = mu;
    pool.wake = cv;
    pool.done = cv;
    pool.n_workers = pool.sleepers = pool.open = pool.active = 0;
}

/* Start workers up to tids 1 .. want (the caller holds pool.use); returns how many run. */
static int pool_grow(int want) {
    if (!pool.atfork) pool.atfork = pthread_atfork(NULL, NULL, pool_after_fork_in_child) == 0;
    if (!pool.atfork) return 0; /* without the fork handler a forked child would wait forever */
    while (pool.n_workers < want) {
        const int tid = pool.n_workers + 1;
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pool_start_gen[tid] = pool.gen; /* unchanged until the caller publishes its job */
        const int ok = pthread_create(&th, &attr, pool_worker, (void *)(intptr_t)tid) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        pool.n_workers = tid;
    }
    return pool.n_workers;
}

/* Run fn(ctx, tid) in the calling thread (tid 0) and in up to nt - 1 helpers that join while
 * it runs; returns when every participant has returned. fn must claim its work (pool_claim),
 * so that whoever runs, and however many, the same items get done. */
static void pool_run(int nt, pool_fn fn, void *ctx) {
    if (nt <= 1 || pthread_mutex_trylock(&pool.use) != 0) {
        fn(ctx, 0); /* one thread, or the pool is busy with another caller's job */
        return;
    }
    const int workers = pool_grow(nt - 1);
    const long long start = pool_now_ns();
    pthread_mutex_lock(&pool.mu);
    pool.spin_ns = pool.last_end && start - pool.last_end < POOL_SPIN_NS ? POOL_SPIN_NS : 0;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.nt = workers + 1 < nt ? workers + 1 : nt;
    pool.open = 1;
    pool.active = 0;
    __atomic_store_n(&pool.gen, pool.gen + 1, __ATOMIC_RELEASE);
    if (pool.sleepers) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    fn(ctx, 0);
    pthread_mutex_lock(&pool.mu);
    pool.open = 0; /* the work is all claimed: late helpers go back to waiting */
    pthread_mutex_unlock(&pool.mu);
    /* helpers still in the job are finishing their last item: wait without sleeping (a
     * sleeping caller is woken as slowly as a sleeping helper) */
    pool_spin(pool_helpers_done, NULL, POOL_SPIN_NS);
    pthread_mutex_lock(&pool.mu);
    while (pool.active > 0) pthread_cond_wait(&pool.done, &pool.mu);
    pool.last_end = pool_now_ns();
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&pool.use);
}

/* The next unclaimed item of n (counter shared by the job's participants), or -1. */
static inline Py_ssize_t pool_claim(Py_ssize_t *next, Py_ssize_t n) {
    const Py_ssize_t i = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
    return i < n ? i : -1;
}
