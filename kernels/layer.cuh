// layer.cuh: the tiled GEMM behind our own layer kernels (the "own" route), with the layer's
// elementwise work in its epilogue, so a layer is one launch and no cuBLAS call:
//
//   C (M x N) = sum_k opA(i, k) * opB(k, j),   then out(i, j) = epilogue(C(i, j))
//
//   layer_forward_<act>   A_out = act(A_in W^T + b)        M = m,     N = n_out, K = n_in
//   layer_delta_<act>     D_prev = (D W) (.) act'(A_prev)  M = m,     N = n_in,  K = n_out  (BP2)
//   layer_update          W <- beta W + alpha D^T A_in;    M = n_out, N = n_in,  K = m      (BP3+BP4
//                         b <- beta_b b + alpha sum_rows D                                  + update)
//   layer_output_<cost>   A_out = f(A_in W^T + b) and D = scale * delta^L(A_out, Y) (forward + BP1)
// The formulas of the epilogues (the softmax row, delta^L, the update, the bias column sum) are
// gpubp.cuh's, shared with the elementwise kernels and native_layer.h.
//
// Each block of 256 threads computes a BM x BN tile of C; each thread a TM x TN micro-tile in
// registers, at rows ty + u*(BM/TM) and columns tx + v*(BN/TN), so a warp's stores to C fall on
// consecutive columns. K is walked in slices of BK: both operand slices are staged in shared
// memory k-major (As[k][i], Bs[k][j]; one padding column against bank conflicts), read by
// consecutive threads along each operand's contiguous index so the global loads coalesce, and
// fenced by two __syncthreads per slice. Out-of-range rows, columns and k read as 0 and are not
// written, so any M, N, K work (no size needs to be a multiple of a tile).
//
// Tiles (the kernel backend picks one per product: gpubp/backends/kernel.py, layer_entry):
//   TileSmall  16 x 32, BK 32, 1 x 2 per thread: for skinny products such as network.py's
//              batch 10 x 784 -> 30, where a 64 x 64 tile would leave 1 block of mostly idle
//              threads; small tiles give more blocks and a long BK amortizes each barrier.
//   TileLarge  64 x 64, BK 16, 4 x 4 per thread: for wide products (batch 128-1024, 1024-4096
//              units): 16 FMAs per 8 shared-memory loads per k, the usual SGEMM register blocking.
//   TileOutput 64 x 32, BK 16, 4 x 2 per thread: the output layer, whose N = n_out (10 classes)
//              fits one tile column, so the softmax's row reduction stays inside the block.
// tf32 (an argument of every layer kernel): round the staged float operands to TF32, so the own
// route's products take TF32's inputs as cuBLAS's tensor cores do under --tf32; the sums stay FP32
// and the multiplies run on the FP32 units (these tiles do not use tensor cores).
// The FLOP efficiency these reach on a GPU is not measured here (no GPU); the README's model
// states the assumption it makes and where it comes from.
#ifndef GPUBP_LAYER_CUH
#define GPUBP_LAYER_CUH
#include "gpubp.cuh"
#include "dropout.cuh"

struct TileSmall {
    static constexpr int BM = 16, BN = 32, BK = 32, TM = 1, TN = 2;
};
struct TileLarge {
    static constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
};
struct TileOutput {
    static constexpr int BM = 64, BN = 32, BK = 16, TM = 4, TN = 2;
};

// An operand of the product: element (r, k) is p[r * s_r + k * s_k]; K_FAST says k is its
// contiguous index (s_k == 1), which decides how threads walk it when it is staged.
template <typename T>
struct Operand {
    const T* __restrict__ p;
    long long s_r, s_k;
};

