// activation.cuh: the kernels every hidden-layer activation has, written once for any
// functor Act with  Act::f(z)  and  Act::prime_from_output(a)  (the derivative at z, from the
// stored output a = f(z), so z is never kept). An activation's .cu file defines its functor and
// says GPUBP_ACTIVATION(name, Functor), which exports:
//   bias_<name>:   Z[r, j] <- f(Z[r, j] + b[j])     Z: (rows, cols) = A W^T from the GEMM, b: (cols,)
//   bias_<name>_models: the same for K stacked models (gpubp.stack): Z holds K blocks of
//                  rows_per_model rows, and block k adds model k's bias, b[k * b_stride + j]
//                  (b_stride = a model's parameter count: the biases are strided views of (K, P)).
//   <name>_delta:  G[i] <- G[i] * f'(z_i) from a_i  G = delta W from the GEMM (BP2), A = a^l
//   layer_forward_<name>_{s,l}, layer_delta_<name>_{s,l}: the own route's forward and BP2 (layer.cuh).
//   bias_<name>_drop, <name>_delta_drop, layer_forward_<name>_drop_{s,l}, layer_delta_<name>_drop_{s,l}:
//                  the same with inverted dropout in the epilogue (dropout.cuh), for a hidden layer
//                  `layer` of training step `step`; key = {seed, epoch} on the device.
// Launch (bias_, bias_..._models, _delta): 1-D grid-stride over rows*cols (or n), block 256.
#ifndef GPUBP_ACTIVATION_CUH
#define GPUBP_ACTIVATION_CUH
#include "gpubp.cuh"
#include "dropout.cuh"
#include "layer.cuh"

template <typename Act, typename T>
__device__ __forceinline__ void bias_act(T* __restrict__ Z, const T* __restrict__ b, long long rows,
                                         long long cols) {
    GPUBP_GRID_STRIDE(i, rows * cols) { Z[i] = Act::f(Z[i] + b[i % cols]); }
}

template <typename Act, typename T>
__device__ __forceinline__ void bias_act_models(T* __restrict__ Z, const T* __restrict__ b, long long rows,
                                                long long cols, long long rows_per_model, long long b_stride) {
    GPUBP_GRID_STRIDE(i, rows * cols) {
        const long long r = i / cols;
        Z[i] = Act::f(Z[i] + b[r / rows_per_model * b_stride + (i - r * cols)]);
    }
}

template <typename Act, typename T>
__device__ __forceinline__ void act_delta(T* __restrict__ G, const T* __restrict__ A, long long n) {
    GPUBP_GRID_STRIDE(i, n) { G[i] = G[i] * Act::prime_from_output(A[i]); }
}

// Z[i] <- f(Z[i] + b) * r_i: a hidden layer's output, dropped and scaled (element i of (rows, cols)).
template <typename Act, typename T>
__device__ __forceinline__ void bias_act_drop(T* __restrict__ Z, const T* __restrict__ b, long long rows,
                                              long long cols, const Dropout<T> drop) {
    GPUBP_GRID_STRIDE(i, rows * cols) { Z[i] = drop.output(Act::f(Z[i] + b[i % cols]), i); }
}

// G[i] <- G[i] * f'(z_i) * r_i, f'(z) from the undropped output A[i] / r_i (BP2 through dropout).
template <typename Act, typename T>
__device__ __forceinline__ void act_delta_drop(T* __restrict__ G, const T* __restrict__ A, long long n,
                                               const Dropout<T> drop) {
    GPUBP_GRID_STRIDE(i, n) { G[i] = drop.template delta<Act>(G[i], A[i], i); }
}

#define GPUBP_ACTIVATION(NAME, ACT)                                                               \
    GPUBP_EXPORT(bias_##NAME, (bias_act<ACT, T>),                                                 \
                 (T* __restrict__ Z, const T* __restrict__ b, long long rows, long long cols),   \
                 (Z, b, rows, cols))                                                              \
    GPUBP_EXPORT(bias_##NAME##_models, (bias_act_models<ACT, T>),                                 \
                 (T* __restrict__ Z, const T* __restrict__ b, long long rows, long long cols,    \
                  long long rows_per_model, long long b_stride),                                  \
                 (Z, b, rows, cols, rows_per_model, b_stride))                                    \
    GPUBP_EXPORT(NAME##_delta, (act_delta<ACT, T>),                                               \
                 (T* __restrict__ G, const T* __restrict__ A, long long n), (G, A, n))          \
    GPUBP_EXPORT(bias_##NAME##_drop, (bias_act_drop<ACT, T>),                                     \
                 (T* __restrict__ Z, const T* __restrict__ b, long long rows, long long cols,    \
                  const unsigned long long* __restrict__ key, unsigned int step,                \
                  unsigned int layer, T p),                                                       \
                 (Z, b, rows, cols, Dropout<T>{key, step, layer, p}))                             \
    GPUBP_EXPORT(NAME##_delta_drop, (act_delta_drop<ACT, T>),                                     \
                 (T* __restrict__ G, const T* __restrict__ A, long long n,                       \
                  const unsigned long long* __restrict__ key, unsigned int step,                \
                  unsigned int layer, T p),                                                       \
                 (G, A, n, Dropout<T>{key, step, layer, p}))                                      \
    GPUBP_LAYER_KERNELS(NAME, ACT)

#endif  // GPUBP_ACTIVATION_CUH
