// gpubp/emulator_runtime.h: what nvcc and a GPU give CUDA code, for running it on the host CPU.
//
// gpubp/emulator.py builds one translation unit per kernel source: this header, then the CUDA
// code (its __shared__ declarations rewritten into the checked types below; NVRTC and nvcc
// compile the untouched code), then GPUBP_EMU_ENTRY(kernel, cooperative) for each kernel. An
// entry returns 0, or 1 with a one-line message in gpubp_emu_error(); Python raises it.
//
// Two launchers. A kernel whose source never cooperates (no __syncthreads, __shared__, warp
// functions or atomics: emulator.py decides) runs serially, each block's threads one after
// another to completion, one call per thread. Every other kernel runs each block's threads as
// fibers that meet at barriers and warp collectives: between two meetings the runnable threads
// run one at a time, each until its next meeting, in an order shuffled by a seeded generator,
// so shared memory read without the barrier that should guard it holds another thread's data,
// or the NaN poison written at each block's start, and the result is wrong here as on a GPU.
// Blocks run one after another, so one copy of each __shared__ array serves every block.
//
// Why ucontext fibers: __syncthreads() must suspend a thread anywhere, deep inside __device__
// helpers, and resume it later. A stackful fiber does that inside a plain function call, so
// CUDA source compiles unchanged. C++20 coroutines are stackless: every function on the way
// to a barrier would have to become a coroutine, a rewrite of the source. OS threads would need
// one thread per CUDA thread plus a token passed between them to keep the seeded order (two
// futex calls per switch), and a thread that breaks a rule could not simply be abandoned.
// Fibers share one OS thread, so the order is exactly the shuffle, and a failed block is left
// behind by never resuming its fibers; the next launch makes them anew.
//
// Errors (out-of-bounds shared index, a barrier or warp call that not every thread reaches,
// lanes that disagree) stop the launch with a message naming the kernel, the block and, for a
// thread's own error, the thread. Not detected: races on global memory (a thread is never
// interrupted between meetings), indexing through pointers derived from a shared array, a
// fiber's stack overflow (a guard page stops it with SIGSEGV).
#ifndef GPUBP_EMULATOR_RUNTIME_H
#define GPUBP_EMULATOR_RUNTIME_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <mutex>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// What nvcc defines
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// emulator.py rewrites every __shared__ declaration it can read; one it cannot (from a macro)
// becomes a plain static, shared by all threads since blocks run one after another.
#define __shared__ static
#define GPUBP_EMU_EXPORT extern "C" __attribute__((visibility("default")))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
// What a launch sets, one copy per OS thread: launches from two host threads (two networks trained
// at once, each replaying its graph) run side by side; fibers share their OS thread's copy.
static thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;  // the scheduler sets threadIdx per fiber
static constexpr int warpSize = 32;

namespace gpubp_emu {

// ---------------------------------------------------------------------------------------------
// Errors: a one-line message for Python
// ---------------------------------------------------------------------------------------------
static thread_local char error_text[1024];  // read back by the thread whose launch failed
static thread_local const char* kernel_name = "";

inline void vsay(bool name_thread, const char* fmt, va_list ap) {
    char what[768];
    vsnprintf(what, sizeof what, fmt, ap);
    int n = snprintf(error_text, sizeof error_text, "kernel %s block (%u,%u,%u)", kernel_name, blockIdx.x,
                     blockIdx.y, blockIdx.z);
    if (name_thread && n > 0 && (size_t)n < sizeof error_text)
        n += snprintf(error_text + n, sizeof error_text - n, " thread (%u,%u,%u)", threadIdx.x, threadIdx.y,
                      threadIdx.z);
    if (n > 0 && (size_t)n < sizeof error_text) snprintf(error_text + n, sizeof error_text - n, ": %s", what);
}

// An error the scheduler finds in a whole block (a barrier nobody can pass).
__attribute__((format(printf, 1, 2))) inline void block_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsay(false, fmt, ap);
    va_end(ap);
}

[[noreturn]] inline void abort_thread();

// An error of the running thread: the message, then the thread never runs again.
[[noreturn]] __attribute__((format(printf, 1, 2), noinline, cold)) inline void thread_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsay(true, fmt, ap);
    va_end(ap);
    abort_thread();
}

// ---------------------------------------------------------------------------------------------
// Fibers: one per thread of the block, reused for every block of a launch
// ---------------------------------------------------------------------------------------------
enum State : unsigned char { RUNNABLE, AT_BARRIER, AT_WARP, DONE };
enum WarpOp : unsigned char { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, SYNCWARP };
static const char* const op_names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                       "__syncwarp"};

