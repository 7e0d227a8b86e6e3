// dropout.cuh: inverted dropout as an epilogue policy of the kernels that already touch the
// activations (activation.cuh's bias_<act>_drop and <act>_delta_drop, layer.cuh's
// layer_forward_<act>_drop and layer_delta_<act>_drop, dropout.cu's input dropout).
//
//   forward  a_stored = f(z) * r,   r = 1/(1-p) where kept, 0 where dropped (philox.cuh's
//            gpubp_dropout_factor of (seed, epoch, step, layer, element))
//   BP2      delta = (delta W) * f'(z) * r, f'(z) from the undropped output a_stored / r; 0 where
//            dropped. The mask is drawn again from Philox here, never stored.
// (seed, epoch) come from a device buffer key = {seed, epoch} that the epoch driver uploads once
// an epoch (Network.begin_epoch), so a captured graph replays every epoch with new masks; the
// step and the layer are launch arguments (constant per captured step).
// NoDropout is the same policy doing nothing: the kernels without _drop compute exactly what they
// computed before dropout existed.
// NumPy reference: gpubp.reference.dropout_factor (r), and each _drop kernel's reference there.
#ifndef GPUBP_DROPOUT_CUH
#define GPUBP_DROPOUT_CUH
#include "philox.cuh"

struct NoDropout {
    template <typename T>
    __host__ __device__ T output(T a, long long) const { return a; }
    template <class Act, typename T>
    __host__ __device__ T delta(T g, T a, long long) const { return g * Act::prime_from_output(a); }
};

template <typename T>
struct Dropout {
    const unsigned long long* __restrict__ key;  // {seed, epoch}
    unsigned int step, layer;
    T p;
    __host__ __device__ T factor(long long e) const {
        return gpubp_dropout_factor<T>(key[0], (unsigned int)key[1], step, layer, (unsigned long long)e, p);
    }
    __host__ __device__ T output(T a, long long e) const { return a * factor(e); }
    template <class Act>
    __host__ __device__ T delta(T g, T a, long long e) const {
        const T r = factor(e);
        return r == T(0) ? T(0) : g * (Act::prime_from_output(a / r) * r);
    }
};

#endif  // GPUBP_DROPOUT_CUH
