// native_layer.h: our layer kernels (kernels/layer.cuh) and the gather (gather.cu) as host code,
// for the native backend.
//
// gpubp/backends/native.py compiles each kernel file as the emulator does (emulator_runtime.h,
// then the file's code), with GPUBP_NATIVE defined, this header inserted just before the file's
// first export, and the host's optimisation flags (-O3 -march=native, -fopenmp where the compiler
// has it). Under GPUBP_NATIVE the kernel files leave their export macros (GPUBP_LAYER_KERNELS,
// GPUBP_OUTPUT_KERNEL, GPUBP_UPDATE_KERNELS, GPUBP_GATHER_KERNEL) to the end of this header, which
// defines them over the kernel files' own lists of entry points (layer.cuh's GPUBP_*_ENTRIES,
// gather.cu's GPUBP_GATHER_ENTRY) with the templates here in place of the GPU's. So the entry
// points have the GPU's names and parameters, and each activation's and cost's functors (Act::f,
// Act::prime_from_output, Delta::d: written once, in the .cu files and gpubp.cuh) and the
// epilogues' formulas (gpubp.cuh's softmax row, update and bias column sum) are the ones the GPU
// runs. The templates are named native_*, not layer.cuh's names in a namespace: which kernels
// cooperate is read from the code by function name (emulated.cooperative_kernels), and layer.cuh's
// templates, still in the text, do; these never do. Each entry computes its whole product in one
// call: native.py launches it as a 1 x 1 grid.
//
//   layer_forward   A_out (m, n_out) = act(A_in (m, n_in) W^T + b)     rows of both along k
//   layer_output    the same with the output activation, and D = scale * delta^L(A_out, Y)
//   layer_delta     D_prev (m, n_in) = (D (m, n_out) W (n_out, n_in)) (.) act'(A_prev)
//   (layer_forward and layer_delta take layer.cuh's dropout policy too: the _drop entries' epilogue)
//   layer_update    W <- beta W + alpha D^T A_in, b <- beta_b b + alpha sum_rows D
//
// The products are register-blocked for the shapes of MNIST networks, small (batch 10 x 784 ->
// 30) and wide alike: a block of rows x columns of the output is held in SIMD accumulators
// (vectors of GCC's vector extension, as wide as the build's instruction set: 16 floats with
// AVX-512, 8 with AVX, 4 otherwise) while the shared index k streams through both operands
// once, so every operand load feeds several fused multiply-adds. Rows and columns past the end
// of a block are clamped to the last one (computed, never stored), and k past the last whole
// vector is summed in scalars, so any size works. The sums' order differs from the BLAS's and
// from the GPU's; their error is bounded as the tolerances in the kernels' headers say.
// Under tf32 (float only) the operands are rounded to TF32 as layer.cuh stages them, in a plain
// loop: TF32 is a GPU format, emulated here for its effect on accuracy, not for speed.
#ifndef GPUBP_NATIVE_LAYER_H
#define GPUBP_NATIVE_LAYER_H
#ifndef GPUBP_NATIVE
#error "native_layer.h is the native build's: define GPUBP_NATIVE so the kernel files leave it their exports"
#endif

