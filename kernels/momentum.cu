// momentum: one step of momentum SGD (Nielsen ch. 3) over the whole flat parameter buffer, with
// network2's L2 term in the gradient of the weights.
//   g'   = g[i] + l2 * p[i]   for i < n_weights (l2 = lambda/n);  g' = g[i] for the biases
//   v[i] <- mu * v[i] - eta * g'
//   p[i] <- p[i] + v[i]
// p, g, v: (n,) contiguous, distinct; g is the MEAN gradient over the mini-batch.
//   momentum_update_models: K stacked models (gpubp.stack), p, g, v (K, n_params) as n = K*n_params
//   elements; model k = i / n_params has its own eta[k] and l2[k]; mu is shared.
// NumPy reference: gpubp.reference.momentum_update, gpubp.reference.momentum_update_models.
// Launch: 1-D grid-stride over n, block 256.
// Tolerance vs float64, |x - ref| <= atol + rtol*(|p| + |mu*v| + |eta*g'|) (the sums may cancel):
// float32 atol=1e-30 rtol=5e-7; float64 atol=1e-300 rtol=1e-15
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   momentum_update_f32               27 regs      0 B smem 100% occupancy (threads)
//   momentum_update_f64               32 regs      0 B smem 100% occupancy (threads)
//   momentum_update_models_f32        32 regs      0 B smem 100% occupancy (threads)
//   momentum_update_models_f64        32 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

// One parameter j of a model's flat buffer, at index i of the arrays.
template <typename T>
__device__ __forceinline__ void momentum_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                              long long i, long long j, long long n_weights, T eta, T mu, T l2) {
    const T grad = j < n_weights ? g[i] + l2 * p[i] : g[i];
    const T vel = mu * v[i] - eta * grad;
    v[i] = vel;
    p[i] = p[i] + vel;
}

template <typename T>
__device__ __forceinline__ void momentum_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                                long long n, long long n_weights, T eta, T mu, T l2) {
    GPUBP_GRID_STRIDE(i, n) { momentum_step(p, g, v, i, i, n_weights, eta, mu, l2); }
}

template <typename T>
__device__ __forceinline__ void momentum_update_models(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                                       long long n, long long n_params, long long n_weights,
                                                       const T* __restrict__ eta, T mu, const T* __restrict__ l2) {
    GPUBP_GRID_STRIDE(i, n) {
        const long long k = i / n_params;
        momentum_step(p, g, v, i, i - k * n_params, n_weights, eta[k], mu, l2[k]);
    }
}

GPUBP_EXPORT(momentum_update, momentum_update,
             (T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, long long n, long long n_weights,
              T eta, T mu, T l2),
             (p, g, v, n, n_weights, eta, mu, l2))
GPUBP_EXPORT(momentum_update_models, momentum_update_models,
             (T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, long long n, long long n_params,
              long long n_weights, const T* __restrict__ eta, T mu, const T* __restrict__ l2),
             (p, g, v, n, n_params, n_weights, eta, mu, l2))
