// difference_delta: the output error delta^L = a - y (BP1), times `scale` (= 1/m, the MEAN cost).
// It is the output error of two costs, because each cancels its output layer's derivative:
//   cross-entropy with sigmoid outputs (Nielsen ch. 3, eq. 66), and
//   log-likelihood with softmax outputs (Nielsen ch. 3, eq. 84).
//   D[i] <- scale * (A[i] - Y[i])        A, Y, D: (rows, n_out) C-contiguous, n = rows*n_out.
//   layer_output_cross_entropy, layer_output_log_likelihood: the own route's output layers, the
//   forward (sigmoid, or softmax from the row held in shared memory) and D in one launch (layer.cuh).
// NumPy reference: gpubp.reference.difference_delta, gpubp.reference.layer_output_cross_entropy,
// gpubp.reference.layer_output_log_likelihood.
// Launch: the delta 1-D grid-stride over n, block 256; layer_output_ a 2-D grid of 256-thread blocks, one per
// TileOutput tile (layer.cuh).
// Tolerance vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
// Tolerance layer_output_*: A_out and D/scale vs float64, |x - ref| <= atol + rtol*S with S = sum_k |a_k w_k| + |b|
// (sigma' and the softmax's derivative are at most 1/2): float32 atol=1e-6 rtol=1e-5; float64 atol=1e-15 rtol=2e-14
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   difference_delta_f32              32 regs      0 B smem 100% occupancy (threads)
//   difference_delta_f64              32 regs      0 B smem 100% occupancy (threads)
//   layer_output_cross_entropy_f32    48 regs   6272 B smem  62% occupancy (registers)
//   layer_output_cross_entropy_f64    56 regs  12544 B smem  50% occupancy (registers)
//   layer_output_log_likelihood_f32   48 regs  15232 B smem  62% occupancy (registers)
//   layer_output_log_likelihood_f64   58 regs  30464 B smem  50% occupancy (registers)
#include "gpubp.cuh"
#include "layer.cuh"

template <typename T>
__device__ __forceinline__ void difference_delta(T* __restrict__ D, const T* __restrict__ A,
                                                 const T* __restrict__ Y, long long n, T scale) {
    GPUBP_GRID_STRIDE(i, n) { D[i] = scale * (A[i] - Y[i]); }
}

GPUBP_EXPORT(difference_delta, difference_delta,
             (T* __restrict__ D, const T* __restrict__ A, const T* __restrict__ Y, long long n, T scale),
             (D, A, Y, n, scale))

GPUBP_OUTPUT_KERNEL(cross_entropy, Sigmoid, DifferenceDelta)
GPUBP_OUTPUT_KERNEL(log_likelihood, Softmax, DifferenceDelta)
