// momentum: one step of momentum SGD (Nielsen ch. 3) over the whole flat parameter buffer, with
// network2's L2 term in the gradient of the weights.
//   g'   = g[i] + l2 * p[i]   for i < n_weights (l2 = lambda/n);  g' = g[i] for the biases
//   v[i] <- mu * v[i] - eta * g'
//   p[i] <- p[i] + v[i]
// p, g, v: (n,) contiguous, distinct; g is the MEAN gradient over the mini-batch.
// NumPy reference: gpubp.reference.momentum_update.
// Launch: 1-D grid-stride over n, block 256.
// Tolerance vs float64, |x - ref| <= atol + rtol*(|p| + |mu*v| + |eta*g'|) (the sums may cancel):
// float32 atol=1e-30 rtol=5e-7; float64 atol=1e-300 rtol=1e-15
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   momentum_update_f32               27 regs      0 B smem 100% occupancy (threads)
//   momentum_update_f64               32 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void momentum_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                                long long n, long long n_weights, T eta, T mu, T l2) {
    GPUBP_GRID_STRIDE(i, n) {
        const T grad = i < n_weights ? g[i] + l2 * p[i] : g[i];
        const T vel = mu * v[i] - eta * grad;
        v[i] = vel;
        p[i] = p[i] + vel;
    }
}

GPUBP_EXPORT(momentum_update, momentum_update,
             (T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, long long n, long long n_weights,
              T eta, T mu, T l2),
             (p, g, v, n, n_weights, eta, mu, l2))
