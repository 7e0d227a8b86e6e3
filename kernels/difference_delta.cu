// difference_delta: the output error delta^L = a - y (BP1), times `scale` (= 1/m, the MEAN cost).
// It is the output error of two costs, because each cancels its output layer's derivative:
//   cross-entropy with sigmoid outputs (Nielsen ch. 3, eq. 66), and
//   log-likelihood with softmax outputs (Nielsen ch. 3, eq. 84).
//   D[i] <- scale * (A[i] - Y[i])        A, Y, D: (rows, n_out) C-contiguous, n = rows*n_out.
// (gpubp.cuh's DifferenceDelta, which the fused output layers of layer.cuh and native_layer.h share)
// The own route's fused output layers of the two costs are in cross_entropy.cu and log_likelihood.cu.
// NumPy reference: gpubp.reference.difference_delta.
// Launch: 1-D grid-stride over n, block 256.
// Tolerance vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   difference_delta_f32              32 regs      0 B smem 100% occupancy (threads)
//   difference_delta_f64              32 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void difference_delta(T* __restrict__ D, const T* __restrict__ A,
                                                 const T* __restrict__ Y, long long n, T scale) {
    GPUBP_GRID_STRIDE(i, n) { D[i] = DifferenceDelta::d(A[i], Y[i], scale); }
}

GPUBP_EXPORT(difference_delta, difference_delta,
             (T* __restrict__ D, const T* __restrict__ A, const T* __restrict__ Y, long long n, T scale),
             (D, A, Y, n, scale))