struct WarpCall {  // what a lane asks of its warp: every lane in the mask must ask the same
    WarpOp op;
    unsigned mask;
    int width;
    unsigned size;  // bytes of the value moved
    unsigned arg;   // srcLane, delta or laneMask: may differ between lanes
    uint64_t value;
};

struct Fiber {
    ucontext_t context;
    dim3 tid;
    State state;
    int line;  // AT_BARRIER: the source line of the __syncthreads
    WarpCall call;  // AT_WARP
    uint64_t result;
};

constexpr unsigned MAX_THREADS = 1024;
// CUDA gives a thread 1 KiB of stack by default; host code at -O2 and libm want more. Only the
// pages a fiber touches are ever committed.
constexpr size_t STACK_BYTES = 256 * 1024;

static Fiber* fibers;
static unsigned fiber_capacity, thread_count;
static void* stacks[MAX_THREADS];  // lazily mapped, kept for the library's life
static unsigned order[MAX_THREADS];
static ucontext_t scheduler;
static thread_local Fiber* current;  // the running fiber; null in a serial launch
static bool thread_failed;
static void (*thread_body)(void**);
static void** thread_params;
static thread_local jmp_buf serial_exit;
// The fibers, their stacks and the __shared__ arrays are one set per library: one cooperative
// launch at a time (a serial one touches none of them).
static std::mutex cooperative_launch;

inline void abort_thread() {
    if (!current) longjmp(serial_exit, 1);
    thread_failed = true;
    swapcontext(&current->context, &scheduler);
    __builtin_unreachable();  // the scheduler never resumes a failed fiber
}

inline void yield_to_scheduler() { swapcontext(&current->context, &scheduler); }

inline void fiber_main() {
    for (;;) {  // one pass per block
        thread_body(thread_params);
        current->state = DONE;
        yield_to_scheduler();
    }
}

inline size_t guard_bytes() { return (size_t)sysconf(_SC_PAGESIZE); }

inline bool reserve_fibers(unsigned n) {
    if (n > fiber_capacity) {
        free(fibers);
        fibers = static_cast<Fiber*>(calloc(n, sizeof(Fiber)));
        fiber_capacity = fibers ? n : 0;
        if (!fibers) return false;
    }
    for (unsigned i = 0; i < n; ++i) {
        if (stacks[i]) continue;
        void* p = mmap(nullptr, STACK_BYTES + guard_bytes(), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return false;
        mprotect(p, guard_bytes(), PROT_NONE);  // stacks grow down onto the guard page
        stacks[i] = p;
    }
    return true;
}

inline void make_fibers(unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = fibers[i];
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = static_cast<char*>(stacks[i]) + guard_bytes();
        f.context.uc_stack.ss_size = STACK_BYTES;
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_main, 0);
        f.tid = dim3{i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y)};
    }
}

struct Rng {  // splitmix64: small, and fixed across compilers and libraries
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
};