// Stage the ROWS x BK slice of operand x that starts at (r0, k0) into s[k][r] (s: any 2-D
// indexable, so the emulator's bounds-checked shared arrays fit as well as plain ones), rounded to
// TF32 when tf32 is set (float data only: the products then have TF32's inputs and FP32's sums).
template <int ROWS, int BK, int THREADS, bool K_FAST, class S, typename T>
__device__ __forceinline__ void stage(S& s, const Operand<T>& x, long long r0, long long k0, long long rows,
                                      long long K, int tid, int tf32) {
    for (int idx = tid; idx < ROWS * BK; idx += THREADS) {
        const int r = K_FAST ? idx / BK : idx % ROWS;
        const int k = K_FAST ? idx % BK : idx / ROWS;
        const long long gr = r0 + r, gk = k0 + k;
        const T v = (gr < rows && gk < K) ? x.p[gr * x.s_r + gk * x.s_k] : T(0);
        s[k][r] = tf32 ? gpubp_tf32(v) : v;
    }
}

// acc <- this thread's micro-tile of C for the block's tile (blockIdx.y, blockIdx.x).
template <typename T, class Tile, bool A_K_FAST, bool B_K_FAST>
__device__ __forceinline__ void tile_product(T (&acc)[Tile::TM][Tile::TN], const Operand<T>& a, const Operand<T>& b,
                                             long long M, long long N, long long K, int tf32) {
    constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, TM = Tile::TM, TN = Tile::TN;
    constexpr int THREADS = (BM / TM) * (BN / TN);
    __shared__ T As[BK][BM + 1];
    __shared__ T Bs[BK][BN + 1];
    const int tid = threadIdx.x, ty = tid / (BN / TN), tx = tid % (BN / TN);
    const long long i0 = (long long)blockIdx.y * BM, j0 = (long long)blockIdx.x * BN;
    for (int u = 0; u < TM; ++u)
        for (int v = 0; v < TN; ++v) acc[u][v] = T(0);
    for (long long k0 = 0; k0 < K; k0 += BK) {
        stage<BM, BK, THREADS, A_K_FAST>(As, a, i0, k0, M, K, tid, tf32);
        stage<BN, BK, THREADS, B_K_FAST>(Bs, b, j0, k0, N, K, tid, tf32);
        __syncthreads();  // the slice is whole before anyone reads it
        for (int k = 0; k < BK; ++k) {
            T ra[TM], rb[TN];
            for (int u = 0; u < TM; ++u) ra[u] = As[k][ty + u * (BM / TM)];
            for (int v = 0; v < TN; ++v) rb[v] = Bs[k][tx + v * (BN / TN)];
            for (int u = 0; u < TM; ++u)
                for (int v = 0; v < TN; ++v) acc[u][v] += ra[u] * rb[v];
        }
        __syncthreads();  // everyone is done with the slice before the next one overwrites it
    }
}

// Calls f(i, j, c) for each element of this thread's micro-tile that lies inside C.
template <class Tile, typename T, class F>
__device__ __forceinline__ void for_each_element(const T (&acc)[Tile::TM][Tile::TN], long long M, long long N, F f) {
    constexpr int BM = Tile::BM, BN = Tile::BN, TM = Tile::TM, TN = Tile::TN;
    const int ty = threadIdx.x / (BN / TN), tx = threadIdx.x % (BN / TN);
    const long long i0 = (long long)blockIdx.y * BM, j0 = (long long)blockIdx.x * BN;
    for (int u = 0; u < TM; ++u)
        for (int v = 0; v < TN; ++v) {
            const long long i = i0 + ty + u * (BM / TM), j = j0 + tx + v * (BN / TN);
            if (i < M && j < N) f(i, j, acc[u][v]);
        }
}

