// dropout: inverted dropout of a training step's input rows (Network(..., input_dropout=q)), into a
// buffer of the step's own, so the training set (or the epoch's gathered copy) is never changed.
//   out[i] <- X[i] * r_i     r_i = 1/(1-p) where kept, else 0: dropout.cuh's Dropout::output, element i
//                            of layer `layer` (0: the inputs) in mini-batch `step`, key = {seed, epoch}
// X, out: (rows, cols) C-contiguous, n = rows*cols; key: 2 uint64 on the device (Network.begin_epoch).
// NumPy reference: gpubp.reference.dropout.
// Launch: 1-D grid-stride over n, block 256.
// Tolerance: float32 atol=0 rtol=6e-8; float64 atol=0 rtol=1.2e-16 (one rounding, of the product)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   dropout_f32                       22 regs      0 B smem 100% occupancy (threads)
//   dropout_f64                       26 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"
#include "dropout.cuh"

template <typename T>
__device__ __forceinline__ void drop_inputs(T* __restrict__ out, const T* __restrict__ X, long long n,
                                            const Dropout<T> drop) {
    GPUBP_GRID_STRIDE(i, n) { out[i] = drop.output(X[i], i); }
}

GPUBP_EXPORT(dropout, (drop_inputs<T>),
             (T* __restrict__ out, const T* __restrict__ X, long long n, const unsigned long long* __restrict__ key,
              unsigned int step, unsigned int layer, T p),
             (out, X, n, Dropout<T>{key, step, layer, p}))