// Runs every runnable fiber, in shuffled order, until each meets a barrier, a warp call or its
// end. False when one failed.
inline bool run_round(Rng& rng) {
    unsigned n = 0;
    for (unsigned i = 0; i < thread_count; ++i)
        if (fibers[i].state == RUNNABLE) order[n++] = i;
    for (unsigned i = n; i > 1; --i) std::swap(order[i - 1], order[rng.next() % i]);
    for (unsigned k = 0; k < n; ++k) {
        current = &fibers[order[k]];
        threadIdx = current->tid;
        swapcontext(&scheduler, &current->context);
        if (thread_failed) return false;
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// Warp collectives: shuffles and __syncwarp complete when every lane in the mask has arrived
// ---------------------------------------------------------------------------------------------
inline unsigned lanes_present(unsigned base) {  // the block's last warp may be short
    unsigned n = thread_count - base;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

inline bool same_call(const WarpCall& a, const WarpCall& b) {
    return a.op == b.op && a.mask == b.mask && a.width == b.width && a.size == b.size;
}

// The lane whose value `lane` receives, as the PTX ISA's shfl.sync defines it with the operands
// CUDA's intrinsics pass: b[4:0] is the lane argument, c[12:8] = 32 - width marks the segment.
inline unsigned source_lane(const WarpCall& c, unsigned lane) {
    int seg = 32 - c.width, b = (int)(c.arg & 31), l = (int)lane;
    int min_lane = l & seg, max_lane = min_lane | (31 & ~seg), j = l;
    switch (c.op) {
        case SHFL_UP: j = l - b >= min_lane ? l - b : l; break;
        case SHFL_DOWN: j = l + b <= max_lane ? l + b : l; break;
        case SHFL_XOR: j = (l ^ b) <= max_lane ? l ^ b : l; break;  // earlier segments allowed
        case SHFL_IDX: j = min_lane | (b & ~seg); break;
        case SYNCWARP: break;
    }
    return (unsigned)j;
}

inline unsigned group_of(unsigned i) {  // the lanes lane i waits for, within its warp
    return fibers[i].call.mask & lanes_present(i & ~31u);
}

inline bool group_arrived(unsigned i) {
    unsigned base = i & ~31u, m = group_of(i);
    for (unsigned l = 0; l < 32; ++l)
        if ((m >> l & 1) && !(fibers[base + l].state == AT_WARP && same_call(fibers[base + l].call, fibers[i].call)))
            return false;
    return true;
}

// Hands each lane of lane i's group its result and lets the group run on. False when a lane reads
// one outside the group (the value is undefined on a GPU).
inline bool complete_group(unsigned i) {
    unsigned base = i & ~31u, m = group_of(i);
    const WarpCall& c = fibers[i].call;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(m >> l & 1) || c.op == SYNCWARP) continue;
        unsigned src = source_lane(fibers[base + l].call, l);
        if (!(m >> src & 1)) {
            block_error("warp %u: lane %u's %s(mask 0x%08x) reads lane %u, which %s", base / 32, l, op_names[c.op],
                        c.mask, src, lanes_present(base) >> src & 1 ? "is not in the mask" : "does not exist");
            return false;
        }
        fibers[base + l].result = fibers[base + src].call.value;
    }
    for (unsigned l = 0; l < 32; ++l)
        if (m >> l & 1) fibers[base + l].state = RUNNABLE;
    return true;
}

// Completes every warp call whose lanes have all arrived: how many, or -1 on an error.
inline int release_warps() {
    int released = 0;
    for (unsigned i = 0; i < thread_count; ++i) {
        if (fibers[i].state != AT_WARP || !group_arrived(i)) continue;
        if (!complete_group(i)) return -1;
        ++released;
    }
    return released;
}

template <class T>
T warp_call(WarpOp op, unsigned mask, T value, unsigned arg, int width) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "a warp shuffle moves at most 8 bytes");
    if (!current) thread_error("%s outside a cooperative launch", op_names[op]);  // emulator.py prevents it
    unsigned lane = (unsigned)(current - fibers) & 31;
    if (width < 1 || width > 32 || (width & (width - 1)))
        thread_error("%s with width %d: it must be a power of 2 from 1 to 32", op_names[op], width);
    if (!(mask >> lane & 1)) thread_error("%s with mask 0x%08x leaves out the calling lane %u", op_names[op], mask, lane);
    current->call = WarpCall{op, mask, width, (unsigned)sizeof(T), arg, 0};
    memcpy(&current->call.value, &value, sizeof(T));
    current->state = AT_WARP;
    yield_to_scheduler();
    T out;
    memcpy(&out, &current->result, sizeof(T));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Barriers, and what to say when no thread can go on
// ---------------------------------------------------------------------------------------------
inline void syncthreads(int line) {
    if (!current) thread_error("__syncthreads outside a cooperative launch");  // emulator.py prevents it
    current->state = AT_BARRIER;
    current->line = line;
    yield_to_scheduler();
}

inline bool release_barrier() {  // every thread at the same __syncthreads: all go on
    for (unsigned i = 0; i < thread_count; ++i)
        if (fibers[i].state != AT_BARRIER || fibers[i].line != fibers[0].line) return false;
    for (unsigned i = 0; i < thread_count; ++i) fibers[i].state = RUNNABLE;
    return true;
}

inline bool all_done() {
    for (unsigned i = 0; i < thread_count; ++i)
        if (fibers[i].state != DONE) return false;
    return true;
}

inline void describe(const Fiber& f, char* out, size_t n) {
    if (f.state == DONE) snprintf(out, n, "exited");
    else if (f.state == AT_BARRIER) snprintf(out, n, "waits at __syncthreads (line %d)", f.line);
    else snprintf(out, n, "is in %s(mask 0x%08x, width %d) of %u bytes", op_names[f.call.op], f.call.mask,
                  f.call.width, f.call.size);
}