// A_out (m, n_out) = Act::f(A_in (m, n_in) W^T + b): forward, one layer; with Drop = Dropout<T>,
// each output times its dropout factor (dropout.cuh), element i * n_out + j.
template <class Act, class Tile, typename T, class Drop>
__device__ __forceinline__ void layer_forward(T* __restrict__ A_out, const T* __restrict__ A_in, const T* __restrict__ W,
                                              const T* __restrict__ b, long long m, long long n_in, long long n_out,
                                              int tf32, const Drop drop) {
    T acc[Tile::TM][Tile::TN];
    tile_product<T, Tile, true, true>(acc, Operand<T>{A_in, n_in, 1}, Operand<T>{W, n_in, 1}, m, n_out, n_in, tf32);
    for_each_element<Tile>(acc, m, n_out, [&](long long i, long long j, T c) {
        A_out[i * n_out + j] = drop.output(Act::f(c + b[j]), i * n_out + j);
    });
}

// D_prev (m, n_in) = (D (m, n_out) W (n_out, n_in)) (.) Act'(from A_prev): BP2; with Drop =
// Dropout<T>, A_prev is the dropped output and the mask is drawn again (dropout.cuh).
template <class Act, class Tile, typename T, class Drop>
__device__ __forceinline__ void layer_delta(T* __restrict__ D_prev, const T* __restrict__ D, const T* __restrict__ W,
                                            const T* __restrict__ A_prev, long long m, long long n_out, long long n_in,
                                            int tf32, const Drop drop) {
    T acc[Tile::TM][Tile::TN];
    tile_product<T, Tile, true, false>(acc, Operand<T>{D, n_out, 1}, Operand<T>{W, 1, n_in}, m, n_in, n_out, tf32);
    for_each_element<Tile>(acc, m, n_in, [&](long long i, long long j, T c) {
        D_prev[i * n_in + j] = drop.template delta<Act>(c, A_prev[i * n_in + j], i * n_in + j);
    });
}

// W (n_out, n_in) <- beta W + alpha D^T A_in;  b <- beta_b b + alpha sum_rows D  (BP3 + BP4 and
// the update: alpha = -eta, beta = 1 - eta*lambda/n, beta_b = 1 for network2's SGD; alpha = 1,
// beta = beta_b = 0 to write the gradient itself, for the optimizers that keep state). A beta of
// 0 never reads the old value, so a poisoned (NaN) buffer is overwritten, not propagated.
template <class Tile, typename T>
__device__ __forceinline__ void layer_update(T* __restrict__ W, T* __restrict__ b, const T* __restrict__ D,
                                             const T* __restrict__ A_in, long long m, long long n_out,
                                             long long n_in, T alpha, T beta, T beta_b, int tf32) {
    T acc[Tile::TM][Tile::TN];
    tile_product<T, Tile, false, false>(acc, Operand<T>{D, 1, n_out}, Operand<T>{A_in, 1, n_in}, n_out, n_in, m, tf32);
    for_each_element<Tile>(acc, n_out, n_in, [&](long long i, long long j, T c) {
        T* w = W + i * n_in + j;
        *w = gpubp_update(alpha, c, beta, [&] { return *w; });
    });
    if (blockIdx.x == 0) {  // the first column of blocks also sums D's columns for its rows of b
        for (long long i = (long long)blockIdx.y * Tile::BM + threadIdx.x;
             i < n_out && i < (long long)(blockIdx.y + 1) * Tile::BM; i += blockDim.x)
            b[i] = gpubp_update(alpha, gpubp_column_sum(D, m, n_out, i), beta_b, [&] { return b[i]; });
    }
}

