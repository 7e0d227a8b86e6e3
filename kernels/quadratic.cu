// quadratic: the output error delta^L of the quadratic cost C = 0.5*||a - y||^2 with sigmoid
// outputs (BP1), times `scale` (= 1/m, so every gradient built from it is that of the MEAN cost).
//   D[i] <- scale * (A[i] - Y[i]) * A[i] * (1 - A[i])      (a - y) (.) sigma'(z^L), sigma' from a
// (gpubp.cuh's QuadraticDelta, which the fused output layers of layer.cuh and native_layer.h share)
// A, Y, D: (rows, n_out) C-contiguous, n = rows*n_out elements. D may not alias A or Y.
//   layer_output_quadratic: the own route's output layer, A = sigma(A_in W^T + b) and D as above,
//   in one launch (layer.cuh, TileOutput).
//   quadratic_cost: total[0] += sum 0.5 (a - y)^2 over a batch, in double (cost.cuh).
// NumPy reference: gpubp.reference.quadratic_delta, gpubp.reference.layer_output_quadratic,
// gpubp.reference.quadratic_cost.
// Launch: the delta 1-D grid-stride over n, the cost over rows, block 256; layer_output_ a 2-D grid of
// 256-thread blocks, one per TileOutput tile (layer.cuh).
// Double on purpose: quadratic_cost (cost.cuh).
// Tolerance quadratic_cost vs a float64 sum: float32 atol=1e-9 rtol=1e-12; float64 atol=1e-9 rtol=1e-12
// Tolerance vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
// Tolerance layer_output_*: A_out and D/scale vs float64, |x - ref| <= atol + rtol*S with S = sum_k |a_k w_k| + |b|
// (sigma' and the softmax's derivative are at most 1/2): float32 atol=1e-6 rtol=1e-5; float64 atol=1e-15 rtol=2e-14
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   layer_output_quadratic_f32        56 regs   6272 B smem  50% occupancy (registers)
//   layer_output_quadratic_f64        64 regs  12544 B smem  50% occupancy (registers)
//   quadratic_cost_f32                32 regs      0 B smem 100% occupancy (threads)
//   quadratic_cost_f64                30 regs      0 B smem 100% occupancy (threads)
//   quadratic_delta_f32               32 regs      0 B smem 100% occupancy (threads)
//   quadratic_delta_f64               32 regs      0 B smem 100% occupancy (threads)
#include "cost.cuh"
#include "gpubp.cuh"
#include "layer.cuh"

template <typename T>
__device__ __forceinline__ void quadratic_delta(T* __restrict__ D, const T* __restrict__ A,
                                                const T* __restrict__ Y, long long n, T scale) {
    GPUBP_GRID_STRIDE(i, n) { D[i] = QuadraticDelta::d(A[i], Y[i], scale); }
}

GPUBP_EXPORT(quadratic_delta, quadratic_delta,
             (T* __restrict__ D, const T* __restrict__ A, const T* __restrict__ Y, long long n, T scale),
             (D, A, Y, n, scale))

GPUBP_OUTPUT_KERNEL(quadratic, Sigmoid, QuadraticDelta)

struct QuadraticTerm {
    __host__ __device__ static double c(double a, double y) { return 0.5 * (a - y) * (a - y); }
};
GPUBP_COST_VALUE(quadratic, QuadraticTerm)