inline void diagnose_warp(unsigned i) {  // lane i waits for a lane that will never join it
    unsigned base = i & ~31u, m = group_of(i);
    for (unsigned l = 0; l < 32; ++l) {
        const Fiber& f = fibers[base + l];
        if (!(m >> l & 1) || (f.state == AT_WARP && same_call(f.call, fibers[i].call))) continue;
        char mine[160], theirs[160];
        describe(fibers[i], mine, sizeof mine);
        describe(f, theirs, sizeof theirs);
        block_error("warp %u: lane %u %s, but lane %u of its mask %s", base / 32, i - base, mine, l, theirs);
        return;
    }
}

inline void diagnose_barrier() {  // only barriers and exits remain
    unsigned w = 0, waiting = 0;
    for (unsigned i = 0; i < thread_count; ++i)
        if (fibers[i].state == AT_BARRIER && !waiting++) w = i;
    for (unsigned i = 0; i < thread_count; ++i) {
        const dim3 a = fibers[w].tid, b = fibers[i].tid;
        if (fibers[i].state == DONE) {
            block_error("%u of %u threads wait at __syncthreads (line %d), but thread (%u,%u,%u) exited without "
                        "reaching it", waiting, thread_count, fibers[w].line, b.x, b.y, b.z);
            return;
        }
        if (fibers[i].line != fibers[w].line) {
            block_error("thread (%u,%u,%u) waits at __syncthreads on line %d, thread (%u,%u,%u) at the one on line "
                        "%d", a.x, a.y, a.z, fibers[w].line, b.x, b.y, b.z, fibers[i].line);
            return;
        }
    }
}

inline void diagnose_deadlock() {
    for (unsigned i = 0; i < thread_count; ++i)
        if (fibers[i].state == AT_WARP) return diagnose_warp(i);
    diagnose_barrier();
}

// ---------------------------------------------------------------------------------------------
// Shared memory: checked arrays, poisoned at each block's start
// ---------------------------------------------------------------------------------------------
struct Region {
    void* p;
    size_t n;
};
static Region static_shared[256];  // every __shared__ array constructed so far (more go unpoisoned)
static unsigned static_shared_count;
static unsigned char* dynamic_shared_base;
static size_t dynamic_shared_bytes;

inline void poison(void* p, size_t n) { memset(p, 0xff, n); }  // NaN as float or double, -1 as an integer

inline void poison_shared() {
    for (unsigned i = 0; i < static_shared_count; ++i) poison(static_shared[i].p, static_shared[i].n);
    if (dynamic_shared_base) poison(dynamic_shared_base, dynamic_shared_bytes);
}

[[noreturn]] __attribute__((noinline, cold)) inline void out_of_bounds(const char* name, long long i, size_t n,
                                                                       int dim) {
    if (dim == 0)
        thread_error("index %lld is out of bounds for extern __shared__ %s[] of %zu elements (the launch gave %zu "
                     "bytes of dynamic shared memory)", i, name, n, dynamic_shared_bytes);
    thread_error("index %lld is out of bounds for __shared__ %s: dimension %d has %zu elements", i, name, dim, n);
}

template <class I>
inline void check_index(const char* name, I i, size_t n, int dim) {
    static_assert(std::is_integral<I>::value || std::is_enum<I>::value, "index a __shared__ array with an integer");
    if ((std::is_signed<I>::value && (long long)i < 0) || (unsigned long long)i >= n)
        out_of_bounds(name, (long long)i, n, dim);
}

template <class A>
struct shared_ref;

template <class A, class I>
inline decltype(auto) at(A& a, I i, const char* name, int dim) {
    check_index(name, i, std::extent<A>::value, dim);
    if constexpr (std::rank<A>::value == 1)
        return (a[i]);
    else
        return shared_ref<std::remove_extent_t<A>>{a[i], name, dim + 1};
}

template <class A>  // one row of a multi-dimensional __shared__ array, still checked
struct shared_ref {
    A& a;
    const char* name;
    int dim;
    template <class I>
    decltype(auto) operator[](I i) const { return at(a, i, name, dim); }
    operator std::decay_t<A>() const { return a; }
};