// The output layer: A_out = f(A_in W^T + b) and D = scale * Delta::d(a, y), in one launch.
// Softmax (Act::row_wise) needs the whole row in the block: the launcher guarantees
// n_out <= TileOutput::BN, so gridDim.x == 1.
template <class Act, class Delta, typename T>
__device__ __forceinline__ void layer_output(T* __restrict__ A_out, T* __restrict__ D, const T* __restrict__ A_in,
                                             const T* __restrict__ W, const T* __restrict__ b, const T* __restrict__ Y,
                                             long long m, long long n_in, long long n_out, T scale, int tf32) {
    using Tile = TileOutput;
    T acc[Tile::TM][Tile::TN];
    tile_product<T, Tile, true, true>(acc, Operand<T>{A_in, n_in, 1}, Operand<T>{W, n_in, 1}, m, n_out, n_in, tf32);
    if constexpr (Act::row_wise) {  // softmax: each row's max and sum from the block's shared copy of z
        __shared__ T Z[Tile::BM][Tile::BN + 1];
        __shared__ T top[Tile::BM], inv[Tile::BM];
        for_each_element<Tile>(acc, m, n_out, [&](long long i, long long j, T c) {
            Z[i - (long long)blockIdx.y * Tile::BM][j] = c + b[j];
        });
        __syncthreads();
        const long long i = (long long)blockIdx.y * Tile::BM + threadIdx.x;
        if (threadIdx.x < Tile::BM && i < m) {
            T hi, s;
            gpubp_softmax_norm(Z[threadIdx.x], n_out, hi, s);
            top[threadIdx.x] = hi;
            inv[threadIdx.x] = s;
        }
        __syncthreads();
        for_each_element<Tile>(acc, m, n_out, [&](long long i, long long j, T c) {
            const long long r = i - (long long)blockIdx.y * Tile::BM;
            const T a = gpubp_softmax_at(Z[r][j], top[r], inv[r]);
            A_out[i * n_out + j] = a;
            D[i * n_out + j] = scale * Delta::d(a, Y[i * n_out + j]);
        });
    } else {
        for_each_element<Tile>(acc, m, n_out, [&](long long i, long long j, T c) {
            const T a = Act::f(c + b[j]);
            A_out[i * n_out + j] = a;
            D[i * n_out + j] = scale * Delta::d(a, Y[i * n_out + j]);
        });
    }
}

// Softmax is an output activation only; layer_output computes it from the row in shared memory.
struct Softmax {
    static constexpr bool row_wise = true;
};

// The entry points, each family written once with the template it calls (FORWARD_FN and the
// like) as a parameter: the kernels above, on the GPU and in the emulator; or, where the
// translation unit defines GPUBP_NATIVE (the native backend's build, gpubp/backends/native.py),
// the host code of gpubp/backends/native_layer.h, which takes the same parameters and defines the
// three GPUBP_*_KERNEL(S) macros below for itself. Either way the names and parameters of the
// entry points are these.

// The forward and BP2 layer kernels of one hidden-layer activation for one tile (TILE, named by its
// suffix S), without and with dropout (dropout.cuh: NoDropout computes exactly the plain epilogue).
#define GPUBP_FORWARD_ENTRIES(NAME, ACT, FORWARD_FN, TILE, S) \
    GPUBP_EXPORT(layer_forward_##NAME##_##S, (FORWARD_FN<ACT, TILE, T, NoDropout>), \
                 (T* __restrict__ A_out, const T* __restrict__ A_in, const T* __restrict__ W, \
                  const T* __restrict__ b, long long m, long long n_in, long long n_out, int tf32), \
                 (A_out, A_in, W, b, m, n_in, n_out, tf32, NoDropout())) \
    GPUBP_EXPORT(layer_forward_##NAME##_drop_##S, (FORWARD_FN<ACT, TILE, T, Dropout<T>>), \
                 (T* __restrict__ A_out, const T* __restrict__ A_in, const T* __restrict__ W, \
                  const T* __restrict__ b, long long m, long long n_in, long long n_out, int tf32, \
                  const unsigned long long* __restrict__ key, unsigned int step, unsigned int layer, T p), \
                 (A_out, A_in, W, b, m, n_in, n_out, tf32, Dropout<T>{key, step, layer, p}))
