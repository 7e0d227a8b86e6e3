// adam: one Adam step (Kingma & Ba) over the whole flat parameter buffer, with lambda as decoupled
// weight decay (Loshchilov & Hutter), in one launch:
//   m[i] <- beta1 m[i] + (1 - beta1) g[i];   v[i] <- beta2 v[i] + (1 - beta2) g[i]^2
//   p[i] <- keep p[i] - eta (m[i] / (1 - beta1^t)) / (sqrt(v[i] / (1 - beta2^t)) + eps)
//   keep = decay = 1 - eta*lambda/n for i < n_weights, 1 for the biases;  t = *steps + 1
// The step count lives on the device (*steps), so a CUDA graph that replays this launch uses the
// right t every time: every thread reads *steps before its block's barrier, each block then
// counts itself in *done, and the last block to do so (it sees gridDim.x - 1 before it) stores
// t and resets *done to 0 for the next launch. p, g, m, v: (n,) contiguous, distinct.
//   adam_update_models: K stacked models (gpubp.stack) that step together (one *steps), p, g, m, v
//   (K, n_params) as n = K*n_params elements; model k = i / n_params has its own eta[k] and decay[k].
// NumPy reference: gpubp.reference.adam_update, gpubp.reference.adam_update_models.
// Launch: 1-D grid-stride over n, block 256.
// Tolerance vs float64, |x - ref| <= atol + rtol*(|keep*p| + |eta*m_hat/(sqrt(v_hat)+eps)|):
// float32 atol=1e-30 rtol=2e-6; float64 atol=1e-300 rtol=4e-15
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   adam_update_f32                   45 regs      0 B smem  62% occupancy (registers)
//   adam_update_f64                   48 regs      0 B smem  62% occupancy (registers)
//   adam_update_models_f32            46 regs      0 B smem  62% occupancy (registers)
//   adam_update_models_f64            50 regs      0 B smem  50% occupancy (registers)
#include "gpubp.cuh"

// 1/(1 - beta^t) for step t, as -1/expm1(t log(beta)): 1 - 0.999^t cancels (1 - powf would lose ~150 ulps
// at t = 7); log(beta) = log1p(-(1 - beta)), where 1 - beta is exact.
template <typename T>
__device__ __forceinline__ T adam_correction(long long t, T beta) {
    return T(-1) / gpubp_expm1(T(t) * gpubp_log1p(-(T(1) - beta)));
}

// One parameter j of a model's flat buffer, at index i of the arrays; c1, c2 the bias corrections.
template <typename T>
__device__ __forceinline__ void adam_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                          T* __restrict__ v, long long i, long long j, long long n_weights, T eta,
                                          T beta1, T beta2, T eps, T decay, T c1, T c2) {
    const T gi = g[i];
    const T mi = beta1 * m[i] + (T(1) - beta1) * gi;
    const T vi = beta2 * v[i] + (T(1) - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const T keep = j < n_weights ? decay : T(1);
    p[i] = keep * p[i] - eta * (mi * c1) / (gpubp_sqrt(vi * c2) + eps);
}

// After every thread of the block has read *steps: the last block to finish stores t = *steps + 1.
__device__ __forceinline__ void adam_count(long long* steps, unsigned int* done, long long t) {
    __syncthreads();  // every thread of this block has read *steps
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(done, 1u) == gridDim.x - 1) {  // the last block: all the others have read *steps
            *steps = t;
            *done = 0u;
        }
    }
}

template <typename T>
__device__ __forceinline__ void adam_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                            T* __restrict__ v, long long* steps, unsigned int* done, long long n,
                                            long long n_weights, T eta, T beta1, T beta2, T eps, T decay) {
    const long long t = *steps + 1;
    const T c1 = adam_correction(t, beta1), c2 = adam_correction(t, beta2);
    GPUBP_GRID_STRIDE(i, n) { adam_step(p, g, m, v, i, i, n_weights, eta, beta1, beta2, eps, decay, c1, c2); }
    adam_count(steps, done, t);
}

template <typename T>
__device__ __forceinline__ void adam_update_models(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                                   T* __restrict__ v, long long* steps, unsigned int* done,
                                                   long long n, long long n_params, long long n_weights,
                                                   const T* __restrict__ eta, T beta1, T beta2, T eps,
                                                   const T* __restrict__ decay) {
    const long long t = *steps + 1;
    const T c1 = adam_correction(t, beta1), c2 = adam_correction(t, beta2);
    GPUBP_GRID_STRIDE(i, n) {
        const long long k = i / n_params;
        adam_step(p, g, m, v, i, i - k * n_params, n_weights, eta[k], beta1, beta2, eps, decay[k], c1, c2);
    }
    adam_count(steps, done, t);
}

GPUBP_EXPORT(adam_update, adam_update,
             (T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, long long* steps,
              unsigned int* done, long long n, long long n_weights, T eta, T beta1, T beta2, T eps, T decay),
             (p, g, m, v, steps, done, n, n_weights, eta, beta1, beta2, eps, decay))
GPUBP_EXPORT(adam_update_models, adam_update_models,
             (T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, long long* steps,
              unsigned int* done, long long n, long long n_params, long long n_weights, const T* __restrict__ eta,
              T beta1, T beta2, T eps, const T* __restrict__ decay),
             (p, g, m, v, steps, done, n, n_params, n_weights, eta, beta1, beta2, eps, decay))