// `__shared__ float tile[32][33];` becomes `static gpubp_emu::shared_array<float [32][33]> tile{"tile"};`
template <class A>
struct shared_array {
    static_assert(std::is_array<A>::value, "shared_array holds an array type");
    alignas(alignof(A) > 16 ? alignof(A) : 16) A data;
    const char* name;
    explicit shared_array(const char* n) : name(n) {
        poison(&data, sizeof data);
        if (static_shared_count < sizeof static_shared / sizeof static_shared[0])
            static_shared[static_shared_count++] = Region{&data, sizeof data};
    }
    template <class I>
    decltype(auto) operator[](I i) { return at(data, i, name, 1); }
    operator std::decay_t<A>() { return data; }
    template <class U>
    explicit operator U*() { return reinterpret_cast<U*>(&data); }  // (float*)tile, as CUDA code writes
};

// `extern __shared__ float smem[];` becomes `static const gpubp_emu::dynamic_shared<float> smem{"smem"};`:
// a view of the launch's dynamic shared memory, as many elements as its bytes hold.
template <class T>
struct dynamic_shared {
    const char* name;
    T* data() const { return reinterpret_cast<T*>(dynamic_shared_base); }
    template <class I>
    T& operator[](I i) const {
        check_index(name, i, dynamic_shared_bytes / sizeof(T), 0);
        return data()[i];
    }
    operator T*() const { return data(); }
    template <class U>
    explicit operator U*() const { return reinterpret_cast<U*>(dynamic_shared_base); }
};

// ---------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------
template <class... A, size_t... I>
inline void call(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<A*>(p[I])...);  // p is cuLaunchKernel's kernelParams: a pointer to each argument
}

template <class... A>
inline void invoke(void (*k)(A...), void** p) { call(k, p, std::index_sequence_for<A...>{}); }

template <auto K>
void run_thread(void** p) { invoke(K, p); }

template <auto K>
int run_serial(void** p) {
    current = nullptr;
    if (setjmp(serial_exit)) return 1;
    for (unsigned z = 0; z < gridDim.z; ++z)
        for (unsigned y = 0; y < gridDim.y; ++y)
            for (unsigned x = 0; x < gridDim.x; ++x) {
                blockIdx = dim3{x, y, z};
                for (unsigned tz = 0; tz < blockDim.z; ++tz)
                    for (unsigned ty = 0; ty < blockDim.y; ++ty)
                        for (unsigned tx = 0; tx < blockDim.x; ++tx) {
                            threadIdx = dim3{tx, ty, tz};
                            invoke(K, p);
                        }
            }
    return 0;
}

// Runs one block's fibers until all have finished; false with a message when they cannot.
inline bool run_block(Rng& rng) {
    for (unsigned i = 0; i < thread_count; ++i) fibers[i].state = RUNNABLE;
    for (;;) {
        if (!run_round(rng)) return false;
        int released = release_warps();
        if (released < 0) return false;
        if (released > 0) continue;
        if (all_done()) return true;
        if (release_barrier()) continue;
        diagnose_deadlock();
        return false;
    }
}

inline bool start_fibers(void (*body)(void**), void** p, size_t shared_bytes) {
    thread_count = blockDim.x * blockDim.y * blockDim.z;
    if (!reserve_fibers(thread_count)) return false;
    dynamic_shared_bytes = shared_bytes;
    dynamic_shared_base = static_cast<unsigned char*>(aligned_alloc(16, (shared_bytes + 15) / 16 * 16 + 16));
    if (!dynamic_shared_base) return false;
    thread_body = body;
    thread_params = p;
    thread_failed = false;
    make_fibers(thread_count);
    return true;
}

inline int run_fibers(void (*body)(void**), void** p, size_t shared_bytes, uint64_t seed) {
    int status = 0;
    if (!start_fibers(body, p, shared_bytes)) {
        block_error("cannot allocate %u fibers and %zu bytes of dynamic shared memory", thread_count, shared_bytes);
        status = 1;
    }
    for (unsigned z = 0; !status && z < gridDim.z; ++z)
        for (unsigned y = 0; !status && y < gridDim.y; ++y)
            for (unsigned x = 0; !status && x < gridDim.x; ++x) {
                blockIdx = dim3{x, y, z};
                poison_shared();
                uint64_t b = x + (uint64_t)gridDim.x * (y + (uint64_t)gridDim.y * z);
                Rng rng{seed ^ (b * 0xD1B54A32D192ED03ull)};  // each block its own order
                status = run_block(rng) ? 0 : 1;
            }
    current = nullptr;
    free(dynamic_shared_base);
    dynamic_shared_base = nullptr;
    dynamic_shared_bytes = 0;
    return status;
}

