// sgd: one step of network2.py's rule over the whole flat parameter buffer, for the routes that
// do not fold the update into the BP4 product (see gpubp.optimizers.SGD).
//   p[i] <- decay * p[i] - step * g[i]   for i <  n_weights   (decay = 1 - eta*lambda/n)
//   p[i] <-         p[i] - step * g[i]   for i >= n_weights   (biases are not decayed)
// The buffer holds every weight matrix first, then every bias vector; g is the MEAN gradient over
// the mini-batch, so step = eta. p, g: (n,) contiguous, distinct.
//   sgd_update_models: K stacked models (gpubp.stack), p and g (K, n_params) as n = K*n_params
//   elements; model k = i / n_params has its own decay[k] and step[k] (its own eta and lambda).
// NumPy reference: gpubp.reference.sgd_update, gpubp.reference.sgd_update_models.
// Launch: 1-D grid-stride over n, block 256.
// Tolerance vs float64, |x - ref| <= atol + rtol*(|decay*p| + |step*g|) (the result may cancel):
// float32 atol=1e-30 rtol=3e-7; float64 atol=1e-300 rtol=6e-16
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   sgd_update_f32                    30 regs      0 B smem 100% occupancy (threads)
//   sgd_update_f64                    30 regs      0 B smem 100% occupancy (threads)
//   sgd_update_models_f32             31 regs      0 B smem 100% occupancy (threads)
//   sgd_update_models_f64             30 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

// One parameter j of a model's flat buffer.
template <typename T>
__device__ __forceinline__ T sgd_step(T p, T g, long long j, long long n_weights, T decay, T step) {
    const T keep = j < n_weights ? decay : T(1);
    return keep * p - step * g;
}

template <typename T>
__device__ __forceinline__ void sgd_update(T* __restrict__ p, const T* __restrict__ g, long long n,
                                           long long n_weights, T decay, T step) {
    GPUBP_GRID_STRIDE(i, n) { p[i] = sgd_step(p[i], g[i], i, n_weights, decay, step); }
}

template <typename T>
__device__ __forceinline__ void sgd_update_models(T* __restrict__ p, const T* __restrict__ g, long long n,
                                                  long long n_params, long long n_weights,
                                                  const T* __restrict__ decay, const T* __restrict__ step) {
    GPUBP_GRID_STRIDE(i, n) {
        const long long k = i / n_params;
        p[i] = sgd_step(p[i], g[i], i - k * n_params, n_weights, decay[k], step[k]);
    }
}

GPUBP_EXPORT(sgd_update, sgd_update,
             (T* __restrict__ p, const T* __restrict__ g, long long n, long long n_weights, T decay, T step),
             (p, g, n, n_weights, decay, step))
GPUBP_EXPORT(sgd_update_models, sgd_update_models,
             (T* __restrict__ p, const T* __restrict__ g, long long n, long long n_params, long long n_weights,
              const T* __restrict__ decay, const T* __restrict__ step),
             (p, g, n, n_params, n_weights, decay, step))