#define GPUBP_DELTA_ENTRIES(NAME, ACT, DELTA_FN, TILE, S) \
    GPUBP_EXPORT(layer_delta_##NAME##_##S, (DELTA_FN<ACT, TILE, T, NoDropout>), \
                 (T* __restrict__ D_prev, const T* __restrict__ D, const T* __restrict__ W, \
                  const T* __restrict__ A_prev, long long m, long long n_out, long long n_in, int tf32), \
                 (D_prev, D, W, A_prev, m, n_out, n_in, tf32, NoDropout())) \
    GPUBP_EXPORT(layer_delta_##NAME##_drop_##S, (DELTA_FN<ACT, TILE, T, Dropout<T>>), \
                 (T* __restrict__ D_prev, const T* __restrict__ D, const T* __restrict__ W, \
                  const T* __restrict__ A_prev, long long m, long long n_out, long long n_in, int tf32, \
                  const unsigned long long* __restrict__ key, unsigned int step, unsigned int layer, T p), \
                 (D_prev, D, W, A_prev, m, n_out, n_in, tf32, Dropout<T>{key, step, layer, p}))

// Every layer kernel of one hidden-layer activation: forward and BP2, both tiles.
#define GPUBP_LAYER_ENTRIES(NAME, ACT, FORWARD_FN, DELTA_FN) \
    GPUBP_FORWARD_ENTRIES(NAME, ACT, FORWARD_FN, TileSmall, s) \
    GPUBP_FORWARD_ENTRIES(NAME, ACT, FORWARD_FN, TileLarge, l) \
    GPUBP_DELTA_ENTRIES(NAME, ACT, DELTA_FN, TileSmall, s) \
    GPUBP_DELTA_ENTRIES(NAME, ACT, DELTA_FN, TileLarge, l)

// The fused output layer of one cost: its output activation and its delta^L functor.
#define GPUBP_OUTPUT_ENTRY(NAME, ACT, DELTA, OUTPUT_FN)                                                   \
    GPUBP_EXPORT(layer_output_##NAME, (OUTPUT_FN<ACT, DELTA, T>),                                       \
                 (T* __restrict__ A_out, T* __restrict__ D, const T* __restrict__ A_in,                  \
                  const T* __restrict__ W, const T* __restrict__ b, const T* __restrict__ Y, long long m, \
                  long long n_in, long long n_out, T scale, int tf32),                                   \
                 (A_out, D, A_in, W, b, Y, m, n_in, n_out, scale, tf32))

// BP3, BP4 and the update (layer_update.cu), for both tiles: NAME_s and NAME_l.
#define GPUBP_UPDATE_ENTRIES(NAME, UPDATE_FN)                                                                     \
    GPUBP_EXPORT(NAME##_s, (UPDATE_FN<TileSmall, T>),                                                             \
                 (T* __restrict__ W, T* __restrict__ b, const T* __restrict__ D, const T* __restrict__ A_in,      \
                  long long m, long long n_out, long long n_in, T alpha, T beta, T beta_b, int tf32),             \
                 (W, b, D, A_in, m, n_out, n_in, alpha, beta, beta_b, tf32))                                      \
    GPUBP_EXPORT(NAME##_l, (UPDATE_FN<TileLarge, T>),                                                             \
                 (T* __restrict__ W, T* __restrict__ b, const T* __restrict__ D, const T* __restrict__ A_in,      \
                  long long m, long long n_out, long long n_in, T alpha, T beta, T beta_b, int tf32),             \
                 (W, b, D, A_in, m, n_out, n_in, alpha, beta, beta_b, tf32))

#ifndef GPUBP_NATIVE  // the GPU's kernels (native_layer.h defines these three for the native build)
#define GPUBP_LAYER_KERNELS(NAME, ACT) GPUBP_LAYER_ENTRIES(NAME, ACT, layer_forward, layer_delta)
#define GPUBP_OUTPUT_KERNEL(NAME, ACT, DELTA) GPUBP_OUTPUT_ENTRY(NAME, ACT, DELTA, layer_output)
#define GPUBP_UPDATE_KERNELS(NAME) GPUBP_UPDATE_ENTRIES(NAME, layer_update)
#endif

#endif  // GPUBP_LAYER_CUH