template <bool Cooperative, auto K>
int launch(const char* name, dim3 grid, dim3 block, unsigned long long shared_bytes, unsigned long long seed,
           void** p) {
    kernel_name = name;
    error_text[0] = '\0';
    gridDim = grid;
    blockDim = block;
    blockIdx = threadIdx = dim3{0, 0, 0};
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !threads || threads > MAX_THREADS) {
        block_error("cannot launch a (%u,%u,%u) grid of (%u,%u,%u) blocks: every size must be positive and a block "
                    "at most %u threads", grid.x, grid.y, grid.z, block.x, block.y, block.z, MAX_THREADS);
        return 1;
    }
    if constexpr (Cooperative) {
        std::lock_guard<std::mutex> one_at_a_time(cooperative_launch);
        return run_fibers(run_thread<K>, p, shared_bytes, seed);
    }
    else return run_serial<K>(p);
}

}  // namespace gpubp_emu

// One exported entry per kernel: the launch's geometry, dynamic shared bytes, seed, kernelParams.
#define GPUBP_EMU_ENTRY(kernel, cooperative)                                                              \
    GPUBP_EMU_EXPORT int gpubp_emu_##kernel(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, \
                                            unsigned bz, unsigned long long shared_bytes,                    \
                                            unsigned long long seed, void** params) {                        \
        return gpubp_emu::launch<cooperative, kernel>(#kernel, dim3{gx, gy, gz}, dim3{bx, by, bz},            \
                                                      shared_bytes, seed, params);                           \
    }

GPUBP_EMU_EXPORT const char* gpubp_emu_error() { return gpubp_emu::error_text; }

// ---------------------------------------------------------------------------------------------
// The CUDA device functions
// ---------------------------------------------------------------------------------------------
#define __syncthreads() gpubp_emu::syncthreads(__LINE__)

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
    return gpubp_emu::warp_call(gpubp_emu::SHFL_IDX, mask, var, (unsigned)srcLane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return gpubp_emu::warp_call(gpubp_emu::SHFL_UP, mask, var, delta, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return gpubp_emu::warp_call(gpubp_emu::SHFL_DOWN, mask, var, delta, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
    return gpubp_emu::warp_call(gpubp_emu::SHFL_XOR, mask, var, (unsigned)laneMask, width);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { gpubp_emu::warp_call(gpubp_emu::SYNCWARP, mask, 0, 0, 32); }

// One fiber runs at a time and none is interrupted between meetings, so the GPU's atomic
// read-modify-writes are plain ones here; a fence only has to stop the compiler.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#define GPUBP_EMU_RMW(fn, T, expr)      \
    inline T fn(T* address, T val) {    \
        T old = *address;               \
        *address = (expr);              \
        return old;                     \
    }
GPUBP_EMU_RMW(atomicAdd, float, old + val)
GPUBP_EMU_RMW(atomicAdd, double, old + val)
GPUBP_EMU_RMW(atomicAdd, int, old + val)
GPUBP_EMU_RMW(atomicAdd, unsigned int, old + val)
GPUBP_EMU_RMW(atomicAdd, unsigned long long, old + val)
GPUBP_EMU_RMW(atomicSub, int, old - val)
GPUBP_EMU_RMW(atomicSub, unsigned int, old - val)
GPUBP_EMU_RMW(atomicExch, float, val)
GPUBP_EMU_RMW(atomicExch, int, val)
GPUBP_EMU_RMW(atomicExch, unsigned int, val)
GPUBP_EMU_RMW(atomicExch, unsigned long long, val)
GPUBP_EMU_RMW(atomicMin, int, val < old ? val : old)
GPUBP_EMU_RMW(atomicMin, unsigned int, val < old ? val : old)
GPUBP_EMU_RMW(atomicMin, unsigned long long, val < old ? val : old)
GPUBP_EMU_RMW(atomicMax, int, val > old ? val : old)
GPUBP_EMU_RMW(atomicMax, unsigned int, val > old ? val : old)
GPUBP_EMU_RMW(atomicMax, unsigned long long, val > old ? val : old)
#undef GPUBP_EMU_RMW

#define GPUBP_EMU_CAS(T)                                  \
    inline T atomicCAS(T* address, T compare, T val) {    \
        T old = *address;                                 \
        *address = old == compare ? val : old;            \
        return old;                                       \
    }
GPUBP_EMU_CAS(int)
GPUBP_EMU_CAS(unsigned int)
GPUBP_EMU_CAS(unsigned long long)
#undef GPUBP_EMU_CAS

#endif  // GPUBP_EMULATOR_RUNTIME_H