namespace gpubp_native {

#if defined(__AVX512F__)
constexpr int VECTOR_BYTES = 64;
#elif defined(__AVX__)
constexpr int VECTOR_BYTES = 32;
#else
constexpr int VECTOR_BYTES = 16;
#endif

template <typename T>
struct Simd;
template <>
struct Simd<float> {
    typedef float v __attribute__((vector_size(VECTOR_BYTES)));
};
template <>
struct Simd<double> {
    typedef double v __attribute__((vector_size(VECTOR_BYTES)));
};
template <typename T>
using vec = typename Simd<T>::v;
template <typename T>
constexpr int LANES = VECTOR_BYTES / int(sizeof(T));

template <typename T>
inline vec<T> load(const T* p) {  // unaligned
    vec<T> v;
    memcpy(&v, p, sizeof v);
    return v;
}
template <typename T>
inline vec<T> load(const T* p, int n) {  // the first n lanes; the rest 0
    vec<T> v = {};
    memcpy(&v, p, n * sizeof(T));
    return v;
}
template <typename T>
inline void store(T* p, vec<T> v) {
    memcpy(p, &v, sizeof v);
}
template <typename T>
inline vec<T> splat(T x) {
    return vec<T>{} + x;
}

// The sum of a vector's lanes, by halves (a tree: log2(lanes) vector adds, not a serial chain).
template <typename T, int BYTES>
struct Part {
    typedef T v __attribute__((vector_size(BYTES)));
};
template <typename T, int BYTES>
inline T tree_sum(typename Part<T, BYTES>::v x) {
    if constexpr (BYTES == 2 * sizeof(T)) {
        return x[0] + x[1];
    } else {
        typename Part<T, BYTES / 2>::v lo, hi;
        memcpy(&lo, &x, BYTES / 2);
        memcpy(&hi, reinterpret_cast<const char*>(&x) + BYTES / 2, BYTES / 2);
        return tree_sum<T, BYTES / 2>(lo + hi);
    }
}
template <typename T>
inline T lane_sum(vec<T> v) {
    return tree_sum<T, VECTOR_BYTES>(v);
}
inline long long clamp(long long i, long long n) { return i < n ? i : n - 1; }

// Threads: where the build has OpenMP, a product of at least PARALLEL_MACS multiply-adds splits its
// blocks of output rows between the cores (each element is still one thread's sum, in the same
// order, so results do not depend on the thread count); a smaller one, such as every product of
// [784, 30, 10] at batch 10 (235,200 at most, a few microseconds), stays on the calling thread,
// where waking a team would cost more than it saves.
constexpr long long PARALLEL_MACS = 1 << 21;

// The blocks' bodies are inlined into both loops below (else GCC, seeing two callers, calls them).
#define GPUBP_NATIVE_INLINE __attribute__((always_inline))

// body(i0) for i0 = 0, step, 2 step, ... < M: split between threads when macs is large enough.
// (The small case never enters OpenMP: even a parallel region with if(false) costs a call into
// the runtime, which over [784, 30, 10]'s 30,000 products an epoch added a fifth to its time.)
template <class Body>
inline void for_blocks(long long M, int step, long long macs, Body body) {
#ifdef _OPENMP
    if (macs >= PARALLEL_MACS) {
#pragma omp parallel for schedule(static)
        for (long long i0 = 0; i0 < M; i0 += step) body(i0);
        return;
    }
#else
    (void)macs;
#endif
    for (long long i0 = 0; i0 < M; i0 += step) body(i0);
}

// Register blocks: R x C accumulators (R rows of the output, C of its columns or column vectors):
// 10 leave AVX's 16 vector registers room for the operands; AVX-512 has 32, and takes 20.
constexpr bool WIDE = VECTOR_BYTES == 64;
constexpr int NT_R = 5, NT_C = WIDE ? 4 : 2;  // C = A B^T along k (forward, output)
constexpr int NN_R = 5, NN_V = WIDE ? 4 : 2;  // C = A B, columns in vectors (BP2)
constexpr int TN_R = 5, TN_V = WIDE ? 4 : 2;  // C = D^T A, columns in vectors (BP4)

// Under tf32 (float only): f(i, j, c) for c = sum over k of tf32(a(i, k)) tf32(b(k, j)), in k's
// order, in plain loops (TF32 is a GPU format, emulated here for its effect on accuracy).
template <typename T, class AtA, class AtB, class F>
inline void product_tf32(AtA a, AtB b, long long M, long long N, long long K, F f) {
    for (long long i = 0; i < M; ++i)
        for (long long j = 0; j < N; ++j) {
            T s = T(0);
            for (long long k = 0; k < K; ++k) s += gpubp_tf32(a(i, k)) * gpubp_tf32(b(k, j));
            f(i, j, s);
        }
}

// f(i, j, c) for every element of C (M x N) = A (M x K) B (N x K)^T: rows of A and B are contiguous
// in k, which runs in whole vectors and, for the last K % LANES, one zero-filled vector.
template <typename T, class F>
inline void product_nt(const T* __restrict A, const T* __restrict B, long long M, long long N, long long K, int tf32,
                       F f) {
    if (tf32 && sizeof(T) == 4)
        return product_tf32<T>([&](long long i, long long k) { return A[i * K + k]; },
                               [&](long long k, long long j) { return B[j * K + k]; }, M, N, K, f);
    constexpr int W = LANES<T>;
    const long long KV = K / W * W;
    const int rest = int(K - KV);
    // B's rows (the weights: the large operand) outermost, so each block of them is read from
    // memory once and meets every row of A (the batch: small, it stays in cache).
    for_blocks(N, NT_C, M * N * K, [=](long long j0) GPUBP_NATIVE_INLINE {
        const T* b[NT_C];
        for (int c = 0; c < NT_C; ++c) b[c] = B + clamp(j0 + c, N) * K;
        for (long long i0 = 0; i0 < M; i0 += NT_R) {
            const T* a[NT_R];
            for (int r = 0; r < NT_R; ++r) a[r] = A + clamp(i0 + r, M) * K;
            vec<T> acc[NT_R][NT_C] = {};
            for (long long k = 0; k < KV; k += W) {
                vec<T> bv[NT_C];
                for (int c = 0; c < NT_C; ++c) bv[c] = load(b[c] + k);
                for (int r = 0; r < NT_R; ++r) {
                    const vec<T> av = load(a[r] + k);
                    for (int c = 0; c < NT_C; ++c) acc[r][c] += av * bv[c];
                }
            }
            if (rest) {
                vec<T> bv[NT_C];
                for (int c = 0; c < NT_C; ++c) bv[c] = load(b[c] + KV, rest);
                for (int r = 0; r < NT_R; ++r) {
                    const vec<T> av = load(a[r] + KV, rest);
                    for (int c = 0; c < NT_C; ++c) acc[r][c] += av * bv[c];
                }
            }
            for (int r = 0; r < NT_R && i0 + r < M; ++r)
                for (int c = 0; c < NT_C && j0 + c < N; ++c) f(i0 + r, j0 + c, lane_sum<T>(acc[r][c]));
        }
    });
}

// The rows [i0, i0 + R) of C (M x N) += A (M x K) B (K x N) for the V vectors of columns at j0, the
// last of them holding only `last` columns: acc[r][v] over k. (A row-major, B row-major.)
template <int R, int V, typename T>
inline void block_nn(vec<T> (&acc)[R][V], const T* const (&a)[R], const T* __restrict B, long long N, long long K,
                     long long j0, int last) {
    constexpr int W = LANES<T>;
    for (long long k = 0; k < K; ++k) {
        vec<T> bv[V];
        for (int v = 0; v < V; ++v) bv[v] = v + 1 < V || last == W ? load(B + k * N + j0 + v * W)
                                                                    : load(B + k * N + j0 + v * W, last);
        for (int r = 0; r < R; ++r) {
            const vec<T> ar = splat(a[r][k]);
            for (int v = 0; v < V; ++v) acc[r][v] += ar * bv[v];
        }
    }
}

// f(i, j, c) for every element of C (M x N) = A (M x K) B (K x N), all row-major: C's rows in
// vectors along j, V at a time, then one at a time, the last one partial.
template <typename T, class F>
inline void product_nn(const T* __restrict A, const T* __restrict B, long long M, long long N, long long K, int tf32,
                       F f) {
    if (tf32 && sizeof(T) == 4)
        return product_tf32<T>([&](long long i, long long k) { return A[i * K + k]; },
                               [&](long long k, long long j) { return B[k * N + j]; }, M, N, K, f);
    constexpr int W = LANES<T>, SPAN = NN_V * W;
    const long long NV = N / SPAN * SPAN;
    // Column strips of B (the weights) outermost: whole spans of SPAN columns, then single vectors,
    // the last partial; each strip is read from memory once and meets every row block of A.
    const long long spans = NV / SPAN, strips = spans + (N - NV + W - 1) / W;
    for_blocks(strips, 1, M * N * K, [=](long long s) GPUBP_NATIVE_INLINE {
        for (long long i0 = 0; i0 < M; i0 += NN_R) {
            const T* a[NN_R];
            for (int r = 0; r < NN_R; ++r) a[r] = A + clamp(i0 + r, M) * K;
            if (s < spans) {
                const long long j0 = s * SPAN;
                vec<T> acc[NN_R][NN_V] = {};
                block_nn<NN_R, NN_V>(acc, a, B, N, K, j0, W);
                for (int r = 0; r < NN_R && i0 + r < M; ++r)
                    for (int v = 0; v < NN_V; ++v)
                        for (int l = 0; l < W; ++l) f(i0 + r, j0 + v * W + l, acc[r][v][l]);
            } else {
                const long long j0 = NV + (s - spans) * W;
                const int last = N - j0 < W ? int(N - j0) : W;
                vec<T> acc[NN_R][1] = {};
                block_nn<NN_R, 1>(acc, a, B, N, K, j0, last);
                for (int r = 0; r < NN_R && i0 + r < M; ++r)
                    for (int l = 0; l < last; ++l) f(i0 + r, j0 + l, acc[r][0][l]);
            }
        }
    });
}

// The rows `row` of C = D (K x M)^T A (K x N) for the V vectors of columns at j0 (the last holding
// `last` columns): acc[r][v] over k, the batch's rows.
template <int R, int V, typename T>
inline void block_tn(vec<T> (&acc)[R][V], const long long (&row)[R], const T* __restrict D, const T* __restrict A,
                     long long M, long long N, long long K, long long j0, int last) {
    constexpr int W = LANES<T>;
    for (long long k = 0; k < K; ++k) {
        vec<T> av[V];
        for (int v = 0; v < V; ++v) av[v] = v + 1 < V || last == W ? load(A + k * N + j0 + v * W)
                                                                    : load(A + k * N + j0 + v * W, last);
        const T* d = D + k * M;
        for (int r = 0; r < R; ++r) {
            const vec<T> dr = splat(d[row[r]]);
            for (int v = 0; v < V; ++v) acc[r][v] += dr * av[v];
        }
    }
}

// C (M x N) = D (K x M)^T A (K x N), both row-major (K = the batch's rows): C's rows in vectors
// along j; g(i, j, cvec) for each whole vector of C, f(i, j, c) for each element of the last,
// partial one.
template <typename T, class F, class G>
inline void product_tn(const T* __restrict D, const T* __restrict A, long long M, long long N, long long K, int tf32,
                       F f, G g) {
    if (tf32 && sizeof(T) == 4)
        return product_tf32<T>([&](long long i, long long k) { return D[k * M + i]; },
                               [&](long long k, long long j) { return A[k * N + j]; }, M, N, K, f);
    constexpr int W = LANES<T>, SPAN = TN_V * W;
    const long long NV = N / SPAN * SPAN;
    for_blocks(M, TN_R, M * N * K, [=](long long i0) GPUBP_NATIVE_INLINE {
        long long row[TN_R];
        for (int r = 0; r < TN_R; ++r) row[r] = clamp(i0 + r, M);
        for (long long j0 = 0; j0 < NV; j0 += SPAN) {
            vec<T> acc[TN_R][TN_V] = {};
            block_tn<TN_R, TN_V>(acc, row, D, A, M, N, K, j0, W);
            for (int r = 0; r < TN_R && i0 + r < M; ++r)
                for (int v = 0; v < TN_V; ++v) g(i0 + r, j0 + v * W, acc[r][v]);
        }
        for (long long j0 = NV; j0 < N; j0 += W) {
            const int last = N - j0 < W ? int(N - j0) : W;
            vec<T> acc[TN_R][1] = {};
            block_tn<TN_R, 1>(acc, row, D, A, M, N, K, j0, last);
            for (int r = 0; r < TN_R && i0 + r < M; ++r) {
                if (last == W) {
                    g(i0 + r, j0, acc[r][0]);
                } else {
                    for (int l = 0; l < last; ++l) f(i0 + r, j0 + l, acc[r][0][l]);
                }
            }
        }
    });
}

}  // namespace gpubp_native

// The entry points' templates, with layer.cuh's parameters. The tile is the GPU's business: each
// entry with a Tile parameter calls one tile-free body (GPUBP_NATIVE_BODY: never inlined, so the
// compiler builds and optimises it once, not once for each of the GPU's tiles; a library's build
// time is mostly these bodies).
// Drop: layer.cuh's epilogue policy (dropout.cuh): NoDropout, or Dropout<T> with its factor per element.
#define GPUBP_NATIVE_BODY __attribute__((noinline))

template <class Act, typename T, class Drop>
GPUBP_NATIVE_BODY void native_forward(T* __restrict__ A_out, const T* __restrict__ A_in, const T* __restrict__ W,
                                      const T* __restrict__ b, long long m, long long n_in, long long n_out, int tf32,
                                      const Drop drop) {
    gpubp_native::product_nt(A_in, W, m, n_out, n_in, tf32, [&](long long i, long long j, T c) {
        A_out[i * n_out + j] = drop.output(Act::f(c + b[j]), i * n_out + j);
    });
}

template <class Act, class Tile, typename T, class Drop>
inline void native_layer_forward(T* __restrict__ A_out, const T* __restrict__ A_in, const T* __restrict__ W,
                                 const T* __restrict__ b, long long m, long long n_in, long long n_out, int tf32,
                                 const Drop drop) {
    native_forward<Act, T, Drop>(A_out, A_in, W, b, m, n_in, n_out, tf32, drop);
}

template <class Act, typename T, class Drop>
GPUBP_NATIVE_BODY void native_delta(T* __restrict__ D_prev, const T* __restrict__ D, const T* __restrict__ W,
                                    const T* __restrict__ A_prev, long long m, long long n_out, long long n_in,
                                    int tf32, const Drop drop) {
    gpubp_native::product_nn(D, W, m, n_in, n_out, tf32, [&](long long i, long long j, T c) {
        D_prev[i * n_in + j] = drop.template delta<Act>(c, A_prev[i * n_in + j], i * n_in + j);
    });
}

template <class Act, class Tile, typename T, class Drop>
inline void native_layer_delta(T* __restrict__ D_prev, const T* __restrict__ D, const T* __restrict__ W,
                               const T* __restrict__ A_prev, long long m, long long n_out, long long n_in, int tf32,
                               const Drop drop) {
    native_delta<Act, T, Drop>(D_prev, D, W, A_prev, m, n_out, n_in, tf32, drop);
}

// A beta of 0 never reads the old value (a poisoned buffer is overwritten), as on the GPU.
template <typename T>
GPUBP_NATIVE_BODY void native_update(T* __restrict__ W, T* __restrict__ b, const T* __restrict__ D,
                                     const T* __restrict__ A_in, long long m, long long n_out, long long n_in, T alpha,
                                     T beta, T beta_b, int tf32) {
    using gpubp_native::vec;
    auto one = [&](long long i, long long j, T c) {
        T* w = W + i * n_in + j;
        *w = gpubp_update(alpha, c, beta, [&] { return *w; });
    };
    auto many = [&](long long i, long long j, vec<T> c) {
        T* w = W + i * n_in + j;
        gpubp_native::store(w, gpubp_update(alpha, c, beta, [&] { return gpubp_native::load(w); }));
    };
    gpubp_native::product_tn(D, A_in, n_out, n_in, m, tf32, one, many);
    for (long long i = 0; i < n_out; ++i)
        b[i] = gpubp_update(alpha, gpubp_column_sum(D, m, n_out, i), beta_b, [&] { return b[i]; });
}

template <class Tile, typename T>
inline void native_layer_update(T* __restrict__ W, T* __restrict__ b, const T* __restrict__ D,
                                const T* __restrict__ A_in, long long m, long long n_out, long long n_in, T alpha,
                                T beta, T beta_b, int tf32) {
    native_update<T>(W, b, D, A_in, m, n_out, n_in, alpha, beta, beta_b, tf32);
}

template <class Act, class Delta, typename T>
inline void native_layer_output(T* __restrict__ A_out, T* __restrict__ D, const T* __restrict__ A_in,
                                const T* __restrict__ W, const T* __restrict__ b, const T* __restrict__ Y, long long m,
                                long long n_in, long long n_out, T scale, int tf32) {
    if constexpr (Act::row_wise) {  // softmax: z into A_out, then each row's max, exponentials and sum
        gpubp_native::product_nt(A_in, W, m, n_out, n_in, tf32,
                                 [&](long long i, long long j, T c) { A_out[i * n_out + j] = c + b[j]; });
        for (long long i = 0; i < m; ++i) {
            T* z = A_out + i * n_out;
            gpubp_softmax_row(z, n_out);
            for (long long j = 0; j < n_out; ++j) D[i * n_out + j] = scale * Delta::d(z[j], Y[i * n_out + j]);
        }
    } else {
        gpubp_native::product_nt(A_in, W, m, n_out, n_in, tf32, [&](long long i, long long j, T c) {
            const T a = Act::f(c + b[j]);
            A_out[i * n_out + j] = a;
            D[i * n_out + j] = scale * Delta::d(a, Y[i * n_out + j]);
        });
    }
}

// The gather of a mini-batch (gather.cu): a copy of each row, in the permutation's order.
template <typename T>
inline void native_take_rows(T* __restrict__ Xs, T* __restrict__ Ys, const T* __restrict__ X, const T* __restrict__ Y,
                             const long long* __restrict__ perm, long long rows, long long cols_x, long long cols_y) {
    for (long long r = 0; r < rows; ++r) {
        memcpy(Xs + r * cols_x, X + perm[r] * cols_x, cols_x * sizeof(T));
        memcpy(Ys + r * cols_y, Y + perm[r] * cols_y, cols_y * sizeof(T));
    }
}

// The entry points: layer.cuh's and gather.cu's lists of exports (names, parameters), calling the
// templates above. Under GPUBP_NATIVE the kernel files leave these macros to this header.
#define GPUBP_LAYER_KERNELS(NAME, ACT) GPUBP_LAYER_ENTRIES(NAME, ACT, native_layer_forward, native_layer_delta)
#define GPUBP_OUTPUT_KERNEL(NAME, ACT, DELTA) GPUBP_OUTPUT_ENTRY(NAME, ACT, DELTA, native_layer_output)
#define GPUBP_UPDATE_KERNELS(NAME) GPUBP_UPDATE_ENTRIES(NAME, native_layer_update)
#define GPUBP_GATHER_KERNEL(NAME) GPUBP_GATHER_ENTRY(NAME, native_take_rows)

#endif  // GPUBP_NATIVE_LAYER_H
